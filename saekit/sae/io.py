"""Save and load an SAE as a folder: `cfg.json` + `sae_weights.safetensors`, SAELens's layout.

cfg.json holds SAELens's inference keys at the top level (architecture, d_in, d_sae, dtype,
apply_b_dec_to_input, normalize_activations, k for topk, metadata.hook_name), so that
`sae_lens.SAE.load_from_disk` reads the folder, plus saekit's own `format_version` and the full
`SAEConfig` under "saekit". Weights are W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in],
b_dec [d_in] and, for jumprelu, batchtopk and matryoshka_batchtopk, threshold [d_sae]. Transcoders:
W_dec [d_sae, d_out], b_dec [d_out], W_skip [d_out, d_in] with a skip connection, and SAELens's
transcoder architecture names (saekit/sae/transcoder.py).

Saving folds the input normalization into the weights (weights.folded_tensors), so a saved SAE
works on raw activations. `load_sae_dir` also reads SAELens folders of the standard, topk, jumprelu
and gated architectures (their conventions mapped by saekit/sae/saelens_format.py); gated SAEs are
saved with SAELens's gated tensors (W_enc, b_gate, r_mag, b_mag, W_dec, b_dec). Other sources
(sparsify folders, sae-lens's registry, the hub): `saekit.sae.formats.load_sae`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from saekit.config import build_config, config_to_dict
from saekit.sae.base import SAE
from saekit.sae.build import build_sae
from saekit.sae.config import SAEConfig
from saekit.sae.weights import folded_config, folded_tensors, output_scale

FORMAT_VERSION = 1
CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
# saekit architecture -> the SAELens inference architecture it is saved as.
SAELENS_ARCHITECTURE = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu",
                       "gated": "gated", "matryoshka_batchtopk": "jumprelu"}
# Transcoders: (saekit architecture, skip_connection) -> SAELens's; a topk transcoder has none
# (sae-lens has no top-k transcoder class), its cfg.json says "topk_transcoder" and only saekit reads it.
SAELENS_TRANSCODER = {("relu", False): "transcoder", ("relu", True): "skip_transcoder",
                      **{(a, s): "jumprelu_skip_transcoder" if s else "jumprelu_transcoder"
                         for a in ("jumprelu", "batchtopk", "matryoshka_batchtopk") for s in (False, True)}}
FROM_SAELENS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}


def save_sae(sae: SAE, path: str | Path, provenance: dict[str, Any] | None = None) -> Path:
    """Write sae to the folder `path` (created if needed), normalization folded in; returns the folder.

    The SAE itself is not modified, so a trainer can save checkpoints and go on training. `provenance`
    (what it was trained on: the trainer gives the cache's digest and model) goes to cfg.json as
    `saekit.provenance`; `load_sae_dir` gives it back as `sae.provenance`.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg, tensors = sae.cfg, sae.inference_tensors()
    if cfg.normalize_activations != "none":
        tensors = folded_tensors(tensors, cfg.activation_scale, output_scale(cfg))
        cfg = folded_config(cfg, cfg.activation_scale, output_scale(cfg))
    save_file({name: t.detach().cpu().contiguous() for name, t in tensors.items()}, str(path / WEIGHTS_FILENAME))
    raw = _cfg_json(cfg)
    if provenance is not None:
        raw["saekit"]["provenance"] = provenance
    (path / CFG_FILENAME).write_text(json.dumps(raw, indent=2) + "\n")
    return path


def saelens_architecture(cfg: SAEConfig) -> str:
    """The SAELens architecture name a saekit SAE or transcoder is saved as."""
    if cfg.transcode:
        return SAELENS_TRANSCODER.get((cfg.architecture, cfg.skip_connection), f"{cfg.architecture}_transcoder")
    return SAELENS_ARCHITECTURE[cfg.architecture]


def _cfg_json(cfg: SAEConfig) -> dict[str, Any]:
    out: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "architecture": saelens_architecture(cfg),
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "hook_name": cfg.hook_name,
        "metadata": {"hook_name": cfg.hook_name},
    }
    if cfg.architecture == "topk":
        out.update(k=cfg.k, rescale_acts_by_decoder_norm=False)
    if cfg.transcode:
        out.update(d_out=cfg.resolved_d_out, apply_b_dec_to_input=False)
        out["metadata"]["hook_name_out"] = cfg.hook_name_out
    out["saekit"] = config_to_dict(cfg)
    return out


def load_sae_dir(path: str | Path, device: str | torch.device = "cpu") -> SAE:
    """The SAE saved in folder `path` (by `save_sae`, or by SAELens: standard, topk, jumprelu, gated).

    Raises FileNotFoundError for a missing file and ValueError naming the field and file when
    cfg.json and the weights disagree.
    """
    path = Path(path)
    cfg_path, weights_path = path / CFG_FILENAME, path / WEIGHTS_FILENAME
    for file in (cfg_path, weights_path):
        if not file.is_file():
            raise FileNotFoundError(f"{file} not found: an SAE folder holds {CFG_FILENAME} and {WEIGHTS_FILENAME}")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_path}: not valid JSON ({err})") from err
    return sae_from_cfg_json(raw, load_file(str(weights_path)), device, cfg_path, weights_path)


def sae_from_cfg_json(raw: dict[str, Any], tensors: dict[str, torch.Tensor], device: str | torch.device = "cpu",
                      cfg_path: Path = Path(CFG_FILENAME), weights_path: Path = Path(WEIGHTS_FILENAME)) -> SAE:
    """The SAE described by a parsed cfg.json (saekit's, or SAELens's) holding tensors (by SAELens name).

    The paths only name the files in error messages.
    """
    version = raw.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{cfg_path}: format_version {version!r} is newer than this saekit reads ({FORMAT_VERSION})")
    provenance = None
    if "saekit" in raw:
        section = dict(raw["saekit"])
        provenance = section.pop("provenance", None)
        cfg = build_config(SAEConfig, section, source=f"{cfg_path} (saekit)")
        for name in ("d_in", "d_sae"):
            if name in raw and raw[name] != getattr(cfg, name):
                raise ValueError(f"{cfg_path}: {name} is {raw[name]} at the top level but "
                                 f"{getattr(cfg, name)} under 'saekit'")
    else:
        cfg, tensors = _from_saelens(raw, tensors, cfg_path)
    sae = sae_from_tensors(cfg, tensors, device, cfg_path, weights_path)
    sae.provenance = provenance  # the training cache's digest and model (None: not trained by saekit)
    return sae


def sae_from_tensors(cfg: SAEConfig, tensors: dict[str, torch.Tensor], device: str | torch.device = "cpu",
                     cfg_path: Path = Path(CFG_FILENAME), weights_path: Path = Path(WEIGHTS_FILENAME)) -> SAE:
    """The SAE of cfg holding tensors (named as in `SAE.inference_tensors`), cast to cfg.dtype on device.

    Shapes are checked first; errors name the tensor, the cfg field and the two paths given.
    """
    _check_tensors(cfg, tensors, cfg_path, weights_path)
    with torch.device("meta"):  # no random init of weights that are about to be overwritten
        sae = build_sae(cfg)
    sae = sae.to_empty(device=device)
    dtype = getattr(torch, cfg.dtype)
    sae.load_inference_tensors({name: t.to(device=device, dtype=dtype) for name, t in tensors.items()})
    return sae


def _check_tensors(cfg: SAEConfig, tensors: dict[str, torch.Tensor], cfg_path: Path, weights_path: Path) -> None:
    """Raise a ValueError naming the tensor and the cfg.json field when a shape is wrong."""
    expected = {"W_enc": ("d_in", "d_sae"), "b_enc": ("d_sae",), "W_dec": ("d_sae", "d_out"), "b_dec": ("d_out",)}
    if cfg.architecture in ("jumprelu", "batchtopk", "matryoshka_batchtopk"):
        expected["threshold"] = ("d_sae",)
    if cfg.skip_connection:
        expected["W_skip"] = ("d_out", "d_in")
    if cfg.architecture == "gated":
        del expected["b_enc"]
        expected.update(b_gate=("d_sae",), r_mag=("d_sae",), b_mag=("d_sae",))
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{weights_path}: for architecture {cfg.architecture!r} expected tensors "
                         f"{sorted(expected)}; missing {missing}, unexpected {unexpected}")
    for name, dims in expected.items():
        shape = tuple(tensors[name].shape)
        want = tuple(cfg.resolved_d_out if dim == "d_out" else getattr(cfg, dim) for dim in dims)
        if len(shape) != len(dims):
            raise ValueError(f"{weights_path}: {name} has shape {shape}, expected {len(dims)} dims {dims}")
        for axis, (dim, size, wanted) in enumerate(zip(dims, shape, want)):
            if size != wanted:
                raise ValueError(f"{weights_path}: {name} has shape {shape} but {cfg_path.name} says "
                                 f"{dim} = {wanted} (axis {axis} of {name} is {dim}, expected shape {want})")
    if "threshold" in tensors and cfg.architecture == "jumprelu" and bool((tensors["threshold"] < 0).any()):
        raise ValueError(f"{weights_path}: threshold must be >= 0 for a jumprelu SAE")


def _from_saelens(raw: dict[str, Any], tensors: dict[str, torch.Tensor],
                  cfg_path: Path) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """SAEConfig and tensors from a cfg.json SAELens wrote (no 'saekit' section); see saelens_format."""
    from saekit.sae.saelens_format import convert_saelens

    return convert_saelens(raw, tensors, source=str(cfg_path))
