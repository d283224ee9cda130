"""Input- vs output-centric descriptions (Gur-Arieh et al. 2025): MaxAct, VocabProj, TokenChange and
their ensembles, each scored by the input-side and the output-side judge-free scorers on the same
latents of one SAE, beside the paper's table.

    python analysis/input_vs_output.py analysis/configs/input_vs_output_gemma.toml [--field value ...]

Steps (each skipped when its file exists, so a rerun resumes):
1. pick `n_candidates` random latents of the SAE and collect their records from the cache's held-out
   part (`collect_tokens` from its end);
2. describe them with every method (offline: raw descriptions; an ensemble's is its parts' joined);
3. score every description with every scorer (default: judgefree-input, the held-out windows' AUROC
   by how many of their tokens the description names; judgefree-output, the promotion rank of the
   description's tokens under steering at the target KL among other latents' descriptions; and the
   embedding scorer);
4. OUT/report: results.csv (one row per scorer and method, mean and 95% CI over the latents scored by
   every method), latents.csv, figures.html, report.md (the table beside the paper's, and the paper's
   three findings checked with paired bootstrap differences) and summary.json.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saekit.config import config_from_argv, config_to_dict, doc
from study_stats import mean_ci

PAPER = {  # Gur-Arieh et al. 2025, success rates (%) recomputed from their released CSVs (shared/PAPERS.md)
    "columns": ["maxact", "vocabproj", "tokenchange", "maxact+vocabproj", "maxact+tokenchange",
                "maxact+vocabproj+tokenchange"],
    "GPT-2 small, input": [42.5, 16.4, 17.9, 54.8, 55.2, 56.7],
    "GPT-2 small, output": [40.7, 42.4, 40.1, 42.8, 45.3, 44.3],
    "Llama-3.1-8B, input": [43.3, 19.2, 23.3, 49.4, 51.4, 49.3],
    "Llama-3.1-8B, output": [60.8, 56.3, 62.6, 57.4, 58.5, 61.5],
    "finding": "MaxAct describes inputs best, VocabProj/TokenChange outputs; the ensembles are best on both",
}
INPUT_SCORERS = ("judgefree-input", "embedding", "input", "detection", "fuzzing")
OUTPUT_SCORERS = ("judgefree-output", "output")


@dataclass
class InputVsOutputConfig:
    """The SAE, the latents, the methods and the scorers."""

    out: str = doc("run directory (records/, scores, report/)", "runs/input-vs-output")
    sae: str = doc("SAE folder", "")
    cache: str = doc("activation cache of the SAE's hook point (records come from its last collect_tokens)", "")
    n_candidates: int = doc("random latents collected (dead and rare ones are skipped by the scorers)", 100)
    collect_tokens: int = doc("held-out cache tokens scanned for records (from the cache's end)", 30_000)
    methods: list[str] = doc("description methods", default_factory=lambda: list(PAPER["columns"]))
    scorers: list[str] = doc("scorers", default_factory=lambda: ["judgefree-input", "judgefree-output", "embedding"])
    windows: int = doc("activating and non-activating windows per latent for the window scorers", 20)
    tc_clamp: str = doc("TokenChange clamp (a multiple of each latent's max, '2x', or a value)", "2x")
    tc_sequences: int = doc("TokenChange: sequences per latent", 8)
    backend: str = doc("explainer and judge: none (raw descriptions, judge-free and embedding scorers) | openai | "
                       "transformers (then the paper's scorers too: input, output)", "none")
    llm_model: str = doc("explainer and judge model with a backend", "")
    llm: dict[str, Any] = doc("other LLMConfig fields; cache_dir defaults to OUT/llm_cache", default_factory=dict)
    n_boot: int = doc("bootstrap resamples", 1000)
    seed: int = doc("seed of the latent sample, examples and bootstraps", 0)
    device: str = doc("auto | cpu | cuda", "auto")

    def __post_init__(self) -> None:
        from saekit.interp.explain.run import canonical_method

        self.methods = [canonical_method(m) for m in self.methods]
        if not self.sae or not self.cache:
            raise ValueError("InputVsOutputConfig.sae and .cache are required (an SAE folder and its cache)")
        if "maxact" not in self.methods:
            raise ValueError("InputVsOutputConfig.methods must include maxact (the paper's reference)")


def run_stages(config: InputVsOutputConfig) -> Path:
    """Collect, describe, score (each skipped when done); the records folder."""
    from saekit.interp import (CollectConfig, ExplainConfig, ScoreConfig, collect_records, explain_latents,
                               score_latents)
    from saekit.sae import load_sae

    records = Path(config.out) / "records"
    llm = {"cache_dir": str(Path(config.out) / "llm_cache"), **config.llm}
    d_sae = load_sae(config.sae).cfg.d_sae
    latents = np.random.default_rng(config.seed).permutation(d_sae)[:config.n_candidates].tolist()
    if not (records / "meta.json").exists():
        collect_records(CollectConfig(sae=config.sae, cache=config.cache, out=str(records),
                                      n_tokens=config.collect_tokens, first_context=-1, latents=latents, n_top=20,
                                      n_explain=20, n_test=config.windows, reservoir=max(100, 20 + config.windows),
                                      n_random_negatives=config.windows, n_hard_negatives=10, seed=config.seed,
                                      device=config.device), progress=True)
    if not (records / "explanations.jsonl").exists():
        explain_latents(ExplainConfig(records=str(records), methods=config.methods, vocab_tokens=20,
                                      tc_clamp=config.tc_clamp, tc_sequences=config.tc_sequences,
                                      backend=config.backend, llm_model=config.llm_model, llm=llm,
                                      device=config.device), progress=True)
    if not (records / "scores.jsonl").exists():
        score_latents(ScoreConfig(records=str(records), scorers=config.scorers, n_activating=config.windows,
                                  n_negatives=config.windows, backend=config.backend, llm_model=config.llm_model,
                                  llm=llm, n_boot=200, seed=config.seed, device=config.device), progress=True)
    return records


def score_table(records: Path) -> "Any":
    """[latent x (scorer, method)] scores, NaN where a cell was skipped or failed."""
    import pandas as pd

    rows = [json.loads(line) for line in (records / "scores.jsonl").read_text().splitlines() if line.strip()]
    frame = pd.DataFrame([{k: r.get(k) for k in ("latent", "scorer", "method", "score")} for r in rows])
    return frame.pivot_table(index="latent", columns=["scorer", "method"], values="score", aggfunc="first")


def paired_difference(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> list[float]:
    """[mean(a - b), 95% bootstrap interval] over latents (a and b: the same latents' scores)."""
    diff = a - b
    rng = np.random.default_rng(seed)
    boots = diff[rng.integers(0, len(diff), (n_boot, len(diff)))].mean(1)
    low, high = np.percentile(boots, [2.5, 97.5])
    return [float(diff.mean()), float(low), float(high)]


def _verdict(diff: list[float]) -> str:
    return "yes" if diff[1] > 0 else ("NO" if diff[2] < 0 else "unclear")


def findings(table: Any, config: InputVsOutputConfig) -> list[dict[str, Any]]:
    """The paper's three findings, each as paired differences on the latents every method was scored on."""
    checks = []
    singles = [m for m in ("maxact", "vocabproj", "tokenchange") if m in config.methods]
    ensembles = [m for m in config.methods if "+" in m or m == "concat"]
    for scorer in config.scorers:
        if scorer not in table.columns.get_level_values(0):
            continue
        part = table[scorer].dropna()
        side = "input" if scorer in INPUT_SCORERS else "output"
        for other in (m for m in singles if m != "maxact"):
            a, b = (part["maxact"], part[other]) if side == "input" else (part[other], part["maxact"])
            diff = paired_difference(a.to_numpy(), b.to_numpy(), config.n_boot, config.seed)
            better, worse = ("maxact", other) if side == "input" else (other, "maxact")
            checks.append({"scorer": scorer, "claim": f"{better} beats {worse} on {side} evaluation",
                           "difference": diff, "n": len(part), "verdict": _verdict(diff)})
        means = {m: float(part[m].mean()) for m in singles}
        best = max(means, key=means.get)
        for ensemble in ensembles:
            diff = paired_difference(part[ensemble].to_numpy(), part[best].to_numpy(), config.n_boot, config.seed)
            checks.append({"scorer": scorer, "claim": f"{ensemble} beats the best single method ({best}) on {side} "
                           "evaluation", "difference": diff, "n": len(part), "verdict": _verdict(diff)})
    return checks


def results(table: Any, config: InputVsOutputConfig) -> list[dict[str, Any]]:
    """One row per scorer and method: mean and 95% CI over the latents every method of the scorer has."""
    rows = []
    for scorer in config.scorers:
        if scorer not in table.columns.get_level_values(0):
            continue
        part = table[scorer].dropna()
        for method in config.methods:
            mean, low, high = mean_ci(part[method].tolist(), config.n_boot, config.seed)
            rows.append({"scorer": scorer, "side": "input" if scorer in INPUT_SCORERS else "output",
                         "method": method, "mean": mean, "ci_low": low, "ci_high": high, "n": len(part)})
    return rows


def write_report(table: Any, config: InputVsOutputConfig, seconds: float) -> Path:
    """report/: results.csv, latents.csv, summary.json, figures.html and report.md."""
    import pandas as pd
    import plotly.graph_objects as go

    out = Path(config.out) / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows, checks = results(table, config), findings(table, config)
    pd.DataFrame(rows).to_csv(out / "results.csv", index=False)
    flat = table.copy()
    flat.columns = [f"{s}:{m}" for s, m in flat.columns]
    flat.to_csv(out / "latents.csv")
    (out / "summary.json").write_text(json.dumps({"config": config_to_dict(config), "rows": rows, "checks": checks,
                                                   "paper": PAPER, "seconds": round(seconds, 1)}, indent=2) + "\n")
    fig = go.Figure()
    for scorer in dict.fromkeys(r["scorer"] for r in rows):
        mine = [r for r in rows if r["scorer"] == scorer]
        fig.add_trace(go.Bar(x=[r["method"] for r in mine], y=[r["mean"] for r in mine], name=scorer,
                             error_y=dict(type="data", symmetric=False,
                                          array=[r["ci_high"] - r["mean"] for r in mine],
                                          arrayminus=[r["mean"] - r["ci_low"] for r in mine])))
    fig.update_layout(title="Judge-free scores by description method (95% CI)", barmode="group",
                      yaxis_title="score (chance 0.5)")
    (out / "figures.html").write_text("<!DOCTYPE html><html><head><meta charset='utf-8'><title>input vs output"
                                      "</title></head><body>" + fig.to_html(full_html=False) + "</body></html>")
    lines = ["# Input- vs output-centric descriptions", "",
             f"SAE `{config.sae}`; {config.n_candidates} random latents collected, records from the last "
             f"{config.collect_tokens:,} tokens of `{config.cache}`; backend `{config.backend}`; "
             f"{seconds / 60:.1f} minutes in all.", "",
             "| scorer | side | n | " + " | ".join(config.methods) + " |",
             "|---|---|---|" + "---|" * len(config.methods)]
    for scorer in dict.fromkeys(r["scorer"] for r in rows):
        mine = {r["method"]: r for r in rows if r["scorer"] == scorer}
        first = next(iter(mine.values()))
        lines.append(f"| {scorer} | {first['side']} | {first['n']} | " + " | ".join(
            f"{mine[m]['mean']:.3f} [{mine[m]['ci_low']:.3f}, {mine[m]['ci_high']:.3f}]" for m in config.methods) + " |")
    lines += ["", "The paper (success rates, %, gpt-4o-mini explainer and judge):", "",
              "| | " + " | ".join(PAPER["columns"]) + " |", "|---|" + "---|" * len(PAPER["columns"])]
    lines += [f"| {k} | " + " | ".join(f"{v:g}" for v in PAPER[k]) + " |" for k in PAPER
              if k not in ("columns", "finding")]
    lines += ["", f"## The paper's findings ({PAPER['finding']})", "",
              "Paired differences over the same latents, 95% bootstrap interval: `yes` when it is above 0, `NO` "
              "below 0, `unclear` when it contains 0.", "", "| scorer | claim | n | difference [95% CI] | verdict |",
              "|---|---|---|---|---|"]
    for c in checks:
        d = c["difference"]
        lines.append(f"| {c['scorer']} | {c['claim']} | {c['n']} | {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}] | "
                     f"{c['verdict']} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    config = config_from_argv(InputVsOutputConfig, argv, __doc__.split("\n")[0])
    started = time.time()
    records = run_stages(config)
    report = write_report(score_table(records), config, time.time() - started)
    print((report / "report.md").read_text())
    print(f"[input-vs-output] report: {report} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
