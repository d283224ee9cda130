"""saekit's model folder: `config.json` (a `HookedTransformerConfig` as JSON), `model.safetensors`
(the parameters) and `tokenizer.json`, each written atomically, `config.json` last so that a folder
holding it is complete; a step-0 checkpoint, where one exists, in `step0/model.safetensors`."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from saekit.models.tokenizer import raw_tokenizer

FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, STEP0_DIR = "config.json", "model.safetensors", "tokenizer.json", "step0"

# ---------------------------------------------------------------------------- config <-> JSON


def config_to_json_dict(cfg: HookedTransformerConfig) -> dict[str, Any]:
    """The config's fields as JSON-safe values (dtype as "torch.float32"; device left out)."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if field.name == "device":
            continue
        if isinstance(value, torch.dtype):
            value = str(value)
        elif isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, tuple):
            value = list(value)
        try:
            json.dumps(value)
        except TypeError:
            warnings.warn(f"config field {field.name}={value!r} is not JSON-serialisable; not saved")
            continue
        out[field.name] = value
    return out


def config_from_json_dict(data: dict[str, Any], device: str = "cpu",
                          dtype: torch.dtype | None = None) -> HookedTransformerConfig:
    """Rebuild a `HookedTransformerConfig` from `config_to_json_dict` output (unknown keys ignored)."""
    names = {f.name for f in dataclasses.fields(HookedTransformerConfig)}
    kwargs = {k: v for k, v in data.items() if k in names}
    if isinstance(kwargs.get("dtype"), str):
        kwargs["dtype"] = getattr(torch, kwargs["dtype"].removeprefix("torch."))
    if dtype is not None:
        kwargs["dtype"] = dtype
    kwargs["device"] = device
    with _preserved_rng():
        return HookedTransformerConfig(**kwargs)


# ---------------------------------------------------------------------------- local folders


def _write_atomic(path: Path, write: Any) -> None:
    """Call `write(tmp_path)`, then rename over `path` (a killed process leaves no half file)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.chmod(tmp, 0o644)  # some writers create 0600 temp files
    os.replace(tmp, path)


def save_state_dict(model: HookedTransformer, path: str | Path) -> None:
    """Write the model's parameters as safetensors, atomically.

    Buffers (causal masks, rotary tables) are not saved: the config rebuilds them.
    """
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.named_parameters()}
    _write_atomic(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def save_model_dir(model: HookedTransformer, path: str | Path,
                   tokenizer: Tokenizer | PreTrainedTokenizerBase | None | bool = None) -> Path:
    """Save `model` as a saekit model folder: `tokenizer.json`, `model.safetensors`, `config.json`.

    The tokenizer is `tokenizer` or else `model.tokenizer` when that is a fast tokenizer (a slow
    one is not saved; `tokenizer=False` saves none: a GGUF's folder keeps its own under `hf_tokenizer/`). `config.json` is written last, so a folder with it is complete.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    if tokenizer is not False and isinstance(tokenizer, (Tokenizer, PreTrainedTokenizerFast)):
        tok = raw_tokenizer(tokenizer)
        _write_atomic(path / TOKENIZER_FILE, lambda tmp: tok.save(str(tmp)))
    save_state_dict(model, path / WEIGHTS_FILE)
    config = {"saekit_format_version": FORMAT_VERSION, **config_to_json_dict(model.cfg)}
    _write_atomic(path / CONFIG_FILE, lambda tmp: tmp.write_text(json.dumps(config, indent=1)))
    return path


def is_model_dir(path: str | Path) -> bool:
    """Whether `path` holds a complete saekit model folder (config.json and model.safetensors)."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


@contextmanager
def _preserved_rng() -> Iterator[None]:
    """Leave torch's, numpy's and Python's global RNGs as they were (TL's config seeds them all)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(py_state)
    np.random.set_state(np_state)
