"""One latent's dashboard: what it reads (activations, top contexts, quantile examples), what it
writes (VocabProj and TokenChange tokens), its descriptions with their scores, and its partner in an
SAE trained with another seed.

Inputs are a records directory (`saekit collect`), its explanation and score rows, and partner rows
of match directories (`partners_of`); `latent_dashboard` returns one `<section>` of HTML.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from saekit.interp.explain.evidence import TokenText
from saekit.interp.records.format import LatentRecords
from saekit.viz.discover import MatchDir, RecordsDir
from saekit.viz.figures import activation_histogram_figure, vocab_logits_figure
from saekit.viz.page import Page, esc, fmt, table
from saekit.viz.tokens import example_html, token_chips

PARTNER_COLUMNS = ("decoder_partner", "decoder_cos", "encoder_partner", "encoder_cos", "shared", "same_partner",
                   "activation_corr", "frequency", "partner_frequency")


def anchor_id(records_index: int, latent: int) -> str:
    """The element id (and URL hash) of a latent's dashboard."""
    return f"latent-r{records_index}-{latent}"


def window_activations(records: LatentRecords, latent: int) -> np.ndarray:
    """The latent's nonzero activations at every distinct token of its activating example windows
    (top and quantile examples; a token in two windows counts once). Not a uniform sample: the top
    and quantile examples over-represent strong activations."""
    seen: dict[tuple[int, int], float] = {}
    for kind in ("top", "explain", "test"):
        for example in records.examples(latent, kind):
            for offset, act in enumerate(example.acts):
                if act != 0:
                    seen[(example.context, example.start + offset)] = float(act)
    return np.fromiter(seen.values(), dtype=np.float64, count=len(seen))


def method_evidence(rows: list[dict[str, Any]], base: str) -> dict[str, Any] | None:
    """The evidence a base method (vocabproj, tokenchange, maxact) showed for a latent, taken from its
    own row or from an ensemble's {part: evidence}."""
    for row in rows:
        evidence = row.get("evidence")
        if not isinstance(evidence, dict):
            continue
        if row.get("method") == base:
            return evidence
        if isinstance(evidence.get(base), dict):
            return evidence[base]
    return None


def scores_by_method(scores: list[dict[str, Any]]) -> dict[str, list[str]]:
    """{method ('' when a row names none): ["scorer: score" as HTML]} of one latent's score rows; a
    score that could not be computed (null) shows as '-' with its error on hover."""
    out: dict[str, list[str]] = {}
    for row in scores:
        scorer = esc(row.get("scorer", "score"))
        try:
            shown = f"{scorer}: {float(row['score']):.3f}"
        except (TypeError, ValueError):
            shown = f'{scorer}: <span class="muted" title="{esc(row.get("error") or "no score")}">-</span>'
        out.setdefault(str(row.get("method") or ""), []).append(shown)
    return out


def descriptions_html(explanations: list[dict[str, Any]], scores: list[dict[str, Any]]) -> str:
    """A table: method, description, and every score of that description (scorer: value)."""
    by_method = scores_by_method(scores)
    rows = []
    for row in explanations:
        method = str(row.get("method", ""))
        given = by_method.pop(method, [])
        status = "" if row.get("ok", True) else f' <span class="orphan">({esc(row.get("error") or "failed")})</span>'
        rows.append([esc(method), esc(row.get("description", "")) + status,
                     "<br>".join(given) or '<span class="muted">-</span>'])
    for method, given in by_method.items():  # scores whose description is not in the explanations
        rows.append([esc(method or "-"), '<span class="muted">(no description in the report)</span>',
                     "<br>".join(given)])
    if not rows:
        return '<p class="muted">No descriptions yet (run <code>saekit explain</code>).</p>'
    return table(["method", "description", "scores"], rows)


def output_html(page: Page, rows: list[dict[str, Any]]) -> str:
    """VocabProj top/bottom tokens (with their logits as a figure when the evidence holds them) and
    TokenChange's promoted/suppressed tokens."""
    parts = []
    vocab = method_evidence(rows, "vocabproj")
    if vocab:
        parts.append("<h4>VocabProj</h4>")
        if vocab.get("top_logits") and vocab.get("bottom_logits"):
            parts.append(page.figure(vocab_logits_figure(vocab["top"], vocab["top_logits"], vocab["bottom"],
                                                         vocab["bottom_logits"])))
        else:
            parts.append(f"<div>promotes</div>{token_chips(vocab.get('top', []))}"
                         f"<div>suppresses</div>{token_chips(vocab.get('bottom', []))}")
    change = method_evidence(rows, "tokenchange")
    if change:
        parts.append(f"<h4>TokenChange (latent clamped to &plusmn;{fmt(change.get('clamp'))})</h4>")
        for key, label in (("plus_top", "+clamp promotes"), ("plus_bottom", "+clamp suppresses"),
                           ("minus_top", "&minus;clamp promotes"), ("minus_bottom", "&minus;clamp suppresses")):
            if change.get(key):
                parts.append(f"<div>{label}</div>{token_chips(change[key])}")
    return "".join(parts) or '<p class="muted">No output-side evidence (VocabProj, TokenChange) for this latent.</p>'


def examples_html(records: LatentRecords, latent: int, text: TokenText, n_top: int, n_per_quantile: int) -> str:
    """The top contexts, then the quantile examples (strongest bin first), shaded by activation."""
    max_act = float(records.stats(latent)["max_activation"])
    top = records.examples(latent, "top")[:n_top]
    parts = [f"<h4>Top contexts ({len(top)} of {len(records.examples(latent, 'top'))})</h4>"]
    parts += [example_html(e, text, max_act) for e in top] or ['<p class="muted">Never active.</p>']
    by_bin: dict[int, list[Any]] = {}
    for example in records.examples(latent, "explain") + records.examples(latent, "test"):
        by_bin.setdefault(example.quantile, []).append(example)
    if by_bin:
        parts.append(f"<h4>Quantile examples ({len(by_bin)} bins, 0 = strongest)</h4>")
        for quantile in sorted(by_bin):
            parts.append(f'<div class="muted">bin {quantile}</div>')
            parts += [example_html(e, text, max_act) for e in by_bin[quantile][:n_per_quantile]]
    return "".join(parts)


@lru_cache(maxsize=4096)
def _resolved(path: str, roots: tuple[Path, ...]) -> frozenset[Path]:
    return frozenset({(root / path).resolve() for root in roots} | {Path(path).resolve()})


def same_sae(a: str, b: str, roots: list[Path]) -> bool:
    """Whether two SAE paths, as written in different files (absolute, or relative to where the
    command ran: tried against each of `roots`), name the same folder."""
    return bool(_resolved(a, tuple(roots)) & _resolved(b, tuple(roots)))


def partners_of(match: MatchDir, sae_path: str, latent: int, roots: list[Path]) -> list[dict[str, Any]]:
    """The latent's rows of a match directory's table (one per other SAE), with the other SAE's path."""
    if match.table is None:
        return []
    saes = match.summary.get("saes", [])
    mine = [s["index"] for s in saes if same_sae(s["path"], sae_path, roots)]
    if not mine:
        return []
    table = match.table
    rows = table[(table["sae"] == mine[0]) & (table["latent"] == latent)]
    out = []
    for _, row in rows.iterrows():
        other = next((s for s in saes if s["index"] == int(row["other_sae"])), {})
        info = {k: row[k].item() if hasattr(row[k], "item") else row[k] for k in PARTNER_COLUMNS if k in row}
        out.append({**info, "match": match.path, "pair": row["pair"], "other_name": other.get("name", "?"),
                    "other_path": other.get("path", ""), "threshold": match.summary["config"]["threshold"]})
    return out


def partners_html(partners: list[dict[str, Any]], labels: dict[Path, str]) -> str:
    """A table of the latent's partners; a partner latent links to its dashboard when its dict holds
    `link` (the dashboard's id)."""
    if not partners:
        return ""
    rows = []
    for p in partners:
        partner = int(p["decoder_partner"])
        link = p.get("link")
        shown = f'<a href="#{link}">{partner}</a>' if link else (str(partner) if partner >= 0 else "none")
        verdict = ('<span class="shared">shared</span>' if p.get("shared")
                   else '<span class="orphan">not shared</span>')
        rows.append([esc(labels.get(p["match"], p["match"])), esc(p["other_name"]), shown, fmt(p.get("decoder_cos")),
                     fmt(p.get("encoder_partner")), fmt(p.get("encoder_cos")), verdict + f" at {fmt(p['threshold'])}",
                     fmt(p.get("activation_corr"))])
    return ("<h4>Partner in the other seed</h4>" +
            table(["match", "other SAE", "decoder partner", "decoder cos", "encoder partner", "encoder cos",
                   "verdict", "activation corr"], rows, numeric={3, 5, 7}))


def latent_dashboard(page: Page, rec: RecordsDir, records_index: int, latent: int, text: TokenText,
                     partners: list[dict[str, Any]], labels: dict[Path, str],
                     n_top: int = 10, n_per_quantile: int = 2, hidden: bool = True) -> str:
    """The `<section>` of one latent: hidden until the report's index links to it, or (hidden=False)
    shown at once and left alone by the page's router (a page of its own, `explore.latent_dashboard_html`)."""
    records = rec.records
    stats = records.stats(latent)
    explanations = [r for r in rec.explanations if int(r["latent"]) == latent]
    scores = [r for r in rec.scores if int(r["latent"]) == latent]
    meta = records.meta
    header = (f'<h3>Latent {latent} <span class="muted">of {esc(labels.get(rec.path, rec.path))} '
              f'({esc(meta.get("architecture", "?"))}, d_sae {meta.get("d_sae", "?")}, '
              f'{esc(meta.get("hook_name", "?"))})</span></h3>'
              f'<p><a href="#index">&larr; index</a> &middot; frequency {fmt(stats.get("frequency"))} '
              f'&middot; mean active activation {fmt(stats.get("mean_active_activation"))} &middot; max activation '
              f'{fmt(stats.get("max_activation"))} &middot; active in {stats.get("n_active_contexts", "?")} '
              f'contexts</p>')
    histogram = activation_histogram_figure(window_activations(records, latent),
                                            "Activations in the recorded windows (top + quantile examples)")
    css_class, hidden_attr = ("dashboard", " hidden") if hidden else ("dashboard single", "")
    return (f'<section class="{css_class}" id="{anchor_id(records_index, latent)}"{hidden_attr}>{header}'
            f"<h4>Descriptions</h4>{descriptions_html(explanations, scores)}"
            f"{partners_html(partners, labels)}"
            f'<div class="cols"><div>{page.figure(histogram)}</div><div>{output_html(page, explanations)}</div></div>'
            f"{examples_html(records, latent, text, n_top, n_per_quantile)}</section>")
