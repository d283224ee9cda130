"""The demo's numbers, read back from its files: `summarize` (summary.json) and the printed table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from saekit.config import config_to_dict
from saekit.demo.steps import SUMMARY_FORMAT, DemoConfig, llm_settings, match_dir, sae_dirs


def _mean(values: list[Any]) -> float | None:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(finite)) if finite else None


def summarize(config: DemoConfig) -> dict[str, Any]:
    """The numbers of the run, read back from its files: per init variant and width the seeds' mean
    FVU, L0, dead fraction, CE recovered, fraction shared and matched decoder cosine; per init
    variant, scorer and method the mean score over the scored latents (seed 0, every width)."""
    from saekit.interp.score.run import read_scores, summarize_scores

    by_width: dict[str, dict[str, dict[str, Any]]] = {}
    scores: dict[str, dict[str, dict[str, Any]]] = {}
    skipped: dict[str, list[dict[str, Any]]] = {init: [] for init in config.inits}
    for init in config.inits:
        by_width[init] = {}
        rows: list[dict[str, Any]] = []
        for width in config.widths:
            evals = [json.loads((d / "eval.json").read_text()) for d in sae_dirs(config, init, width)]
            match = json.loads((match_dir(config, init, width) / "match.json").read_text())
            by_width[init][str(width)] = {
                **{key: _mean([e.get(key) for e in evals]) for key in ("fvu", "l0", "dead_fraction", "ce_loss_score")},
                **match_numbers(match),
            }
            scores_file = sae_dirs(config, init, width)[0] / "records" / "scores.jsonl"
            rows += read_scores(scores_file)
            skipped[init] += [{"width": width, **s} for s in _skipped(scores_file)]
        scores[init] = {scorer: {method: {k: s[k] for k in ("mean", "n", "ci_low", "ci_high", "chance", "n_failed")}
                                 for method, s in methods.items()}
                        for scorer, methods in summarize_scores(rows, n_boot=200).items()}
    null = {str(w): {**match_numbers(json.loads((match_dir(config, "null", w) / "match.json").read_text())),
                     "same_partner": None}  # 1 by construction at init (decoder = encoder^T): no baseline
            for w in config.widths if (match_dir(config, "null", w) / "match.json").exists()}
    return {"format": SUMMARY_FORMAT, "format_version": 1, "config": config_to_dict(config),
            "llm_backend": llm_settings(config)[0], "by_width": by_width, "null_matching": null, "scores": scores,
            "skipped": skipped}


def _skipped(scores_file: Path) -> list[dict[str, Any]]:
    """The latents the window scorers skipped, with why (scores_summary.json beside scores_file)."""
    from saekit.interp.score.run import summary_path

    path = summary_path(scores_file)
    return json.loads(path.read_text()).get("skipped", []) if path.exists() else []


def match_numbers(match: dict[str, Any]) -> dict[str, Any]:
    """Mean over a match.json's pairs: fraction shared at the threshold, fraction whose decoder and
    encoder assignments pick the same partner, mean matched decoder cosine, and the threshold curve."""
    pairs = list(match["pairs"].values())
    curves = [p.get("threshold_curve") or [] for p in pairs]
    return {"fraction_shared": _mean([p["fraction_shared"] for p in pairs]),
            "same_partner": _mean([p.get("fraction_same_partner") for p in pairs]),
            "decoder_mean_cos": _mean([p["decoder"]["mean_matched_cos"] for p in pairs]),
            "threshold_curve": curves[0] if len(curves) == 1 else curves}


def summary_table(summary: dict[str, Any]) -> list[str]:
    """The printed table: one row per init variant and width, then the mean scores per method."""
    def num(value: Any, width: int, digits: int = 3) -> str:
        return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"

    threshold = summary["config"]["threshold"]
    lines = [f"{'model':<10}{'d_sae':>7}{'FVU':>9}{'L0':>8}{'dead':>8}{'CE rec':>9}{f'shared@{threshold}':>13}"
             f"{'same ptnr':>11}{'dec cos':>9}"]
    rows = [(init, width, r) for init, widths in summary["by_width"].items() for width, r in widths.items()]
    rows += [("untrained", width, {"fvu": None, "l0": None, "dead_fraction": None, "ce_loss_score": None, **r})
             for width, r in summary.get("null_matching", {}).items()]
    for init, width, r in rows:
        lines.append(f"{init:<10}{width:>7}{num(r['fvu'], 9, 4)}{num(r['l0'], 8, 1)}{num(r['dead_fraction'], 8)}"
                     f"{num(r['ce_loss_score'], 9)}{num(r['fraction_shared'], 13)}{num(r.get('same_partner'), 11)}"
                     f"{num(r['decoder_mean_cos'], 9)}")
    if summary.get("null_matching"):
        lines.append("(untrained: two seeds' SAEs at initialisation, no data: the matching's null baseline)")
    if any(init != "trained" for init in summary["by_width"]):
        lines.append("(CE rec of a randomly initialised model can be ill-conditioned: its CE is near log(vocab) "
                     "whatever the hook holds, so CE zero - CE clean can be tiny)")
    for scorer in dict.fromkeys(s for by in summary["scores"].values() for s in by):
        found = {m for by in summary["scores"].values() for m in by.get(scorer, {})}
        asked = summary["config"]["methods"]
        methods = [m for m in asked if m in found] + sorted(found - set(asked))
        chance = next(s["chance"] for by in summary["scores"].values() for s in by.get(scorer, {}).values())
        lines += ["", f"mean {scorer} score per description method [95% CI] (chance {chance:.2f}; n = latents "
                      f"scored):", f"{'model':<10}" + "".join(f"{m:>26}" for m in methods)]
        for init, by in summary["scores"].items():
            cells = []
            for m in methods:
                s = by.get(scorer, {}).get(m)
                cells.append(f"{s['mean']:.3f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}] n={s['n']:<3}"
                             if s and s["mean"] is not None else "-")
            lines.append(f"{init:<10}" + "".join(f"{c:>26}" for c in cells))
    for init, found in summary.get("skipped", {}).items():
        if found:
            lines.append(f"({init}: {len(found)} latents skipped by the window scorers, e.g. latent "
                         f"{found[0]['latent']}: {found[0]['reason']}; all in summary.json)")
    return lines
