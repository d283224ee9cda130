"""SAELens's SAEs in saekit: its cfg.json conventions mapped onto saekit's SAEs, and export back.

One function, `convert_saelens`, turns a SAELens config dict and state dict into an `SAEConfig` and
saekit's tensors. It serves SAELens folders on disk (`io.load_sae_dir`), SAE objects in memory
(`from_saelens_sae`) and sae-lens's pretrained registry (`load_saelens_registry`, which is
`sae_lens.SAE.from_pretrained` followed by `from_saelens_sae`), so the code the hub path runs is
the code the offline tests exercise.

Architectures (SAELens -> saekit): standard -> relu, topk -> topk, jumprelu -> jumprelu (also what
SAELens saves its batchtopk and matryoshka-batchtopk SAEs as), gated -> gated (inference only), and
the four transcoder classes (saekit/sae/transcoder.py).
Conventions, each mapped exactly onto saekit's `(x - b_dec) @ W_enc + b_enc`:

| SAELens setting | in saekit |
|---|---|
| `apply_b_dec_to_input: false` (pre = x @ W_enc + b_enc) | b_enc += b_dec @ W_enc (gated: b_gate and b_mag likewise) |
| topk `rescale_acts_by_decoder_norm: true` (pre * ‖W_dec_i‖, decode acts / ‖W_dec_i‖) | W_enc, b_enc times ‖W_dec_i‖; W_dec rows divided by it |
| jumprelu threshold (relu(pre) * (pre > threshold)) | threshold clamped at 0 (identical outputs) |
| `normalize_activations: expected_average_only_in` with a known factor s | SAELens's own fold: W_enc * s, W_dec / s, b_dec / s |
| `normalize_activations: none` | nothing to do |

Refused with an error naming the field: `expected_average_only_in` without a factor (the SAE
expects inputs scaled by a constant nobody recorded), `constant_norm_rescale` and `layer_norm`
(a per-token rescaling, not a fixed map of the weights), `covariance_whitening` (fold it with
SAELens's `fold_activation_whitening` first), and architectures saekit has no class for.
"""

from __future__ import annotations

import json
import re
import warnings
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saekit.config import build_config
from saekit.sae.base import SAE
from saekit.sae.config import DTYPES, SAEConfig
from saekit.sae.gated import GATED_TENSORS
from saekit.sae.io import CFG_FILENAME, FROM_SAELENS, save_sae, sae_from_tensors
from saekit.sae.transcoder import SAELENS_TRANSCODERS, check_saelens_export, saelens_transcoder_values

# Why each SAELens architecture saekit does not load is refused.
REFUSED_ARCHITECTURES = {
    "abstopk": "top-k by absolute value (negative latents) has no saekit class",
    "temporal": "a temporal SAE reads several positions at once",
    "matching_pursuit": "matching pursuit encodes iteratively, not with one encoder matrix",
}
_TENSORS = {"relu": ("W_enc", "b_enc", "W_dec", "b_dec"), "topk": ("W_enc", "b_enc", "W_dec", "b_dec"),
            "jumprelu": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"), "gated": GATED_TENSORS}
# TransformerLens loading flags that make activations differ from from_pretrained_no_processing's, in
# the order TransformerLens applies them (a model-processing spec is a tuple of these; saekit.models.processing).
PROCESSING_FLAGS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases",
                    "refactor_factored_attn_matrices")


def convert_saelens(raw: dict[str, Any], tensors: dict[str, Tensor], source: str = "sae_lens cfg",
                    norm_scaling_factor: float | None = None) -> tuple[SAEConfig, dict[str, Tensor]]:
    """(SAEConfig, tensors named as saekit's SAE classes hold them) from a SAELens config dict `raw`
    (cfg.json, or `cfg.to_dict()`) and its state dict. `source` names the origin in errors.

    norm_scaling_factor: for `normalize_activations: expected_average_only_in`, the factor the
    SAE's inputs were multiplied by in training (sae-lens's registry folds it itself when known).
    """
    architecture = raw.get("architecture", "standard")
    transcoder = saelens_transcoder_values(raw, architecture, source) if architecture in SAELENS_TRANSCODERS else {}
    if architecture not in FROM_SAELENS and not transcoder:
        why = REFUSED_ARCHITECTURES.get(architecture, "unknown architecture")
        raise ValueError(f"{source}: field 'architecture' is {architecture!r} ({why}); saekit loads "
                         f"{sorted(FROM_SAELENS) + sorted(SAELENS_TRANSCODERS)}")
    ours = transcoder.get("architecture") or FROM_SAELENS[architecture]
    for name in ("d_in", "d_sae"):
        value = raw.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{source}: field {name!r} is missing or not a positive integer (got {value!r})")
    tensors = _checked_tensors(ours, tensors, source, skip=bool(transcoder.get("skip_connection")))
    values: dict[str, Any] = {"architecture": ours, "d_in": raw["d_in"], "d_sae": raw["d_sae"],
                              "dtype": _dtype_name(raw.get("dtype", "float32"), source),
                              "hook_name": hook_name_of(raw), "normalize_activations": "none", "b_dec_init": "zeros",
                              **transcoder}
    if architecture == "topk":
        if not isinstance(raw.get("k"), int) or isinstance(raw.get("k"), bool):
            raise ValueError(f"{source}: field 'k' is missing or not an integer for a topk SAE (got {raw.get('k')!r})")
        values["k"] = raw["k"]
    _warn_about_hook_conventions(raw, source)

    normalization = raw.get("normalize_activations", "none")
    if normalization == "expected_average_only_in":
        if norm_scaling_factor is None:
            raise ValueError(
                f"{source}: field 'normalize_activations' is 'expected_average_only_in' but no norm scaling "
                "factor is known: the SAE expects inputs multiplied by a constant this file does not record. "
                "Pass norm_scaling_factor= (sae-lens's registry folds it itself when it has one)")
        tensors = fold_norm_scaling_factor(tensors, norm_scaling_factor)
    elif normalization != "none":
        raise ValueError(f"{source}: field 'normalize_activations' is {normalization!r}, which rescales each "
                         "token at run time and cannot be folded into fixed weights; saekit loads 'none' and "
                         "'expected_average_only_in' (with its factor)")
    if not raw.get("apply_b_dec_to_input", True) and not transcoder:  # a transcoder centres nothing
        tensors = _fold_b_dec_into_encoder(tensors)
    if architecture == "topk" and raw.get("rescale_acts_by_decoder_norm", False):
        tensors = _fold_decoder_norm(tensors)
    if "threshold" in tensors:  # relu(pre) * (pre > t) == pre * (pre > max(t, 0))
        tensors["threshold"] = tensors["threshold"].clamp_min(0)
    return build_config(SAEConfig, values, source=source), tensors


def hook_name_of(raw: dict[str, Any]) -> str:
    """The hook point a SAELens config names (top-level `hook_name` or `metadata.hook_name`), or ''."""
    metadata = raw.get("metadata") or {}
    return raw.get("hook_name") or (metadata.get("hook_name") if hasattr(metadata, "get") else None) or ""


def _checked_tensors(architecture: str, tensors: dict[str, Tensor], source: str,
                     skip: bool = False) -> dict[str, Tensor]:
    """A copy of the state dict, with an error naming any tensor the architecture needs but lacks."""
    needed = _TENSORS[architecture] + (("W_skip",) if skip else ())
    missing = [name for name in needed if name not in tensors]
    if missing:
        raise ValueError(f"{source}: the weights lack {missing} needed by a {architecture} SAE "
                         f"(they hold {sorted(tensors)})")
    unexpected = sorted(set(tensors) - set(needed))
    if unexpected:
        raise ValueError(f"{source}: unexpected tensors {unexpected} for a {architecture} SAE "
                         f"(expected {list(needed)})")
    return {name: t.detach() for name, t in tensors.items()}


def _dtype_name(dtype: Any, source: str) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"{source}: field 'dtype' is {dtype!r}; saekit reads {DTYPES}")
    return name


def model_processing_of(raw: dict[str, Any]) -> tuple[str, ...]:
    """The TransformerLens processing flags a SAELens config says its model was loaded with: the true
    entries of `metadata.model_from_pretrained_kwargs` (or the older top-level key) that are
    `PROCESSING_FLAGS`, in that order. sae-lens loads with `from_pretrained_no_processing(**kwargs)`,
    so a flag the kwargs do not name is off; () when the config says nothing."""
    metadata = raw.get("metadata") if hasattr(raw.get("metadata"), "get") else {}
    kwargs = metadata.get("model_from_pretrained_kwargs") or raw.get("model_from_pretrained_kwargs") or {}
    return tuple(flag for flag in PROCESSING_FLAGS if hasattr(kwargs, "get") and kwargs.get(flag) is True)


def sae_model_processing(source: str, sae: Any = None) -> tuple[str, ...]:
    """The processing flags of the model the SAE at `source` was trained on: what `from_saelens_sae`
    read from the SAE's metadata (`sae.model_processing`, registry overrides included), else a
    folder's cfg.json, else for a registry id RELEASE/SAE_ID the registry's `config_overrides` (how
    pretrained_saes.yaml marks gpt2-small-res-jb and the other centred GPT-2 releases). () otherwise
    (saekit's and sparsify's SAEs read unprocessed models)."""
    if getattr(sae, "model_processing", None) is not None:
        return tuple(sae.model_processing)
    from saekit.sae.formats import parse_source

    kind, location, _ = parse_source(str(source))
    if kind == "dir" and (Path(location) / CFG_FILENAME).is_file():
        raw = json.loads((Path(location) / CFG_FILENAME).read_text())
        return model_processing_of(raw) if isinstance(raw, dict) else ()
    if kind == "saelens":
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

        release = get_pretrained_saes_directory().get(location.split("/", 1)[0])
        overrides = getattr(release, "config_overrides", None) or {}
        return model_processing_of({"metadata": {"model_from_pretrained_kwargs":
                                                 overrides.get("model_from_pretrained_kwargs") or {}}})
    return ()


def _warn_about_hook_conventions(raw: dict[str, Any], source: str) -> None:
    """Warn where the activations the SAE reads are not what saekit hands it by default."""
    processing = model_processing_of(raw)
    if processing:
        warnings.warn(f"{source}: this SAE was trained on a TransformerLens model loaded with {list(processing)}; "
                      "caches saekit makes for it (score --published, collect's live mode: model_processing "
                      "'auto') load the model the same way, but a cache of an unprocessed model holds other "
                      "activations at this hook (center_writing_weights removes each token's mean over d_model)",
                      stacklevel=3)
    if raw.get("reshape_activations", "none") == "hook_z":
        warnings.warn(f"{source}: a hook_z SAE reads [..., n_heads * d_head]: flatten the heads of "
                      f"{hook_name_of(raw)!r} before encode", stacklevel=3)


def _in64(fn: Any, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Apply fn to float64 copies of tensors and cast the results back to each tensor's dtype."""
    dtypes = {name: t.dtype for name, t in tensors.items()}
    result = fn({name: t.to(torch.float64) for name, t in tensors.items()})
    return {name: t.to(dtypes[name]) for name, t in result.items()}


def fold_norm_scaling_factor(tensors: dict[str, Tensor], scale: float) -> dict[str, Tensor]:
    """SAELens's `fold_activation_norm_scaling_factor` on a state dict: W_enc * s, W_dec / s, b_dec / s,
    so that the SAE takes raw x where it was trained on s * x (latents unchanged)."""
    return _in64(lambda t: {**t, "W_enc": t["W_enc"] * scale, "W_dec": t["W_dec"] / scale,
                            "b_dec": t["b_dec"] / scale}, tensors)


def _fold_b_dec_into_encoder(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """x @ W + b == (x - b_dec) @ W + (b + b_dec @ W), for the encoder (and gated's magnitude path)."""
    def fold(t: dict[str, Tensor]) -> dict[str, Tensor]:
        shift = t["b_dec"] @ t["W_enc"]
        if "b_gate" in t:
            return {**t, "b_gate": t["b_gate"] + shift, "b_mag": t["b_mag"] + shift * t["r_mag"].exp()}
        return {**t, "b_enc": t["b_enc"] + shift}
    return _in64(fold, tensors)


def _fold_decoder_norm(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """TopK with rescale_acts_by_decoder_norm as a plain TopK: latents pre * n select and decode
    through W_dec / n, with n [d_sae] the decoder rows' norms (SAELens's `_fold_norm_topk`)."""
    def fold(t: dict[str, Tensor]) -> dict[str, Tensor]:
        norms = t["W_dec"].norm(dim=-1)
        return {**t, "W_enc": t["W_enc"] * norms, "b_enc": t["b_enc"] * norms, "W_dec": t["W_dec"] / norms[:, None]}
    return _in64(fold, tensors)


def from_saelens_sae(sae: Any, device: str | torch.device = "cpu", source: str | None = None,
                     norm_scaling_factor: float | None = None) -> SAE:
    """saekit's SAE equal to a sae-lens SAE object (inference class, or a training class such as
    BatchTopKTrainingSAE, taken as SAELens saves it for inference). Encode and decode agree with
    sae-lens's on the same inputs. This is the step `load_saelens_registry` runs after the download.
    """
    source = source or f"sae_lens {type(sae).__name__}"
    state = {name: t.detach().clone() for name, t in sae.state_dict().items()}
    if hasattr(sae, "process_state_dict_for_saving_inference"):  # a TrainingSAE: its inference form
        sae.process_state_dict_for_saving_inference(state)
        raw = sae.cfg.get_inference_sae_cfg_dict()
    else:
        sae.process_state_dict_for_saving(state)
        raw = sae.cfg.to_dict()
    cfg, tensors = convert_saelens(raw, state, source=source, norm_scaling_factor=norm_scaling_factor)
    ours = sae_from_tensors(cfg, tensors, device, Path(source), Path(source))
    ours.model_processing = model_processing_of(raw)  # sae_model_processing reads it (registry overrides in)
    return ours


def saelens_releases() -> set[str]:
    """The release names of sae-lens's pretrained registry (the top-level keys of its bundled
    pretrained_saes.yaml, read without importing sae-lens); empty when sae-lens is not installed."""
    spec = find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        return set()
    registry = Path(next(iter(spec.submodule_search_locations))) / "pretrained_saes.yaml"
    if not registry.is_file():
        return set()
    return set(re.findall(r"^([A-Za-z0-9][^\s:#]*):\s*$", registry.read_text(), flags=re.MULTILINE))


def load_saelens_registry(release: str, sae_id: str, device: str | torch.device = "cpu",
                          dtype: str = "float32") -> SAE:
    """The SAE `sae_id` of sae-lens's registry release `release`, downloaded by
    `sae_lens.SAE.from_pretrained` (which folds a known norm scaling factor) and converted by
    `from_saelens_sae`. Needs the hub (or sae-lens's cache)."""
    from sae_lens import SAE as SaeLensSAE

    sae = SaeLensSAE.from_pretrained(release, sae_id, device="cpu", dtype=dtype)
    return from_saelens_sae(sae, device=device, source=f"{release}/{sae_id}")


def export_saelens(sae: SAE, out: str | Path) -> Path:
    """Write sae to folder `out` in SAELens's format, for `sae_lens.SAE.load_from_disk`: cfg.json
    with SAELens's keys only and sae_weights.safetensors (normalization folded in; batchtopk saved
    as jumprelu, as SAELens saves its own). Returns the folder."""
    check_saelens_export(sae.cfg)
    out = save_sae(sae, out)
    cfg_path = out / CFG_FILENAME
    raw = json.loads(cfg_path.read_text())
    for key in ("saekit", "format_version", "hook_name"):
        raw.pop(key, None)
    # A 6.x config: sae-lens then reads hook_name from metadata rather than converting an old layout.
    raw["metadata"]["sae_lens_version"] = _saelens_version()
    cfg_path.write_text(json.dumps(raw, indent=2) + "\n")
    return out


def _saelens_version() -> str:
    """The installed sae-lens's version, or 6.0.0 (the config layout written here) without it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sae-lens")
    except PackageNotFoundError:
        return "6.0.0"
