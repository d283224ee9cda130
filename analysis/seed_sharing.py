"""Seed sharing (Paulo & Belrose 2025) at small scale: train K seeds of SAEs at several widths, k,
training lengths and two architectures on one cache per model, match the seeds, write a report.

    python analysis/seed_sharing.py analysis/configs/seed_sharing.toml [--out DIR] [--field value ...]

Steps, per model (the tiny LM trained, and a random-init copy of it, by default):
1. cache its activations at `hook` (`saekit cache`; reused when the cache exists);
2. train through `saekit train` (every run: all seeds in one pass): TopK at every width with the
   first k; TopK at `sweep_width` with the other ks; ReLU-L1 at `sweep_width`; TopK at
   `sweep_width` for each shorter entry of `tokens`;
3. match the seeds of every setting (`saekit match`), one match directory each;
4. write OUT/report: results.csv (one row per model and setting), figures.html (shared fraction vs
   width, k, tokens, architecture and threshold; matched-cosine histograms), report.md (the numbers
   next to the paper's, the directions and the sanity checks) and summary.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saekit.config import config_from_argv, config_to_dict, doc

PAPER = {  # Paulo & Belrose 2025, Pythia-160m MLP 6, TopK k=32, 8B tokens (read off their figures)
    "width": "32 / 768 / 4,096 / 32,768 / 131,072 latents: 0.81 / 0.79 / 0.70 / 0.42 / 0.28",
    "k": "k 32 / 64 / 128 / 256 (32K latents): 0.42 / 0.31 / 0.23 / 0.18",
    "tokens": "0.8B / 8B / 80B tokens: 0.07 / 0.42 / 0.61",
    "architecture": "Gated / ReLU-L1 / TopK: 0.86 / 0.82 / 0.74",
    "cosines": "mean Hungarian cosine, decoder 0.82 (32) -> 0.68 (32K) -> 0.60 (131K); encoder lower "
               "(0.84 -> 0.59 -> 0.52)",
}


@dataclass
class SeedSharingConfig:
    """The sweep: models, cache, SAE grid, training lengths, matching."""

    out: str = doc("run directory (caches, SAEs, matches, report/)", "runs/seed-sharing")
    model: str = doc("model of the caches: 'tiny' (the offline tiny LM), a model folder or a TL name", "tiny")
    inits: list[str] = doc("init variants to compare, e.g. trained, random", default_factory=lambda: ["trained", "random"])
    caches: dict[str, str] = doc("existing caches by label instead of caching the model ({label = path})",
                                 default_factory=dict)
    hook: str = doc("hook point of the whole grid", "blocks.1.hook_resid_post")
    extra_hooks: list[str] = doc("more hook points (layers), cached too, where TopK at the smallest width and at "
                                 "sweep_width (first k) is trained", default_factory=list)
    dataset: str = doc("dataset to cache", "stdlib-docstrings")
    cache_tokens: int = doc("tokens to cache per model", 300_000)
    cache_dtype: str = doc("dtype of the cached activations: float32 | float16 | bfloat16", "float32")
    compute_dtype: str = doc("the model's forward pass when caching: float32 | bfloat16 (autocast)", "float32")
    seeds: list[int] = doc("SAE seeds (K >= 2)", default_factory=lambda: [0, 1])
    widths: list[int] = doc("TopK widths (d_sae), trained with the first k", default_factory=lambda: [64, 256, 1024])
    ks: list[int] = doc("TopK k values: the first for every run, the others at sweep_width", default_factory=lambda: [8, 32])
    sweep_width: int = doc("the width of the k, ReLU and training-length comparisons", 256)
    tokens: list[int] = doc("training tokens; the largest trains the grid, the others only sweep_width",
                            default_factory=lambda: [100_000, 500_000])
    relu_l1_coefs: list[float] = doc("ReLU-L1 SAEs' L1 coefficients (one run each; each is compared with the "
                                     "TopK setting of the nearest L0)", default_factory=lambda: [1.0])
    batch_size: int = doc("training batch (tokens)", 256)
    lr: float | None = doc("Adam learning rate (None: the trainer's default for each width)", None)
    dead_tokens: int = doc("tokens without firing before a latent counts as dead (AuxK revives it)", 20_000)
    threshold: float = doc("shared-latent cosine threshold", 0.7)
    report_only: bool = doc("rebuild report/ from the finished training and match folders (no training, no "
                            "matching)", False)
    match_tokens: int = doc("held-out cache tokens for latent frequencies (live = fires there) and "
                            "activation correlations", 50_000)
    n_boot: int = doc("bootstrap resamples of the intervals", 1000)
    device: str = doc("auto | cpu | cuda", "auto")

    def __post_init__(self) -> None:
        if len(self.seeds) < 2:
            raise ValueError(f"SeedSharingConfig.seeds needs at least two seeds, got {self.seeds}")
        if not self.tokens or not self.widths or not self.ks:
            raise ValueError("SeedSharingConfig.tokens, widths and ks must each list at least one value")


def build_caches(config: SeedSharingConfig) -> dict[str, str]:
    """{label: cache dir}: the given caches, or one cache per init variant of the model."""
    if config.caches:
        return dict(config.caches)
    from saekit.data import CacheConfig, cache_activations
    from saekit.data.shards import read_manifest

    caches = {}
    for init in config.inits:
        out = Path(config.out) / f"cache-{init}"
        if not (out / "manifest.json").exists() or not read_manifest(out).get("complete"):
            print(f"[seed-sharing] caching {config.cache_tokens:,} tokens of {config.model} ({init})", flush=True)
            cache_activations(CacheConfig(out=str(out), model=config.model, init=init,
                                          hooks=[config.hook, *config.extra_hooks], n_tokens=config.cache_tokens,
                                          dataset=os.path.expanduser(config.dataset), dtype=config.cache_dtype,
                                          compute_dtype=config.compute_dtype, device=config.device), progress=True)
        caches[init] = str(out)
    return caches


def train_runs(config: SeedSharingConfig) -> list[dict[str, Any]]:
    """The training runs per cache: name, architecture, hooks, d_sae, k and n_tokens lists."""
    longest, k0, hook = max(config.tokens), config.ks[0], [config.hook]
    runs = [{"name": "topk", "architecture": "topk", "hooks": hook, "d_sae": config.widths, "k": [k0],
             "n_tokens": longest}]
    if config.extra_hooks:  # the other layers: the smallest and the sweep width
        runs.append({"name": "topk-layers", "architecture": "topk", "hooks": config.extra_hooks,
                     "d_sae": sorted({min(config.widths), config.sweep_width}), "k": [k0], "n_tokens": longest})
    if len(config.ks) > 1:
        runs.append({"name": "topk-k", "architecture": "topk", "hooks": hook, "d_sae": [config.sweep_width],
                     "k": config.ks[1:], "n_tokens": longest})
    for coef in config.relu_l1_coefs:
        runs.append({"name": f"relu-l1_{coef:g}", "architecture": "relu", "hooks": hook, "d_sae": [config.sweep_width],
                     "k": [k0], "n_tokens": longest, "sae": {"l1_coef": coef}, "l1_coef": coef})
    for n_tokens in sorted(set(config.tokens) - {longest}):
        runs.append({"name": f"topk-{n_tokens}", "architecture": "topk", "hooks": hook, "d_sae": [config.sweep_width],
                     "k": [config.ks[0]], "n_tokens": n_tokens})
    return runs


def training_tokens(cache: str, holdout_fraction: float = 0.05) -> int:
    """Tokens of the cache's training part (its contexts before the evaluation holdout)."""
    from saekit.data.shards import read_manifest

    manifest = read_manifest(cache)
    return int(manifest["n_tokens"] * (1 - holdout_fraction))


def train_and_match(config: SeedSharingConfig, label: str, cache: str) -> list[dict[str, Any]]:
    """Train every run on `cache`, match the seeds of each setting; one result row per setting."""
    from saekit.match import MatchConfig, match_saes
    from saekit.train import TrainConfig, train

    rows, unique = [], training_tokens(cache)
    for run in train_runs(config):
        out = Path(config.out) / "train" / label / run["name"]
        started = time.time()
        if not config.report_only:
            train(TrainConfig(cache=cache, out=str(out), hooks=run["hooks"], architecture=run["architecture"],
                              d_sae=run["d_sae"], k=run["k"], seeds=config.seeds, sae=run.get("sae", {}),
                              n_tokens=run["n_tokens"], batch_size=config.batch_size, lr=config.lr,
                              checkpoint_every=0, warmup_steps=50, dead_tokens=config.dead_tokens,
                              device=config.device), progress=True)
        seconds = time.time() - started
        if not config.report_only:
            print(f"[seed-sharing] {label}/{run['name']}: trained in {seconds:.0f} s", flush=True)
        for hook, d_sae, k in ((h, d, k) for h in run["hooks"] for d in run["d_sae"] for k in run["k"]):
            suffix = f"-k{k}" if run["architecture"] == "topk" else ""
            saes = [str(out / hook / f"{run['architecture']}-{d_sae}{suffix}-seed{s}") for s in config.seeds]
            where = "" if hook == config.hook else f"{hook}/"
            match_dir = Path(config.out) / "match" / label / f"{where}{run['name']}-{d_sae}{suffix}"
            if config.report_only:
                summary = json.loads((match_dir / "match.json").read_text())
            else:
                summary = match_saes(MatchConfig(saes=saes, out=str(match_dir), threshold=config.threshold,
                                                 device=config.device, cache=cache, n_tokens=config.match_tokens,
                                                 table_format="csv"), progress=False)
            row = result_row(label, run, d_sae, k, saes, summary, match_dir, config)
            row.update(hook=hook, unique_tokens=min(unique, run["n_tokens"]),
                       epochs=round(max(1.0, run["n_tokens"] / unique), 2))
            if not config.report_only:
                row["train_seconds"] = round(seconds, 1)
            rows.append(row)
            print(f"[seed-sharing] {label} {hook} {run['architecture']} d_sae={d_sae} k={k} "
                  f"tokens={run['n_tokens']:,}: shared {row['fraction_shared']:.3f} "
                  f"[{row['shared_ci_low']:.3f}, {row['shared_ci_high']:.3f}], live {row['fraction_shared_live']:.3f}",
                  flush=True)
    return rows


def pair_fractions(match_dir: Path, threshold: float) -> dict[str, list[np.ndarray]]:
    """Per seed pair, the reference side's (the pair's first SAE) shared flags [d_sae] among all
    latents and among live ones (fired on the held-out tokens), read from the match's latents.csv."""
    import pandas as pd

    table = pd.read_csv(match_dir / "latents.csv")
    out: dict[str, list[np.ndarray]] = {"all": [], "live": [], "decoder_cos": []}
    for name, part in table.groupby("pair", sort=True):
        side = part[part["sae"] == int(str(name).split("-")[0])]
        shared = side["shared"].astype(bool).to_numpy()
        out["all"].append(shared)
        out["live"].append(shared[side["frequency"].fillna(0).to_numpy() > 0])
        out["decoder_cos"].append(side["decoder_cos"].to_numpy(dtype=float))
    return out


def result_row(label: str, run: dict[str, Any], d_sae: int, k: int, saes: list[str], summary: dict[str, Any],
               match_dir: Path, config: SeedSharingConfig) -> dict[str, Any]:
    """One row of results.csv: the setting and its numbers averaged over the seed pairs; the shared
    fractions (among all latents and among live ones) with 95% intervals that resample latents
    within each pair, and the range over pairs."""
    from study_stats import grouped_fraction_ci

    pairs = list(summary["pairs"].values())
    flags = pair_fractions(match_dir, config.threshold)
    shared = grouped_fraction_ci(flags["all"], config.n_boot)
    live = grouped_fraction_ci(flags["live"], config.n_boot)
    cos = grouped_fraction_ci(flags["decoder_cos"], config.n_boot)  # the mean of floats, the same bootstrap
    per_pair = [float(f.mean()) for f in flags["all"]]

    def mean(get: Any) -> float:
        values = [v for v in (get(p) for p in pairs) if v is not None]
        return float(np.mean(values)) if values else float("nan")

    metrics = [json.loads((Path(s) / "metrics.json").read_text()) for s in saes]
    return {
        "model": label, "architecture": run["architecture"], "d_sae": d_sae,
        "k": k if run["architecture"] == "topk" else None, "n_tokens": run["n_tokens"],
        "l1_coef": run.get("l1_coef"), "n_pairs": len(pairs),
        "fraction_shared": mean(lambda p: p["fraction_shared"]),
        "shared_ci_low": shared[1], "shared_ci_high": shared[2],
        "pair_min": min(per_pair), "pair_max": max(per_pair),
        "fraction_shared_live": live[0], "shared_live_ci_low": live[1], "shared_live_ci_high": live[2],
        "live_fraction": float(np.mean([f.size for f in flags["live"]]) / d_sae),
        "decoder_cos_ci_low": cos[1], "decoder_cos_ci_high": cos[2],
        "fraction_shared_with_all": summary["seeds"]["reference"]["fraction_shared_with_all"],
        "decoder_mean_cos": mean(lambda p: p["decoder"]["mean_matched_cos"]),
        "encoder_mean_cos": mean(lambda p: p["encoder"]["mean_matched_cos"]),
        "decoder_mean_max_cos": mean(lambda p: p["decoder"]["mean_max_cos"]),
        "encoder_mean_max_cos": mean(lambda p: p["encoder"]["mean_max_cos"]),
        "activation_corr_shared": mean(lambda p: p.get("activation_corr", {}).get("shared")),
        "activation_corr_orphan": mean(lambda p: p.get("activation_corr", {}).get("orphan")),
        "log10_freq_shared": mean(lambda p: p.get("mean_log10_frequency", {}).get("shared")),
        "log10_freq_orphan": mean(lambda p: p.get("mean_log10_frequency", {}).get("orphan")),
        "fvu": float(np.mean([m.get("fvu", np.nan) for m in metrics])),
        "l0": float(np.mean([m.get("l0", np.nan) for m in metrics])),
        "dead_fraction": float(np.mean([m.get("dead_fraction", np.nan) for m in metrics])),
        "threshold_curve": [float(np.mean(c)) for c in zip(*(p["threshold_curve"] for p in pairs))],
        "decoder_histogram": [int(sum(c)) for c in zip(*(p["decoder"]["histogram"] for p in pairs))],
        "encoder_histogram": [int(sum(c)) for c in zip(*(p["encoder"]["histogram"] for p in pairs))],
    }


def _sel(rows: list[dict[str, Any]], **where: Any) -> list[dict[str, Any]]:
    return [r for r in rows if all(r[k] == v for k, v in where.items())]


def _trend(model: str, claim: str, paper: str, ordered: list[dict[str, Any]], key: str, falls: bool) -> dict[str, Any]:
    """A direction check over rows ordered by `key`, first vs last: "yes" when the shared fractions'
    intervals separate in the claimed direction, "NO" when they separate the other way, else
    "unclear"; the same among live latents, and (no interval) the mean matched decoder cosine."""
    from study_stats import direction_verdict

    labels = [r[key] for r in ordered]

    def interval(r: dict[str, Any], live: bool = False) -> tuple[float, float, float]:
        if live:
            return r["fraction_shared_live"], r["shared_live_ci_low"], r["shared_live_ci_high"]
        return r["fraction_shared"], r["shared_ci_low"], r["shared_ci_high"]
    cosines = [r["decoder_mean_cos"] for r in ordered]

    def cos_interval(r: dict[str, Any]) -> tuple[float, float, float]:
        return r["decoder_mean_cos"], r.get("decoder_cos_ci_low", np.nan), r.get("decoder_cos_ci_high", np.nan)
    return {"model": model, "claim": claim, "paper": paper,
            "ours": {lab: [round(v, 3) for v in interval(r)] for lab, r in zip(labels, ordered)},
            "live": {lab: [round(v, 3) for v in interval(r, True)] for lab, r in zip(labels, ordered)},
            "decoder_cos": dict(zip(labels, (round(c, 3) for c in cosines))),
            "verdict": direction_verdict(interval(ordered[0]), interval(ordered[-1]), falls),
            "verdict_live": direction_verdict(interval(ordered[0], True), interval(ordered[-1], True), falls),
            "holds": direction_verdict(interval(ordered[0]), interval(ordered[-1]), falls) == "yes",
            "verdict_cos": direction_verdict(cos_interval(ordered[0]), cos_interval(ordered[-1]), falls),
            "holds_cos": direction_verdict(cos_interval(ordered[0]), cos_interval(ordered[-1]), falls) == "yes"}


def nearest_l0(topk: list[dict[str, Any]], relu: dict[str, Any]) -> dict[str, Any] | None:
    """The TopK row whose L0 is closest (in ratio) to the ReLU row's: architectures compare at equal sparsity."""
    if not topk:
        return None
    return min(topk, key=lambda r: abs(np.log(max(r["l0"], 1e-9) / max(relu["l0"], 1e-9))))


def directions(rows: list[dict[str, Any]], config: SeedSharingConfig) -> list[dict[str, Any]]:
    """The paper's directions and the sanity checks, each with the numbers it rests on."""
    longest, k0 = max(config.tokens), config.ks[0]
    checks = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for hook in [config.hook, *config.extra_hooks]:
            topk = _sel(rows, model=model, hook=hook, architecture="topk", n_tokens=longest)
            for k in config.ks:
                by_width = sorted(_sel(topk, k=k), key=lambda r: r["d_sae"])
                if len(by_width) > 1:
                    checks.append(_trend(model, f"falls as width grows ({hook}, k={k})", PAPER["width"], by_width,
                                         "d_sae", True))
        main = _sel(rows, model=model, hook=config.hook)
        topk = _sel(main, architecture="topk", n_tokens=longest)
        for d_sae in config.widths:
            by_k = sorted(_sel(topk, d_sae=d_sae), key=lambda r: r["k"])
            if len(by_k) > 1:
                checks.append(_trend(model, f"falls as k grows (d_sae={d_sae})", PAPER["k"], by_k, "k", True))
        by_tokens = sorted(_sel(main, architecture="topk", d_sae=config.sweep_width, k=k0),
                           key=lambda r: r["n_tokens"])
        if len(by_tokens) > 1:
            checks.append(_trend(model, "rises with training tokens (unique tokens and epochs: see the table)",
                                 PAPER["tokens"], by_tokens, "n_tokens", False))
        for relu in _sel(main, architecture="relu"):
            same = nearest_l0(_sel(topk, d_sae=config.sweep_width), relu)
            if same:
                check = _trend(model, f"ReLU-L1 (l1 {relu['l1_coef']:g}, L0 {relu['l0']:.1f}) shares more than TopK "
                               f"(k={same['k']}, L0 {same['l0']:.1f}: the nearest L0, ratio "
                               f"{relu['l0'] / max(same['l0'], 1e-9):.2f})", PAPER["architecture"], [relu, same],
                               "architecture", True)
                checks.append(check)
    for r in rows:
        name = f"{r['model']} {r['hook']} {r['architecture']} {r['d_sae']} k={r['k']} {r['n_tokens']:,} tokens"
        checks.append({"model": r["model"], "claim": f"sanity: Hungarian mean <= mean max-cosine ({name})",
                       "ours": {"decoder": [round(r["decoder_mean_cos"], 3), round(r["decoder_mean_max_cos"], 3)],
                                "encoder": [round(r["encoder_mean_cos"], 3), round(r["encoder_mean_max_cos"], 3)]},
                       "holds": r["decoder_mean_cos"] <= r["decoder_mean_max_cos"] + 1e-6
                       and r["encoder_mean_cos"] <= r["encoder_mean_max_cos"] + 1e-6})
        checks.append({"model": r["model"], "claim": f"sanity: encoder cosines below decoder ({name})",
                       "paper": PAPER["cosines"],
                       "ours": {"decoder": round(r["decoder_mean_cos"], 3), "encoder": round(r["encoder_mean_cos"], 3)},
                       "holds": r["encoder_mean_cos"] < r["decoder_mean_cos"]})
    return checks


def figures(rows: list[dict[str, Any]], config: SeedSharingConfig) -> list[Any]:
    """Plotly figures: shared fraction vs width, k, tokens, architecture and threshold; histograms."""
    import plotly.graph_objects as go

    longest, k0 = max(config.tokens), config.ks[0]
    models = list(dict.fromkeys(r["model"] for r in rows))
    every_hook, rows = rows, _sel(rows, hook=config.hook)  # the width figure shows every layer
    figs = []

    def line_figure(title: str, x_title: str, series: dict[str, tuple[list, list]], log_x: bool = False) -> Any:
        fig = go.Figure([go.Scatter(x=x, y=y, mode="lines+markers", name=name) for name, (x, y) in series.items()])
        fig.update_layout(title=title, xaxis_title=x_title, yaxis_title="fraction shared", yaxis_range=[0, 1.02])
        if log_x:
            fig.update_xaxes(type="log")
        return fig

    def xy(selected: list[dict[str, Any]], key: str) -> tuple[list, list]:
        selected = sorted(selected, key=lambda r: r[key])
        return [r[key] for r in selected], [r["fraction_shared"] for r in selected]

    figs.append(line_figure("Shared fraction vs width (TopK)", "d_sae", {
        f"{m} {h} k={k}": xy(_sel(every_hook, model=m, hook=h, architecture="topk", k=k, n_tokens=longest), "d_sae")
        for m in models for h in [config.hook, *config.extra_hooks] for k in config.ks}, log_x=True))
    figs.append(line_figure("Shared fraction vs k (TopK)", "k", {
        f"{m} d_sae={w}": xy(_sel(rows, model=m, architecture="topk", d_sae=w, n_tokens=longest), "k")
        for m in models for w in config.widths}))
    figs.append(line_figure(f"Shared fraction vs training tokens (TopK d_sae={config.sweep_width}, k={k0})", "tokens", {
        m: xy(_sel(rows, model=m, architecture="topk", d_sae=config.sweep_width, k=k0), "n_tokens") for m in models}))
    bars = go.Figure()
    pairs = [(m, relu, nearest_l0(_sel(rows, model=m, architecture="topk", d_sae=config.sweep_width,
                                         n_tokens=longest), relu))
             for m in models for relu in _sel(rows, model=m, architecture="relu")]
    names = [f"{m} l1 {relu['l1_coef']:g}" for m, relu, _ in pairs]
    for arch, index in (("relu", 1), ("topk", 2)):
        picked = [p[index] for p in pairs]
        bars.add_trace(go.Bar(x=names, y=[r["fraction_shared"] if r else None for r in picked], name=arch,
                              text=[f"L0 {r['l0']:.0f}" if r else "" for r in picked]))
    bars.update_layout(title=f"ReLU-L1 vs TopK at the nearest L0 (d_sae={config.sweep_width})",
                       yaxis_title="fraction shared")
    figs.append(bars)
    from saekit.match.summary import CURVE_THRESHOLDS, HISTOGRAM_EDGES

    figs.append(line_figure("Shared fraction vs threshold (TopK)", "threshold", {
        f"{r['model']} d_sae={r['d_sae']} k={r['k']}": (CURVE_THRESHOLDS, r["threshold_curve"])
        for r in _sel(rows, architecture="topk", n_tokens=longest)}))
    centers = [(a + b) / 2 for a, b in zip(HISTOGRAM_EDGES[:-1], HISTOGRAM_EDGES[1:])]
    hist = go.Figure()
    for r in _sel(rows, architecture="topk", d_sae=config.sweep_width, k=k0, n_tokens=longest):
        for which in ("decoder", "encoder"):
            hist.add_trace(go.Scatter(x=centers, y=r[f"{which}_histogram"], mode="lines", line_shape="hvh",
                                      name=f"{r['model']} {which}"))
    hist.update_layout(title=f"Matched cosines (TopK d_sae={config.sweep_width}, k={k0})", xaxis_title="cosine",
                       yaxis_title="latents")
    figs.append(hist)
    return figs


def write_report(rows: list[dict[str, Any]], config: SeedSharingConfig, out: Path, seconds: float) -> Path:
    """report/: results.csv, summary.json, figures.html and report.md (the closing note)."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    flat = [{k: v for k, v in r.items() if not isinstance(v, list)} for r in rows]
    pd.DataFrame(flat).to_csv(out / "results.csv", index=False)
    checks = directions(rows, config)
    (out / "summary.json").write_text(json.dumps({"config": config_to_dict(config), "rows": rows, "checks": checks,
                                                   "paper": PAPER, "seconds": round(seconds, 1)}, indent=2) + "\n")
    body = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figures(rows, config))]
    (out / "figures.html").write_text("<!DOCTYPE html><html><head><meta charset='utf-8'><title>seed sharing</title>"
                                      "</head><body>" + "\n".join(body) + "</body></html>")
    lines = ["# Seed sharing", "",
             f"Model `{config.model}` ({', '.join(dict.fromkeys(r['model'] for r in rows))}), dataset "
             f"`{config.dataset}`, seeds {config.seeds} ({len(config.seeds) * (len(config.seeds) - 1) // 2} pairs), "
             f"threshold {config.threshold}; {seconds / 60:.1f} minutes in all.", "",
             "`shared`: mean over seed pairs of the fraction of the first SAE's latents shared (both matched cosines >= "
             "the threshold), with a 95% interval that resamples latents within each pair, and the range over pairs; "
             "`live`: the same among latents that fire on the held-out tokens (`live %` of all).", "",
             "| model | hook | arch | d_sae | k | tokens (unique, epochs) | shared [95% CI] | pairs min-max | "
             "shared among live [95% CI] | live % | dec cos [95% CI] | enc cos | fvu | l0 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        arch = r["architecture"] if r["architecture"] != "relu" else f"relu (l1 {r['l1_coef']:g})"
        lines.append(f"| {r['model']} | {r['hook']} | {arch} | {r['d_sae']:,} | {r['k'] or '-'} | {r['n_tokens']:,} "
                     f"({r['unique_tokens']:,}, {r['epochs']:g}) | {r['fraction_shared']:.3f} [{r['shared_ci_low']:.3f}, "
                     f"{r['shared_ci_high']:.3f}] | {r['pair_min']:.3f}-{r['pair_max']:.3f} | "
                     f"{r['fraction_shared_live']:.3f} [{r['shared_live_ci_low']:.3f}, {r['shared_live_ci_high']:.3f}] | "
                     f"{100 * r['live_fraction']:.0f} | {r['decoder_mean_cos']:.3f} [{r['decoder_cos_ci_low']:.3f}, "
                     f"{r['decoder_cos_ci_high']:.3f}] | {r['encoder_mean_cos']:.3f} | "
                     f"{r['fvu']:.3f} | {r['l0']:.1f} |")
    lines += ["", "## The paper's directions, and sanity checks", "",
              "`ours`/`live`: [shared, CI low, CI high] per setting; a verdict is `yes` when the first and last "
              "settings' intervals separate in the paper's direction, `NO` when they separate the other way, "
              "`unclear` when they overlap. `decoder cos`: mean matched decoder cosine (no threshold; its verdict "
              "uses the same latent bootstrap).",
              "", "| model | claim | ours | verdict | live | verdict | decoder cos | verdict | paper |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in checks:
        if "verdict" in c:
            lines.append(f"| {c['model']} | {c['claim']} | {json.dumps(c['ours'])} | {c['verdict']} | "
                         f"{json.dumps(c['live'])} | {c['verdict_live']} | {json.dumps(c['decoder_cos'])} | "
                         f"{c['verdict_cos']} | {c.get('paper', '')} |")
        else:
            lines.append(f"| {c['model']} | {c['claim']} | {json.dumps(c['ours'])} | "
                         f"{'yes' if c['holds'] else 'NO'} | | | | | {c.get('paper', '')} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    config = config_from_argv(SeedSharingConfig, argv, __doc__.split("\n")[0])
    started = time.time()
    rows = []
    for label, cache in build_caches(config).items():
        rows += train_and_match(config, label, cache)
    report = write_report(rows, config, Path(config.out) / "report", seconds=time.time() - started)
    print(f"[seed-sharing] report: {report} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
