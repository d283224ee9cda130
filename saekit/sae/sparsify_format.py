"""EleutherAI sparsify's SAEs in saekit, and export to sparsify's layout.

A sparsify SAE is a folder with `cfg.json` (the `SparseCoderConfig` fields plus `d_in`) and
`sae.safetensors`: encoder.weight [d_sae, d_in], encoder.bias [d_sae], W_dec [d_sae, d_in],
b_dec [d_in]. Its encoder is relu(encoder(x - b_dec)) followed by a top-k, the same map as saekit's
TopK SAE with W_enc = encoder.weight.T and b_enc = encoder.bias. A multi-hookpoint checkpoint is a
folder of such folders named by the model module each SAE reads (`layers.6`, `layers.6.mlp`;
`layers.6/seed0` when several seeds were trained), module names relative to the Hugging Face model's
`base_model`, as sparsify's trainer names them.

Module names map to TransformerLens hook names (`HOOKPOINT_TABLE`); the output of a decoder layer
is the residual stream after that block in every family. Unknown names are kept as they are, with
a warning. Transcoders (`transcode`, with or without `skip_connection` and W_skip) load as saekit
topk transcoders (saekit/sae/transcoder.py); a skip connection on an autoencoder and `groupmax` are
refused.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor

from saekit.config import build_config
from saekit.sae.base import SAE
from saekit.sae.config import SAEConfig
from saekit.sae.io import CFG_FILENAME
from saekit.sae.transcoder import sparsify_transcoder_fields, sparsify_transcoder_values
from saekit.sae.weights import folded_tensors, output_scale

SPARSIFY_WEIGHTS = "sae.safetensors"
SPARSIFY_TENSORS = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")

# (sparsify / Hugging Face module name, TransformerLens hook name, model families). N is the layer.
HOOKPOINT_TABLE: tuple[tuple[str, str, str], ...] = (
    ("wte", "hook_embed", "GPT-2"),
    ("embed_in", "hook_embed", "GPT-NeoX / Pythia"),
    ("h.N", "blocks.N.hook_resid_post", "GPT-2"),
    ("h.N.attn", "blocks.N.hook_attn_out", "GPT-2"),
    ("h.N.mlp", "blocks.N.hook_mlp_out", "GPT-2"),
    ("layers.N", "blocks.N.hook_resid_post", "GPT-NeoX / Pythia, Llama, Mistral, Qwen, Gemma"),
    ("layers.N.attention", "blocks.N.hook_attn_out", "GPT-NeoX / Pythia"),
    ("layers.N.self_attn", "blocks.N.hook_attn_out", "Llama, Mistral, Qwen (Gemma 2/3: see README)"),
    ("layers.N.mlp", "blocks.N.hook_mlp_out", "GPT-NeoX / Pythia, Llama, Mistral, Qwen (Gemma 2/3: see README)"),
)
# Prefixes of the same modules named from the full model rather than its base_model.
_PREFIXES = ("transformer.", "gpt_neox.", "model.")


def _pattern(module: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(module).replace("N", r"(\d+)") + "$")


_COMPILED = tuple((_pattern(module), hook) for module, hook, _ in HOOKPOINT_TABLE)


def tl_hook_name(hookpoint: str, warn: bool = True) -> str:
    """The TransformerLens hook name of a sparsify hookpoint (module name), e.g. layers.6 ->
    blocks.6.hook_resid_post; an unknown name (or a TransformerLens name already) is returned as is,
    with a warning for the former. A `/seedN` suffix is dropped."""
    name = hookpoint.split("/")[0]
    for prefix in _PREFIXES:
        name = name.removeprefix(prefix)
    for pattern, hook in _COMPILED:
        match = pattern.match(name)
        if match:
            return hook.replace("N", match.group(1)) if match.groups() else hook
    if warn and not name.startswith(("blocks.", "hook_")):
        warnings.warn(f"sparsify hookpoint {hookpoint!r} is not in saekit's module-name table "
                      "(saekit.sae.sparsify_format.HOOKPOINT_TABLE); kept as the SAE's hook name", stacklevel=2)
    return name


def is_module_name(name: str) -> bool:
    """Whether `name` (a `/seedN` suffix dropped) is a module name of `HOOKPOINT_TABLE` or a
    TransformerLens hook name: what a standalone sparsify folder's name may stand for."""
    name = name.split("/")[0]
    for prefix in _PREFIXES:
        name = name.removeprefix(prefix)
    return name.startswith(("blocks.", "hook_")) or any(pattern.match(name) for pattern, _ in _COMPILED)


def is_sparsify_cfg(raw: dict[str, Any]) -> bool:
    """Whether a parsed cfg.json is sparsify's (SparseCoderConfig fields, no SAELens `d_sae`)."""
    return "d_sae" not in raw and any(key in raw for key in ("num_latents", "expansion_factor"))


def convert_sparsify(raw: dict[str, Any], tensors: dict[str, Tensor], hookpoint: str,
                     source: str = "sparsify cfg.json") -> tuple[SAEConfig, dict[str, Tensor]]:
    """(SAEConfig of a TopK SAE, saekit tensors) from a sparsify cfg.json and state dict.

    hookpoint: the module name the SAE reads (its folder's name in a multi-hookpoint checkpoint),
    mapped to a TransformerLens hook unless cfg.json names one (`hook_name`, written by
    `export_sparsify`); '' when unknown (the SAE's hook_name is then ''). Errors name the field.
    """
    d_in = raw.get("d_in")
    if not isinstance(d_in, int) or isinstance(d_in, bool) or d_in < 1:
        raise ValueError(f"{source}: field 'd_in' is missing or not a positive integer (got {d_in!r})")
    if raw.get("activation", "topk") != "topk":
        raise ValueError(f"{source}: field 'activation' is {raw['activation']!r}; saekit loads sparsify's 'topk'")
    transcode = bool(raw.get("transcode", False))
    if not transcode and (raw.get("skip_connection", False) or "W_skip" in tensors):
        raise ValueError(f"{source}: field 'skip_connection' is true (W_skip) on an autoencoder: saekit's SAEs "
                         "have no skip connection (its transcoders do)")
    missing = [name for name in SPARSIFY_TENSORS if name not in tensors]
    unexpected = sorted(set(tensors) - set(SPARSIFY_TENSORS) - ({"W_skip"} if transcode else set()))
    if missing or unexpected:
        raise ValueError(f"{source}: a sparsify SAE holds {list(SPARSIFY_TENSORS)}; missing {missing}, "
                         f"unexpected {unexpected}")
    d_sae = _d_sae(raw, d_in, source)
    rows, cols = tensors["encoder.weight"].shape
    if cols != d_in:
        raise ValueError(f"{source}: field 'd_in' is {d_in} but encoder.weight has shape {(rows, cols)} [d_sae, d_in]")
    if rows != d_sae:
        field = "num_latents" if raw.get("num_latents") else "expansion_factor"
        raise ValueError(f"{source}: field {field!r} gives d_sae = {d_sae} but encoder.weight has shape "
                         f"{(rows, cols)} [d_sae, d_in]")
    k = raw.get("k")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= d_sae:
        raise ValueError(f"{source}: field 'k' must be an integer in [1, d_sae = {d_sae}], got {k!r}")
    dtype = str(tensors["encoder.weight"].dtype).removeprefix("torch.")  # sparsify's own rule
    values = {"architecture": "topk", "d_in": d_in, "d_sae": d_sae, "k": k, "dtype": dtype,
              "hook_name": raw.get("hook_name") or (tl_hook_name(hookpoint) if hookpoint else ""),
              "normalize_activations": "none",
              "b_dec_init": "zeros"}
    ours = {"W_enc": tensors["encoder.weight"].t(), "b_enc": tensors["encoder.bias"],
            "W_dec": tensors["W_dec"], "b_dec": tensors["b_dec"]}
    if transcode:
        extra, skip = sparsify_transcoder_values(raw, tensors, hookpoint, d_in, source)
        values.update(extra)
        ours.update(skip)
    return build_config(SAEConfig, values, source=source), ours


def _d_sae(raw: dict[str, Any], d_in: int, source: str) -> int:
    """num_latents, or d_in * expansion_factor when it is 0 (sparsify's rule)."""
    num_latents, expansion = raw.get("num_latents", 0), raw.get("expansion_factor", 32)
    for name, value in (("num_latents", num_latents), ("expansion_factor", expansion)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{source}: field {name!r} must be a non-negative integer, got {value!r}")
    d_sae = num_latents or d_in * expansion
    if d_sae < 1:
        raise ValueError(f"{source}: fields 'num_latents' and 'expansion_factor' give no latents")
    return d_sae


def sparsify_hookpoints(root: Path) -> list[str]:
    """The SAE folders under a multi-hookpoint checkpoint, relative to root (`layers.6`,
    `layers.6/seed0`), sorted; a folder counts when it holds cfg.json."""
    found = [p.parent.relative_to(root).as_posix() for p in root.glob("*/cfg.json")]
    found += [p.parent.relative_to(root).as_posix() for p in root.glob("*/*/cfg.json")]
    return sorted(found, key=lambda name: [int(part) if part.isdigit() else part
                                           for part in re.split(r"(\d+)", name)])


def resolve_hookpoint(root: Path, hookpoint: str | None) -> Path:
    """The folder of one SAE in a multi-hookpoint checkpoint: hookpoint is its folder name
    (`layers.6`, `layers.6/seed0`) or the TransformerLens hook it maps to
    (`blocks.6.hook_resid_post`). Errors list what the checkpoint holds."""
    available = sparsify_hookpoints(root)
    listing = ", ".join(f"{name} ({tl_hook_name(name, warn=False)})" for name in available)
    if hookpoint is None:
        raise ValueError(f"{root} holds several SAEs (a multi-hookpoint checkpoint); pass hookpoint= "
                         f"(CLI: --hookpoint) one of: {listing}")
    if hookpoint in available:
        return root / hookpoint
    by_hook = [name for name in available if tl_hook_name(name, warn=False) == hookpoint]
    if len(by_hook) == 1:
        return root / by_hook[0]
    if len(by_hook) > 1:
        raise ValueError(f"{root}: hook {hookpoint!r} is read by several SAEs {by_hook}; name the folder")
    raise ValueError(f"{root}: no SAE for hookpoint {hookpoint!r}; the checkpoint holds: {listing}")


def export_sparsify(sae: SAE, out: str | Path) -> Path:
    """Write a TopK sae to folder `out` in sparsify's layout (`SparseCoder.load_from_disk` reads it):
    cfg.json (SparseCoderConfig fields, d_in, and the TransformerLens `hook_name`, an extra field
    sparsify ignores) and sae.safetensors. Other architectures are refused: sparsify is TopK only."""
    cfg = sae.cfg
    if cfg.architecture != "topk":
        raise ValueError(f"cannot export a {cfg.architecture} SAE to sparsify: sparsify's SparseCoder is TopK only "
                         "(export it to saelens instead)")
    transcoder = sparsify_transcoder_fields(cfg) if cfg.transcode else {}
    tensors = sae.inference_tensors()
    if cfg.normalize_activations != "none":
        tensors = folded_tensors(tensors, cfg.activation_scale, output_scale(cfg))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = {"encoder.weight": tensors["W_enc"].t(), "encoder.bias": tensors["b_enc"],
               "W_dec": tensors["W_dec"], "b_dec": tensors["b_dec"]}
    if cfg.skip_connection:
        weights["W_skip"] = tensors["W_skip"]
    save_file({name: t.detach().cpu().contiguous() for name, t in weights.items()}, str(out / SPARSIFY_WEIGHTS))
    raw = {"activation": "topk", "expansion_factor": max(cfg.d_sae // cfg.d_in, 1), "normalize_decoder": True,
           "num_latents": cfg.d_sae, "k": cfg.k, "multi_topk": False, "skip_connection": False,
           "transcode": False, "d_in": cfg.d_in, "hook_name": cfg.hook_name, **transcoder}
    (out / CFG_FILENAME).write_text(json.dumps(raw, indent=2) + "\n")
    return out

