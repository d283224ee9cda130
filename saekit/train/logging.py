"""Per-step logs of a training run: `training_log.jsonl` in each SAE's folder (and wandb/TensorBoard
when asked for and installed). On resume, lines after the checkpoint's step are dropped, so the log
of a resumed run reads like the log of an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

LOG_FILE = "training_log.jsonl"


class RunLogger:
    """Writes one JSON line per SAE every `log_every` steps; `last[name]` holds the latest line."""

    def __init__(self, out: Path, names: list[str], resume_step: int, config: Any, enabled: bool = True) -> None:
        self.enabled = enabled
        self.last: dict[str, dict[str, float]] = {}
        self.files = {}
        self.wandb = None
        self.tensorboard = None
        if not enabled:
            return
        for name in names:
            path = Path(out) / name / LOG_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            _truncate_after(path, resume_step)
            self.files[name] = path.open("a")
        if config.wandb_project:
            try:
                import wandb

                self.wandb = wandb.init(project=config.wandb_project, config=vars(config), resume="allow")
            except ImportError:
                print("wandb is not installed: logging to training_log.jsonl only")
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(Path(out) / "tensorboard"))
            except ImportError:
                print("tensorboard is not installed: logging to training_log.jsonl only")

    def log(self, step: int, tokens: int, optimizer: torch.optim.Optimizer, members: list[Any], config: Any,
            tokens_per_s: float) -> None:
        """Means of each SAE's loss terms since the last line, its dead fraction and learning rate."""
        for group, m in zip(optimizer.param_groups, members):
            n = max(float(m.sums["n"]), 1.0)
            line = {"step": step, "tokens": tokens, "lr": group["lr"]}
            line.update({k: float(v) / n for k, v in m.sums.items() if k != "n"})
            line["dead_fraction"] = float((m.tokens_since_fired >= config.dead_tokens).float().mean())
            line["tokens_per_s"] = tokens_per_s
            for v in m.sums.values():
                v.zero_()
            self.last[m.name] = line
            if not self.enabled:
                continue
            self.files[m.name].write(json.dumps(line) + "\n")
            self.files[m.name].flush()
            if self.wandb is not None:
                self.wandb.log({f"{m.name}/{k}": v for k, v in line.items()}, step=step)
            if self.tensorboard is not None:
                for k, v in line.items():
                    self.tensorboard.add_scalar(f"{m.name}/{k}", v, step)

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def _truncate_after(path: Path, step: int) -> None:
    """Keep only the lines of `path` whose step is <= step (a fresh run: step 0 empties it)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError):
            break  # a line cut by a kill: drop it and what follows
    path.write_text("".join(k + "\n" for k in kept))
