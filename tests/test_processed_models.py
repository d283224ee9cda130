"""Models loaded the way an SAE was trained (saekit.models.processing): TransformerLens weight
processing (fold_ln, center_writing_weights, ...) read from an SAE's SAELens metadata, applied by
load_model, recorded in the cache manifest and refused when a cache was made otherwise. All offline,
on a small GPT-2-shaped random model (LayerNorm, gelu_new, learned positions)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_local_model_dir
from saekit.data import CacheConfig, cache_activations, read_manifest
from saekit.data.shards import CacheError, shard_path
from saekit.models import (FROM_PRETRAINED_DEFAULTS, load_model, processing_flags, reload_model,
                           resolve_model_processing)
from saekit.sae.saelens_format import model_processing_of, sae_model_processing

HOOK, D_MODEL, D_SAE, CTX = "blocks.1.hook_resid_pre", 64, 32, 16
CENTRED = ("fold_ln", "center_writing_weights")
SMALL_COLLECT = {"window": 12, "n_top": 4, "n_quantiles": 2, "n_explain": 2, "n_test": 2, "reservoir": 8,
                 "n_random_negatives": 2, "n_hard_negatives": 0}


def gpt2_shaped_model(d_vocab: int):
    """A random GPT-2-shaped HookedTransformer whose residual stream has a clear per-token mean over
    d_model (as GPT-2's has): LayerNorm scales and biases away from 1 and 0, an offset per token row."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=D_MODEL, n_heads=4, d_head=D_MODEL // 4, d_mlp=4 * D_MODEL,
                                  d_vocab=d_vocab, n_ctx=64, act_fn="gelu_new", normalization_type="LN",
                                  positional_embedding_type="standard", seed=0)
    model = HookedTransformer(cfg)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".w") and "ln" in name:
                param.copy_(1 + 0.2 * torch.randn(param.shape, generator=generator))
            elif name.endswith(".b") and "ln" in name or name.startswith("blocks") and ".b_" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
        model.embed.W_E.add_(torch.randn(d_vocab, 1, generator=generator))
        model.pos_embed.W_pos.add_(0.5 * torch.randn(cfg.n_ctx, 1, generator=generator))
    return model


def write_saelens_folder(path, model_dir, kwargs: dict | None, top_level: bool = False):
    """A SAELens-format SAE folder (cfg.json + sae_weights.safetensors) for HOOK of the model folder;
    `kwargs` is its model_from_pretrained_kwargs (None: the key is absent), in metadata or, as older
    sae-lens wrote it, at the top level."""
    path.mkdir(parents=True)
    metadata = {"hook_name": HOOK, "model_name": str(model_dir)}
    cfg = {"architecture": "standard", "d_in": D_MODEL, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "metadata": metadata}
    if kwargs is not None:
        (cfg if top_level else metadata)["model_from_pretrained_kwargs"] = kwargs
    (path / "cfg.json").write_text(json.dumps(cfg))
    generator = torch.Generator().manual_seed(0)
    save_file({"W_enc": torch.randn(D_MODEL, D_SAE, generator=generator) / D_MODEL ** 0.5,
               "b_enc": torch.zeros(D_SAE), "W_dec": torch.randn(D_SAE, D_MODEL, generator=generator) / D_MODEL ** 0.5,
               "b_dec": torch.zeros(D_MODEL)}, str(path / "sae_weights.safetensors"))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """{root, model, data, processed (SAE trained on a centred model), plain, off (kwargs say false)}."""
    root = make_local_model_dir(tmp_path_factory.mktemp("processed"), make_model=gpt2_shaped_model)
    kwargs = {"center_writing_weights": True, "fold_ln": True, "center_unembed": False}
    return {"root": root, "model": root / "model", "data": root / "data.jsonl",
            "processed": write_saelens_folder(root / "sae-processed", root / "model", kwargs),
            "plain": write_saelens_folder(root / "sae-plain", root / "model", None),
            "off": write_saelens_folder(root / "sae-off", root / "model", {"center_writing_weights": False})}


def resid_mean(acts: torch.Tensor) -> float:
    """The mean over tokens of |mean over d_model| of activations [..., d_model]."""
    return float(acts.mean(-1).abs().mean())


def test_processing_centres_the_residual_stream_and_keeps_the_output(world):
    plain = load_model(world["model"])
    centred = load_model(world["model"], processing=CENTRED)
    assert "processing" not in plain.saekit_info and centred.saekit_info["processing"] == list(CENTRED)
    assert centred.cfg.normalization_type == "LNPre" and plain.cfg.normalization_type == "LN"
    tokens = torch.randint(1, plain.cfg.d_vocab, (4, CTX), generator=torch.Generator().manual_seed(0))
    logits_plain, cache_plain = plain.run_with_cache(tokens)
    logits_centred, cache_centred = centred.run_with_cache(tokens)
    a, b = cache_plain[HOOK], cache_centred[HOOK]
    assert resid_mean(a) > 0.3 and resid_mean(b) < 1e-5  # measured: 0.7 vs 1e-7
    assert (a - b).norm() / a.norm() > 0.3  # a real difference at the SAE's hook ...
    torch.testing.assert_close(b, a - a.mean(-1, keepdim=True), atol=1e-4, rtol=0)  # ... exactly the mean
    torch.testing.assert_close(logits_centred.log_softmax(-1), logits_plain.log_softmax(-1), atol=1e-4, rtol=0)


def test_processing_specs_parse_and_name_the_field():
    assert processing_flags(None) == processing_flags("none") == processing_flags({}) == ()
    assert processing_flags("center_writing_weights, fold_ln") == CENTRED  # TransformerLens's order
    assert processing_flags({"fold_ln": True, "center_writing_weights": False}) == ("fold_ln",)
    assert processing_flags("from_pretrained") == FROM_PRETRAINED_DEFAULTS
    with pytest.raises(ValueError, match=r"CacheConfig.model_processing.*\['fold_lm'\]"):
        processing_flags("fold_lm", "CacheConfig.model_processing")
    with pytest.raises(ValueError, match="'auto'.*no SAE"):
        processing_flags("auto")


def test_the_sae_metadata_says_how_its_model_was_processed(world, tmp_path):
    assert sae_model_processing(str(world["processed"])) == CENTRED
    assert sae_model_processing(str(world["plain"])) == ()
    assert sae_model_processing(str(world["off"])) == ()
    old = write_saelens_folder(tmp_path / "old", world["model"], {"center_writing_weights": True}, top_level=True)
    assert sae_model_processing(str(old)) == ("center_writing_weights",)
    assert model_processing_of({"metadata": {"model_from_pretrained_kwargs": {"n_devices": 1}}}) == ()
    assert resolve_model_processing("auto", str(world["processed"])) == CENTRED
    assert resolve_model_processing("none", str(world["processed"])) == ()  # the override wins
    assert resolve_model_processing("center_writing_weights", str(world["plain"])) == ("center_writing_weights",)


def test_registry_releases_of_centred_gpt2_saes_say_so():
    pytest.importorskip("sae_lens")
    # pretrained_saes.yaml: config_overrides.model_from_pretrained_kwargs.center_writing_weights: true
    for release in ("gpt2-small-res-jb", "gpt2-small-res-jb-feature-splitting"):
        assert sae_model_processing(f"{release}/blocks.8.hook_resid_pre") == ("center_writing_weights",)
    assert sae_model_processing("gpt2-small-resid-post-v5-32k/blocks.8.hook_resid_post") == ()


def test_a_sae_lens_object_carries_its_processing(world):
    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens.saes.sae import SAEMetadata

    from saekit.sae.saelens_format import from_saelens_sae

    cfg = sae_lens.StandardSAEConfig(d_in=D_MODEL, d_sae=D_SAE, metadata=SAEMetadata(
        hook_name=HOOK, model_from_pretrained_kwargs={"center_writing_weights": True}))
    with pytest.warns(UserWarning, match="center_writing_weights"):
        ours = from_saelens_sae(sae_lens.StandardSAE(cfg))
    assert ours.model_processing == ("center_writing_weights",)
    assert sae_model_processing("not-a-path-or-release", ours) == ("center_writing_weights",)  # the object wins


def cache_config(out, model, processing: str) -> CacheConfig:
    return CacheConfig(out=str(out), model=str(model), dataset=str(model.parent / "data.jsonl"), hooks=[HOOK],
                       n_tokens=8 * CTX, ctx_len=CTX, shard_tokens=4 * CTX, model_processing=processing, device="cpu")


def test_the_manifest_records_processing_and_a_cache_made_otherwise_is_refused(world, tmp_path):
    out = tmp_path / "cache"
    manifest = cache_activations(cache_config(out, world["model"], "center_writing_weights,fold_ln"), progress=False)
    assert manifest["model_processing"] == list(CENTRED) and manifest["model"]["processing"] == list(CENTRED)
    acts = load_file(str(shard_path(out, 0)))[f"acts/{HOOK}"]
    assert resid_mean(acts) < 1e-5
    with pytest.raises(CacheError, match=r"model_processing=\['fold_ln', 'center_writing_weights'\].*"
                                         r"model_processing=\[\]"):
        cache_activations(cache_config(out, world["model"], "none"), progress=False)
    assert cache_activations(cache_config(out, world["model"], "fold_ln,center_writing_weights"),
                             progress=False)["complete"]  # same processing: the complete cache is reused
    reloaded = reload_model(manifest["model"])  # later stages (eval, explain, score) get the same model
    assert reloaded.saekit_info["processing"] == list(CENTRED) and reloaded.cfg.normalization_type == "LNPre"
    with pytest.raises(ValueError, match="no SAE"):
        cache_activations(cache_config(tmp_path / "auto", world["model"], "auto"), progress=False)


def test_a_cache_written_before_processing_was_recorded_resumes_as_unprocessed(world, tmp_path):
    out = tmp_path / "cache"
    manifest = cache_activations(cache_config(out, world["model"], "none"), progress=False)
    assert manifest["model_processing"] == [] and "processing" not in manifest["model"]
    assert resid_mean(load_file(str(shard_path(out, 0)))[f"acts/{HOOK}"]) > 0.3
    old = json.loads((out / "manifest.json").read_text())
    del old["model_processing"]
    (out / "manifest.json").write_text(json.dumps(old))
    assert cache_activations(cache_config(out, world["model"], "none"), progress=False)["complete"]
    with pytest.raises(CacheError, match="model_processing"):
        cache_activations(cache_config(out, world["model"], "center_writing_weights"), progress=False)


@pytest.mark.parametrize("which, processing", [("processed", CENTRED), ("plain", ()), ("off", ())])
def test_collect_caches_the_model_as_the_sae_was_trained(world, tmp_path, which, processing):
    from saekit.interp import CollectConfig, collect_records

    records = collect_records(CollectConfig(sae=str(world[which]), model=str(world["model"]),
                                            dataset=str(world["data"]), out=str(tmp_path / "records"),
                                            n_tokens=16 * 128, n_latents=3, device="cpu", **SMALL_COLLECT),
                              progress=False)
    manifest = read_manifest(records / "cache")
    assert manifest["model_processing"] == list(processing)
    acts = load_file(str(shard_path(records / "cache", 0)))[f"acts/{HOOK}"]
    assert (resid_mean(acts) < 1e-5) == bool(processing)


def test_score_published_processes_the_model_and_refuses_a_cache_made_otherwise(world, tmp_path):
    from saekit.interp.pipeline import PublishedConfig, score_published

    small = {"collect": SMALL_COLLECT, "score": {"n_activating": 2, "n_negatives": 2, "min_activating": 1,
                                                 "n_boot": 20}}
    run = tmp_path / "run"
    result = score_published(PublishedConfig(sae=str(world["processed"]), dataset=str(world["data"]),
                                             n_tokens=16 * CTX, ctx_len=CTX, out=str(run), n_latents=2,
                                             device="cpu", **small), progress=False)
    assert result["model_processing"] == list(CENTRED)
    assert read_manifest(run / "cache")["model_processing"] == list(CENTRED)
    assert json.loads((run / "published.json").read_text())["model_processing"] == list(CENTRED)
    # the run's own cache, asked for unprocessed: the cache's identity check refuses, naming the field
    with pytest.raises(CacheError, match="model_processing"):
        score_published(PublishedConfig(sae=str(world["processed"]), dataset=str(world["data"]),
                                        n_tokens=16 * CTX, ctx_len=CTX, out=str(run), n_latents=2,
                                        model_processing="none", device="cpu", **small), progress=False)
    # an existing cache of an unprocessed model, given to an SAE trained on a centred one
    plain_cache = tmp_path / "plain-cache"
    cache_activations(cache_config(plain_cache, world["model"], "none"), progress=False)
    with pytest.raises(ValueError, match=r"PublishedConfig.model_processing='auto'"):
        score_published(PublishedConfig(sae=str(world["processed"]), cache=str(plain_cache), n_tokens=8 * CTX,
                                        out=str(tmp_path / "run2"), n_latents=2, device="cpu", **small),
                        progress=False)
    assert np.isfinite(result["total_seconds"])
