"""Prompt templates (versioned text files in saekit/interp/prompts/) and reading the explainer's reply.

A template file `NAME.txt` reads

    version: 1
    ### system
    ...the system prompt...
    ### user
    ...the user prompt, with $placeholders (string.Template)...

Bump the version line whenever the wording changes: each explanation records `NAME/VERSION`, and
the LLM reply cache keys on the prompt text, so old replies are never served for new prompts.

Between the version line and `### system` a template may hold `# comment` lines (e.g. where a
prompt comes from) and options: `whitespace: exact` keeps each section verbatim (only the newline
that ends its last line is not part of it) instead of stripping it. An empty system section means
no system message: the prompt is one user message.

Prompt sets (`prompt_set` of ExplainConfig and ScoreConfig): `saekit`, the templates in this folder
(the default); `paper`, Gur-Arieh et al. 2025's prompts verbatim, in `paper/` (formatting in
`prompts/paper.py`). The paper has no detection, fuzzing or simulation prompts: under `paper` those
scorers use saekit's. A `prompt_dir` given by the user wins over either set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any, Callable

from saekit.interp.llm.backend import REFUSAL_PATTERN

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
        """Chat messages [system, user] ([user] when the system prompt is empty) with every
        $placeholder filled (KeyError names a missing one; fields no placeholder names are ignored)."""
        try:
            user = Template(self.user).substitute({k: str(v) for k, v in fields.items()})
        except KeyError as missing:
            raise KeyError(f"prompt template {self.id}: no value for placeholder {missing}") from None
        if not self.system:
            return [{"role": "user", "content": user}]
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


PROMPT_SETS = ("saekit", "paper")
PAPER_DIR = PROMPT_DIR / "paper"
SAEKIT_ONLY = ("detection", "fuzzing", "simulation")  # scorers the paper has no prompt for
_EXACT_SECTION = re.compile(r"^### (system|user)[ \t]*\n", re.MULTILINE)


def check_prompt_set(prompt_set: str, where: str = "prompt_set") -> str:
    """`prompt_set` when it is one of PROMPT_SETS, else ValueError naming `where`."""
    if prompt_set not in PROMPT_SETS:
        raise ValueError(f"{where}: prompt_set must be one of {', '.join(PROMPT_SETS)}, got {prompt_set!r}")
    return prompt_set


def prompt_set_of(config: Any) -> str:
    """The config's prompt set (saekit when it names none); under paper, detection, fuzzing and
    simulation still use saekit's templates (the paper has none)."""
    return getattr(config, "prompt_set", "saekit") or "saekit"


def template_path(name: str, prompt_dir: str | Path | None = None, prompt_set: str = "saekit") -> Path:
    """Where template `name` is read from: `prompt_dir` when given, else the prompt set's folder
    (under `paper`, saekit's folder for the scorers the paper has no prompt for)."""
    check_prompt_set(prompt_set)
    if prompt_dir:
        return Path(prompt_dir) / f"{name}.txt"
    folder = PAPER_DIR if prompt_set == "paper" and name not in SAEKIT_ONLY else PROMPT_DIR
    return folder / f"{name}.txt"


def _header_options(path: Path, header: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for line in header.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep or key.strip() != "whitespace" or value.strip() not in ("exact", "strip"):
            raise ValueError(f"{path}: unknown header line {line!r} (allowed: '# comment', 'whitespace: exact|strip')")
        options[key.strip()] = value.strip()
    return options


def load_template(name: str, prompt_dir: str | Path | None = None, prompt_set: str = "saekit") -> PromptTemplate:
    """Read `<prompt_dir>/<name>.txt` (default: the prompt set's templates; see `template_path`)."""
    path = template_path(name, prompt_dir, prompt_set)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no prompt template {name!r}")
    text = path.read_text()
    first, _, rest = text.partition("\n")
    if not first.startswith("version:"):
        raise ValueError(f"{path}: the first line must be 'version: <v>', got {first!r}")
    exact = _header_options(path, (_EXACT_SECTION.split(rest) + [""])[0]).get("whitespace") == "exact"
    parts = (_EXACT_SECTION if exact else _SECTION).split(rest)
    if exact:
        sections = {parts[i]: parts[i + 1][:-1] if parts[i + 1].endswith("\n") else parts[i + 1]
                    for i in range(1, len(parts) - 1, 2)}
    else:
        sections = {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
    if set(sections) != {"system", "user"} or len(parts) != 5:
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


def description_validator(max_chars: int, parse: Callable[[str], str] = parse_description
                          ) -> Callable[[str], str | None]:
    """A `validate` for Backend.chat_many: None when the reply holds a usable description (by
    `parse`), else a label. A description that only apologises ("I'm sorry, I cannot ...") is none:
    free text would otherwise pass anything, and check_reply then labels a short one a refusal."""
    def validate(text: str) -> str | None:
        description = parse(text)
        if not description:
            return "wrong_format: no description"
        if REFUSAL_PATTERN.match(description):
            return "wrong_format: the description is a refusal"
        if len(description) > max_chars:
            return f"wrong_format: description longer than {max_chars} characters"
        return None
    return validate
