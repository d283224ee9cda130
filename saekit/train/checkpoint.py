"""Training checkpoints: safetensors for tensors, JSON for the rest; written atomically.

    out/checkpoints/step_00001200/tensors.safetensors   SAE parameters and buffers, Adam moments,
                                                        tokens-since-fired, torch RNG states
    out/checkpoints/step_00001200/state.json            step, tokens, scheduler, optimiser groups,
                                                        store position, input scales
    out/checkpoints/latest.json                         the newest complete checkpoint

A readable checkpoint exists at every instant, so a kill at any moment leaves one to resume from:
the new checkpoint is written under a temporary name and fsynced, renamed to a name no other
checkpoint has (`step_00001200`, or `step_00001200.1`, .2, ... when step 1200 is written again, as
re-running a finished run does), `latest.json` is then replaced atomically to name it, and only
then are the old checkpoints deleted. `saekit.train.pause` can stop the writer between these steps.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from saekit.files import write_json_atomic
from saekit.train import pause

CHECKPOINT_DIR = "checkpoints"


def save_checkpoint(out: Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any],
                    keep: int = 1) -> Path:
    """Write checkpoint `step` and point latest.json at it; delete all but the newest `keep`.

    Never deletes or overwrites the checkpoint latest.json names before latest.json names the new one.
    """
    root = Path(out) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp_step_*"):  # left by a writer killed mid-way: never named by latest.json
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp_step_{step:08d}_{os.getpid()}"
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "tensors.safetensors"))
    write_json_atomic(tmp / "state.json", state)
    with (tmp / "tensors.safetensors").open("rb") as f:
        os.fsync(f.fileno())
    pause.pause_point("checkpoint-written", step)
    final = _unused_name(root, step)
    os.replace(tmp, final)
    _fsync_dir(root)
    pause.pause_point("checkpoint-swap", step)
    write_json_atomic(root / "latest.json", {"step": step, "path": final.name})
    _fsync_dir(root)
    pause.pause_point("checkpoint-pointer", step)
    older = sorted((p for p in root.glob("step_*") if p != final and _order(p) is not None), key=_order)
    for old in older[:max(0, len(older) - (max(1, keep) - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _order(folder: Path) -> tuple[int, int] | None:
    """(step, rewrite) of a checkpoint folder `step_00001200[.N]`; None for any other name."""
    base, _, rewrite = folder.name.removeprefix("step_").partition(".")
    if not base.isdigit() or (rewrite and not rewrite.isdigit()):
        return None
    return int(base), int(rewrite or 0)


def _unused_name(root: Path, step: int) -> Path:
    """`step_{step}` when no checkpoint of this step exists, else `step_{step}.N` after the newest."""
    taken = [o[1] for p in root.glob(f"step_{step:08d}*") if (o := _order(p)) is not None and o[0] == step]
    return root / (f"step_{step:08d}" if not taken else f"step_{step:08d}.{max(taken) + 1}")


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_latest_checkpoint(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """(tensors, state) of the newest complete checkpoint under `out`, or None when there is none."""
    root = Path(out) / CHECKPOINT_DIR
    latest = root / "latest.json"
    if not latest.exists():
        return None
    folder = root / json.loads(latest.read_text())["path"]
    try:
        tensors = load_file(str(folder / "tensors.safetensors"))
        state = json.loads((folder / "state.json").read_text())
    except (OSError, json.JSONDecodeError, Exception) as e:  # safetensors raises its own error type
        raise ValueError(f"{folder}: checkpoint cannot be read ({e}); move it away to start over") from None
    return tensors, state


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimiser's state dict split into tensors (`opt/{param}/{key}`) and JSON (the groups)."""
    state_dict = optimizer.state_dict()
    tensors = {f"opt/{index}/{key}": value for index, per_param in state_dict["state"].items()
               for key, value in per_param.items() if isinstance(value, torch.Tensor)}
    scalars = {str(index): {key: value for key, value in per_param.items() if not isinstance(value, torch.Tensor)}
               for index, per_param in state_dict["state"].items()}
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                        meta: dict[str, Any]) -> None:
    """Load what `optimizer_to_flat` gave back into `optimizer` (tensors moved to the params' devices)."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("opt/"):
            _, index, key = name.split("/", 2)
            state.setdefault(int(index), {})[key] = value
    for index, scalars in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(scalars)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    # Moments come back contiguous; give them their parameter's strides (W_enc is stored transposed),
    # since fused Adam walks param, grad and moments as one memory layout.
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                    optimizer.state[param][key] = torch.empty_like(param).copy_(value)


def rng_tensors() -> dict[str, torch.Tensor]:
    """torch's CPU (and CUDA) RNG states as uint8 tensors."""
    states = {"rng/cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"rng/cuda{i}"] = s
    return states


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    if "rng/cpu" in tensors:
        torch.set_rng_state(tensors["rng/cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
