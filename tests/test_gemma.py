"""Gemma 3 270M, the packaged real LM (saekit.models.gguf): loading, variants, caching, splicing.

The first test to load it converts the GGUF once (~45 s on 2 cores) into ~/.cache/saekit/models;
every later load reads that folder (~3 s). Each test keeps its contexts short to stay bounded.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from saekit.models import GEMMA_3_270M, GGUFError, load_model
from saekit.models.gguf import guess_tl_name, packaged_gguf_path

pytestmark = pytest.mark.slow
HOOK = "blocks.13.hook_resid_post"
TEXT = "The capital of France is Paris. def add(a, b):\n    return a + b"


@pytest.fixture(scope="module")
def gemma():
    return load_model(GEMMA_3_270M)


@pytest.fixture(scope="module")
def tokens(gemma):
    return gemma.to_tokens(TEXT)  # [1, pos], BOS first


def test_logits_equal_the_hf_models_dequantized_from_the_same_gguf(gemma, tokens):
    from transformers import AutoModelForCausalLM

    path, _ = packaged_gguf_path(GEMMA_3_270M)
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    with torch.no_grad():
        ours, theirs = gemma(tokens), hf(tokens).logits
    del hf
    assert ours.shape == theirs.shape == (1, tokens.shape[1], 262_144)
    assert (ours - theirs).abs().max() < 1e-3
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()


def test_gguf_tokenizer_and_a_sensible_greedy_continuation(gemma, tokens):
    assert tokens[0, 0].item() == gemma.tokenizer.bos_token_id == 2
    assert gemma.tokenizer.decode(tokens[0, 1:]) == TEXT
    out = gemma.generate("The capital of France is", max_new_tokens=12, do_sample=False, verbose=False)
    assert "France" in out[len("The capital of France is"):]  # the base model's greedy: "... of France. It is"


def test_hook_shapes_and_info(gemma, tokens):
    _, cache = gemma.run_with_cache(tokens, names_filter=lambda n: n in (HOOK, "blocks.0.hook_mlp_out"))
    assert cache[HOOK].shape == (1, tokens.shape[1], 640)
    assert cache["blocks.0.hook_mlp_out"].shape == (1, tokens.shape[1], 640)
    info = gemma.saekit_info
    assert (info["source"], info["source_kind"], info["tl_name"]) == (GEMMA_3_270M, "gguf", "google/gemma-3-270m")
    assert (info["n_layers"], info["d_model"], info["d_vocab"]) == (18, 640, 262_144)
    assert len(info["gguf_sha256"]) == 64


def test_init_variants_redraw_what_they_should(gemma, tokens):
    random = load_model(GEMMA_3_270M, init="random", seed=3)
    params = dict(gemma.named_parameters())
    for name, p in random.named_parameters():
        assert not torch.equal(p, params[name]) or p.abs().max() == 0 or name.endswith(".w"), name
    assert random.W_E.std().item() == pytest.approx(0.02, rel=0.05)  # the init scheme, not Gemma's (~1)
    assert torch.equal(random.blocks[5].ln1.w, torch.ones(640))  # RMSNorm scales reset to 1
    again = load_model(GEMMA_3_270M, init="random", seed=3)
    assert torch.equal(again.blocks[2].attn.W_Q, random.blocks[2].attn.W_Q)  # reproducible per seed
    del random, again
    keep = load_model(GEMMA_3_270M, init="random-keep-embeddings", seed=3)
    assert torch.equal(keep.W_E, gemma.W_E) and torch.equal(keep.W_U, gemma.W_U)
    assert not torch.equal(keep.blocks[0].mlp.W_in, gemma.blocks[0].mlp.W_in)
    del keep
    noisy = load_model(GEMMA_3_270M, init="gaussian-embeddings", seed=3)
    _, cache = noisy.run_with_cache(tokens, names_filter="hook_embed")
    embed = cache["hook_embed"]
    assert embed.std().item() == pytest.approx(1.0, abs=0.05)
    assert not torch.allclose(embed, gemma.embed(tokens))
    with pytest.raises(ValueError, match="step-0"):
        load_model(GEMMA_3_270M, init="step0")


def test_splice_with_the_error_term_equals_clean(gemma):
    from saekit.eval.splice import splice_losses
    from saekit.sae import SAEConfig, build_sae

    sae = build_sae(SAEConfig(architecture="topk", d_in=640, d_sae=256, k=16, hook_name=HOOK, seed=0))
    texts = ["def f(x):\n    return x * 2 + 1", "The weather in spring is warm and sunny, and the days grow long"]
    contexts = torch.cat([gemma.to_tokens(t)[:, :10] for t in texts])  # one at a time: the tokenizer pads left
    result = splice_losses(gemma, sae, HOOK, contexts, torch.zeros(640), skip_bos=True)
    assert result["ce_sae_with_error"] == pytest.approx(result["ce_clean"], abs=1e-4)
    assert result["kl_sae_with_error"] == pytest.approx(0.0, abs=1e-4)
    assert result["ce_zero"] > result["ce_clean"] + 1.0  # zeroing layer 13's residual wrecks the model
    assert result["ce_sae"] > result["ce_clean"]  # an untrained SAE loses information


def test_cli_cache_works_offline(tmp_path):
    out = tmp_path / "cache"
    cmd = [sys.executable, "-m", "saekit", "cache", "--model", GEMMA_3_270M, "--hooks",
           "blocks.6.hook_resid_post", "--n-tokens", "8192", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["n_tokens"] == 8192
    assert manifest["hooks"] == {"blocks.6.hook_resid_post": 640}
    assert manifest["model"]["source"] == GEMMA_3_270M
    from saekit.data import ActivationStore

    x = next(iter(ActivationStore(str(out), "blocks.6.hook_resid_post", batch_size=512, shuffle=False)))
    assert x.shape == (512, 640) and torch.isfinite(x).all()
    assert x.norm(dim=-1).mean() > 100  # Gemma's residual stream is large (~thousands), not noise


def _write_gguf(path: Path, architecture: str, name: str = "toy") -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name(name)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unsupported_gguf_architecture_is_a_clear_error_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEKIT_MODEL_CACHE", str(tmp_path / "models"))
    path = _write_gguf(tmp_path / "toy.gguf", "rwkv-toy")
    from saekit.cli import main

    with pytest.raises(GGUFError, match=r"toy\.gguf.*'rwkv-toy'.*not one transformers can dequantize"):
        load_model(str(path))
    assert main(["cache", "--model", str(path), "--hooks", "blocks.0.hook_resid_post", "--n-tokens", "64",
                 "--out", str(tmp_path / "c")]) == 2
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
    with pytest.raises(FileNotFoundError, match="nothing.gguf"):
        load_model(str(tmp_path / "nothing.gguf"))


def test_tl_name_from_gguf_metadata(tmp_path):
    assert guess_tl_name(tmp_path, {"general.basename": "gemma-3", "general.size_label": "270M"}) \
        == "google/gemma-3-270m"
    with pytest.raises(GGUFError, match="--tl-name"):
        guess_tl_name(tmp_path / "x.gguf", {"general.architecture": "llama", "general.name": "My Private Model"})
