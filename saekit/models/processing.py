"""TransformerLens weight processing: load a model the way an SAE's training run loaded it.

A processing spec is the set of TransformerLens loading flags that were on, as a tuple of names in
`PROCESSING_FLAGS` order (`()` = unprocessed, saekit's default: `from_pretrained_no_processing`).
sae-lens records them as `model_from_pretrained_kwargs` and loads with
`HookedTransformer.from_pretrained_no_processing(name, **kwargs)`, so a flag it does not name is off.

What each flag changes at the hook points (the model's output distribution never changes):

| flag | activations that differ |
|---|---|
| `center_writing_weights` | the residual stream (`hook_embed`, `hook_pos_embed`, `hook_resid_*`, `hook_attn_out`, `hook_mlp_out`): each token's mean over d_model is removed |
| `fold_ln` | LayerNorm internals (`ln*.hook_scale`, `hook_normalized`); LayerNorm -> LNPre (RMS -> RMSPre) |
| `center_unembed` | the logits (shifted by a per-token constant) |
| `fold_value_biases` | `hook_v`, `hook_z` (b_V moved into b_O) |
| `refactor_factored_attn_matrices` | `hook_q`, `hook_k`, `hook_v`, `hook_z` |

`processing_flags(spec)` reads a spec (None, "none", "from_pretrained", "fold_ln,center_writing_weights",
a list of names, or a {flag: bool} dict such as sae-lens's kwargs); `process_model(model, flags)`
applies them in place with TransformerLens's own `load_and_process_state_dict`, exactly as
`from_pretrained` does after loading.
"""

from __future__ import annotations

from typing import Any

from saekit.sae.saelens_format import PROCESSING_FLAGS, sae_model_processing

FROM_PRETRAINED_DEFAULTS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")
"""What `HookedTransformer.from_pretrained` turns on by default (spec "from_pretrained")."""
MODEL_PROCESSING_HELP = ("auto: as the SAE's metadata says it was trained (sae-lens's model_from_pretrained_kwargs; "
                         "the registry's overrides), none: unprocessed, or an explicit spec: ")
SPEC_HELP = ("none (unprocessed) | from_pretrained (TransformerLens from_pretrained's defaults: "
             + ", ".join(FROM_PRETRAINED_DEFAULTS) + ") | a comma list of " + ", ".join(PROCESSING_FLAGS))


def processing_flags(spec: Any, what: str = "model_processing") -> tuple[str, ...]:
    """The flags `spec` turns on, in `PROCESSING_FLAGS` order; ValueError naming `what` and the
    unknown flag otherwise. "auto" is not a spec here: it is resolved from the SAE by the caller."""
    if spec is None or isinstance(spec, str) and spec.strip().lower() in ("", "none"):
        return ()
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        raise ValueError(f"{what}: 'auto' means 'as the SAE was trained', and no SAE is known here "
                         f"(score --published and collect resolve it); use {SPEC_HELP}")
    if isinstance(spec, str) and spec.strip() == "from_pretrained":
        return FROM_PRETRAINED_DEFAULTS
    if isinstance(spec, str):
        names = [s.strip() for s in spec.split(",") if s.strip()]
    elif isinstance(spec, dict):
        names = [name for name, on in spec.items() if on]
    else:
        names = list(spec)
    unknown = sorted(set(names) - set(PROCESSING_FLAGS))
    if unknown:
        raise ValueError(f"{what}: unknown TransformerLens processing flag(s) {unknown} in {spec!r}; "
                         f"use {SPEC_HELP}")
    return tuple(flag for flag in PROCESSING_FLAGS if flag in names)


def process_model(model: Any, flags: tuple[str, ...] | list[str]) -> Any:
    """Apply TransformerLens processing `flags` to a HookedTransformer in place (the flags not named
    are off, as in `from_pretrained_no_processing(**kwargs)`); returns the model."""
    flags = processing_flags(list(flags))
    if flags:
        model.load_and_process_state_dict(model.state_dict(), **{flag: flag in flags for flag in PROCESSING_FLAGS})
    return model


def resolve_model_processing(spec: str, sae_source: Any, sae: Any = None,
                             what: str = "model_processing") -> tuple[str, ...]:
    """A config's `model_processing` made concrete: "auto" gives what the SAE at `sae_source` was
    trained on (`saekit.sae.saelens_format.sae_model_processing`), anything else `processing_flags`."""
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        return sae_model_processing(sae_source, sae)
    return processing_flags(spec, what)


def spec_string(flags: tuple[str, ...] | list[str]) -> str:
    """The spec string of flags, for a config field: "none" or "flag,flag"."""
    return ",".join(flags) or "none"
