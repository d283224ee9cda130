"""`saekit explain RECORDS_DIR`: describe latents from their inputs and their outputs.

Methods (Gur-Arieh et al. 2025, arXiv 2501.08319; evidence in explain_evidence.py):

| method | evidence |
|---|---|
| `maxact` | the latent's top-activating windows from the records, activating tokens marked `<<...>>` |
| `vocabproj` | top/bottom `vocab_tokens` tokens of `W_U · LN_final(W_dec[f])` |
| `tokenchange` | tokens whose logits change most when the latent is clamped to +/- `tc_clamp` |
| `A+B[+C]` | ensemble: one prompt, [INPUT] (MaxAct) and [OUTPUT] (VocabProj, TokenChange) blocks; `all` |
| `concat` | the MaxAct, VocabProj and TokenChange descriptions joined |

Without an LLM (`backend = "none"`, the default) the description is the evidence itself in short
("raw" mode: the tokens the latent fires on, the tokens it promotes), so everything runs offline.
With an LLM, the prompts are the versioned templates of saekit/interp/prompts/ (`prompt_set = paper`:
Gur-Arieh et al.'s prompts verbatim, saekit/interp/prompts/paper/).

Output: `explanations.jsonl`, one JSON object per (latent, method): latent, method, description,
evidence (what the prompt showed), backend, model, prompt_version, ok, error, sae, hook_name, records.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saekit.config import config_to_dict, doc
from saekit.data.cache import resolve_device
from saekit.interp.explain import evidence as ev
from saekit.interp.prompts import (check_prompt_set, description_validator, examples_block, load_template,
                                   output_block, parse_description, token_list)
from saekit.interp.prompts import paper
from saekit.interp.records.format import LatentRecords, load_records

METHODS = ("maxact", "vocabproj", "tokenchange")
ALIASES = {"ma": "maxact", "vp": "vocabproj", "tc": "tokenchange"}
EXPLANATIONS_FILE = "explanations.jsonl"


@dataclass
class ExplainConfig:
    """Which latents `saekit explain` describes, with which methods and explainer."""

    records: str = doc("records directory from `saekit collect` (or an SAE folder holding records/)", "")
    sae: str = doc("the SAE ('' = the one the records name)", "")
    model: str = doc("model for VocabProj/TokenChange and token strings ('' = the cache's model)", "")
    init: str = doc("init variant of --model ('' = the cache's)", "")
    methods: list[str] = doc("maxact, vocabproj, tokenchange, ensembles joined by + (maxact+vocabproj, all), "
                             "concat", default_factory=lambda: list(METHODS))
    latents: list[int] = doc("latents to describe (empty = the first n_latents of the records)",
                             default_factory=list)
    n_latents: int = doc("with no --latents: how many of the recorded latents (0 = all)", 0)
    out: str = doc("explanations file ('' = <records>/explanations.jsonl)", "")
    maxact_examples: int = doc("windows shown to MaxAct", 20)
    maxact_source: str = doc("which recorded examples MaxAct shows: top | explain (delphi's quantile sample)", "top")
    vocab_tokens: int = doc("VocabProj: top and bottom tokens shown (paper: 50)", 50)
    vocab_bias: bool = doc("VocabProj: unembed(ln_final(d)) with LN bias and b_U; false: W_U · (w ⊙ norm(d))", True)
    tc_sequences: int = doc("TokenChange: dataset sequences steered (paper: 32)", 32)
    tc_seq_len: int = doc("TokenChange: tokens per sequence, BOS included (paper: 32)", 32)
    tc_clamp: str = doc("TokenChange: clamp value, a number (paper: 10) or a multiple of the latent's max ('2x')",
                        "10")
    tc_tokens: int = doc("TokenChange: top and bottom tokens per direction (paper: 10, so 40 in all)", 10)
    tc_batch_tokens: int = doc("TokenChange: tokens per steered forward pass (bounds memory)", 32768)
    backend: str = doc("explainer: none (raw descriptions) | openai | transformers", "none")
    llm_model: str = doc("explainer model (openai: model name; transformers: folder or hub name)", "")
    llm: dict[str, Any] = doc("other LLMConfig fields, e.g. {\"base_url\": ..., \"cache_dir\": ...}",
                              default_factory=dict)
    prompt_dir: str = doc("folder of prompt templates ('' = saekit's own)", "")
    prompt_set: str = doc("prompt templates: saekit (default) | paper (Gur-Arieh et al.'s, verbatim)", "saekit")
    max_description_chars: int = doc("longer LLM descriptions are rejected and retried", 300)
    seed: int = doc("seed of the TokenChange sequences", 0)
    device: str = doc("auto | cpu | cuda", "auto")

    def __post_init__(self) -> None:
        self.methods = [canonical_method(m) for m in self.methods]
        if self.maxact_source not in ("top", "explain"):
            raise ValueError(f"ExplainConfig.maxact_source must be top or explain, got {self.maxact_source!r}")
        ev.parse_clamp(self.tc_clamp, 1.0)
        check_prompt_set(self.prompt_set, "ExplainConfig.prompt_set")


def canonical_method(name: str) -> str:
    """'concat', or the base methods of `name` (aliases ma/vp/tc, 'all') joined by + in METHODS order."""
    lowered = name.strip().lower()
    if lowered == "concat":
        return lowered
    parts = set(METHODS) if lowered == "all" else {ALIASES.get(p.strip(), p.strip()) for p in lowered.split("+")}
    unknown = sorted(parts - set(METHODS))
    if unknown or not parts:
        raise ValueError(f"ExplainConfig.methods: unknown method {name!r}; use {', '.join(METHODS)}, "
                         f"their ensembles joined by + (or all), or concat")
    return "+".join(m for m in METHODS if m in parts)


def resolve_records(path: str | Path) -> Path:
    """The records directory: `path` itself, or `path/records` for an SAE folder."""
    path = Path(path)
    return path / "records" if not (path / "meta.json").exists() and (path / "records" / "meta.json").exists() \
        else path


def _load_model(records: LatentRecords, config: ExplainConfig, device: torch.device, required: bool) -> Any:
    from saekit.models import reload_model

    try:
        return reload_model(records.meta.get("model", {}), config.model, config.init, str(device),
                            what="the records' cache")
    except Exception as error:
        if required:
            raise
        warnings.warn(f"could not load the model ({error}); MaxAct shows token ids instead of strings")
        return None


def gather_evidence(records: LatentRecords, latents: list[int], bases: set[str], config: ExplainConfig,
                    model: Any, sae: Any, text: ev.TokenText, progress: bool = True) -> dict[str, dict[int, Any]]:
    """{base method: {latent: evidence dict}} for the base methods in `bases`."""
    from tqdm.auto import tqdm

    evidence: dict[str, dict[int, Any]] = {}
    if "maxact" in bases:
        evidence["maxact"] = {}
        for f in latents:
            examples = records.examples(f, config.maxact_source)[:config.maxact_examples]
            evidence["maxact"][f] = ev.maxact_evidence(examples, text, records.stats(f)["max_activation"])
            if config.prompt_set == "paper":  # the paper's prompt shows every token of each window
                evidence["maxact"][f]["records"] = paper.activation_records(examples, text)
    if "vocabproj" in bases:
        out_hook, width = (sae.cfg.hook_name_out, sae.cfg.resolved_d_out) if sae.cfg.transcode else \
            (sae.cfg.hook_name, sae.cfg.d_in)  # a transcoder's decoder writes to its output hook
        if width != model.cfg.d_model:
            raise ValueError(f"VocabProj projects decoder rows through the unembedding: the SAE's output hook "
                             f"{out_hook!r} has width {width}, the model's d_model is {model.cfg.d_model}")
        evidence["vocabproj"] = {}
        for i in range(0, len(latents), 256):
            batch = latents[i:i + 256]
            logits = ev.vocab_projection(model, sae.W_dec[batch].detach(), include_bias=config.vocab_bias)
            for f, row in zip(batch, logits):
                evidence["vocabproj"][f] = ev.vocabproj_evidence(row, text, config.vocab_tokens)
    if "tokenchange" in bases:
        evidence["tokenchange"] = tokenchange_all(records, latents, config, model, sae, text, progress, tqdm)
    return evidence


def tokenchange_all(records: LatentRecords, latents: list[int], config: ExplainConfig, model: Any, sae: Any,
                    text: ev.TokenText, progress: bool, tqdm: Any) -> dict[int, Any]:
    """TokenChange evidence per latent: +clamp and -clamp steerings, several latents per forward pass."""
    from saekit.interp.records.collect import ContextReader
    from saekit.data import read_manifest

    meta = records.meta
    reader = ContextReader(meta["cache"], read_manifest(meta["cache"]), meta["hook_name"])
    contexts = ev.sample_contexts(tuple(meta["context_range"]), config.tc_sequences, config.seed)
    tokens = torch.from_numpy(reader.tokens(contexts)[:, :config.tc_seq_len])
    start = 1 if meta["prepend_bos"] else 0
    per_pass = max(1, ev.tokenchange_batch_size(len(tokens), tokens.shape[1], config.tc_batch_tokens) // 2)
    clean_mean = ev.mean_logits(model, tokens, start)[0]
    out: dict[int, Any] = {}
    under = [f for f in latents if 0 < ev.parse_clamp(config.tc_clamp, 1.0) < records.stats(f)["max_activation"]
             and not str(config.tc_clamp).strip().lower().endswith("x")]
    if under:
        warnings.warn(f"ExplainConfig.tc_clamp {config.tc_clamp!r} is below the max activation of {len(under)} of "
                      f"{len(latents)} latents (e.g. latent {under[0]}: {records.stats(under[0])['max_activation']:.4g}): "
                      f"clamping there turns the latent down where it fires, so TokenChange's 'promotes' list shows "
                      f"what it suppresses; the paper's 10 is in its SAEs' activation scale, a multiple of the "
                      f"latent's max ('2x') is scale-free", stacklevel=2)
    bar = tqdm(total=len(latents), desc="tokenchange", unit="latent", disable=not progress)
    for i in range(0, len(latents), per_pass):
        batch = latents[i:i + per_pass]
        clamps = [ev.parse_clamp(config.tc_clamp, records.stats(f)["max_activation"]) for f in batch]
        changes = ev.logit_changes(model, sae, meta["hook_name"], tokens, batch + batch,
                                   clamps + [-c for c in clamps], start, clean_mean)
        for j, f in enumerate(batch):
            out[f] = ev.tokenchange_evidence(changes[j], changes[len(batch) + j], text, config.tc_tokens, clamps[j])
        bar.update(len(batch))
    bar.close()
    return out


def raw_description(method: str, evidence: dict[str, Any], n: int = 10) -> str:
    """The evidence of a base method in short: what a description would be built from."""
    if method == "maxact":
        if not evidence["top_tokens"]:
            return "never activates on the recorded tokens"
        return "activates on: " + ", ".join(f"{t!r} ({c})" for t, c in evidence["top_tokens"][:5])
    if method == "vocabproj":
        return f"promotes: {token_list(evidence['top'][:n])} | suppresses: {token_list(evidence['bottom'][:n])}"
    return (f"steered to {evidence['clamp']} promotes: {token_list(evidence['plus_top'][:n])} | "
            f"suppresses: {token_list(evidence['plus_bottom'][:n])}")


def ensemble_prompt_fields(evidence: dict[str, Any]) -> dict[str, str]:
    """$input_block and $output_block of the ensemble template from the parts' evidence."""
    input_block = f"[INPUT]\n{examples_block(evidence['maxact'])}" if "maxact" in evidence else ""
    has_output = "vocabproj" in evidence or "tokenchange" in evidence
    return {"input_block": input_block,
            "output_block": output_block(evidence.get("vocabproj"), evidence.get("tokenchange")) if has_output else ""}


def prompt_messages(method: str, evidence: dict[str, Any], prompt_dir: str, prompt_set: str = "saekit"
                    ) -> tuple[list[dict[str, str]], str]:
    """(chat messages, prompt version) for one latent and one method (not concat)."""
    if prompt_set == "paper":
        return paper.messages(method, evidence, prompt_dir or None)
    if "+" in method:
        template = load_template("ensemble", prompt_dir or None)
        return template.messages(**ensemble_prompt_fields(evidence)), template.id
    template = load_template(method, prompt_dir or None)
    if method == "maxact":
        fields = {"examples": examples_block(evidence)}
    elif method == "vocabproj":
        fields = {"top": token_list(evidence["top"]), "bottom": token_list(evidence["bottom"])}
    else:
        fields = {k: token_list(evidence[k]) for k in ("plus_top", "plus_bottom", "minus_top", "minus_bottom")}
        fields["clamp"] = evidence["clamp"]
    return template.messages(**fields), template.id


def _shown(method: str, evidence: dict[str, dict[int, Any]], latent: int) -> dict[str, Any]:
    """The evidence a method shows for a latent: the base method's, or {part: evidence} for ensembles."""
    parts = list(METHODS) if method == "concat" else method.split("+")
    if len(parts) == 1:
        return evidence[parts[0]][latent]
    return {part: evidence[part][latent] for part in parts}


Result = tuple[str, bool, "str | None", str]  # description, ok, error, prompt version


def raw_results(methods: list[str], latents: list[int], evidence: dict[str, dict[int, Any]]
                ) -> dict[tuple[str, int], Result]:
    """{(method, latent): result} in raw mode: the evidence in short, ensembles part by part."""
    results: dict[tuple[str, int], Result] = {}
    for method in methods:
        parts = method.split("+")
        for f in latents:
            shown = _shown(method, evidence, f)
            text = raw_description(method, shown) if len(parts) == 1 else " || ".join(
                f"{p}: {raw_description(p, shown[p])}" for p in parts)
            results[(method, f)] = (text, True, None, "raw")
    return results


def llm_results(methods: list[str], latents: list[int], evidence: dict[str, dict[int, Any]], config: ExplainConfig,
                backend: Any, progress: bool = True) -> dict[tuple[str, int], Result]:
    """{(method, latent): result} from the explainer: every prompt in one `chat_many` call. A latent
    with no activating example gets no MaxAct request (its result says so)."""
    results: dict[tuple[str, int], Result] = {}
    keys, requests, versions = [], [], []
    for method in methods:
        for f in latents:
            messages, version = prompt_messages(method, _shown(method, evidence, f), config.prompt_dir,
                                                config.prompt_set)
            if method == "maxact" and not evidence["maxact"][f]["examples"]:
                results[(method, f)] = ("", False, "no activating examples", version)
                continue
            keys.append((method, f))
            requests.append(messages)
            versions.append(version)
    parse = paper.parse_description if config.prompt_set == "paper" else parse_description
    replies = backend.chat_many(requests, validate=description_validator(config.max_description_chars, parse),
                                progress=progress)
    for key, reply, version in zip(keys, replies, versions):
        results[key] = (parse(reply.text) if reply.ok else "", reply.ok, reply.error, version)
    return results


def describe(methods: list[str], latents: list[int], evidence: dict[str, dict[int, Any]], config: ExplainConfig,
             backend: Any = None, progress: bool = True) -> list[dict[str, Any]]:
    """One explanation dict per (latent, method): raw without a backend, else from the explainer.
    `concat` joins the three single-method descriptions (computed when not asked for themselves)."""
    singles = [m for m in dict.fromkeys(methods + (list(METHODS) if "concat" in methods else [])) if m != "concat"]
    results = (raw_results(singles, latents, evidence) if backend is None
               else llm_results(singles, latents, evidence, config, backend, progress))
    rows: list[dict[str, Any]] = []
    for f in latents:
        for method in methods:
            if method == "concat":
                parts = [results[(m, f)] for m in METHODS]
                result = (" | ".join(p[0] for p in parts), all(p[1] for p in parts),
                          next((p[2] for p in parts if p[2]), None), "concat:" + ",".join(p[3] for p in parts))
            else:
                result = results[(method, f)]
            rows.append({"latent": f, "method": method, "description": result[0], "ok": result[1],
                         "error": result[2], "prompt_version": result[3], "evidence": _shown(method, evidence, f)})
    return rows


def explain_latents(config: ExplainConfig, backend: Any = None, progress: bool = True) -> list[dict[str, Any]]:
    """Describe the latents with every method of `config`; writes and returns the explanation rows.

    backend: an LLM backend object (Backend interface, e.g. a test double); None builds the one the
    config names (none = raw descriptions).
    """
    from saekit.sae import load_sae

    if not config.records:
        raise ValueError("ExplainConfig.records: give the records directory written by `saekit collect`")
    started = time.time()
    records = load_records(resolve_records(config.records))
    latents = _select(records, config)
    bases = {p for m in config.methods for p in (METHODS if m == "concat" else m.split("+"))}
    device = resolve_device(config.device)
    needs_model = bool(bases & {"vocabproj", "tokenchange"})
    model = _load_model(records, config, device, required=needs_model)
    sae = load_sae(config.sae or records.meta["sae"], device=device) if needs_model else None
    text = ev.TokenText(model.tokenizer if model is not None else None)
    evidence = gather_evidence(records, latents, bases, config, model, sae, text, progress)

    if backend is None and config.backend != "none":
        from saekit.interp.llm.backend import LLMConfig, make_backend

        backend = make_backend(LLMConfig(backend=config.backend, model=config.llm_model, **config.llm))
    rows = describe(config.methods, latents, evidence, config, backend, progress)
    common = {"backend": getattr(backend, "name", "none") if backend is not None else "none",
              "model": (config.llm_model or getattr(getattr(backend, "config", None), "model", "")) if backend else "",
              "sae": config.sae or records.meta["sae"], "hook_name": records.hook_name, "records": str(records.path)}
    rows = [{**row, **common} for row in rows]
    out = Path(config.out or records.path / EXPLANATIONS_FILE)
    write_jsonl(out, rows)
    summary = {"n_latents": len(latents), "methods": config.methods, "seconds": round(time.time() - started, 2),
               "usage": getattr(backend, "usage", {}) if backend is not None else {}, "config": config_to_dict(config)}
    (out.parent / (out.stem + "_run.json")).write_text(json.dumps(summary, indent=2) + "\n")
    return rows


def _select(records: LatentRecords, config: ExplainConfig) -> list[int]:
    if config.latents:
        missing = sorted(set(config.latents) - set(records.latents))
        if missing:
            raise ValueError(f"ExplainConfig.latents: {missing[:5]} are not in the records {records.path}")
        return list(dict.fromkeys(config.latents))
    return records.latents[:config.n_latents] if config.n_latents else records.latents


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """One JSON object per line, written to a temporary file and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_explanations(path: str | Path) -> list[dict[str, Any]]:
    """The rows of an explanations.jsonl file."""
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]
