"""The `paper` prompt set: Gur-Arieh et al. 2025's prompts, filled as their code fills them.

Source: https://github.com/yoavgur/Feature-Descriptions, feature_descriptions_pipeline.ipynb, commit
eb6ed5fceaa80c2985ceba3340a7e02f0942d4f3 (arXiv 2501.08319). The templates in `paper/` hold their
prompt text verbatim; this module formats the evidence the way their notebook does (our code, their
format):

- MaxAct (`normalize_activations`, `format_activation_records`, `add_per_neuron_explanation_prompt`):
  every token of every example as `token<TAB>activation`, the activations scaled per example to
  integers 0-10, `min(10, floor(10 * relu(a) / max))` with `max` the example's own maximum, each
  example between `<start>` and `<end>`; when under 20% of all the scaled values are non-zero, the
  same examples again with the zeros removed. Tokens are written as they are (no escaping).
- VocabProj: `str(top + bottom)`, one unlabelled Python list of the top and bottom tokens.
- TokenChange: `str(list(set(tokens)))`, the 40 tokens of both clamp directions (+clamp and -clamp),
  deduplicated. Their `set` has no stable order; here the order is first occurrence (top and bottom
  of +clamp, then of -clamp), so prompts are reproducible.
- Ensembles (`analyze_feature`): VP+MA and MA+TC get [INPUT] = the whole MaxAct user prompt and
  [OUTPUT] = one list; VP+TC is the VocabProj prompt with the token set appended to the list; All
  gets both lists, VocabProj's first.
- Output judge: one user message; each set is, per target KL, `\\n<+0.25>'prompt': 'completion'`
  lines (`get_output_score`; completions with newlines written as \\n).

Their explainer's reply is the description as it stands (a JSON {"Explanation": ...} is unwrapped):
`parse_description` here.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from saekit.interp.prompts import load_template

ZERO_FREE_HEADER = "\nSame activations, but with all zeros filtered out:"
NO_ACTIVATIONS = "No activations found for feature."  # their MaxAct user prompt for a silent feature
ZERO_FREE_BELOW = 0.2  # the zero-free block is added when fewer than this share of values are non-zero
ENSEMBLE_TEMPLATES = {"maxact+vocabproj": "ensemble_vm", "maxact+tokenchange": "ensemble_tm",
                      "maxact+vocabproj+tokenchange": "ensemble_all", "vocabproj+tokenchange": "vocabproj"}


# ---- MaxAct ----------------------------------------------------------------------------------------
def normalize_activations(values: list[float], max_activation: float) -> list[int]:
    """Integers 0-10: min(10, floor(10 * relu(a) / max)); all 0 when max <= 0."""
    if max_activation <= 0:
        return [0 for _ in values]
    return [min(10, math.floor(10 * max(0.0, float(a)) / max_activation)) for a in values]


def activation_records(examples: list[Any], text: Any) -> list[dict[str, Any]]:
    """MaxAct's records from example windows (records.format.Example): per window its token strings,
    activations and its own max (rounded to 4 decimals, so the prompt is a function of the evidence)."""
    records = []
    for example in examples:
        acts = [round(float(a), 4) for a in example.acts]
        records.append({"tokens": [text(t) for t in example.tokens], "acts": acts,
                        "max_act": max(acts) if acts else 0.0})
    return records


def format_record(record: dict[str, Any], omit_zeros: bool) -> str:
    """One example as `token<TAB>activation` lines (only the non-zero ones when omit_zeros)."""
    levels = normalize_activations(record["acts"], record["max_act"])
    pairs = [(t, a) for t, a in zip(record["tokens"], levels) if a > 0 or not omit_zeros]
    return "\n".join(f"{token}\t{level}" for token, level in pairs)


def format_records(records: list[dict[str, Any]], omit_zeros: bool) -> str:
    """The examples, each between <start> and <end>, as one block."""
    return "\n<start>\n" + "\n<end>\n<start>\n".join(format_record(r, omit_zeros) for r in records) + "\n<end>\n"


def non_zero_proportion(records: list[dict[str, Any]]) -> float:
    """The share of scaled activations, over all examples' tokens, that are not zero."""
    total = sum(len(r["acts"]) for r in records)
    nonzero = sum(sum(1 for a in normalize_activations(r["acts"], r["max_act"]) if a != 0) for r in records)
    return nonzero / total if total else 0.0


def zero_free_block(records: list[dict[str, Any]]) -> str:
    """The second, zero-free copy of the examples when under 20% of the values are non-zero, else ''."""
    if non_zero_proportion(records) < ZERO_FREE_BELOW:
        return ZERO_FREE_HEADER + format_records(records, omit_zeros=True)
    return ""


def maxact_fields(maxact: dict[str, Any]) -> dict[str, str]:
    """$activations and $zero_free of paper/maxact.txt from MaxAct evidence with 'records'."""
    records = maxact.get("records") or []
    return {"activations": format_records(records, omit_zeros=False), "zero_free": zero_free_block(records)}


def maxact_user_prompt(maxact: dict[str, Any], prompt_dir: str | None = None) -> str:
    """Their MaxAct user prompt (also the [INPUT] of the ensembles); NO_ACTIVATIONS without examples."""
    if not maxact.get("records"):
        return NO_ACTIVATIONS
    return load_template("maxact", prompt_dir, "paper").messages(**maxact_fields(maxact))[-1]["content"]


# ---- VocabProj, TokenChange ------------------------------------------------------------------------
def python_list(tokens: list[str]) -> str:
    """Tokens as their code shows them: str() of a Python list."""
    return str(list(tokens))


def vocabproj_tokens(vocabproj: dict[str, Any]) -> list[str]:
    """top + bottom: one unlabelled list."""
    return list(vocabproj["top"]) + list(vocabproj["bottom"])


def tokenchange_tokens(tokenchange: dict[str, Any]) -> list[str]:
    """The set of TokenChange's tokens, both clamp directions, each string once (first occurrence)."""
    lists = [tokenchange.get(k, []) for k in ("plus_top", "plus_bottom", "minus_top", "minus_bottom")]
    return list(dict.fromkeys(t for part in lists for t in part))


# ---- explainer prompts -----------------------------------------------------------------------------
def messages(method: str, evidence: dict[str, Any], prompt_dir: str | None = None
             ) -> tuple[list[dict[str, str]], str]:
    """(chat messages, prompt version) of one latent and one method (not concat) under the paper's
    prompts; `evidence` as explain/run.py's `_shown` gives it (ensembles: {part: evidence})."""
    if method == "maxact":
        template = load_template("maxact", prompt_dir, "paper")
        return template.messages(**maxact_fields(evidence)), template.id
    if method == "vocabproj":
        template = load_template("vocabproj", prompt_dir, "paper")
        return template.messages(tokens=python_list(vocabproj_tokens(evidence))), template.id
    if method == "tokenchange":
        template = load_template("tokenchange", prompt_dir, "paper")
        return template.messages(tokens=python_list(tokenchange_tokens(evidence))), template.id
    if method not in ENSEMBLE_TEMPLATES:
        raise ValueError(f"prompt_set paper: no prompt for method {method!r}")
    template = load_template(ENSEMBLE_TEMPLATES[method], prompt_dir, "paper")
    if method == "vocabproj+tokenchange":
        tokens = vocabproj_tokens(evidence["vocabproj"]) + tokenchange_tokens(evidence["tokenchange"])
        return template.messages(tokens=python_list(tokens)), template.id
    fields = {"input_data": maxact_user_prompt(evidence["maxact"], prompt_dir)}
    if method == "maxact+vocabproj":
        fields["output_data"] = python_list(vocabproj_tokens(evidence["vocabproj"]))
    elif method == "maxact+tokenchange":
        fields["output_data"] = python_list(tokenchange_tokens(evidence["tokenchange"]))
    else:
        fields["output_data1"] = python_list(vocabproj_tokens(evidence["vocabproj"]))
        fields["output_data2"] = python_list(tokenchange_tokens(evidence["tokenchange"]))
    return template.messages(**fields), template.id


def parse_description(text: str) -> str:
    """Their explainer's description: the reply stripped, or the 'Explanation' of a JSON reply."""
    body = re.sub(r"^\s*```(?:json)?|```\s*$", "", text.strip()).strip()
    if body.startswith("{"):
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("Explanation"), str):
            return data["Explanation"].strip()
    return text.strip()


# ---- output judge ----------------------------------------------------------------------------------
def _escape_newlines(text: str) -> str:
    return text.replace("\n", "\\n").replace("\r", "\\r")


def set_text(generation: dict[str, Any], prompts: list[str]) -> str:
    """One set of completions as get_output_score writes it: per target KL t (0.25 -> '+0.25'),
    "\\n<+t>'prompt': 'completion'" for each prompt, completions' newlines written as \\n and \\r."""
    pieces = []
    for target, texts in zip(generation["targets"], generation["completions"]):
        mark = f"\n<{'+' if target >= 0 else ''}{float(target)}>"
        lines = [f"'{prompt}': '{_escape_newlines(text)}'" for prompt, text in zip(prompts, texts)]
        pieces.append(mark + mark.join(lines))
    return "".join(pieces)
