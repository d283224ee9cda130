"""One self-contained HTML page: plotly.js inlined once, every figure a JSON blob that a little inline
script draws with `Plotly.newPlot` when its section is shown.

Layout: the page's sections in order; latent dashboards are `<section class="dashboard">` elements,
hidden until the URL hash names them (`#latent-...`, set by the index's links), so a report of
hundreds of latents opens fast and draws only what is looked at. Nothing is fetched from a network.
"""

from __future__ import annotations

import html
import json
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1250px;padding:0 18px 60px;
color:#212529;line-height:1.4}
h1{margin:18px 0 4px}h2{border-bottom:2px solid #dee2e6;padding-bottom:4px;margin-top:34px}
nav.toc a{margin-right:14px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #dee2e6;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f1f3f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.plot{margin:10px 0}
.dashboard{border:2px solid #e8590c;border-radius:8px;padding:4px 16px 16px;margin:22px 0}
.ctx{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px;white-space:pre-wrap;word-break:break-all;
display:inline}
.example{border-bottom:1px solid #f1f3f5;padding:3px 0}
.example .value{display:inline-block;min-width:52px;color:#868e96;font-size:12px;font-family:ui-monospace,monospace}
.tok{border-radius:2px}.tok.anchor{outline:1px solid #c92a2a}
.chips{display:flex;flex-wrap:wrap;gap:4px;margin:4px 0 10px}
.chip{font-family:ui-monospace,monospace;font-size:12px;background:#f1f3f5;border-radius:4px;padding:1px 6px;
white-space:pre}
.muted{color:#868e96}.shared{color:#2b8a3e;font-weight:600}.orphan{color:#c92a2a}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:18px}
"""

SCRIPT = """
(function(){
  var TEMPLATE = JSON.parse(document.getElementById('plotly-template').textContent);
  function render(root){
    root.querySelectorAll('div.plot').forEach(function(div){
      if (div.dataset.rendered || div.offsetParent === null) return;
      var fig = JSON.parse(document.getElementById(div.id + '-json').textContent);
      if (!fig.layout.template) fig.layout.template = TEMPLATE;
      if (!fig.layout.height) fig.layout.height = 420;
      Plotly.newPlot(div, fig.data, fig.layout, {responsive: true, displaylogo: false});
      div.dataset.rendered = '1';
    });
  }
  function route(){
    var id = decodeURIComponent(location.hash.slice(1));
    var target = id.indexOf('latent-') === 0 ? document.getElementById(id) : null;
    document.querySelectorAll('section.dashboard:not(.single)').forEach(function(s){ s.hidden = (s !== target); });
    if (target) { render(target); target.scrollIntoView(); }
  }
  window.saekitRender = render;
  window.addEventListener('hashchange', route);
  document.addEventListener('DOMContentLoaded', function(){ render(document); route(); });
})();
"""


def esc(value: Any) -> str:
    """Any value as escaped HTML text."""
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A number for a table cell (4 significant digits; '-' for None/NaN), anything else escaped."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) or hasattr(value, "dtype"):
        number = float(value)
        return "-" if number != number else f"{number:.{digits}g}"
    return esc(value)


def table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """An HTML table; cells are already HTML (escape text with `esc`), columns in `numeric` right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def script_json(value: Any) -> str:
    """JSON safe inside a <script> element: every '<' written as \\u003c (no '</script>' can close it)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


class Page:
    """Collects figures and sections, then `render()`s the whole HTML document."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.sections: list[str] = []
        self.template: dict[str, Any] | None = None
        self.n_figures = 0

    def figure(self, fig: Any, css_class: str = "plot") -> str:
        """The HTML of one plotly figure: an empty div and its JSON (None -> '')."""
        if fig is None:
            return ""
        import plotly.io as pio

        data = json.loads(pio.to_json(fig, validate=False))  # NaN -> null, numpy -> lists
        layout = data.setdefault("layout", {})
        template = layout.pop("template", None)
        if self.template is None and template is not None:
            self.template = template
        elif template is not None and template != self.template:
            layout["template"] = template  # a figure with its own template keeps it
        fig_id = f"fig{self.n_figures}"
        self.n_figures += 1
        return (f'<div class="{css_class}" id="{fig_id}"></div>'
                f'<script type="application/json" id="{fig_id}-json">{script_json(data)}</script>')

    def add(self, html_text: str) -> None:
        self.sections.append(html_text)

    def render(self) -> str:
        """The document: plotly.js and the shared template once, the sections, the drawing script."""
        from plotly.offline import get_plotlyjs

        return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
                f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{esc(self.title)}</title>"
                f"<style>{CSS}</style>\n<script>{get_plotlyjs()}</script>\n"
                f"<script type='application/json' id='plotly-template'>{script_json(self.template or {})}</script>\n"
                f"</head><body>\n" + "\n".join(self.sections) + f"\n<script>{SCRIPT}</script>\n</body></html>\n")
