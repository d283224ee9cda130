"""Seed sharing of SAEs, transcoders and skip-transcoders on one MLP (Paulo & Belrose's question, asked
of the architectures of Paulo et al. 2025): are a transcoder's latents as seed-dependent as an SAE's?

One `saekit train` pass (the TOML of `train_config`, which `saekit train` runs as it is) over a cache
holding the MLP's input and output hooks trains, for each seed:
an SAE on the input hook, an SAE on the output hook, a transcoder input -> output, and a
skip-transcoder; every model sees the same batches, only the initialisation differs. Each kind's
seed pairs are matched (`saekit.match.match_pair`: decoder and encoder assignments); shared = both
matched cosines >= threshold. Intervals: 95% bootstraps over latents within each pair
(analysis/study_stats.py). Held-out FVU of each model (`saekit eval`, of the prediction for
transcoders), and CE recovered / KL of the seed-0 models spliced into the model.

    python analysis/arch_seed_sharing.py analysis/configs/arch_seed_sharing_gemma.toml

Writes OUT/results.json and OUT/report.md (the README table).
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from study_stats import grouped_fraction_ci  # noqa: E402

from saekit.config import config_from_argv, doc  # noqa: E402


@dataclass
class ArchSeedSharingConfig:
    """The cache, the grid and the matching of the SAE / transcoder seed-sharing comparison."""

    train_config: str = doc("the `saekit train` TOML: hooks = [IN, OUT], transcode = {IN = OUT}, "
                            "skip_connection = [false, true], one d_sae and k, the seeds",
                            "training/configs/train_gemma_transcoders.toml")
    out: str = doc("folder of results.json and report.md", "runs/arch-gemma")
    threshold: float = doc("shared: both matched cosines at least this", 0.7)
    eval_tokens: int = doc("held-out tokens for FVU", 15_000)
    ce_contexts: int = doc("contexts for CE/KL of the seed-0 models (0: skip)", 16)
    n_boot: int = doc("bootstrap resamples", 1000)
    device: str = doc("auto | cpu | cuda", "auto")


def kinds(train: Any) -> dict[str, list[Path]]:
    """label -> the seeds' folders, for the SAEs on each hook and the (skip-)transcoders."""
    (hook_in, hook_out), = train.transcode.items()
    base = f"{train.architecture}-{train.d_sae[0]}-k{train.k[0]}-seed{{seed}}"
    patterns = {f"SAE on {hook}": f"{hook}/{base}" for hook in train.hooks}
    patterns.update({"transcoder": f"{hook_in}/transcoder-{hook_out}-{base}",
                     "skip-transcoder": f"{hook_in}/skip-transcoder-{hook_out}-{base}"})
    return {label: [Path(train.out) / p.format(seed=s) for s in train.seeds] for label, p in patterns.items()}


def train_all(train_config: Any) -> float:
    """The one training pass (resumes; a finished run only rewrites its files); its wall time in seconds."""
    from saekit.train import train

    started = time.time()
    train(train_config)
    return time.time() - started


def match_kind(folders: list[Path], config: ArchSeedSharingConfig) -> dict[str, Any]:
    """Shared fraction and matched decoder / encoder cosines over the seed pairs, with intervals."""
    from saekit.match import match_pair
    from saekit.sae import load_sae_dir

    saes = [load_sae_dir(f) for f in folders]
    shared, dec, enc = [], [], []
    for a, b in itertools.combinations(range(len(saes)), 2):
        side = match_pair(saes[a], saes[b]).small
        shared.append(side.shared(config.threshold))
        dec.append(side.decoder_cos.astype(float))
        enc.append(side.encoder_cos.astype(float))
    s, d, e = (grouped_fraction_ci(x, config.n_boot) for x in (shared, dec, enc))
    return {"shared": s, "decoder_cos": d, "encoder_cos": e,
            "pair_shared": [float(x.mean()) for x in shared], "n_pairs": len(shared)}


def evaluate_kind(folders: list[Path], config: ArchSeedSharingConfig, cache: str) -> dict[str, Any]:
    """Held-out FVU and L0 of every seed; CE recovered and KL of seed 0."""
    from saekit.eval import EvalConfig, evaluate

    fvus, l0s, ce = [], [], {}
    for i, folder in enumerate(folders):
        result = evaluate(EvalConfig(sae=str(folder), cache=cache, n_tokens=config.eval_tokens,
                                     ce_contexts=config.ce_contexts if i == 0 else 0, device=config.device,
                                     write=True), progress=False)
        fvus.append(result["fvu"])
        l0s.append(result["l0"])
        if i == 0 and "ce_loss_score" in result:
            ce = {"ce_loss_score": result["ce_loss_score"], "kl_sae": result["kl_sae"]}
    return {"fvu": fvus, "l0": l0s, **ce}


def report(rows: dict[str, dict[str, Any]], config: ArchSeedSharingConfig, train: Any,
           seconds: dict[str, float]) -> str:
    def ci(t: tuple[float, float, float]) -> str:
        return f"{t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}]"

    lines = [f"| model ({train.d_sae[0]} latents, k {train.k[0]}, {len(train.seeds)} seeds) | shared at {config.threshold} "
             "[95% CI] | pair range | matched decoder cos [95% CI] | matched encoder cos | held-out FVU (seeds) "
             "| L0 | CE recovered / KL (seed 0) |", "|---|---|---|---|---|---|---|---|"]
    for label, row in rows.items():
        ce = (f"{row['ce_loss_score']:.3f} / {row['kl_sae']:.3f}" if "ce_loss_score" in row else "-")
        lines.append(f"| {label} | {ci(row['shared'])} | {min(row['pair_shared']):.3f}-{max(row['pair_shared']):.3f} | "
                     f"{ci(row['decoder_cos'])} | {row['encoder_cos'][0]:.3f} | "
                     f"{', '.join(f'{v:.3f}' for v in row['fvu'])} | {np.mean(row['l0']):.1f} | {ce} |")
    lines.append("")
    lines.append("Wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items()) + ".")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from saekit.config import load_config
    from saekit.train import TrainConfig

    config = config_from_argv(ArchSeedSharingConfig, argv, __doc__.split("\n")[0])
    train_config = load_config(TrainConfig, config.train_config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds = {"training (one pass, all models; 0 when already trained)": train_all(train_config)}
    rows: dict[str, dict[str, Any]] = {}
    started = time.time()
    for label, folders in kinds(train_config).items():
        rows[label] = {**match_kind(folders, config), **evaluate_kind(folders, config, train_config.cache)}
        print(label, json.dumps({k: v for k, v in rows[label].items()}, default=float), flush=True)
    seconds["matching and evaluation"] = time.time() - started
    (out / "results.json").write_text(json.dumps({"config": vars(config), "rows": rows, "seconds": seconds},
                                                 indent=2, default=float) + "\n")
    text = report(rows, config, train_config, seconds)
    (out / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
