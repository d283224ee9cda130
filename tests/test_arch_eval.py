"""Matryoshka SAEs and transcoders on the tiny LM: `saekit train` with either config, `saekit eval`
splicing a transcoder in place of the MLP (its metrics against a direct computation, the zero and
mean transcoders giving the ablations' CE), resuming a killed grid of them."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_local_model_dir
from saekit.data import CacheConfig, cache_activations
from saekit.eval import EvalConfig, evaluate
from saekit.models import load_model
from saekit.sae import SAEConfig, build_sae, load_sae_dir, save_sae

IN, OUT = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
N_CONTEXTS, CTX = 40, 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = make_local_model_dir(tmp_path_factory.mktemp("arch_eval"))
    cache = root / "cache"
    cache_activations(CacheConfig(out=str(cache), model=str(root / "model"), dataset=str(root / "data.jsonl"),
                                  hooks=[IN, OUT], n_tokens=N_CONTEXTS * CTX, ctx_len=CTX, shard_tokens=CTX * 16,
                                  device="cpu"), progress=False)
    return root, cache, load_model(root / "model")


def transcoder(tmp_path, name="tc", skip=True, seed=0):
    sae = build_sae(SAEConfig(architecture="topk", d_in=64, d_sae=128, k=8, seed=seed, transcode=True,
                              skip_connection=skip, hook_name=IN, hook_name_out=OUT, normalize_activations="none"))
    with torch.no_grad():
        sae.b_enc.fill_(0.1)
        sae.W_dec.mul_(0.3)
        if skip:
            sae.W_skip.normal_(0, 0.05)
    return save_sae(sae, tmp_path / name), sae.eval()


def eval_tokens(cache, n_contexts=10):
    from saekit.data import read_manifest
    from saekit.eval.run import _context_tokens

    return _context_tokens(cache, read_manifest(cache), (N_CONTEXTS - n_contexts, N_CONTEXTS), n_contexts)


def test_transcoder_eval_equals_a_direct_splice_of_the_mlp(setup, tmp_path):
    _, cache, model = setup
    folder, sae = transcoder(tmp_path)
    result = evaluate(EvalConfig(sae=str(folder), cache=str(cache), n_tokens=10 * CTX, ce_contexts=10),
                      progress=False)
    tokens = eval_tokens(cache)
    _, run = model.run_with_cache(tokens, names_filter=[IN, OUT])
    x, y = run[IN][:, 1:].reshape(-1, 64), run[OUT][:, 1:].reshape(-1, 64)  # BOS dropped
    with torch.no_grad():
        pred = sae.reconstruct(x)
    fvu = float((y - pred).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    assert result["transcoder"] and result["hook_name_out"] == OUT
    assert result["fvu"] == pytest.approx(fvu, rel=1e-4)

    def replace(act, hook):
        out = act.clone()
        out[:, 1:] = pred.reshape(act.shape[0], -1, 64)
        return out

    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[(OUT, replace)])
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    ce = float(-log_probs.gather(-1, tokens[:, 1:, None]).mean())
    assert result["ce_sae"] == pytest.approx(ce, rel=1e-4)
    assert result["ce_sae_with_error"] == pytest.approx(result["ce_clean"], abs=1e-5)
    assert result["ce_sae"] != pytest.approx(result["ce_clean"], abs=1e-3)


def test_zero_and_mean_transcoders_give_the_ablations(setup, tmp_path):
    """A transcoder predicting 0 is zero-ablation of the MLP; one predicting the mean, mean-ablation."""
    _, cache, _ = setup
    folder, sae = transcoder(tmp_path, skip=False)
    results = {}
    for name, b_dec in (("zero", None), ("mean", "mean")):
        with torch.no_grad():
            sae.W_dec.zero_()
            sae.b_dec.zero_()
            if b_dec == "mean":
                sae.b_dec.copy_(torch.tensor(results["zero"]["mean_out"]))
        folder = save_sae(sae, tmp_path / name)
        results[name] = evaluate(EvalConfig(sae=str(folder), cache=str(cache), n_tokens=10 * CTX, ce_contexts=10),
                                 progress=False)
        if name == "zero":  # the output hook's mean over the evaluated tokens, as mean-ablation uses it
            from saekit.data import ActivationStore

            store = ActivationStore(cache, OUT, batch_size=4096, shuffle=False, drop_bos=True,
                                    context_range=(N_CONTEXTS - 10, N_CONTEXTS))
            results[name]["mean_out"] = torch.cat(list(store)).double().mean(0).float().tolist()
    assert results["zero"]["ce_sae"] == pytest.approx(results["zero"]["ce_zero"], rel=1e-6)
    assert results["mean"]["ce_sae"] == pytest.approx(results["mean"]["ce_mean"], rel=1e-4)
    assert results["zero"]["ce_loss_score"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["matryoshka", "transcoder"])
def test_saekit_train_on_the_tiny_lm(setup, tmp_path, kind):
    from saekit.cli import main

    _, cache, _ = setup
    lines = [f'cache = "{cache}"', f'out = "{tmp_path / "run"}"', "d_sae = [128]", "k = [8]", "seeds = [0, 1]",
             "n_tokens = 12800", "batch_size = 256", "warmup_steps = 5", "checkpoint_every = 6400", "log_every = 10"]
    if kind == "matryoshka":
        lines += [f'hooks = ["{OUT}"]', 'architecture = "matryoshka_batchtopk"', "sae = {matryoshka_prefixes = [16, 64]}"]
    else:
        lines += [f'transcode = {{"{IN}" = "{OUT}"}}', "skip_connection = [false, true]"]
    (tmp_path / "train.toml").write_text("\n".join(lines) + "\n")
    assert main(["train", str(tmp_path / "train.toml")]) == 0
    folders = sorted(p.parent for p in (tmp_path / "run").rglob("cfg.json"))
    assert len(folders) == (2 if kind == "matryoshka" else 4)
    for folder in folders:
        sae = load_sae_dir(folder)
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["fvu"] < 0.9 and metrics["tokens"] == 12800
        assert sae.cfg.transcode == (kind == "transcoder")
        result = evaluate(EvalConfig(sae=str(folder), cache=str(cache), n_tokens=2 * CTX, ce_contexts=2),
                          progress=False)
        assert result["fvu"] < 1.0 and result["ce_loss_score"] > 0
    if kind == "matryoshka":
        assert load_sae_dir(folders[0]).cfg.resolved_prefixes == [16, 64, 128]


def test_tokenchange_of_a_transcoder_steers_at_its_output_hook(setup, tmp_path):
    """Setting latent f to v adds (v - z_f) W_dec[f] at hook_mlp_out, z_f read from ln2.hook_normalized."""
    from saekit.interp.explain.evidence import logit_changes, mean_logits

    _, cache, model = setup
    _, sae = transcoder(tmp_path)
    tokens = eval_tokens(cache, 3)[:, :16]
    latents, values = [3, 7], [4.0, -2.0]
    with torch.no_grad():
        got = logit_changes(model, sae, IN, tokens, latents, values, start=1)
        _, run = model.run_with_cache(tokens, names_filter=[IN])
        z = sae.encode(run[IN][:, 1:].reshape(-1, 64))
        clean = mean_logits(model, tokens, 1)[0]
        for row, (f, v) in enumerate(zip(latents, values)):
            delta = ((v - z[:, f])[:, None] * sae.W_dec[f]).reshape(tokens.shape[0], -1, 64)

            def add(act, hook, delta=delta):
                out = act.clone()
                out[:, 1:] += delta
                return out

            want = mean_logits(model, tokens, 1, [(OUT, add)])[0] - clean
            assert torch.allclose(got[row], want, atol=1e-4)
    assert got.abs().max() > 1e-3
