"""What a match directory shows: the per-latent table and one self-contained plotly HTML report.

Per-latent table: one row per (pair, side, latent), so either SAE of a pair can be read as "mine":

    pair, sae, latent, other_sae, decoder_partner, decoder_cos, encoder_partner, encoder_cos,
    shared, same_partner, decoder_max_cos, encoder_max_cos, frequency, partner_frequency,
    activation_corr, autointerp_score, partner_autointerp_score

`decoder_partner` is -1 (and the cosines NaN) for a latent of the larger SAE that nothing matched;
`partner_*` columns describe the decoder partner. Missing data (no cache, no scores) is NaN.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from saekit.match.pair import PairMatch, SideMatch
from saekit.match.summary import CURVE_THRESHOLDS, HISTOGRAM_EDGES


def _nan_array(n: int) -> np.ndarray:
    return np.full(n, np.nan, dtype=np.float64)


def _take(values: np.ndarray | None, index: np.ndarray) -> np.ndarray:
    """values[index] with NaN where index is -1 or values is None."""
    out = _nan_array(len(index))
    if values is not None:
        ok = index >= 0
        out[ok] = values[index[ok]]
    return out


def side_table(pair_name: str, sae: int, other: int, side: SideMatch, threshold: float,
               frequency: np.ndarray | None, other_frequency: np.ndarray | None,
               scores: np.ndarray | None, other_scores: np.ndarray | None,
               correlation: np.ndarray | None) -> "pd.DataFrame":
    """The rows of one side of a pair (correlation: [d_sae] in this side's latent order, or None)."""
    import pandas as pd

    n = side.d_sae
    partner = side.decoder_partner
    return pd.DataFrame({
        "pair": pair_name, "sae": np.full(n, sae, dtype=np.int32), "latent": np.arange(n, dtype=np.int64),
        "other_sae": np.full(n, other, dtype=np.int32), "decoder_partner": partner,
        "decoder_cos": side.decoder_cos, "encoder_partner": side.encoder_partner, "encoder_cos": side.encoder_cos,
        "shared": side.shared(threshold), "same_partner": side.same_partner(),
        "decoder_max_cos": side.decoder_max_cos, "encoder_max_cos": side.encoder_max_cos,
        "frequency": frequency if frequency is not None else _nan_array(n),
        "partner_frequency": _take(other_frequency, partner),
        "activation_corr": correlation if correlation is not None else _nan_array(n),
        "autointerp_score": scores if scores is not None else _nan_array(n),
        "partner_autointerp_score": _take(other_scores, partner),
    })


def latent_table(pairs: dict[tuple[int, int], PairMatch], threshold: float,
                 frequencies: list[np.ndarray | None], scores: list[np.ndarray | None],
                 correlations: dict[tuple[int, int], np.ndarray]) -> "pd.DataFrame":
    """Every pair's two sides stacked (see the module docstring for the columns)."""
    import pandas as pd

    parts = []
    for (i, j), pair in pairs.items():
        name = f"{i}-{j}"
        corr = correlations.get((i, j))
        corr_small = corr
        corr_large = None
        if corr is not None:  # correlation is indexed by the smaller side; move it to the larger side too
            small = pair.small
            corr_large = _nan_array(pair.b.d_sae if not pair.swapped else pair.a.d_sae)
            corr_large[small.decoder_partner] = corr_small
        corr_a, corr_b = (corr_large, corr_small) if pair.swapped else (corr_small, corr_large)
        parts.append(side_table(name, i, j, pair.a, threshold, frequencies[i], frequencies[j], scores[i], scores[j],
                                corr_a))
        parts.append(side_table(name, j, i, pair.b, threshold, frequencies[j], frequencies[i], scores[j], scores[i],
                                corr_b))
    return pd.concat(parts, ignore_index=True)


def write_table(table: "pd.DataFrame", out: Path, table_format: str) -> Path:
    """latents.parquet or latents.csv in `out`."""
    path = out / f"latents.{table_format}"
    if table_format == "parquet":
        table.to_parquet(path, index=False)
    else:
        table.to_csv(path, index=False)
    return path


def matched_cosine_figure(summary: dict[str, Any]) -> Any:
    """Histograms of the matched decoder and encoder cosines of every pair of a match summary."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    centers = [(a + b) / 2 for a, b in zip(HISTOGRAM_EDGES[:-1], HISTOGRAM_EDGES[1:])]
    hist = make_subplots(rows=1, cols=2, subplot_titles=("decoder", "encoder"), shared_yaxes=True)
    for name, pair in summary["pairs"].items():
        for col, which in enumerate(("decoder", "encoder"), start=1):
            hist.add_trace(go.Scatter(x=centers, y=pair[which]["histogram"], mode="lines", line_shape="hvh",
                                      name=f"{name} {which}", legendgroup=name), row=1, col=col)
    for col in (1, 2):
        hist.add_vline(x=summary["config"]["threshold"], line_dash="dash", line_color="grey", row=1, col=col)
    hist.update_layout(title="Cosine of matched latents (Hungarian assignment)", yaxis_title="latents")
    hist.update_xaxes(title_text="cosine")
    return hist


def threshold_curve_figure(summaries: dict[str, dict[str, Any]]) -> Any:
    """Fraction shared vs threshold, a line per pair of each summary ({label: match summary}; the
    label prefixes the pair names when there are several summaries)."""
    import plotly.graph_objects as go

    curve = go.Figure()
    for label, summary in summaries.items():
        for name, pair in summary["pairs"].items():
            curve.add_trace(go.Scatter(x=CURVE_THRESHOLDS, y=pair["threshold_curve"], mode="lines+markers",
                                       name=name if len(summaries) == 1 else f"{label} {name}"))
    for threshold in sorted({s["config"]["threshold"] for s in summaries.values()}):
        curve.add_vline(x=threshold, line_dash="dash", line_color="grey")
    curve.update_layout(title="Fraction of latents shared vs threshold (same partner, both cosines >= threshold)",
                        xaxis_title="threshold", yaxis_title="fraction shared", yaxis_range=[0, 1.02])
    return curve


def shared_matrix_figure(summary: dict[str, Any]) -> Any:
    """Heatmap: the fraction of the row SAE's latents shared with the column SAE."""
    import plotly.graph_objects as go

    names = [s["name"] for s in summary["saes"]]
    values = summary["seeds"]["matrix"]
    matrix = go.Figure(go.Heatmap(z=values, x=names, y=names, zmin=0, zmax=1, colorscale="Viridis",
                                  text=[["" if v is None else f"{v:.2f}" for v in row] for row in values],
                                  texttemplate="%{text}"))
    matrix.update_layout(title="Fraction of the row SAE's latents shared with the column SAE",
                         yaxis_autorange="reversed")
    return matrix


def report_figures(summary: dict[str, Any]) -> list[Any]:
    """Plotly figures: matched-cosine histograms, shared fraction vs threshold, the pairwise matrix."""
    return [matched_cosine_figure(summary), threshold_curve_figure({"": summary}), shared_matrix_figure(summary)]


def write_report_html(summary: dict[str, Any], path: Path) -> Path:
    """All figures in one self-contained HTML file (plotly.js embedded once)."""
    figures = report_figures(summary)
    body = [fig.to_html(full_html=False, include_plotlyjs=(k == 0)) for k, fig in enumerate(figures)]
    title = f"saekit match: {len(summary['saes'])} SAEs, threshold {summary['config']['threshold']}"
    lines = [f"<h2>{title}</h2>", "<ul>"]
    for name, pair in summary["pairs"].items():
        lines.append(f"<li>pair {name}: {pair['n_shared']} shared, fraction {pair['fraction_shared']:.3f}; "
                     f"mean matched cosine decoder {pair['decoder']['mean_matched_cos']:.3f}, "
                     f"encoder {pair['encoder']['mean_matched_cos']:.3f}</li>")
    lines.append("</ul>")
    html = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>saekit match</title></head><body>"
            + "\n".join(lines) + "\n".join(body) + "</body></html>")
    path.write_text(html)
    return path
