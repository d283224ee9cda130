"""Visualisation: plotly figures, latent dashboards and the one-file HTML report (the top stage: it
may import every other stage, and none imports it).

    from saekit.viz import write_report
    write_report("runs/demo")                     # runs/demo/saekit-report.html, opens offline

Modules: tokens (token shading as HTML), figures (plotly figures from plain data), page (one
self-contained HTML page), discover (what a run directory holds), dashboard (one latent's
section), report (`ReportConfig`, `build_report`, `write_report`: the `saekit report` verb), explore
(notebooks: `latent_table`, `search_latents`, `latent_dashboard_html`, `iframe_html`).
"""

from saekit.viz.discover import RunContents, discover
from saekit.viz.explore import iframe_html, latent_dashboard_html, latent_table, search_latents
from saekit.viz.figures import (activation_histogram_figure, comparison_figure, shared_vs_width_figure,
                                training_curves_figure, vocab_logits_figure)
from saekit.viz.report import ReportConfig, build_report, write_report
from saekit.viz.tokens import shaded_tokens, token_chips

__all__ = [
    "ReportConfig", "RunContents", "activation_histogram_figure", "build_report", "comparison_figure", "discover",
    "iframe_html", "latent_dashboard_html", "latent_table", "search_latents", "shaded_tokens",
    "shared_vs_width_figure", "token_chips", "training_curves_figure", "vocab_logits_figure", "write_report",
]
