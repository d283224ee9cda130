"""`load_sae(source)`: every SAE saekit reads, as one of saekit's SAE classes; `export_sae` back out.

Sources, tried in this order:

| source | how it is read |
|---|---|
| an `SAE` (saekit) | returned as is |
| a sae-lens SAE object | `saelens_format.from_saelens_sae` |
| a folder with cfg.json + sae_weights.safetensors | saekit's or SAELens's format (`io.sae_from_cfg_json`) |
| a folder with cfg.json + sae.safetensors | sparsify (`sparsify_format.convert_sparsify`) |
| a folder of such folders | a sparsify multi-hookpoint checkpoint: pass `hookpoint` |
| `saelens:RELEASE/SAE_ID`, or `RELEASE/SAE_ID` with RELEASE in sae-lens's registry | `sae_lens.SAE.from_pretrained` |
| `sparsify:OWNER/REPO[/HOOKPOINT]`, or another `OWNER/REPO[/HOOKPOINT]` | `snapshot_download`, then as a folder |

Hook names: a saekit/SAELens folder's `hook_name`; a sparsify folder's cfg.json `hook_name`, else
the module it was selected by in a multi-hookpoint checkpoint, else (a standalone folder) its name
only when that is a module name of `sparsify_format.HOOKPOINT_TABLE` (`layers.6`); otherwise ''.

Untrusted files: weights are read from safetensors only. A folder whose weights exist only as a
pickle (.pt, .pth, .pkl, .bin, .ckpt) is refused, naming the file, unless `allow_pickle=True`
(CLI `--allow-pickle`); then it is read with `torch.load(weights_only=True)`. Pickle files next to
safetensors weights are never opened (a warning names them).
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from saekit.sae.base import SAE
from saekit.sae.io import CFG_FILENAME, WEIGHTS_FILENAME, sae_from_cfg_json, sae_from_tensors
from saekit.sae.saelens_format import export_saelens, from_saelens_sae, load_saelens_registry, saelens_releases
from saekit.sae.sparsify_format import (
    SPARSIFY_WEIGHTS, convert_sparsify, export_sparsify, is_module_name, is_sparsify_cfg, resolve_hookpoint,
    tl_hook_name,
)

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")
EXPORT_FORMATS = ("saelens", "sparsify")
PUBLISHED_ROOT = Path("runs") / "published"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/.+)?$")


class UnsafeFileError(ValueError):
    """A folder's weights are only available as a pickle, and allow_pickle was not given."""


def load_sae(source: Any, hookpoint: str | None = None, device: str | torch.device = "cpu",
             allow_pickle: bool = False, dtype: str | None = None) -> SAE:
    """The SAE at `source` (see the module docstring) as a saekit SAE, in eval mode.

    hookpoint: which SAE of a sparsify multi-hookpoint checkpoint (folder name such as `layers.6`,
    or the TransformerLens hook it maps to). dtype: cast the parameters (e.g. "float32" for a
    bfloat16 checkpoint on CPU); None keeps the file's.
    """
    if isinstance(source, SAE):
        sae = source
    elif hasattr(source, "cfg") and hasattr(source, "W_dec") and hasattr(source, "state_dict"):
        sae = from_saelens_sae(source, device=device)
    else:
        kind, location, sub = parse_source(str(source))
        if kind == "dir":
            sae = load_sae_folder(location, hookpoint, device, allow_pickle)
        elif kind == "saelens":
            release, sae_id = location.split("/", 1)
            sae = load_saelens_registry(release, sae_id, device=device)
        else:
            sae = load_sparsify_hub(location, hookpoint or sub, device, allow_pickle)
    if dtype is not None:
        sae = sae.to(getattr(torch, dtype))
        sae.cfg = dataclasses.replace(sae.cfg, dtype=dtype)
    return sae.eval()


def parse_source(source: str) -> tuple[str, str, str | None]:
    """(kind, location, hookpoint) of a source string: kind is 'dir', 'saelens' or 'sparsify'."""
    if source.startswith("saelens:"):
        location = source.removeprefix("saelens:")
        if "/" not in location:
            raise ValueError(f"{source!r}: a sae-lens registry id is RELEASE/SAE_ID")
        return "saelens", location, None
    if source.startswith("sparsify:"):
        return ("sparsify", *_split_repo(source.removeprefix("sparsify:"), source))
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{source}: an SAE is a folder (cfg.json + weights); got a file")
        return "dir", str(path), None
    first = source.split("/", 1)[0]
    if "/" in source and first in saelens_releases():
        return "saelens", source, None
    if _HUB_ID.match(source) and not Path(first).exists():
        return ("sparsify", *_split_repo(source, source))
    raise FileNotFoundError(f"{source}: no such SAE folder, and not a sae-lens registry id (RELEASE/SAE_ID) "
                            "or a hub repo (OWNER/REPO)")


def _split_repo(location: str, source: str) -> tuple[str, str | None]:
    parts = location.split("/", 2)
    if len(parts) < 2 or not all(parts[:2]):
        raise ValueError(f"{source!r}: a sparsify hub source is OWNER/REPO[/HOOKPOINT]")
    return "/".join(parts[:2]), (parts[2] if len(parts) == 3 else None)


def load_sae_folder(path: str | Path, hookpoint: str | None = None, device: str | torch.device = "cpu",
                    allow_pickle: bool = False) -> SAE:
    """The SAE in a local folder of any format saekit reads (see the module docstring)."""
    path = Path(path)
    standalone = (path / CFG_FILENAME).is_file()
    if not standalone:
        if not any(path.glob("*/cfg.json")) and not any(path.glob("*/*/cfg.json")):
            raise FileNotFoundError(f"{path / CFG_FILENAME} not found: an SAE folder holds {CFG_FILENAME} and "
                                    f"{WEIGHTS_FILENAME} (saekit, SAELens) or {SPARSIFY_WEIGHTS} (sparsify)")
        path = resolve_hookpoint(path, hookpoint)
    elif hookpoint is not None and hookpoint not in (path.name, tl_hook_name(path.name, warn=False)):
        raise ValueError(f"{path} holds one SAE (not a multi-hookpoint checkpoint); hookpoint {hookpoint!r} "
                         "does not apply to it")
    cfg_path = path / CFG_FILENAME
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_path}: not valid JSON ({err})") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{cfg_path}: expected a JSON object")
    tensors, weights_path = read_weights(path, allow_pickle)
    if weights_path.name == SPARSIFY_WEIGHTS or is_sparsify_cfg(raw):
        name = path.parent.name if re.fullmatch(r"seed\d+", path.name) else path.name
        if standalone and not is_module_name(name):  # a folder's own name is no hook name (`seed0`, `run3`)
            name = ""
        cfg, ours = convert_sparsify(raw, tensors, name, source=str(cfg_path))
        return sae_from_tensors(cfg, ours, device, cfg_path, weights_path)
    return sae_from_cfg_json(raw, tensors, device, cfg_path, weights_path)


def read_weights(folder: Path, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], Path]:
    """(tensors, file) of an SAE folder: sae_weights.safetensors or sae.safetensors; a pickle only
    when allow_pickle (read with torch.load(weights_only=True)), else UnsafeFileError naming it."""
    pickles = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    for name in (WEIGHTS_FILENAME, SPARSIFY_WEIGHTS):
        if (folder / name).is_file():
            if pickles:
                warnings.warn(f"{folder}: not opening pickle file(s) {[p.name for p in pickles]}; "
                              f"the weights are read from {name}", stacklevel=3)
            return load_file(str(folder / name)), folder / name
    if not pickles:
        raise FileNotFoundError(f"{folder}: no weights file: expected {WEIGHTS_FILENAME} (saekit, SAELens) "
                                f"or {SPARSIFY_WEIGHTS} (sparsify)")
    if not allow_pickle:
        raise UnsafeFileError(
            f"{folder}: the weights are only in pickle file {pickles[0].name!r}"
            + (f" (and {[p.name for p in pickles[1:]]})" if len(pickles) > 1 else "")
            + "; a pickle can run code when it is opened, so saekit reads safetensors only. If you trust "
            "this file, pass allow_pickle=True (CLI: --allow-pickle): it is then read with "
            "torch.load(weights_only=True)")
    if len(pickles) > 1:
        raise ValueError(f"{folder}: several pickle files {[p.name for p in pickles]}; keep the weights only")
    state = torch.load(pickles[0], map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise ValueError(f"{pickles[0]}: expected a dict of tensors (a state dict)")
    return dict(state), pickles[0]


def load_sparsify_hub(repo: str, hookpoint: str | None = None, device: str | torch.device = "cpu",
                      allow_pickle: bool = False) -> SAE:
    """An SAE from a hub repo of sparsify SAEs (downloads only `hookpoint/*` when given)."""
    from huggingface_hub import snapshot_download

    # A TransformerLens hook name says nothing about the folder: download the repo and match it there.
    patterns = [f"{hookpoint}/*"] if hookpoint and not hookpoint.startswith("blocks.") else None
    root = Path(snapshot_download(repo, allow_patterns=patterns))
    if patterns and not (root / hookpoint).is_dir():
        raise FileNotFoundError(f"sparsify hub repo {repo!r} has no hookpoint {hookpoint!r}; it holds: "
                                f"{', '.join(hub_hookpoints(repo)) or 'no <hookpoint>/cfg.json at all'}")
    return load_sae_folder(root, hookpoint, device, allow_pickle)


def hub_hookpoints(repo: str) -> list[str]:
    """The hookpoints (folders with a cfg.json) of a sparsify hub repo, from its file list."""
    from huggingface_hub import HfApi

    files = HfApi().list_repo_files(repo)
    return sorted({f.rsplit("/", 1)[0] for f in files if f.endswith("/" + CFG_FILENAME)})


def output_dir_for(source: str, hookpoint: str | None = None) -> Path:
    """Where results about an SAE are written: its own folder when it is local; for a registry or
    hub SAE, runs/published/<release or owner/repo>/<sae_id or hookpoint>/ under the working directory.
    A local path that does not exist yet (an SAE a recipe will train first) is its own folder too."""
    try:
        kind, location, sub = parse_source(str(source))
    except FileNotFoundError:
        return Path(source).expanduser()
    if kind == "dir":
        folder = Path(location)
        return resolve_hookpoint(folder, hookpoint) if hookpoint and not (folder / CFG_FILENAME).is_file() else folder
    parts = [location] + [p for p in (hookpoint or sub,) if p]
    return PUBLISHED_ROOT.joinpath(*[part.replace(":", "_") for part in parts])


def export_sae(source: Any, to: str, out: str | Path, hookpoint: str | None = None,
               allow_pickle: bool = False) -> Path:
    """Write the SAE at `source` (anything `load_sae` reads) to folder `out` in format `to`:
    'saelens' (for sae_lens.SAE.load_from_disk) or 'sparsify' (for SparseCoder.load_from_disk, TopK only)."""
    if to not in EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {EXPORT_FORMATS}, got {to!r}")
    sae = load_sae(source, hookpoint=hookpoint, allow_pickle=allow_pickle)
    return export_saelens(sae, out) if to == "saelens" else export_sparsify(sae, out)
