"""Transcoders in the peers' formats: sparsify's (`transcode`, `skip_connection`, W_skip) and
sae-lens's (`transcoder`, `skip_transcoder`, `jumprelu_transcoder`, `jumprelu_skip_transcoder`).

A saekit transcoder is any TopK-family SAE with `cfg.transcode` (saekit/sae/base.py): it reads x
[tokens, d_in] at `hook_name` and predicts y [tokens, d_out] at `hook_name_out`:

    latents = activation(x @ W_enc + b_enc)                   (no input centring, as both peers do)
    y_hat   = latents @ W_dec + b_dec [+ x @ W_skip.T]        W_dec [d_sae, d_out], W_skip [d_out, d_in]

| peer | saekit |
|---|---|
| sparsify `transcode: true` (encoder.weight [d_sae, d_in], W_dec, b_dec [d_in], W_skip [d_in, d_in]) | topk transcoder, d_out = d_in |
| sae-lens `transcoder` / `skip_transcoder` (ReLU; W_skip [d_out, d_in]) | relu transcoder (inference only) |
| sae-lens `jumprelu_transcoder` / `jumprelu_skip_transcoder` | jumprelu transcoder; saekit's batchtopk and matryoshka_batchtopk transcoders are exported as these |

Hook names: sparsify names a transcoder by the module whose input it reads and whose output it
predicts (`layers.6.mlp`): saekit maps it to `blocks.6.ln2.hook_normalized` -> `blocks.6.hook_mlp_out`.
(Gemma's and Llama's RMSNorm multiply hook_normalized by their weight before the MLP: a transcoder
trained by sparsify on the MLP's input reads that product, so on hook_normalized its encoder is off by
that fixed diagonal.) saekit's exports write `hook_name` and `hook_name_out` into cfg.json
(sparsify ignores extra fields; sae-lens keeps them in `metadata`). sae-lens has no TopK transcoder,
so a topk transcoder is exported to sparsify only; sparsify's transcoders predict an activation of
the input's width, so a transcoder with d_out != d_in is exported to sae-lens only.
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor

from saekit.sae.config import SAEConfig

SAELENS_TRANSCODERS = {"transcoder": ("relu", False), "skip_transcoder": ("relu", True),
                       "jumprelu_transcoder": ("jumprelu", False), "jumprelu_skip_transcoder": ("jumprelu", True)}
_MLP_MODULE = re.compile(r"^(?:transformer\.|gpt_neox\.|model\.)?(?:layers|h)\.(\d+)\.mlp$")


def sparsify_transcoder_hooks(hookpoint: str) -> tuple[str, str]:
    """(input hook, output hook) of a sparsify transcoder trained at module `hookpoint`: an MLP module
    (`layers.N.mlp`, `h.N.mlp`) maps to blocks.N.ln2.hook_normalized -> blocks.N.hook_mlp_out;
    anything else to ('', '') (unknown)."""
    match = _MLP_MODULE.match(hookpoint.split("/")[0])
    if not match:
        return "", ""
    layer = match.group(1)
    return f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"


def sparsify_transcoder_values(raw: dict[str, Any], tensors: dict[str, Tensor], hookpoint: str,
                               d_in: int, source: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The SAEConfig fields and saekit tensors a sparsify transcoder adds to a TopK SAE's
    (transcode, d_out = d_in, skip_connection, hook names; W_skip checked as [d_in, d_in])."""
    values: dict[str, Any] = {"transcode": True, "d_out": d_in, "skip_connection": "W_skip" in tensors}
    if raw.get("skip_connection", False) and "W_skip" not in tensors:
        raise ValueError(f"{source}: field 'skip_connection' is true but the weights hold no W_skip")
    hook_in, hook_out = sparsify_transcoder_hooks(hookpoint) if hookpoint else ("", "")
    values["hook_name"] = raw.get("hook_name") or hook_in
    values["hook_name_out"] = raw.get("hook_name_out") or hook_out
    ours: dict[str, Tensor] = {}
    if "W_skip" in tensors:
        if tuple(tensors["W_skip"].shape) != (d_in, d_in):
            raise ValueError(f"{source}: W_skip has shape {tuple(tensors['W_skip'].shape)}, expected "
                             f"[d_in, d_in] = {(d_in, d_in)}")
        ours["W_skip"] = tensors["W_skip"]
    return values, ours


def sparsify_transcoder_fields(cfg: SAEConfig) -> dict[str, Any]:
    """cfg.json fields of a transcoder exported to sparsify; ValueError when sparsify cannot hold it."""
    if cfg.resolved_d_out != cfg.d_in:
        raise ValueError(f"cannot export a transcoder with d_out {cfg.resolved_d_out} != d_in {cfg.d_in} to sparsify: "
                         "its transcoders predict an activation of the input's width (export it to saelens)")
    return {"transcode": True, "skip_connection": cfg.skip_connection, "hook_name_out": cfg.hook_name_out}


def saelens_transcoder_values(raw: dict[str, Any], architecture: str, source: str) -> dict[str, Any]:
    """SAEConfig fields of a sae-lens transcoder config (architecture one of SAELENS_TRANSCODERS)."""
    ours, skip = SAELENS_TRANSCODERS[architecture]
    d_out = raw.get("d_out")
    if not isinstance(d_out, int) or isinstance(d_out, bool) or d_out < 1:
        raise ValueError(f"{source}: field 'd_out' is missing or not a positive integer for a {architecture} "
                         f"(got {d_out!r})")
    metadata = raw.get("metadata") if hasattr(raw.get("metadata"), "get") else {}
    hook_out = raw.get("hook_name_out") or metadata.get("hook_name_out") or ""
    return {"architecture": ours, "transcode": True, "d_out": d_out, "skip_connection": skip,
            "hook_name_out": hook_out}


def check_saelens_export(cfg: SAEConfig) -> None:
    """ValueError when a transcoder has no sae-lens class (a topk transcoder: export it to sparsify)."""
    if cfg.transcode and cfg.architecture == "topk":
        raise ValueError("cannot export a topk transcoder to saelens: sae-lens has no TopK transcoder class "
                         "(export it to sparsify, or train a batchtopk transcoder, saved as jumprelu_transcoder)")
