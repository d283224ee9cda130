"""Reading judges' replies: the answers a scorer's prompt asks for, parsed leniently.

Every parser returns None when the reply holds no usable answer; the scorers' validators turn that
into a `wrong_format` label, which Backend.chat retries (and check_reply uses to tell a refusal from a
hedged answer). Replies come in many shapes, so each parser reads the common ones:

- `parse_labels` (detection, fuzzing): n 0/1 labels, a bracketed list or a plain line of them;
- `parse_activations` (simulation): n activations 0-10, 'index<TAB>activation' lines (the first line
  of an index counts; prose lines are skipped) or a plain list of n numbers;
- `parse_choice` (output judge): set 1, 2 or 3, from the first line that holds an answer;
- `parse_sentences` (input judge): the JSON object of positive and negative sentences.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable


_LABELS = {"1": 1, "0": 0, "1.0": 1, "0.0": 0, "true": 1, "false": 0, "yes": 1, "no": 0}
_SEPARATORS = re.compile(r"[,;\s]+")
_ANSWER_PREFIX = re.compile(r"^\W*(?:final\s+)?(?:answers?|labels?|predictions?)\s*[:=\-]?\s*", re.IGNORECASE)


def _values(text: str, n: int, pattern: str, as_value: Callable[[str], Any]) -> list[Any] | None:
    """n items of `text` split at commas/spaces, when each (unquoted, lowercased) matches `pattern`."""
    items = [i for i in (i.strip("'\"").lower() for i in _SEPARATORS.split(text.strip())) if i]
    return [as_value(i) for i in items] if len(items) == n and all(re.fullmatch(pattern, i) for i in items) else None


def parse_labels(reply: str, n: int) -> list[int] | None:
    """n 0/1 answers from a judge's reply, else None: the first bracketed list of n labels, comma-
    or space-separated ('[1, 0, 1]', '[1 0 1]'; true/false/yes/no allowed inside brackets), else the
    first line holding only n 0/1 values separated by commas or spaces ('1 0 1', 'Answer: 1,0,1')."""
    for match in re.finditer(r"\[([^\[\]]*)\]", reply):
        labels = _values(match.group(1), n, "|".join(map(re.escape, _LABELS)), _LABELS.get)
        if labels is not None:
            return labels
    for line in reply.splitlines():
        labels = _values(_ANSWER_PREFIX.sub("", line.strip()).strip(" .()"), n, r"[01](?:\.0)?", _LABELS.get)
        if labels is not None:
            return labels
    return None


_NUMBER = r"-?\d+(?:\.\d+)?"
_LINE_INDEX = re.compile(r"^\s*\|?\s*(\d+)[.):]?(?=[\s|,:])")
_LINE_VALUE = re.compile(rf"(?:^|[\s|,:])({_NUMBER})\s*\|?\s*$")


def parse_activations(reply: str, n: int) -> list[float] | None:
    """n predicted activations (clipped to 0-10) from a simulator's reply, else None.

    Read as lines 'index<TAB>activation' or 'index<TAB>token<TAB>activation' (also '|' or spaces
    between the fields): a line that starts with the token's number and ends with a number, so prose
    such as '3 tokens, 1 active' is skipped; when an index occurs twice its first line counts. They
    must cover 1..n. Otherwise: a bracketed list of n numbers ('[0, 10, 0]', '[0 10 0]'), or a line
    holding only n numbers separated by commas or spaces ('0 10 0', 'Answer: 0, 10, 0').
    """
    found: dict[int, float] = {}
    for line in reply.splitlines():
        head, tail = _LINE_INDEX.match(line), _LINE_VALUE.search(line)
        if head is not None and tail is not None and tail.start(1) > head.end(1) and 1 <= int(head[1]) <= n:
            found.setdefault(int(head[1]), float(tail[1]))
    values = [found[i] for i in range(1, n + 1)] if len(found) == n else None
    lists = [m[1] for m in re.finditer(r"\[([^\[\]]*)\]", reply)]  # then plain lines; tab lines are index lines
    lists += [_ANSWER_PREFIX.sub("", line.strip()) for line in reply.splitlines() if "\t" not in line]
    for text in lists if values is None else []:
        values = _values(text, n, _NUMBER, float)
        if values is not None:
            break
    return None if values is None else [min(10.0, max(0.0, v)) for v in values]


_BARE_CHOICE = re.compile(r"(?:(?:final\s+)?(?:answer|choice)\s*(?:is)?\s*[:=\-]?\s*)?"
                          r"(?:(?:the\s+)?set\s*(?:number\s*)?#?\s*)?\(?([123])\)?\s*[.!]?", re.IGNORECASE)
_STATED_CHOICE = re.compile(r"\b(?:answer|choice|choose|chose|chosen|pick|picked|select|selected|go with)\b"
                            r"[^0-9\n]{0,20}?\b(?:set\s*#?\s*)?([123])\b", re.IGNORECASE)


def parse_choice(reply: str) -> int | None:
    """The set the judge names (1, 2 or 3), or None: from the first line that holds an answer, a line
    that is only the set's number ('2', 'Set 2', '**3**', 'Answer: 1') or one that states a choice
    ('I pick set 2'); failing that, the set number when the reply mentions only one ('set 2 repeats
    the dates'). So '2\nSet 1 has ... set 2 has more.' reads 2, and a reason line before the number
    line ('Set 2 repeats the dates.\n3') reads 3."""
    for line in reply.splitlines():
        bare = re.sub(r"[*_`#>\"']", "", line).strip().lstrip("-").strip()
        match = _BARE_CHOICE.fullmatch(bare) or _STATED_CHOICE.search(line)
        if match:
            return int(match.group(1))
    mentioned = set(re.findall(r"\bset\s*#?\s*([123])\b", reply, flags=re.IGNORECASE))
    return int(mentioned.pop()) if len(mentioned) == 1 else None


def parse_sentences(reply: str) -> tuple[list[str], list[str]] | None:
    """(positive, negative) sentence lists from a JSON object in the reply (code fences and text
    around it allowed); None unless both are non-empty lists of non-empty strings."""
    text = re.sub(r"```(?:json)?", "", reply)
    first, last = text.find("{"), text.rfind("}")
    if first < 0 or last <= first:
        return None
    try:
        data = json.loads(text[first:last + 1])
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    lists = []
    for key in ("positive", "negative"):
        value = data.get(key)
        if not isinstance(value, list) or not value or not all(isinstance(s, str) and s.strip() for s in value):
            return None
        lists.append([s.strip() for s in value])
    return lists[0], lists[1]
