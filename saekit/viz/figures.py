"""Plotly figures of a run: latent activations, VocabProj logits, training curves, shared fraction vs
width, and a variant comparison (random vs trained). Each function takes plain data (lists, dicts,
arrays) and returns a `plotly.graph_objects.Figure`, or None when it has nothing to draw.

Figures drawn elsewhere and reused here: `saekit.eval.run.frequency_figure` (log10 activation
frequency) and `saekit.match.report` (matched cosines, threshold curve, pairwise matrix).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

COMPARISON_METRICS = ("fvu", "l0", "dead_fraction", "ce_loss_score", "score")
CURVE_SKIP = ("step", "tokens", "tokens_per_s")  # training_log.jsonl keys that are not curves


def activation_histogram_figure(acts: np.ndarray, title: str = "Activations", n_bins: int = 40) -> Any | None:
    """Histogram of nonzero activations [n] with a log-scale count axis; None when all are zero."""
    import plotly.graph_objects as go

    acts = np.asarray(acts, dtype=np.float64)
    acts = acts[np.isfinite(acts) & (acts != 0)]
    if acts.size == 0:
        return None
    lo, hi = float(acts.min()), float(acts.max())
    counts, edges = np.histogram(acts, bins=n_bins, range=(lo, hi if hi > lo else lo + 1e-6))
    centers = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure(go.Bar(x=centers.tolist(), y=counts.tolist(), width=float(edges[1] - edges[0]),
                           marker_color="#e8590c", hovertemplate="activation %{x:.3g}: %{y} tokens<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="activation", yaxis_title="tokens (log scale)", yaxis_type="log",
                      bargap=0.02, height=300, margin=dict(t=50, b=40, l=60, r=20))
    return fig


def vocab_logits_figure(top: list[str], top_logits: list[float], bottom: list[str], bottom_logits: list[float],
                        title: str = "VocabProj: W_U LN(W_dec[f])", n: int = 15) -> Any | None:
    """Horizontal bars of the top (promoted) and bottom (suppressed) tokens with their logits."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    top, top_logits, bottom, bottom_logits = top[:n], top_logits[:n], bottom[:n], bottom_logits[:n]
    if not top and not bottom:
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=("promoted (top)", "suppressed (bottom)"),
                        horizontal_spacing=0.25)
    for col, (tokens, logits, colour) in enumerate(((top, top_logits, "#2b8a3e"), (bottom, bottom_logits, "#c92a2a")),
                                                  start=1):
        labels = [f"{k + 1}. {t!r}" for k, t in enumerate(tokens)]  # numbered: repeated strings stay apart
        fig.add_trace(go.Bar(x=logits, y=labels, orientation="h", marker_color=colour, showlegend=False,
                             hovertemplate="%{y}: %{x:.4g}<extra></extra>"), row=1, col=col)
        fig.update_yaxes(autorange="reversed", row=1, col=col)
    fig.update_xaxes(title_text="logit")
    fig.update_layout(title=title, height=max(260, 22 * max(len(top), len(bottom)) + 90),
                      margin=dict(t=60, b=40, l=20, r=20))
    return fig


def training_curves_figure(logs: dict[str, list[dict[str, Any]]], keys: list[str] | None = None) -> Any | None:
    """One panel per logged quantity (loss terms, dead fraction, lr) against training tokens, one line
    per SAE. logs: {SAE name: rows of its training_log.jsonl}; keys: which quantities (None = every
    numeric key but step/tokens/tokens_per_s)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    logs = {name: rows for name, rows in logs.items() if rows}
    if not logs:
        return None
    if keys is None:
        keys = list(dict.fromkeys(k for rows in logs.values() for row in rows for k, v in row.items()
                                  if k not in CURVE_SKIP and isinstance(v, (int, float)) and not isinstance(v, bool)))
    if not keys:
        return None
    cols = 2 if len(keys) > 1 else 1
    rows_n = math.ceil(len(keys) / cols)
    fig = make_subplots(rows=rows_n, cols=cols, subplot_titles=keys, vertical_spacing=min(0.12, 0.5 / rows_n))
    for index, key in enumerate(keys):
        row, col = index // cols + 1, index % cols + 1
        for colour, (name, rows) in enumerate(logs.items()):
            points = [(r.get("tokens", r.get("step")), r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if not points:
                continue
            x, y = zip(*points)
            fig.add_trace(go.Scatter(x=list(x), y=list(y), mode="lines", name=name, legendgroup=name,
                                     showlegend=index == 0, line_color=_colour(colour)), row=row, col=col)
    fig.update_xaxes(title_text="training tokens")
    fig.update_layout(title="Training curves (training_log.jsonl)", height=260 * rows_n + 80)
    return fig


def shared_vs_width_figure(points: list[dict[str, Any]]) -> Any | None:
    """Fraction of latents shared against SAE width, one line per series (log-scale width).

    points: dicts with `series` (e.g. "topk k=32"), `d_sae` (the smaller SAE of the pair),
    `fraction_shared`, and optionally `name` (hover text)."""
    import plotly.graph_objects as go

    if not points:
        return None
    fig = go.Figure()
    for series in dict.fromkeys(p["series"] for p in points):
        chosen = sorted((p for p in points if p["series"] == series), key=lambda p: p["d_sae"])
        fig.add_trace(go.Scatter(x=[p["d_sae"] for p in chosen], y=[p["fraction_shared"] for p in chosen],
                                 mode="lines+markers", name=series, text=[p.get("name", "") for p in chosen],
                                 hovertemplate="%{text}<br>d_sae %{x}: %{y:.3f}<extra></extra>"))
    fig.update_xaxes(type="log", title_text="d_sae (smaller SAE of the pair)")
    fig.update_layout(title="Fraction of latents shared vs width", yaxis_title="fraction shared",
                      yaxis_range=[0, 1.02])
    return fig


def comparison_figure(rows: list[dict[str, Any]], metrics: tuple[str, ...] | list[str] = COMPARISON_METRICS,
                      variant: str = "variant", label: str = "name",
                      title: str = "Variants compared") -> Any | None:
    """One panel per metric: a bar per variant (the mean of its rows) and a point per row.

    rows: dicts (e.g. a results table's records) with a `variant` column (trained, random, ...), an
    optional `label` column naming the row (an SAE) and any of `metrics`; metrics no row holds as a
    finite number are left out. Works for a pandas DataFrame's `.to_dict("records")` as it is.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    present = [m for m in metrics if any(_finite(r.get(m)) for r in rows)]
    if not rows or not present:
        return None
    variants = list(dict.fromkeys(str(r.get(variant, "?")) for r in rows))
    fig = make_subplots(rows=1, cols=len(present), subplot_titles=present, horizontal_spacing=0.06)
    for col, metric in enumerate(present, start=1):
        points = [(str(r.get(variant, "?")), float(r[metric]), str(r.get(label, ""))) for r in rows
                  if _finite(r.get(metric))]
        means = [np.mean([p[1] for p in points if p[0] == v]) if any(p[0] == v for p in points) else None
                 for v in variants]
        fig.add_trace(go.Bar(x=variants, y=[None if m is None else float(m) for m in means], opacity=0.6,
                             marker_color=[_colour(i) for i in range(len(variants))], showlegend=False,
                             hovertemplate=f"%{{x}}: mean {metric} %{{y:.4g}}<extra></extra>"), row=1, col=col)
        fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], text=[p[2] for p in points],
                                 mode="markers", marker=dict(color="black", size=7), showlegend=False,
                                 hovertemplate=f"%{{text}}: {metric} %{{y:.4g}}<extra></extra>"), row=1, col=col)
    fig.update_layout(title=title, height=360)
    return fig


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value)


def _colour(index: int) -> str:
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf")
    return palette[index % len(palette)]


def eval_metric_figures(result: dict[str, Any]) -> dict[str, Any]:
    """{metric: figure} of the probing sections of an eval.json dict (`absorption`, `sparse_probing`;
    drawn by saekit.eval.absorption.absorption_figure and saekit.eval.probing.sparse_probing_figure),
    for the sections it has."""
    from saekit.eval.absorption import absorption_figure
    from saekit.eval.probing import sparse_probing_figure

    draw = {"absorption": absorption_figure, "sparse_probing": sparse_probing_figure}
    return {name: fn(result[name]) for name, fn in draw.items() if isinstance(result.get(name), dict)}
