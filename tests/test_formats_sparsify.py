"""saekit.load_sae reads EleutherAI sparsify's SAEs (single, multi-hookpoint, hub) with outputs equal to
sparsify's own; module names map to TransformerLens hooks; export to sparsify loads in sparsify; eval
accepts a sparsify folder. All offline, with the installed eai-sparsify."""

from __future__ import annotations

import json

import pytest
import torch

from saekit.sae import save_sae
from saekit.sae.formats import export_sae, load_sae, output_dir_for
from saekit.sae.sparsify_format import tl_hook_name
from test_formats import D_IN, D_SAE, HOOK, K, assert_same_outputs, edit_cfg, inputs, randomize_, saekit_sae

sparsify = pytest.importorskip("sparsify")


# --- sparsify -> saekit -----------------------------------------------------------------------------

def sparsify_sae(seed: int = 0):
    torch.manual_seed(seed)
    coder = sparsify.SparseCoder(D_IN, sparsify.SparseCoderConfig(num_latents=D_SAE, k=K))
    randomize_(coder, seed)
    return coder


def sparsify_outputs(coder):
    """sparsify's encode as dense [tokens, d_sae] latents, and its decode of dense latents."""
    def encode(x):
        out = coder.encode(x)
        return torch.zeros(x.shape[0], D_SAE).scatter_(1, out.top_indices, out.top_acts)

    def decode(latents):
        acts, indices = latents.topk(K, dim=1)
        return coder.decode(acts, indices)
    return encode, decode


def test_sparsify_folder_loads_as_topk_with_equal_outputs(tmp_path):
    coder = sparsify_sae()
    coder.save_to_disk(tmp_path / "layers.3.mlp")
    ours = load_sae(tmp_path / "layers.3.mlp")
    assert (ours.cfg.architecture, ours.cfg.k, ours.cfg.hook_name) == ("topk", K, "blocks.3.hook_mlp_out")
    assert_same_outputs(ours, *sparsify_outputs(coder), inputs())


def test_bfloat16_checkpoint_keeps_its_dtype_or_is_cast_on_request(tmp_path):
    coder = sparsify_sae().to(torch.bfloat16)
    coder.save_to_disk(tmp_path / "layers.2")
    assert load_sae(tmp_path / "layers.2").W_enc.dtype == torch.bfloat16
    ours = load_sae(tmp_path / "layers.2", dtype="float32")
    assert ours.cfg.dtype == "float32" and ours.W_dec.dtype == torch.float32
    assert torch.equal(ours.W_dec, coder.W_dec.float()) and torch.equal(ours.W_enc, coder.encoder.weight.float().t())


def multi_hookpoint_checkpoint(root):
    coders = {name: sparsify_sae(seed) for seed, name in enumerate(["layers.0", "layers.1"])}
    for name, coder in coders.items():
        coder.save_to_disk(root / name)
    return coders


def test_multi_hookpoint_sparsify_checkpoint_needs_a_hookpoint_by_module_or_hook_name(tmp_path):
    coders = multi_hookpoint_checkpoint(tmp_path / "ckpt")
    with pytest.raises(ValueError, match=r"hookpoint.*layers\.0 \(blocks\.0\.hook_resid_post\), layers\.1"):
        load_sae(tmp_path / "ckpt")
    by_module = load_sae(tmp_path / "ckpt", hookpoint="layers.1")
    assert by_module.cfg.hook_name == "blocks.1.hook_resid_post"
    assert_same_outputs(by_module, *sparsify_outputs(coders["layers.1"]), inputs())
    by_hook = load_sae(tmp_path / "ckpt", hookpoint="blocks.0.hook_resid_post")
    assert_same_outputs(by_hook, *sparsify_outputs(coders["layers.0"]), inputs())
    with pytest.raises(ValueError, match="no SAE for hookpoint 'layers.7'"):
        load_sae(tmp_path / "ckpt", hookpoint="layers.7")


def test_sparsify_hub_repo_downloads_only_the_hookpoint_then_loads_the_folder(tmp_path, monkeypatch):
    import huggingface_hub

    coders = multi_hookpoint_checkpoint(tmp_path / "snapshot")
    calls = []

    def snapshot_download(repo, allow_patterns=None, **kwargs):
        calls.append((repo, allow_patterns))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    ours = load_sae("EleutherAI/sae-tiny-test/layers.1")
    assert calls == [("EleutherAI/sae-tiny-test", ["layers.1/*"])]
    assert_same_outputs(ours, *sparsify_outputs(coders["layers.1"]), inputs())
    assert output_dir_for("EleutherAI/sae-tiny-test/layers.1").as_posix() == \
        "runs/published/EleutherAI/sae-tiny-test/layers.1"


@pytest.mark.parametrize("changes,message", [
    ({"num_latents": 96}, "'num_latents' gives d_sae = 96"),
    ({"d_in": 8}, "'d_in' is 8"),
    ({"k": 500}, "'k' must be"),
    ({"skip_connection": True}, "'skip_connection' is true"),  # on an autoencoder (transcoders: test_arch.py)
    ({"activation": "groupmax"}, "'activation'"),
])
def test_contradictory_sparsify_cfg_is_an_error_naming_the_field(tmp_path, changes, message):
    sparsify_sae().save_to_disk(tmp_path / "layers.0")
    edit_cfg(tmp_path / "layers.0", **changes)
    with pytest.raises(ValueError, match=message):
        load_sae(tmp_path / "layers.0")


@pytest.mark.parametrize("module,hook", [
    ("h.4", "blocks.4.hook_resid_post"), ("transformer.h.4.attn", "blocks.4.hook_attn_out"),
    ("h.4.mlp", "blocks.4.hook_mlp_out"), ("layers.12", "blocks.12.hook_resid_post"),
    ("gpt_neox.layers.2.attention", "blocks.2.hook_attn_out"), ("layers.2.mlp", "blocks.2.hook_mlp_out"),
    ("model.layers.9.self_attn", "blocks.9.hook_attn_out"), ("layers.6/seed1", "blocks.6.hook_resid_post"),
    ("embed_in", "hook_embed"),
])
def test_sparsify_module_names_map_to_transformer_lens_hooks(module, hook):
    assert tl_hook_name(module) == hook


def test_unknown_module_name_is_kept_with_a_warning():
    with pytest.warns(UserWarning, match="not in saekit's module-name table"):
        assert tl_hook_name("layers.3.block_sparse_moe") == "layers.3.block_sparse_moe"



# --- export ---

def test_export_to_sparsify_loads_in_sparsify_with_equal_outputs_and_back(tmp_path):
    ours = saekit_sae("topk")
    save_sae(ours, tmp_path / "ours")
    export_sae(tmp_path / "ours", "sparsify", tmp_path / "layers.1")
    theirs = sparsify.SparseCoder.load_from_disk(tmp_path / "layers.1")
    assert (theirs.cfg.k, theirs.num_latents) == (K, D_SAE)
    assert_same_outputs(ours, *sparsify_outputs(theirs), inputs())
    back = load_sae(tmp_path / "layers.1")
    assert back.cfg.hook_name == HOOK
    assert_same_outputs(back, *sparsify_outputs(theirs), inputs(seed=2))


def test_export_to_sparsify_refuses_non_topk_and_the_cli_says_why(tmp_path, capsys):
    from saekit.cli import main

    save_sae(saekit_sae("relu"), tmp_path / "relu")
    with pytest.raises(ValueError, match="TopK only"):
        export_sae(tmp_path / "relu", "sparsify", tmp_path / "out")
    assert main(["export", str(tmp_path / "relu"), str(tmp_path / "out"), "--to", "sparsify"]) == 2
    assert "TopK only" in capsys.readouterr().err
    save_sae(saekit_sae("topk"), tmp_path / "topk")
    assert main(["export", str(tmp_path / "topk"), str(tmp_path / "out"), "--to", "sparsify"]) == 0
    assert sparsify.SparseCoder.load_from_disk(tmp_path / "out").cfg.k == K



# --- eval ---

def test_eval_reads_a_sparsify_folder_and_writes_next_to_it(tmp_path):
    from saekit.data.cache import write_array_cache
    from saekit.eval import EvalConfig, evaluate

    coder = sparsify_sae()
    coder.save_to_disk(tmp_path / "layers.1")
    acts = torch.randn(8, 16, D_IN, generator=torch.Generator().manual_seed(0))
    write_array_cache(tmp_path / "cache", {"blocks.1.hook_resid_post": acts}, contexts_per_shard=4)
    result = evaluate(EvalConfig(sae=str(tmp_path / "layers.1"), cache=str(tmp_path / "cache"), ce_contexts=0,
                                 n_tokens=8 * 16, device="cpu"), progress=False)
    x = acts.reshape(-1, D_IN)
    encode, decode = sparsify_outputs(coder)
    with torch.no_grad():
        recon = decode(encode(x))
    fvu = float((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert result["fvu"] == pytest.approx(fvu, rel=1e-4)
    assert json.loads((tmp_path / "layers.1" / "eval.json").read_text())["hook_name"] == "blocks.1.hook_resid_post"
