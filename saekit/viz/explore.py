"""Exploring a run in a notebook: a table of its described latents, search by description or by
token, and one latent's dashboard as HTML to show inline.

    from IPython.display import HTML
    from saekit.viz import latent_table, search_latents, latent_dashboard_html, iframe_html
    table = latent_table("runs/demo")                      # one row per (records dir, latent, method)
    search_latents(table, text="plural")                   # descriptions that mention it
    search_latents(table, token=" the")                    # latents that fire on / promote the token
    HTML(iframe_html(latent_dashboard_html("runs/demo", 12, records=0)))

`latent_dashboard_html` is the report's dashboard (dashboard.py) on a page of its own: plotly.js
inlined, nothing fetched; `iframe_html` wraps such a page so its styles stay out of the notebook.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from saekit.interp.explain.evidence import TokenText
from saekit.viz.dashboard import latent_dashboard, method_evidence, partners_of
from saekit.viz.discover import RecordsDir, RunContents, discover
from saekit.viz.page import Page
from saekit.viz.tokens import records_tokenizer

TABLE_COLUMNS = ("records", "records_index", "variant", "sae", "latent", "method", "description", "score", "frequency",
                 "max_activation", "input_tokens", "output_tokens")


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _latent_tokens(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(tokens the latent fires on: MaxAct's top tokens; tokens it promotes: VocabProj's top, then
    TokenChange's +clamp top) from a latent's explanation rows."""
    maxact = method_evidence(rows, "maxact") or {}
    vocab = method_evidence(rows, "vocabproj") or {}
    change = method_evidence(rows, "tokenchange") or {}
    inputs = [str(t[0]) for t in maxact.get("top_tokens", [])]
    outputs = list(dict.fromkeys([str(t) for t in vocab.get("top", [])] + [str(t) for t in change.get("plus_top", [])]))
    return inputs, outputs


def latent_table(run: str | Path | RunContents) -> Any:
    """A pandas DataFrame, one row per (records directory, latent, description method) of the run:
    records (its path in the run), records_index (for `latent_dashboard_html`), variant (the model's
    init variant, from the records' cache: trained, random, ...), sae, latent, method,
    description, score (mean of its scores.jsonl rows, NaN when none), frequency and max_activation
    (the records' stats), input_tokens (MaxAct's top tokens) and output_tokens (VocabProj's and
    TokenChange's promoted tokens). Empty (with these columns) when nothing is described."""
    import pandas as pd

    found = run if isinstance(run, RunContents) else discover(run)
    rows = []
    for index, rec in enumerate(found.records):
        scores: dict[tuple[int, str], list[float]] = {}
        for s in rec.scores:
            value = _number(s.get("score"))
            if value is not None:
                scores.setdefault((int(s["latent"]), str(s.get("method", ""))), []).append(value)
        by_latent: dict[int, list[dict[str, Any]]] = {}
        for row in rec.explanations:
            by_latent.setdefault(int(row["latent"]), []).append(row)
        recorded = set(rec.records.latents)
        variant = str(rec.records.meta.get("model", {}).get("init", "?"))
        for latent, explanations in sorted(by_latent.items()):
            stats = rec.records.stats(latent) if latent in recorded else {}
            inputs, outputs = _latent_tokens(explanations)
            for row in explanations:
                given = scores.get((latent, str(row["method"])))
                rows.append({"records": found.label(rec.path), "records_index": index, "variant": variant,
                             "sae": rec.sae_path,
                             "latent": latent, "method": row["method"], "description": row.get("description", ""),
                             "score": float(np.mean(given)) if given else float("nan"),
                             "frequency": stats.get("frequency"), "max_activation": stats.get("max_activation"),
                             "input_tokens": inputs, "output_tokens": outputs})
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def _token_match(tokens: list[str], token: str) -> bool:
    """Whether `token` is among `tokens`, ignoring case and surrounding spaces (a whitespace-only
    token, such as a newline, must match exactly)."""
    def key(t: str) -> str:
        return t.strip().lower() or t
    return any(key(t) == key(token) for t in tokens)


def search_latents(table: Any, text: str | None = None, token: str | None = None, side: str = "both",
                   method: str | None = None) -> Any:
    """The rows of `latent_table(...)` (or a run directory) that match, best score first.

    text: a case-insensitive substring of the description. token: a token the latent fires on
    (side "input": MaxAct's top tokens), promotes (side "output": VocabProj, TokenChange) or either
    ("both"), compared without surrounding spaces and case. method: keep one description method."""
    if side not in ("input", "output", "both"):
        raise ValueError(f"search_latents: side must be input, output or both, got {side!r}")
    if text is None and token is None:
        raise ValueError("search_latents: give text (in descriptions) or token (fired on / promoted)")
    if isinstance(table, (str, Path, RunContents)):
        table = latent_table(table)
    keep = np.ones(len(table), dtype=bool)
    if text is not None:
        keep &= table["description"].str.contains(text, case=False, regex=False).to_numpy()
    if token is not None:
        columns = {"input": ["input_tokens"], "output": ["output_tokens"], "both": ["input_tokens", "output_tokens"]}
        hit = np.zeros(len(table), dtype=bool)
        for column in columns[side]:
            hit |= table[column].map(lambda tokens: _token_match(tokens, token)).to_numpy(dtype=bool)
        keep &= hit
    if method is not None:
        keep &= (table["method"] == method).to_numpy()
    return table[keep].sort_values("score", ascending=False, na_position="last")


def _records_of(found: RunContents, records: int | str | Path) -> tuple[int, RecordsDir]:
    """(index, records directory) named by its index in the run, its path, or its path in the run."""
    if not found.records:
        raise ValueError(f"{found.root}: no records directory (run `saekit collect`)")
    if isinstance(records, int):
        if not 0 <= records < len(found.records):
            raise ValueError(f"records index {records} is outside the run's {len(found.records)} records directories")
        return records, found.records[records]
    for index, rec in enumerate(found.records):
        if found.label(rec.path) == str(records) or rec.path.resolve() == Path(records).resolve():
            return index, rec
    labels = [found.label(r.path) for r in found.records]
    raise ValueError(f"{records}: not a records directory of {found.root}; it has {labels}")


def latent_dashboard_html(run: str | Path | RunContents, latent: int, records: int | str | Path = 0,
                          n_top: int = 10, n_per_quantile: int = 2) -> str:
    """One latent's dashboard (the report's: descriptions and scores, partner in the other seeds,
    activation histogram, output tokens, top and quantile contexts) as a self-contained HTML page.
    records: which records directory of the run (index, as in `latent_table`, or its path)."""
    found = run if isinstance(run, RunContents) else discover(run)
    index, rec = _records_of(found, records)
    if latent not in set(rec.records.latents):
        raise ValueError(f"latent {latent} is not in the records {rec.path} (recorded: {rec.records.latents[:8]}...)")
    page = Page(f"latent {latent} of {found.label(rec.path)}")
    partners = [p for m in found.matches for p in partners_of(m, rec.sae_path, latent, found.roots)]
    labels = {m.path: found.label(m.path) for m in found.matches}
    labels[rec.path] = found.label(rec.path)
    text = TokenText(records_tokenizer(rec.records.meta))
    page.add(latent_dashboard(page, rec, index, latent, text, partners, labels, n_top, n_per_quantile, hidden=False))
    return page.render()


def iframe_html(page_html: str, height: int = 720) -> str:
    """An `<iframe>` holding a whole HTML page (srcdoc): shown inline by IPython.display.HTML with
    its scripts and styles kept apart from the notebook's."""
    return (f'<div><iframe srcdoc="{html.escape(page_html, quote=True)}" style="width:100%;height:{int(height)}px;'
            f'border:1px solid #dee2e6" sandbox="allow-scripts"></iframe></div>')
