"""Prompt templates (versioned text files in saekit/interp/prompts/) and reading the explainer's reply.

A template file `NAME.txt` reads

    version: 1
    ### system
    ...the system prompt...
    ### user
    ...the user prompt, with $placeholders (string.Template)...

Bump the version line whenever the wording changes: each explanation records `NAME/VERSION`, and
the LLM reply cache keys on the prompt text, so old replies are never served for new prompts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any, Callable

PROMPT_DIR = Path(__file__).parent
_SECTION = re.compile(r"^### (system|user)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class PromptTemplate:
    """One template: its name, version, system prompt and user prompt ($placeholders)."""

    name: str
    version: str
    system: str
    user: str

    @property
    def id(self) -> str:
        """'name/version', what explanations.jsonl records as prompt_version."""
        return f"{self.name}/{self.version}"

    def messages(self, **fields: Any) -> list[dict[str, str]]:
        """Chat messages [system, user] with every $placeholder filled (KeyError names a missing one)."""
        try:
            user = Template(self.user).substitute({k: str(v) for k, v in fields.items()})
        except KeyError as missing:
            raise KeyError(f"prompt template {self.id}: no value for placeholder {missing}") from None
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


def load_template(name: str, prompt_dir: str | Path | None = None) -> PromptTemplate:
    """Read `<prompt_dir>/<name>.txt` (default: saekit's own templates)."""
    path = Path(prompt_dir or PROMPT_DIR) / f"{name}.txt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no prompt template {name!r}")
    text = path.read_text()
    first, _, rest = text.partition("\n")
    if not first.startswith("version:"):
        raise ValueError(f"{path}: the first line must be 'version: <v>', got {first!r}")
    parts = _SECTION.split(rest)
    sections = {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
    if set(sections) != {"system", "user"}:
        raise ValueError(f"{path}: needs a '### system' and a '### user' section")
    return PromptTemplate(name, first.split(":", 1)[1].strip(), sections["system"], sections["user"])


def token_list(tokens: list[str]) -> str:
    """Tokens as a comma-separated list of quoted strings (leading spaces and newlines visible)."""
    return ", ".join(repr(t) for t in tokens)


def examples_block(evidence: dict[str, Any]) -> str:
    """MaxAct evidence as numbered excerpts, each followed by its activating tokens (0-10)."""
    lines = []
    for i, example in enumerate(evidence["examples"], 1):
        lines.append(f"Excerpt {i}: {example['text']}")
        lines.append("activating tokens: " + ", ".join(f"{t!r} ({a})" for t, a in example["activations"]))
    return "\n".join(lines) if lines else "(the feature did not activate on the sampled text)"


def output_block(vocabproj: dict[str, Any] | None, tokenchange: dict[str, Any] | None) -> str:
    """The [OUTPUT] block of an ensemble prompt from VocabProj and/or TokenChange evidence."""
    lines = ["[OUTPUT]"]
    if vocabproj is not None:
        lines += ["Projected onto the vocabulary, the feature promotes: " + token_list(vocabproj["top"]),
                  "and suppresses: " + token_list(vocabproj["bottom"])]
    if tokenchange is not None:
        lines += [f"Steering the model with the feature (clamped to {tokenchange['clamp']}) promotes: "
                  + token_list(tokenchange["plus_top"]),
                  "and suppresses: " + token_list(tokenchange["plus_bottom"])]
    return "\n".join(lines)


def parse_description(text: str) -> str:
    """The description in an explainer's reply: what follows the last 'Explanation:' (else the
    whole reply), its first non-empty line, without markdown emphasis or surrounding quotes."""
    matches = list(re.finditer(r"explanation\s*:", text, flags=re.IGNORECASE))
    body = text[matches[-1].end():] if matches else text
    line = next((l for l in (s.strip() for s in body.splitlines()) if l), "")
    line = re.sub(r"^[-*>\s]+", "", line).replace("**", "").strip()
    while len(line) >= 2 and line[0] == line[-1] and line[0] in "\"'`":
        line = line[1:-1].strip()
    return line


def description_validator(max_chars: int) -> Callable[[str], str | None]:
    """A `validate` for Backend.chat_many: None when the reply holds a usable description, else a label."""
    def validate(text: str) -> str | None:
        description = parse_description(text)
        if not description:
            return "wrong_format: no description"
        if len(description) > max_chars:
            return f"wrong_format: description longer than {max_chars} characters"
        return None
    return validate
