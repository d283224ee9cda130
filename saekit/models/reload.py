"""Load again the model a cache's manifest names, sharing one copy across the stages of a process."""

from __future__ import annotations

from typing import Any

from transformer_lens import HookedTransformer

from saekit.models.load import load_model


RELOADABLE_SOURCE_KINDS = ("local", "hub", "gguf")


def reload_model(info: dict[str, Any], model: str = "", init: str = "", device: str = "cpu",
                 what: str = "the cache") -> HookedTransformer:
    """Load again the model a cache's manifest names (`info` is its `model` entry, `model.saekit_info`
    as written): `model`/`init` override the recorded source/variant; the recorded weight processing
    (`processing`, see saekit.models.processing) is applied either way, as the cached activations had
    it. ValueError naming `what` when the manifest does not say how to reload it (a bare config, say)."""
    source = model or (info.get("source") if info.get("source_kind") in RELOADABLE_SOURCE_KINDS else None)
    if not source:
        raise ValueError(f"{what}'s manifest does not say how to reload its model ({info}); pass --model")
    tl_name = info.get("tl_name") if not model and info.get("source_kind") == "gguf" else None
    processing = tuple(info.get("processing") or ())
    key = (str(source), init or info.get("init", "trained"), int(info.get("seed", 0)), str(device), tl_name,
           processing)
    if key not in _last_reloaded:
        _last_reloaded.clear()  # at most one model held: Gemma 3 270M is 1.1 GB in float32
        _last_reloaded[key] = load_model(key[0], init=key[1], seed=key[2], device=device, tl_name=tl_name,
                                         processing=processing)
    model = _last_reloaded[key]
    model.reset_hooks(including_permanent=False)
    return model


_last_reloaded: dict[tuple, HookedTransformer] = {}
"""The model `reload_model` gave last: the stages of one process (eval of each SAE of a grid, explain,
score) share it instead of loading it again (a random Gemma re-draws 270M weights: ~15 s)."""


def forget_reloaded_model() -> None:
    """Drop the model `reload_model` keeps (frees its memory)."""
    _last_reloaded.clear()
