"""`saekit report RUN_DIR`: one self-contained HTML file for whatever a run directory holds.

    from saekit.viz import write_report
    path = write_report("runs/demo")          # -> runs/demo/saekit-report.html

What `discover` finds decides what the page shows (a section with no input is left out):
1. the SAEs: a table (architecture, width, k, seed, model variant, eval metrics, mean score);
2. training curves (training_log.jsonl), log10 activation frequency (eval.json);
3. the SAEs compared by model variant (trained vs random, ...) and any results table with a
   `variant` column;
4. matching: per match directory its summary, matched cosines and pairwise matrix; over all of them
   the shared fraction vs threshold and vs width;
5. an index of latents per records directory (described latents; with no explanations, the first
   recorded latents that fire) linking to each latent's dashboard (dashboard.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saekit.config import doc
from saekit.interp.explain.evidence import TokenText
from saekit.viz.dashboard import anchor_id, latent_dashboard, partners_of, same_sae
from saekit.viz.discover import RecordsDir, RunContents, discover
from saekit.viz.figures import comparison_figure, shared_vs_width_figure, training_curves_figure
from saekit.viz.page import Page, esc, fmt, table
from saekit.viz.tokens import records_tokenizer

REPORT_FILE = "saekit-report.html"


@dataclass
class ReportConfig:
    """What `saekit report` reads and how much of it the page shows."""

    run_dir: str = doc("run directory to report on (searched recursively)", "")
    out: str = doc(f"HTML file to write ('' = RUN_DIR/{REPORT_FILE})", "")
    max_latents: int = doc("dashboards per records directory, described latents first (0 = no limit)", 200)
    n_top: int = doc("top-activating contexts shown per latent", 10)
    n_per_quantile: int = doc("quantile examples shown per activation bin", 2)
    title: str = doc("page title ('' = saekit report: RUN_DIR)", "")

    def __post_init__(self) -> None:
        for name in ("max_latents", "n_top", "n_per_quantile"):
            if getattr(self, name) < 0:
                raise ValueError(f"ReportConfig.{name} must be >= 0, got {getattr(self, name)}")


def write_report(run_dir: str | Path, out: str | Path | None = None, **options: Any) -> Path:
    """Write the report of `run_dir` (options: other ReportConfig fields); returns the HTML file."""
    return build_report(ReportConfig(run_dir=str(run_dir), out=str(out or ""), **options))


def build_report(config: ReportConfig) -> Path:
    """Discover what `config.run_dir` holds and write the page (see the module docstring)."""
    if not config.run_dir:
        raise ValueError("ReportConfig.run_dir: give the run directory to report on")
    found = discover(config.run_dir)
    out = Path(config.out) if config.out else Path(config.run_dir) / REPORT_FILE
    page = Page(config.title or f"saekit report: {config.run_dir}")
    chosen = {i: dashboard_latents(rec, config.max_latents) for i, rec in enumerate(found.records)}
    sections = [("saes", "SAEs", saes_section(found)), ("training", "Training", training_section(page, found)),
                ("frequency", "Activation frequency", frequency_section(page, found)),
                ("comparison", "Variants", comparison_section(page, found)),
                ("matching", "Matching", matching_section(page, found)),
                ("index", "Latents", index_section(found, chosen))]
    sections = [(key, title, body) for key, title, body in sections if body]
    nav = " ".join(f'<a href="#{key}">{esc(title)}</a>' for key, title, _ in sections)
    held = (f"{len(found.saes)} SAE folder(s), {len(found.records)} records director(ies), "
            f"{sum(len(r.explanations) for r in found.records)} explanations, "
            f"{sum(len(r.scores) for r in found.records)} scores, {len(found.matches)} match director(ies)")
    page.add(f"<h1>{esc(page.title)}</h1><p class='muted'>{esc(held)}; written "
             f"{time.strftime('%Y-%m-%d %H:%M')}</p><nav class='toc'>{nav}</nav>")
    if not sections:
        page.add("<p>Nothing to show: no SAE folders, records, explanations or match directories were found.</p>")
    for key, title, body in sections:
        page.add(f'<section id="{key}"><h2>{esc(title)}</h2>{body}</section>')
    for i, rec in enumerate(found.records):
        add_dashboards(page, found, i, chosen, config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page.render(), encoding="utf-8")
    tmp.replace(out)
    return out


def dashboard_latents(rec: RecordsDir, limit: int) -> list[int]:
    """The latents that get a dashboard: the described ones in id order, else those that fire."""
    recorded = set(rec.records.latents)
    described = sorted({int(r["latent"]) for r in rec.explanations} & recorded)
    if not described:
        table_ = rec.records.table
        described = [int(f) for f in table_.index[table_["frequency"] > 0]]
    return described[:limit] if limit else described


def variant_of(found: RunContents, sae_path: Path, evaluation: dict[str, Any]) -> str:
    """The model variant an SAE was trained on: eval.json's model init, else a records dir's."""
    init = evaluation.get("model", {}).get("init")
    if init:
        return str(init)
    for rec in found.records:
        if same_sae(rec.sae_path, str(sae_path), found.roots):
            return str(rec.records.meta.get("model", {}).get("init", "?"))
    return "?"


def sae_rows(found: RunContents) -> list[dict[str, Any]]:
    """One dict per SAE: name, variant, architecture, d_sae, k, seed, fvu, l0, dead_fraction,
    ce_loss_score (eval.json, else metrics.json) and score (mean of its records' scores)."""
    rows = []
    for sae in found.saes:
        settings = sae.cfg.get("saekit", {})
        values = {**sae.metrics, **sae.eval}
        scores = [float(s["score"]) for rec in found.records if same_sae(rec.sae_path, str(sae.path), found.roots)
                  for s in rec.scores if _number(s.get("score"))]
        rows.append({"name": found.label(sae.path), "variant": variant_of(found, sae.path, sae.eval),
                     "architecture": settings.get("architecture", sae.cfg.get("architecture")),
                     "d_sae": sae.cfg.get("d_sae"), "k": settings.get("k", sae.cfg.get("k")),
                     "seed": settings.get("seed"), "hook_name": sae.cfg.get("hook_name"),
                     **{k: values.get(k) for k in ("fvu", "l0", "dead_fraction", "ce_loss_score")},
                     "score": float(np.mean(scores)) if scores else None, "evaluated": bool(sae.eval)})
    return rows


def saes_section(found: RunContents) -> str:
    rows = sae_rows(found)
    if not rows:
        return ""
    keys = ["name", "variant", "architecture", "d_sae", "k", "seed", "fvu", "l0", "dead_fraction", "ce_loss_score",
            "score"]
    return (table(keys, [[fmt(r[k]) for k in keys] for r in rows], numeric=set(range(3, len(keys)))) +
            '<p class="muted">Metrics from eval.json (held-out tokens) when present, else from training '
            '(metrics.json); score: mean of the SAE\'s scores.jsonl rows.</p>')


def training_section(page: Page, found: RunContents) -> str:
    return page.figure(training_curves_figure({found.label(s.path): s.log for s in found.saes}))


def frequency_section(page: Page, found: RunContents) -> str:
    from saekit.eval.run import frequency_figure

    results = {found.label(s.path): s.eval for s in found.saes
               if s.eval.get("frequency_histogram", {}).get("edges")}
    return page.figure(frequency_figure(results)) if results else ""


def comparison_section(page: Page, found: RunContents) -> str:
    parts = []
    rows = sorted((r for r in sae_rows(found) if r["evaluated"]),
                  key=lambda r: (r["variant"] != "trained", r["variant"]))  # trained first
    if rows:
        parts.append(page.figure(comparison_figure(rows, title="SAEs by model variant (eval.json; score: mean of "
                                                               "scores.jsonl)")))
    for name, table_rows in found.tables.items():
        parts.append(page.figure(comparison_figure(table_rows, label="name", title=f"Variants compared: {name}")))
    return "".join(parts)


def matching_section(page: Page, found: RunContents) -> str:
    from saekit.match.report import matched_cosine_figure, shared_matrix_figure, threshold_curve_figure
    from saekit.match.run import summary_lines

    if not found.matches:
        return ""
    parts, width_points = [], []
    for match in found.matches:
        label, summary = found.label(match.path), match.summary
        lines = "".join(f"<li>{esc(line)}</li>" for line in summary_lines(summary))
        parts.append(f"<h3>{esc(label)}</h3><ul>{lines}</ul>" + page.figure(matched_cosine_figure(summary)))
        if len(summary["saes"]) > 2:
            parts.append(page.figure(shared_matrix_figure(summary)))
        saes = {s["index"]: s for s in summary["saes"]}
        for name, pair in summary["pairs"].items():
            i, j = (int(x) for x in name.split("-"))
            a = saes[i]
            series = f"{a['architecture']} k={a['k']}" if a.get("k") else str(a["architecture"])
            width_points.append({"series": series, "d_sae": min(saes[i]["d_sae"], saes[j]["d_sae"]),
                                 "fraction_shared": pair["fraction_shared"], "name": f"{label} {name}"})
    parts.append(page.figure(threshold_curve_figure({found.label(m.path): m.summary for m in found.matches})))
    if len({p["d_sae"] for p in width_points}) > 1:
        parts.append(page.figure(shared_vs_width_figure(width_points)))
    return "".join(parts)


def index_section(found: RunContents, chosen: dict[int, list[int]]) -> str:
    """Per records directory, a table of its dashboards' latents with their first description."""
    parts = []
    for i, rec in enumerate(found.records):
        latents = chosen[i]
        first: dict[int, str] = {}
        for row in rec.explanations:
            first.setdefault(int(row["latent"]), f"{row['method']}: {row.get('description', '')}")
        scores: dict[int, list[float]] = {}
        for row in rec.scores:
            if _number(row.get("score")):
                scores.setdefault(int(row["latent"]), []).append(float(row["score"]))
        rows = []
        for f in latents:
            stats = rec.records.stats(f)
            text = first.get(f, "")
            rows.append([f'<a class="latent-link" href="#{anchor_id(i, f)}">{f}</a>', fmt(stats["frequency"]),
                         fmt(stats["max_activation"]), fmt(float(np.mean(scores[f])) if f in scores else None),
                         esc(text[:160] + ("..." if len(text) > 160 else ""))])
        total = len(rec.records.latents)
        parts.append(f"<h3>{esc(found.label(rec.path))}</h3><p class='muted'>{len(latents)} dashboards "
                     f"({len(rec.explanations)} explanations, {len(rec.scores)} scores; {total} latents recorded)</p>"
                     + table(["latent", "frequency", "max activation", "mean score", "first description"], rows,
                             numeric={1, 2, 3}))
    return "".join(parts)


def add_dashboards(page: Page, found: RunContents, index: int, chosen: dict[int, list[int]],
                   config: ReportConfig) -> None:
    """A hidden dashboard section per chosen latent of records directory `index`; a partner latent
    that has a dashboard of its own gets a link to it."""
    rec = found.records[index]
    text = TokenText(records_tokenizer(rec.records.meta))
    roots = found.roots
    labels = {m.path: found.label(m.path) for m in found.matches}
    labels[rec.path] = found.label(rec.path)
    shown = {j: set(latents) for j, latents in chosen.items()}
    for f in chosen[index]:
        partners = [p for m in found.matches for p in partners_of(m, rec.sae_path, f, roots)]
        for p in partners:
            for j, other in enumerate(found.records):
                if int(p["decoder_partner"]) in shown[j] and same_sae(other.sae_path, p["other_path"], roots):
                    p["link"] = anchor_id(j, int(p["decoder_partner"]))
        page.add(latent_dashboard(page, rec, index, f, text, partners, labels, config.n_top, config.n_per_quantile))


def _number(value: Any) -> bool:
    try:
        return value is not None and not isinstance(value, bool) and np.isfinite(float(value))
    except (TypeError, ValueError):
        return False
