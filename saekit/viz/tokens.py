"""Tokens as HTML: example windows with each token shaded by the latent's activation, token chips.

Every string that reaches the page goes through `html.escape`, so a token such as `</script>` or
`<b>` shows as text. A token's shade is `rgba(255, 100, 0, a)` with `a = clip(act / max_act, 0, 1)`
(0 = no background); its hover text (`title`) is the activation value. Inactive tokens are bare
`<span>`s (no shade, no hover text).
"""

from __future__ import annotations

import html
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np

from saekit.interp.explain.evidence import TokenText
from saekit.interp.records.format import Example

SHADE_RGB = (255, 100, 0)
VISIBLE_WHITESPACE = {"\n": "\u21b5\n", "\t": "\u2192\t", "\r": "\u240d"}


def shade_alpha(act: float, max_act: float) -> float:
    """Opacity of a token's background: act / max_act clipped to [0, 1] (0 when max_act <= 0)."""
    if max_act <= 0 or not np.isfinite(act):
        return 0.0
    return float(min(max(act / max_act, 0.0), 1.0))


def show_token(token: str) -> str:
    """A token's text, HTML-escaped, with newlines and tabs made visible and other control or
    invisible format characters written as escapes (\\x1a, \\u200b)."""
    pieces = []
    for char in token:
        if char in VISIBLE_WHITESPACE:
            pieces.append(VISIBLE_WHITESPACE[char])
        elif unicodedata.category(char) in ("Cc", "Cf"):
            pieces.append(f"\\x{ord(char):02x}" if ord(char) < 256 else f"\\u{ord(char):04x}")
        else:
            pieces.append(html.escape(char, quote=True))
    return "".join(pieces)


def token_span(token: str, act: float, max_act: float, anchor: bool = False) -> str:
    """One token as a span: shaded by act / max_act with the activation as its hover text
    (`<span class="tok" style=... title=...>`), or a bare `<span>` when the token is inactive (act 0)
    and not the anchor: most tokens of a window are, and the bare form keeps the report small."""
    if act == 0 and not anchor:
        return f"<span>{show_token(token)}</span>"
    alpha = shade_alpha(act, max_act)
    style = f' style="background:rgba({SHADE_RGB[0]},{SHADE_RGB[1]},{SHADE_RGB[2]},{alpha:.3f})"' if alpha > 0 else ""
    cls = "tok anchor" if anchor else "tok"
    return f'<span class="{cls}"{style} title="{act:.4g}">{show_token(token)}</span>'


def shaded_tokens(tokens: list[str], acts: np.ndarray | list[float], max_act: float, anchor: int = -1) -> str:
    """A window of tokens [n] with activations [n] as a `<div class="ctx">` of shaded spans.

    max_act: the activation that gets full colour (the latent's max over the records, so windows
    compare across examples); anchor: index of the window's max token (outlined), -1 for none.
    """
    if len(tokens) != len(acts):
        raise ValueError(f"shaded_tokens: {len(tokens)} tokens but {len(acts)} activations")
    spans = "".join(token_span(t, float(a), max_act, i == anchor) for i, (t, a) in enumerate(zip(tokens, acts)))
    return f'<div class="ctx">{spans}</div>'


SHOWN_BEFORE, SHOWN_AFTER = 20, 6
"""Tokens of a window shown before and after its anchor (the max token): the context that led to the
activation and a little of what follows; the rest of the recorded window is cut from the page."""


def example_html(example: Example, text: TokenText, max_act: float) -> str:
    """One recorded example window around its anchor (at most SHOWN_BEFORE tokens before it and
    SHOWN_AFTER after), shaded, with its max activation in front."""
    anchor = example.anchor_in_window
    lo = max(0, anchor - SHOWN_BEFORE) if anchor >= 0 else 0
    hi = min(len(example.tokens), (anchor if anchor >= 0 else SHOWN_BEFORE) + SHOWN_AFTER + 1)
    body = shaded_tokens(text.many(example.tokens[lo:hi]), example.acts[lo:hi], max_act,
                         anchor - lo if anchor >= 0 else -1)
    return f'<div class="example"><span class="value">{example.max_act:.3g}</span>{body}</div>'


def token_chips(tokens: list[str], values: list[float] | None = None) -> str:
    """Tokens as a row of chips (`values`, e.g. logits, shown after each token when given)."""
    if values is not None and len(values) != len(tokens):
        raise ValueError(f"token_chips: {len(tokens)} tokens but {len(values)} values")
    chips = []
    for i, token in enumerate(tokens):
        value = f' <small>{values[i]:+.3g}</small>' if values is not None else ""
        chips.append(f'<span class="chip">{show_token(token)}{value}</span>')
    return f'<div class="chips">{"".join(chips)}</div>'


def records_tokenizer(meta: dict[str, Any]) -> Any | None:
    """The tokenizer of the model a records directory was collected from, without loading the model.

    A local model folder's tokenizer.json, else a Hugging Face tokenizer already on this machine
    (offline); None when neither is found (tokens then show as `#id`).
    """
    info = meta.get("model", {})
    source = info.get("source")
    if info.get("source_kind") == "local" and source and (Path(source) / "tokenizer.json").is_file():
        from saekit.models import read_tokenizer

        return read_tokenizer(source)
    name = info.get("tokenizer") or (source if info.get("source_kind") == "hub" else None)
    if not name:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception:  # not cached here: show ids
        return None
