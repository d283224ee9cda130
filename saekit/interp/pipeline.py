"""Scoring-only runs on published SAEs: load, cache, collect records, describe, score, summarize.

    from saekit.interp.pipeline import PublishedConfig, score_published
    result = score_published(PublishedConfig(sae="gpt2-small-res-jb/blocks.8.hook_resid_pre",
                                             dataset="NeelNanda/pile-10k", scorers=["detection", "fuzzing"],
                                             backend="openai", llm_model="gpt-4o-mini"))

The CLI is `saekit score --published SAE [--model NAME] [--dataset D] [--n-tokens N] [--field value ...]`
and the recipe `autointerp/score_published.py CONFIG`. Steps, each a saekit stage with its own config:

1. load the SAE with `saekit.load_sae`: a sae-lens registry id RELEASE/SAE_ID (downloaded by
   sae-lens), a local SAELens, sparsify or saekit folder, or a sparsify hub repo OWNER/REPO[/HOOK];
2. cache `n_tokens` of `model` on `dataset` at the SAE's hook point into OUT/cache (`cache_activations`;
   a complete cache there is reused), unless `cache` names an existing one; the model is processed as
   `model_processing` says ("auto": as the SAE was trained, e.g. center_writing_weights for
   gpt2-small-res-jb), and a cache made with other processing is refused, naming the field;
3. collect records of the chosen latents into OUT/records (`collect_records`; reused when present);
4. describe them (`explain_latents` -> OUT/records/explanations.jsonl);
5. score the descriptions (`score_latents` -> OUT/scores.jsonl and OUT/scores_summary.json);
6. write OUT/summary.csv (one row per scorer and method: mean, 95% CI, n, chance, n_failed) and
   OUT/published.json (the config, the SAE, where each file is, seconds per step).

OUT defaults to `output_dir_for(sae) / "autointerp"`: inside a local SAE's folder, and
runs/published/RELEASE/SAE_ID/autointerp for a registry or hub SAE. The model defaults to the one
the SAE names (the sae-lens registry's `model`, or a SAELens cfg.json's `model_name`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from saekit.config import build_config, config_to_dict, doc, read_config_file
from saekit.files import write_json_atomic
from saekit.interp.records.collect import CollectConfig, collect_records
from saekit.interp.explain.run import ExplainConfig, explain_latents
from saekit.interp.records.format import META_FILE
from saekit.interp.score.run import LLM_SCORERS, SCORES_FILE, ScoreConfig, canonical_scorer, score_latents, summary_path

PUBLISHED_FILE = "published.json"
SUMMARY_TABLE = "summary.csv"
SUMMARY_COLUMNS = ("sae", "scorer", "method", "mean", "ci_low", "ci_high", "n", "chance", "n_failed")


@dataclass
class PublishedConfig:
    """A scoring-only run on one SAE: where it comes from, the tokens, the latents, explainer and judge."""

    sae: str = doc("SAE: sae-lens registry id RELEASE/SAE_ID, a SAELens/sparsify/saekit folder, or OWNER/REPO[/HOOK]",
                   "")
    hookpoint: str = doc("which SAE of a sparsify multi-hookpoint checkpoint ('' = the only one)", "")
    model: str = doc("model to run: TransformerLens name or folder ('' = the model the SAE names)", "")
    init: str = doc("init variant of the model", "trained")
    model_processing: str = doc("TransformerLens weight processing of the model: auto (as the SAE's metadata says "
                                "it was trained: sae-lens's model_from_pretrained_kwargs, the registry's overrides) | "
                                "none | from_pretrained | a comma list of flags (docs/models.md)", "auto")
    dataset: str = doc("dataset the records come from: 'stdlib-docstrings', a local file or a HF dataset",
                       "stdlib-docstrings")
    cache: str = doc("existing activation cache with the SAE's hook point ('' = cache n_tokens into OUT/cache)", "")
    n_tokens: int = doc("tokens to cache and scan", 1_000_000)
    ctx_len: int = doc("tokens per cached context, BOS included (0 = min(128, the model's n_ctx))", 0)
    out: str = doc("run directory ('' = <SAE folder>/autointerp, or runs/published/<id>/autointerp)", "")
    latents: list[int] = doc("latents to score (empty = the first n_latents)", default_factory=list)
    n_latents: int = doc("with no latents: score latents 0..n_latents-1", 100)
    methods: list[str] = doc("explanation methods: maxact, vocabproj, tokenchange, ensembles (see saekit explain)",
                             default_factory=lambda: ["maxact"])
    scorers: list[str] = doc("detection, fuzzing, embedding, simulation, output, input (all but embedding need "
                             "backend)", default_factory=lambda: ["embedding"])
    backend: str = doc("explainer and judge: none (raw descriptions, embedding scorer only) | openai | transformers",
                       "none")
    llm_model: str = doc("explainer and judge model (openai: model name; transformers: folder or hub name)", "")
    llm: dict[str, Any] = doc("other LLMConfig fields ({\"base_url\": ...}); cache_dir defaults to OUT/llm_cache",
                              default_factory=dict)
    collect: dict[str, Any] = doc("other CollectConfig fields, e.g. {\"window\": 32, \"n_test\": 50}",
                                  default_factory=dict)
    explain: dict[str, Any] = doc("other ExplainConfig fields, e.g. {\"maxact_examples\": 20}", default_factory=dict)
    score: dict[str, Any] = doc("other ScoreConfig fields, e.g. {\"n_activating\": 50, \"n_negatives\": 50}",
                                default_factory=dict)
    reuse_records: bool = doc("skip collecting when OUT/records already holds records", True)
    seed: int = doc("seed of the example samples and the judge's shuffles", 0)
    device: str = doc("auto | cpu | cuda", "auto")

    def __post_init__(self) -> None:
        if not self.sae:
            raise ValueError("PublishedConfig.sae: give the SAE (RELEASE/SAE_ID, a folder or OWNER/REPO)")
        if self.n_tokens < 1 or (not self.latents and self.n_latents < 1):
            raise ValueError("PublishedConfig.n_tokens and n_latents must be >= 1")
        self.scorers = list(dict.fromkeys(canonical_scorer(s) for s in self.scorers))
        for stage, cls, owned in (("collect", CollectConfig, {"sae", "cache", "model", "init", "dataset", "out",
                                                               "n_tokens", "latents", "n_latents", "seed", "device"}),
                                  ("explain", ExplainConfig, {"records", "sae", "model", "init", "methods", "latents",
                                                              "n_latents", "out", "backend", "llm_model", "llm",
                                                              "device"}),
                                  ("score", ScoreConfig, {"records", "explanations", "out", "scorers", "methods",
                                                          "latents", "n_latents", "sae", "model", "init", "backend",
                                                          "llm_model", "llm", "seed", "device"})):
            names = {f.name for f in fields(cls)}
            bad = sorted(set(getattr(self, stage)) - (names - owned))
            if bad:
                raise ValueError(f"PublishedConfig.{stage}: {bad} are not other {cls.__name__} fields "
                                 f"(set them at the top level, or use one of {sorted(names - owned)})")


def check_backend(config: PublishedConfig) -> None:
    """Fail before any work when a scorer needs an LLM and there is none (the error names the fields)."""
    wants_llm = [s for s in config.scorers if s in LLM_SCORERS]
    if wants_llm and config.backend == "none":
        raise ValueError(f"PublishedConfig.backend is 'none' (ScoreConfig.backend) but the scorer(s) "
                         f"{', '.join(wants_llm)} need an LLM judge: set backend openai|transformers and llm_model, "
                         f"or score with scorers = ['embedding']")


def model_named_by(source: str) -> str:
    """The model an SAE says it reads: the sae-lens registry's `model` for RELEASE/SAE_ID, a SAELens
    cfg.json's metadata.model_name (or model_name) for a folder; '' when it names none."""
    from saekit.sae.formats import parse_source

    kind, location, _ = parse_source(source)
    if kind == "saelens":
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

        release = get_pretrained_saes_directory().get(location.split("/", 1)[0])
        return str(getattr(release, "model", "") or "")
    if kind == "dir" and (Path(location) / "cfg.json").is_file():
        raw = json.loads((Path(location) / "cfg.json").read_text())
        metadata = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
        return str(metadata.get("model_name") or raw.get("model_name") or "")
    return ""


def _load(config: PublishedConfig, device: Any) -> Any:
    """The SAE, with an error that names the source when a hub download fails."""
    from saekit.sae.formats import load_sae, parse_source

    kind, _, _ = parse_source(config.sae)  # FileNotFoundError naming the source when it is nothing
    try:
        return load_sae(config.sae, hookpoint=config.hookpoint or None, device=device)
    except Exception as error:
        if kind == "dir":
            raise
        what = "a sae-lens registry id" if kind == "saelens" else "a sparsify hub repo (no local folder of that name)"
        raise FileNotFoundError(f"could not load SAE {config.sae!r}, read as {what}: {error}") from error


def output_dir(config: PublishedConfig) -> Path:
    """OUT: `config.out`, else <SAE folder>/autointerp or runs/published/<source>/autointerp."""
    from saekit.sae.formats import output_dir_for

    return Path(config.out) if config.out else output_dir_for(config.sae, config.hookpoint or None) / "autointerp"


def summary_rows(summary: dict[str, dict[str, Any]], sae: str) -> list[dict[str, Any]]:
    """The rows of summary.csv from scores_summary.json's `summary`."""
    return [{"sae": sae, "scorer": scorer, "method": method, **{k: s.get(k) for k in SUMMARY_COLUMNS[3:]}}
            for scorer, methods in summary.items() for method, s in methods.items()]


def score_published(config: PublishedConfig, progress: bool = True) -> dict[str, Any]:
    """Run the steps of the module docstring; returns published.json's content (summary included)."""
    from saekit.data import CacheConfig, cache_activations
    from saekit.data.cache import resolve_device

    from saekit.models.processing import resolve_model_processing, spec_string

    check_backend(config)
    started, seconds = time.time(), {}
    out = output_dir(config)
    device = resolve_device(config.device)
    sae = _load(config, device)
    processing = resolve_model_processing(config.model_processing, config.sae, sae, "PublishedConfig.model_processing")
    model = config.model or model_named_by(config.sae)
    if not model and not config.cache:
        raise ValueError(f"PublishedConfig.model: {config.sae} names no model; pass the model it reads "
                         f"(--model NAME or a folder)")
    out.mkdir(parents=True, exist_ok=True)
    cache = config.cache
    if cache:
        _check_cache_processing(cache, processing, config.model_processing)
    else:
        cache = str(out / "cache")
        cache_activations(CacheConfig(out=cache, model=model, init=config.init, dataset=config.dataset,
                                      hooks=[sae.cfg.hook_name], n_tokens=config.n_tokens, ctx_len=config.ctx_len,
                                      model_processing=spec_string(processing), device=config.device),
                          progress=progress)
    seconds["cache"] = round(time.time() - started, 1)

    step = time.time()
    records = out / "records"
    source = _local_copy(sae, out) if config.hookpoint else config.sae  # later stages take one SAE
    if not (config.reuse_records and (records / META_FILE).exists()):
        collect_records(CollectConfig(sae=source, cache=cache, out=str(records), n_tokens=config.n_tokens,
                                      latents=config.latents, n_latents=0 if config.latents else config.n_latents,
                                      seed=config.seed, device=config.device, **config.collect), progress=progress)
    seconds["collect"] = round(time.time() - step, 1)

    step = time.time()
    llm = {"cache_dir": str(out / "llm_cache"), **config.llm}
    explained = explain_latents(ExplainConfig(records=str(records), model=config.model, init=config.init,
                                              methods=config.methods, backend=config.backend,
                                              llm_model=config.llm_model, llm=llm, device=config.device,
                                              **config.explain), progress=progress)
    seconds["explain"] = round(time.time() - step, 1)

    step = time.time()
    scores_file = out / SCORES_FILE
    score_latents(ScoreConfig(records=str(records), out=str(scores_file), scorers=config.scorers,
                              sae=source, model=config.model, init=config.init,
                              backend=config.backend, llm_model=config.llm_model, llm=llm, seed=config.seed,
                              device=config.device, **config.score), progress=progress)
    seconds["score"] = round(time.time() - step, 1)
    summary = json.loads(summary_path(scores_file).read_text())

    import pandas as pd

    rows = summary_rows(summary["summary"], config.sae)
    pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS)).to_csv(out / SUMMARY_TABLE, index=False)
    result = {
        "format": "saekit-published-scores", "format_version": 1, "sae": config.sae, "model": model,
        "model_processing": list(processing),
        "hook_name": sae.cfg.hook_name, "architecture": sae.cfg.architecture, "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae, "cache": cache, "records": str(records),
        "explanations": str(records / "explanations.jsonl"), "scores": str(scores_file),
        "scores_summary": str(summary_path(scores_file)), "summary_table": str(out / SUMMARY_TABLE),
        "n_explanations": len(explained), "summary": summary["summary"], "seconds": seconds,
        "total_seconds": round(time.time() - started, 1), "config": config_to_dict(config),
    }
    write_json_atomic(out / PUBLISHED_FILE, result)
    return result


def _check_cache_processing(cache: str, processing: tuple[str, ...], spec: str) -> None:
    """ValueError naming PublishedConfig.model_processing when `cache` was made from a model processed
    otherwise than the SAE reads. A manifest without the field holds an unprocessed model when
    load_model made it (older saekit), and is taken as is when not (a cache of arrays)."""
    from saekit.data import read_manifest

    manifest = read_manifest(cache)
    made_by_load_model = isinstance(manifest.get("model"), dict) and "source_kind" in manifest["model"]
    recorded = manifest.get("model_processing", [] if made_by_load_model else None)
    if recorded is not None and list(recorded) != list(processing):
        raise ValueError(f"PublishedConfig.cache: {cache} holds activations of a model with model_processing="
                         f"{list(recorded)}, but the SAE reads model_processing={list(processing)} "
                         f"(PublishedConfig.model_processing={spec!r}): cache again, or set model_processing")


def _local_copy(sae: Any, out: Path) -> str:
    """One SAE of a multi-hookpoint checkpoint saved as its own folder (the later stages take one SAE)."""
    from saekit.sae import save_sae

    return str(save_sae(sae, out / "sae"))


def published_config(path: str | None, options: dict[str, Any]) -> PublishedConfig:
    """PublishedConfig from an optional file and command-line options of `saekit score`: options that
    are PublishedConfig fields set them; the other ScoreConfig options go into `score` (merged)."""
    values: dict[str, Any] = read_config_file(path) if path else {}
    names = {f.name for f in fields(PublishedConfig)}
    for key, value in options.items():
        if value is None:
            continue
        if key in ("records", "explanations"):
            raise ValueError(f"saekit score --published: --{key} does not apply (the run makes its own)")
        if key in names:
            values[key] = value
        else:
            values.setdefault("score", {})[key] = value
    return build_config(PublishedConfig, values, source=str(path) if path else "command line")
