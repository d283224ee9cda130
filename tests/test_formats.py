"""saekit.load_sae reads SAEs built and saved by the installed sae-lens (every architecture it has an
inference class for) with outputs equal to sae-lens's; the registry path runs the same conversion;
export to SAELens loads in sae-lens; pickles and contradictory cfg.json files are refused with errors
naming the file or the field. All offline (sparsify: test_formats_sparsify.py)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from saekit.sae import SAEConfig, build_sae, save_sae
from saekit.sae.io import sae_from_tensors
from saekit.sae.formats import UnsafeFileError, export_sae, load_sae
from saekit.sae.saelens_format import convert_saelens, from_saelens_sae

sae_lens = pytest.importorskip("sae_lens")
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig  # noqa: E402
from sae_lens.saes.sae import SAEMetadata  # noqa: E402

D_IN, D_SAE, K = 16, 48, 5
HOOK = "blocks.1.hook_resid_post"
SAELENS_CLASSES = {"standard": "StandardSAE", "topk": "TopKSAE", "jumprelu": "JumpReLUSAE", "gated": "GatedSAE"}
# (sae-lens architecture, config fields): every architecture sae-lens has an inference class for
# that saekit loads, with each convention saekit has to map (apply_b_dec_to_input, decoder-norm rescaling).
SAELENS_CASES = [
    ("standard", {}), ("standard", {"apply_b_dec_to_input": False}),
    ("topk", {"k": K}), ("topk", {"k": K, "rescale_acts_by_decoder_norm": True, "apply_b_dec_to_input": False}),
    ("jumprelu", {}), ("jumprelu", {"apply_b_dec_to_input": False}),
    ("gated", {}), ("gated", {"apply_b_dec_to_input": False}),
]
CASE_IDS = [f"{arch}-{'-'.join(fields) or 'default'}" for arch, fields in SAELENS_CASES]


def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    """Random weights everywhere (biases included) so that every term of each convention counts."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            scale = 0.3 if param.ndim == 2 else 0.1
            param.copy_(torch.randn(param.shape, generator=gen) * scale)
        if hasattr(module, "threshold") and isinstance(module.threshold, torch.Tensor):
            threshold = torch.rand(module.threshold.shape, generator=gen) * 0.4
            threshold[:4] = -0.1  # sae-lens applies relu before its threshold: saekit must agree here too
            module.threshold.copy_(threshold)


def saelens_sae(architecture: str, seed: int = 0, **fields):
    cls = getattr(sae_lens, SAELENS_CLASSES[architecture])
    cfg_cls = getattr(sae_lens, SAELENS_CLASSES[architecture] + "Config")
    cfg = cfg_cls(d_in=D_IN, d_sae=D_SAE, metadata=SAEMetadata(hook_name=HOOK, model_name="tiny"), **fields)
    sae = cls(cfg)
    randomize_(sae, seed)
    return sae


def inputs(seed: int = 1, n: int = 64) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)) * 2


def assert_same_outputs(ours, theirs_encode, theirs_decode, x: torch.Tensor) -> None:
    """encode(x) and decode(their latents) of ours equal theirs to 1e-5, with some latents active."""
    with torch.no_grad():
        latents = theirs_encode(x)
        assert 0 < int((latents > 0).sum()) < latents.numel()
        assert torch.allclose(ours.encode(x), latents, atol=1e-5)
        assert torch.allclose(ours.decode(latents), theirs_decode(latents), atol=1e-5)


# --- sae-lens -> saekit -------------------------------------------------------------------------------

@pytest.mark.parametrize("architecture,fields", SAELENS_CASES, ids=CASE_IDS)
def test_sae_lens_folder_loads_with_equal_encode_and_decode(architecture, fields, tmp_path):
    theirs = saelens_sae(architecture, **fields)
    theirs.save_model(tmp_path / "sae")
    ours = load_sae(tmp_path / "sae")
    assert ours.cfg.hook_name == HOOK and ours.cfg.d_sae == D_SAE
    assert ours.cfg.architecture == {"standard": "relu"}.get(architecture, architecture)
    assert_same_outputs(ours, theirs.encode, theirs.decode, inputs())


@pytest.mark.parametrize("architecture,fields", SAELENS_CASES, ids=CASE_IDS)
def test_in_memory_sae_lens_object_converts_with_equal_outputs(architecture, fields):
    theirs = saelens_sae(architecture, seed=3, **fields)
    ours = from_saelens_sae(theirs)
    assert_same_outputs(ours, theirs.encode, theirs.decode, inputs(seed=4))
    assert load_sae(theirs).cfg == ours.cfg  # load_sae accepts the object too


def batchtopk_training_sae():
    sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K))
    randomize_(sae, seed=5)
    sae.topk_threshold = torch.tensor(0.3, dtype=torch.double)
    return sae


def test_sae_lens_batchtopk_saved_for_inference_loads_as_its_jumprelu(tmp_path):
    training = batchtopk_training_sae()  # rescale_acts_by_decoder_norm is on by default: sae-lens folds it
    training.save_inference_model(tmp_path / "sae")
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "sae")
    ours = load_sae(tmp_path / "sae")
    assert ours.cfg.architecture == "jumprelu"
    assert_same_outputs(ours, theirs.encode, theirs.decode, inputs())
    assert_same_outputs(from_saelens_sae(training), theirs.encode, theirs.decode, inputs(seed=2))


def test_registry_id_goes_through_sae_lens_from_pretrained(monkeypatch):
    theirs = saelens_sae("jumprelu", seed=7)
    calls = []

    def from_pretrained(release, sae_id, **kwargs):
        calls.append((release, sae_id))
        return theirs

    monkeypatch.setattr(sae_lens.SAE, "from_pretrained", from_pretrained)
    ours = load_sae("gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71")
    assert calls == [("gemma-scope-2b-pt-res", "layer_20/width_16k/average_l0_71")]
    assert_same_outputs(ours, theirs.encode, theirs.decode, inputs())
    assert load_sae("saelens:custom-release/some/id").cfg == ours.cfg and calls[-1] == ("custom-release", "some/id")


def test_expected_average_norm_folds_a_given_factor_and_is_refused_without_one():
    theirs = saelens_sae("topk", k=K, normalize_activations="expected_average_only_in")
    raw, state = theirs.cfg.to_dict(), theirs.state_dict()
    with pytest.raises(ValueError, match="'normalize_activations'.*expected_average_only_in"):
        convert_saelens(raw, state)
    ours = sae_from_tensors(*convert_saelens(raw, state, norm_scaling_factor=2.5))
    theirs.fold_activation_norm_scaling_factor(2.5)
    assert_same_outputs(ours, theirs.encode, theirs.decode, inputs())


def test_per_token_normalization_is_refused_naming_the_field(tmp_path):
    saelens_sae("standard", normalize_activations="constant_norm_rescale").save_model(tmp_path / "sae")
    with pytest.raises(ValueError, match="'normalize_activations' is 'constant_norm_rescale'"):
        load_sae(tmp_path / "sae")


# --- contradictory or unknown cfg.json --------------------------------------------------------------

def edit_cfg(folder, **changes) -> None:
    raw = json.loads((folder / "cfg.json").read_text())
    for key, value in changes.items():
        if value is None:
            raw.pop(key)
        else:
            raw[key] = value
    (folder / "cfg.json").write_text(json.dumps(raw))


@pytest.mark.parametrize("changes,message", [
    ({"d_sae": 96}, "d_sae = 96"),
    ({"architecture": "transcoder"}, "'d_out' is missing"),  # a transcoder config needs its output width
    ({"architecture": "mystery"}, "'architecture' is 'mystery'"),
    ({"d_in": None}, "'d_in' is missing"),
    ({"dtype": "float8"}, "'dtype' is 'float8'"),
])
def test_contradictory_sae_lens_cfg_is_an_error_naming_the_field(tmp_path, changes, message):
    saelens_sae("standard").save_model(tmp_path / "sae")
    edit_cfg(tmp_path / "sae", **changes)
    with pytest.raises(ValueError, match=message):
        load_sae(tmp_path / "sae")


# --- export -------------------------------------------------------------------------------------------

def saekit_sae(architecture: str, seed: int = 0):
    sae = build_sae(SAEConfig(architecture=architecture, d_in=D_IN, d_sae=D_SAE, k=K, seed=seed, hook_name=HOOK,
                              normalize_activations="none"))
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(D_SAE, generator=torch.Generator().manual_seed(seed)) * 0.3)
        sae.b_dec.copy_(torch.randn(D_IN, generator=torch.Generator().manual_seed(seed + 1)) * 0.3)
        if architecture == "jumprelu":
            sae.log_threshold.copy_(torch.rand(D_SAE, generator=torch.Generator().manual_seed(seed)).log())
        if architecture == "batchtopk":
            sae.threshold.fill_(0.4)
    return sae.eval()


@pytest.mark.parametrize("architecture", ["relu", "topk", "batchtopk", "jumprelu", "gated"])
def test_export_to_saelens_loads_in_sae_lens_with_equal_outputs(architecture, tmp_path):
    ours = from_saelens_sae(saelens_sae("gated")) if architecture == "gated" else saekit_sae(architecture)
    save_sae(ours, tmp_path / "ours")
    export_sae(tmp_path / "ours", "saelens", tmp_path / "exported")
    assert "saekit" not in json.loads((tmp_path / "exported" / "cfg.json").read_text())
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "exported")
    assert theirs.cfg.metadata.hook_name == HOOK
    assert_same_outputs(ours, theirs.encode, theirs.decode, inputs())
    assert_same_outputs(load_sae(tmp_path / "exported"), theirs.encode, theirs.decode, inputs(seed=3))


# --- untrusted files ----------------------------------------------------------------------------------

def pickled_folder(folder):
    theirs = saelens_sae("jumprelu")
    theirs.save_model(folder)
    torch.save(theirs.state_dict(), folder / "sae_weights.pt")
    (folder / "sae_weights.safetensors").unlink()
    return theirs


def test_pickle_only_folder_is_refused_naming_the_file_and_the_flag(tmp_path, capsys):
    from saekit.cli import main

    pickled_folder(tmp_path / "sae")
    with pytest.raises(UnsafeFileError, match=r"'sae_weights.pt'.*allow_pickle=True \(CLI: --allow-pickle\)"):
        load_sae(tmp_path / "sae")
    assert main(["export", str(tmp_path / "sae"), str(tmp_path / "out"), "--to", "saelens"]) == 2
    assert "sae_weights.pt" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_pickle_is_read_weights_only_when_allowed(tmp_path):
    theirs = pickled_folder(tmp_path / "sae")
    assert_same_outputs(load_sae(tmp_path / "sae", allow_pickle=True), theirs.encode, theirs.decode, inputs())


def test_pickle_next_to_safetensors_is_never_opened(tmp_path):
    theirs = saelens_sae("topk", k=K)
    theirs.save_model(tmp_path / "sae")
    (tmp_path / "sae" / "optimizer.pt").write_bytes(b"not even a pickle")  # would fail if opened
    with pytest.warns(UserWarning, match=r"not opening pickle file\(s\) \['optimizer.pt'\]"):
        ours = load_sae(tmp_path / "sae")
    assert_same_outputs(ours, theirs.encode, theirs.decode, inputs())


# --- one interface for every stage ------------------------------------------------------------------

def test_scoring_run_on_a_registry_id_writes_under_runs_published(tmp_path, monkeypatch, capsys):
    from saekit.cli import main
    from saekit.data.cache import write_array_cache

    theirs = saelens_sae("jumprelu")
    theirs.cfg.metadata.model_from_pretrained_kwargs = {"center_writing_weights": True}
    monkeypatch.setattr(sae_lens.SAE, "from_pretrained", lambda release, sae_id, **kwargs: theirs)
    acts = torch.randn(8, 16, D_IN, generator=torch.Generator().manual_seed(0))
    write_array_cache(tmp_path / "cache", {HOOK: acts}, contexts_per_shard=4)
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="center_writing_weights"):
        assert main(["eval", f"gpt2-small-res-jb/{HOOK}", "--cache", "cache", "--ce-contexts", "0",
                     "--device", "cpu"]) == 0
    result = json.loads((tmp_path / "runs/published/gpt2-small-res-jb" / HOOK / "eval.json").read_text())
    x = acts.reshape(-1, D_IN)
    with torch.no_grad():
        recon = theirs.decode(theirs.encode(x))
    assert result["fvu"] == pytest.approx(float((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()), rel=1e-4)
    assert "fvu" in capsys.readouterr().out


def test_saekit_load_sae_is_importable_without_loading_the_sae_stage():
    import subprocess
    import sys

    code = ("import sys, saekit; assert 'saekit.sae' not in sys.modules; "
            "from saekit import load_sae; assert load_sae.__module__ == 'saekit.sae.formats'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such SAE folder"):
        load_sae(str(tmp_path / "nope"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(FileNotFoundError, match="cfg.json not found"):
            load_sae(tmp_path)
