"""saekit eval: metrics equal a direct computation, the error term restores clean CE, an identity
SAE recovers everything, a mean-only SAE has FVU 1, and mismatches are named."""

import json

import pytest
import torch

from conftest import make_local_model_dir
from saekit.data import CacheConfig, CacheError, cache_activations
from saekit.eval import EvalConfig, evaluate
from saekit.models import load_model
from saekit.sae import SAEConfig, build_sae, save_sae

HOOKS = ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out", "blocks.1.hook_attn_out"]
N_CONTEXTS, CTX = 40, 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = make_local_model_dir(tmp_path_factory.mktemp("eval"))
    cache = root / "cache"
    cache_activations(CacheConfig(out=str(cache), model=str(root / "model"), dataset=str(root / "data.jsonl"),
                                  hooks=HOOKS, n_tokens=N_CONTEXTS * CTX, ctx_len=CTX, shard_tokens=CTX * 16,
                                  device="cpu"), progress=False)
    model = load_model(root / "model")
    return root, cache, model


def random_sae(tmp_path, architecture="topk", hook=HOOKS[0], d_sae=256, seed=0, **changes):
    cfg = SAEConfig(architecture=architecture, d_in=64, d_sae=d_sae, k=16, hook_name=hook, seed=seed,
                    normalize_activations="none", jumprelu_init_threshold=0.05, **changes)
    sae = build_sae(cfg)
    with torch.no_grad():
        sae.b_enc.fill_(0.1)
        if architecture == "batchtopk":
            sae.threshold.fill_(0.2)
    return save_sae(sae, tmp_path / f"{architecture}-{hook}"), sae


def eval_tokens(cache, n_contexts=10):
    """Token ids of the held-out (last) contexts of the cache."""
    from saekit.eval.run import _context_tokens
    from saekit.data import read_manifest

    manifest = read_manifest(cache)
    return _context_tokens(cache, manifest, (N_CONTEXTS - n_contexts, N_CONTEXTS), n_contexts)


def test_metrics_equal_a_direct_computation(setup, tmp_path):
    root, cache, model = setup
    folder, sae = random_sae(tmp_path)
    result = evaluate(EvalConfig(sae=str(folder), cache=str(cache), n_tokens=10 * CTX, ce_contexts=10),
                      progress=False)
    tokens = eval_tokens(cache)
    _, run = model.run_with_cache(tokens, names_filter=[HOOKS[0]])
    x = run[HOOKS[0]][:, 1:].reshape(-1, 64)  # BOS positions dropped
    latents = sae.encode(x)
    recon = sae.decode(latents).detach()
    fvu = float((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert result["n_tokens"] == x.shape[0]
    assert result["fvu"] == pytest.approx(fvu, rel=1e-5)
    assert result["mse"] == pytest.approx(float((x - recon).pow(2).mean()), rel=1e-5)
    assert result["cossim"] == pytest.approx(float(torch.cosine_similarity(x, recon, dim=-1).mean()), rel=1e-5)
    assert result["l0"] == pytest.approx(float((latents != 0).sum(1).float().mean()), rel=1e-6)
    fired = (latents != 0).any(0)
    assert result["dead_fraction"] == pytest.approx(float((~fired).float().mean()))
    assert result["dense_fraction"] == pytest.approx(float(((latents != 0).float().mean(0) > 0.1).float().mean()))

    # CE: clean, spliced (BOS position kept), zero-ablated, and the score
    def ce(logits):
        return float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                       tokens[:, 1:].reshape(-1)))

    def spliced(values):
        def hook(act, hook):
            act = act.clone()
            act[:, 1:] = values(act[:, 1:])
            return act
        return model.run_with_hooks(tokens, fwd_hooks=[(HOOKS[0], hook)])

    with torch.no_grad():
        clean = model(tokens)
        with_sae = spliced(lambda a: sae.decode(sae.encode(a.reshape(-1, 64))).reshape(a.shape))
        zero = spliced(torch.zeros_like)
    assert result["ce_clean"] == pytest.approx(ce(clean), rel=1e-5)
    assert result["ce_sae"] == pytest.approx(ce(with_sae), rel=1e-5)
    assert result["ce_zero"] == pytest.approx(ce(zero), rel=1e-5)
    expected_score = (ce(zero) - ce(with_sae)) / (ce(zero) - ce(clean))
    assert result["ce_loss_score"] == pytest.approx(expected_score, rel=1e-4)
    kl = torch.nn.functional.kl_div(with_sae[:, :-1].log_softmax(-1), clean[:, :-1].log_softmax(-1),
                                    log_target=True, reduction="none").sum(-1).mean()
    assert result["kl_sae"] == pytest.approx(float(kl), rel=1e-4)
    on_disk = json.loads((folder / "eval.json").read_text())
    assert on_disk["fvu"] == result["fvu"] and on_disk["dataset"]["fingerprint"]
    assert (folder / "eval_frequency.html").read_text().count("plotly") > 10


@pytest.mark.parametrize("architecture", ["topk", "batchtopk", "jumprelu", "relu"])
@pytest.mark.parametrize("hook", HOOKS)
def test_error_term_restores_clean_ce(setup, tmp_path, architecture, hook):
    _, cache, _ = setup
    folder, _ = random_sae(tmp_path, architecture=architecture, hook=hook)
    result = evaluate(EvalConfig(sae=str(folder), cache=str(cache), n_tokens=6 * CTX, ce_contexts=6, write=False),
                      progress=False)
    assert abs(result["ce_sae_with_error"] - result["ce_clean"]) < 1e-5
    assert result["kl_sae_with_error"] < 1e-6
    assert result["ce_zero"] != result["ce_clean"] and 0 < result["l0"]


def test_identity_sae_recovers_everything(setup, tmp_path):
    _, cache, _ = setup
    cfg = SAEConfig(architecture="relu", d_in=64, d_sae=64, hook_name=HOOKS[0], normalize_activations="none")
    sae = build_sae(cfg)
    with torch.no_grad():  # pre = x + 1000 > 0, latents = x + 1000, recon = latents - 1000 = x
        sae.W_enc.copy_(torch.eye(64))
        sae.W_dec.copy_(torch.eye(64))
        sae.b_enc.zero_()
        sae.b_dec.fill_(-1000.0)
    folder = save_sae(sae, tmp_path / "identity")
    result = evaluate(EvalConfig(sae=str(folder), cache=str(cache), n_tokens=10 * CTX, ce_contexts=10),
                      progress=False)
    assert result["fvu"] < 1e-6 and result["cossim"] > 0.9999
    assert result["ce_loss_score"] == pytest.approx(1.0, abs=1e-3)
    assert result["l0"] == pytest.approx(64)


def test_zero_saes_have_fvu_one(setup, tmp_path):
    _, cache, model = setup
    tokens = eval_tokens(cache)
    _, run = model.run_with_cache(tokens, names_filter=[HOOKS[0]])
    x = run[HOOKS[0]][:, 1:].reshape(-1, 64)
    cfg = SAEConfig(architecture="relu", d_in=64, d_sae=128, hook_name=HOOKS[0], normalize_activations="none")
    sae = build_sae(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.zero_()
        sae.b_enc.fill_(-1.0)  # nothing fires
    zero = evaluate(EvalConfig(sae=str(save_sae(sae, tmp_path / "zero")), cache=str(cache), n_tokens=10 * CTX,
                               ce_contexts=0), progress=False)
    expected = float(x.pow(2).sum() / (x - x.mean(0)).pow(2).sum())  # recon 0: above 1 by the mean's share
    assert zero["fvu"] == pytest.approx(expected, rel=1e-5) and zero["dead_fraction"] == 1.0
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0))  # predicts the mean: exactly the variance left unexplained
    mean_only = evaluate(EvalConfig(sae=str(save_sae(sae, tmp_path / "mean")), cache=str(cache),
                                    n_tokens=10 * CTX, ce_contexts=0), progress=False)
    assert mean_only["fvu"] == pytest.approx(1.0, abs=1e-5)


def test_mismatched_sae_is_named(setup, tmp_path):
    _, cache, _ = setup
    wrong_width = SAEConfig(architecture="topk", d_in=32, d_sae=64, k=4, hook_name=HOOKS[0])
    folder = save_sae(build_sae(wrong_width), tmp_path / "w")
    with pytest.raises(CacheError, match=r"SAE d_in 32 does not match cache .*has d_in 64"):
        evaluate(EvalConfig(sae=str(folder), cache=str(cache)), progress=False)
    wrong_hook = SAEConfig(architecture="topk", d_in=64, d_sae=64, k=4, hook_name="blocks.0.hook_resid_pre")
    folder = save_sae(build_sae(wrong_hook), tmp_path / "h")
    with pytest.raises(CacheError, match=r"'blocks.0.hook_resid_pre' is not in cache"):
        evaluate(EvalConfig(sae=str(folder), cache=str(cache)), progress=False)


def test_cli_eval_prints_a_summary(setup, tmp_path, capsys):
    from saekit.cli import main

    _, cache, _ = setup
    folder, _ = random_sae(tmp_path)
    assert main(["eval", str(folder), "--cache", str(cache), "--n-tokens", "320", "--ce-contexts", "4"]) == 0
    out = capsys.readouterr().out
    assert "ce_loss_recovered" in out and "fvu" in out
    assert main(["info", str(folder)]) == 0
    assert "eval.json" in capsys.readouterr().out


def _with_training_record(setup, tmp_path, train_contexts):
    """A random SAE saved with the provenance `saekit train` writes: trained on `train_contexts` of the cache."""
    from saekit.data import read_manifest
    from saekit.data.provenance import manifest_digest, training_provenance

    root, cache, _ = setup
    manifest = read_manifest(cache)
    _, sae = random_sae(tmp_path)
    folder = save_sae(sae, tmp_path / "trained-sae", provenance={**training_provenance(manifest, cache),
                                                                 "train_contexts": list(train_contexts)})
    assert manifest_digest(manifest)
    return folder


def test_evaluation_is_cut_to_the_contexts_the_sae_was_not_trained_on(setup, tmp_path):
    _, cache, _ = setup
    folder = _with_training_record(setup, tmp_path, (0, N_CONTEXTS - 4))
    with pytest.warns(UserWarning, match="not trained on"):
        result = evaluate(EvalConfig(sae=str(folder), cache=str(cache), n_tokens=20 * CTX, ce_contexts=0,
                                     write=False), progress=False)
    assert result["context_range"] == [N_CONTEXTS - 4, N_CONTEXTS]  # not the 20 contexts asked for
    assert result["n_tokens"] == 4 * (CTX - 1)  # BOS positions dropped


def test_an_explicit_first_context_inside_the_training_contexts_is_refused(setup, tmp_path):
    _, cache, _ = setup
    folder = _with_training_record(setup, tmp_path, (0, N_CONTEXTS - 4))
    with pytest.raises(ValueError, match="first_context 10 .* trained on contexts \\[0, 36\\)"):
        evaluate(EvalConfig(sae=str(folder), cache=str(cache), first_context=10, n_tokens=4 * CTX, ce_contexts=0,
                            write=False), progress=False)
    with pytest.warns(UserWarning, match="training contexts"):
        result = evaluate(EvalConfig(sae=str(folder), cache=str(cache), first_context=10, n_tokens=4 * CTX,
                                     ce_contexts=0, write=False, allow_training_contexts=True), progress=False)
    assert result["context_range"] == [10, 14]


def test_an_sae_trained_on_every_context_has_nothing_held_out(setup, tmp_path):
    _, cache, _ = setup
    folder = _with_training_record(setup, tmp_path, (0, N_CONTEXTS))
    with pytest.raises(ValueError, match="nothing is held out"):
        evaluate(EvalConfig(sae=str(folder), cache=str(cache), n_tokens=4 * CTX, ce_contexts=0, write=False),
                 progress=False)
