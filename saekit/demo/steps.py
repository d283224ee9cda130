"""`make demo` / `saekit demo [--config FILE] [--field value ...]`: the whole pipeline on one config.

On the embedded default, Gemma 3 270M (the packaged GGUF; CPU, under 10 minutes on 2 idle cores),
with the hook, token budget and widths of `MODEL_PRESETS` (`--model tiny`: the offline tiny LM):

1. model: convert the GGUF once (or train the tiny LM once; reused afterwards) or load the configured one;
2. caches: its activations at `hook`, for each init variant (`trained` and Heap et al.'s `random`
   re-initialised copy), in `OUT/cache-<init>`;
3. SAEs: TopK SAEs, `widths` x `seeds` on each cache in one pass (`OUT/sae-<init>/<hook>/...`);
4. eval: FVU, L0, dead latents, CE recovered on the held-out contexts (`eval.json` per SAE);
5. match: the seeds of each width (`OUT/match/<init>-<width>`), the fraction of latents shared, and
   the same matching between untrained SAEs (`OUT/match/null-<width>`): the chance baseline;
6. describe: `n_latents` live latents of seed 0 (a seeded sample) and their decoder partners in the
   other seeds are collected into records (`<sae>/records`) and described with MaxAct, VocabProj
   and TokenChange (raw offline descriptions, or an LLM: see `llm_settings`); seed 0's are scored
   with the embedding scorer (no judge needed; the partners' descriptions are for the dashboards);
7. report: `OUT/saekit-report.html` (one offline HTML file), `OUT/summary.json`, and a printed table.

Each step reuses what an earlier run of the same config left in OUT (caches, SAEs, eval.json,
match.json, records, explanations, scores); a different config in the same OUT is refused. The
same pipeline on a real model and a GPU is one config file (analysis/configs/demo_pythia70m.toml).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saekit.config import config_to_dict, doc
from saekit.files import write_json_atomic

SUMMARY_FORMAT = "saekit-demo-summary"
CONFIG_FILE = "demo_config.json"
SUMMARY_FILE = "summary.json"
SAME_OUTPUTS_IGNORED = ("out", "device")  # fields that may change between runs reusing one OUT


@dataclass
class DemoConfig:
    """The demo: model and caches, the SAE grid, matching, and how many latents to describe and score."""

    out: str = doc("run directory", "runs/demo")
    model: str = doc("'gemma-3-270m' (packaged, offline), 'tiny' (the offline tiny LM, trained on first use), a "
                     ".gguf file, a model folder or a TransformerLens name", "gemma-3-270m")
    inits: list[str] = doc("init variants to compare (Heap et al.)", default_factory=lambda: ["trained", "random"])
    model_seed: int = doc("seed of the re-drawn weights of the random init variants", 0)
    hook: str = doc("hook point (None: the model's preset, see MODEL_PRESETS)", None)
    dataset: str = doc("dataset to cache: stdlib-docstrings, a local file, or a hub dataset name", "stdlib-docstrings")
    n_tokens: int = doc("tokens cached per init variant (the last 5 percent of contexts are held out)", None)
    cache_dtype: str = doc("dtype of the cached activations: float32 | float16 | bfloat16", "float32")
    compute_dtype: str = doc("forward pass of the cache: float32 | bfloat16 (autocast)", None)
    widths: list[int] = doc("SAE widths (d_sae), each trained with every seed", None)
    k: int = doc("TopK k", None)
    seeds: list[int] = doc("SAE seeds (two or more: they are matched)", default_factory=lambda: [0, 1])
    train_tokens: int = doc("training tokens per SAE (several epochs when more than the cache holds)", None)
    batch_size: int = doc("training batch (tokens)", None)
    lr: float | None = doc("Adam learning rate (None: the trainer's default per width)", None)
    dead_tokens: int = doc("tokens without firing before a latent counts as dead (AuxK revives it)", None)
    eval_tokens: int = doc("held-out tokens evaluated (the cache's last contexts)", None)
    ce_contexts: int = doc("contexts of the CE/KL splice", None)
    threshold: float = doc("matching: a latent is shared when both matched cosines reach this", 0.7)
    n_latents: int = doc("live latents of seed 0 described and scored per width (and their partners in the other "
                         "seeds described)", 24)
    min_frequency: float = doc("seed 0's described latents are sampled among those active on at least this "
                               "fraction of the evaluated tokens (rarer ones leave too few windows to score)", 1e-3)
    collect_tokens: int = doc("tokens scanned for latent records (the cache's last contexts)", None)
    methods: list[str] = doc("explanation methods", default_factory=lambda: ["maxact", "vocabproj", "tokenchange"])
    scorers: list[str] = doc("scorers (embedding and the judge-free ones need no LLM; the others need a backend)",
                             default_factory=lambda: ["embedding", "judgefree-input", "judgefree-output"])
    score_windows: int = doc("activating and non-activating windows per latent for the scorers", 20)
    tc_sequences: int = doc("TokenChange: sequences generated per latent", None)
    tc_clamp: str = doc("TokenChange: clamp value, a multiple of each latent's max ('2x': the paper's +/-10 is in "
                        "its SAEs' scale; saekit's Gemma latents peak near 1,800, where +10 turns them down) or a "
                        "number", "2x")
    backend: str = doc("explainer/judge: '' = $SAEKIT_LLM_BACKEND or none | none | openai | transformers", "")
    llm_model: str = doc("LLM model name ('' = $SAEKIT_LLM_MODEL)", "")
    llm: dict[str, Any] = doc("other LLMConfig fields, e.g. {\"base_url\": ...} ($SAEKIT_LLM_BASE_URL / "
                              "$OPENAI_BASE_URL fill base_url)", default_factory=dict)
    report_latents: int = doc("latent dashboards per records directory in the report (0 = all)", 200)
    device: str = doc("auto | cpu | cuda", "auto")

    def __post_init__(self) -> None:
        from saekit.interp.explain.run import canonical_method
        from saekit.interp.score.run import canonical_scorer

        preset = MODEL_PRESETS.get(self.model, MODEL_PRESETS["tiny"])
        for name, value in preset.items():
            if getattr(self, name) is None:
                setattr(self, name, value)

        if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"DemoConfig.seeds: give two or more distinct seeds (they are matched), got {self.seeds}")
        if not self.widths or not self.inits:
            raise ValueError("DemoConfig.widths and DemoConfig.inits must each list at least one value")
        if self.k > min(self.widths):
            raise ValueError(f"DemoConfig.k ({self.k}) must be at most the smallest width ({min(self.widths)})")
        for name in ("n_tokens", "train_tokens", "batch_size", "eval_tokens", "n_latents", "collect_tokens",
                     "score_windows"):
            if getattr(self, name) < 1:
                raise ValueError(f"DemoConfig.{name} must be >= 1, got {getattr(self, name)}")
        self.methods = [canonical_method(m) for m in self.methods]
        self.scorers = [canonical_scorer(s) for s in self.scorers]


MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # Gemma 3 270M (18 layers): blocks.13 is where both halves show on a CPU budget: its latents' MaxAct
    # examples are legible and their VocabProj is the story (at blocks.6 VocabProj is subword noise).
    "gemma-3-270m": dict(hook="blocks.13.hook_resid_post", n_tokens=100_000, compute_dtype="bfloat16",
                         widths=[1024, 4096], k=32, train_tokens=400_000, batch_size=1024, dead_tokens=200_000,
                         eval_tokens=5_000, ce_contexts=4, collect_tokens=40_000, tc_sequences=8),
    # the offline tiny LM (2 layers, d_model 128): the quick look (`saekit demo --model tiny`)
    "tiny": dict(hook="blocks.1.hook_resid_post", n_tokens=100_000, compute_dtype="float32", widths=[256, 1024],
                 k=8, train_tokens=200_000, batch_size=512, dead_tokens=50_000, eval_tokens=5_000, ce_contexts=16,
                 collect_tokens=40_000, tc_sequences=8),
}
"""DemoConfig fields left None take the values of the model's preset ('tiny' for any other model)."""


def llm_settings(config: DemoConfig) -> tuple[str, str, dict[str, Any]]:
    """(backend, model, other LLMConfig fields): the config's, else from the environment:
    SAEKIT_LLM_BACKEND (none | openai | transformers), SAEKIT_LLM_MODEL, SAEKIT_LLM_BASE_URL or
    OPENAI_BASE_URL; the API key is read by the client from $OPENAI_API_KEY (LLMConfig.api_key_env)."""
    backend = config.backend or os.environ.get("SAEKIT_LLM_BACKEND", "") or "none"
    model = config.llm_model or os.environ.get("SAEKIT_LLM_MODEL", "")
    llm = dict(config.llm)
    base_url = os.environ.get("SAEKIT_LLM_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
    if backend == "openai" and base_url and "base_url" not in llm:
        llm["base_url"] = base_url
    if backend != "none":
        if not model:
            raise ValueError(f"the demo's LLM backend is {backend!r} but no model is named: set SAEKIT_LLM_MODEL "
                             f"or DemoConfig.llm_model")
        llm.setdefault("cache_dir", str(Path(config.out) / "llm_cache"))
    return backend, model, llm


def check_out(config: DemoConfig) -> None:
    """Record the config in OUT, or refuse an OUT that holds a run of another config."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / CONFIG_FILE
    mine = {k: v for k, v in config_to_dict(config).items() if k not in SAME_OUTPUTS_IGNORED}
    if path.exists():
        theirs = {k: v for k, v in json.loads(path.read_text()).items() if k not in SAME_OUTPUTS_IGNORED}
        changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if changed:
            raise ValueError(f"{path}: {out} holds a demo run with other settings ({', '.join(changed)}); "
                             f"use another --out or delete {out}")
    write_json_atomic(path, config_to_dict(config))


def model_source(config: DemoConfig) -> str:
    """The model to cache: the tiny LM's folder (trained now if missing) for 'tiny', else as given."""
    if config.model == "tiny":
        from saekit.models import ensure_tiny_lm

        return str(ensure_tiny_lm())
    return config.model


def build_caches(config: DemoConfig, source: str, progress: bool) -> dict[str, str]:
    """{init: cache dir}: one activation cache per init variant (a complete one is reused)."""
    from saekit.data import CacheConfig, cache_activations, read_manifest

    caches = {}
    for init in config.inits:
        out = Path(config.out) / f"cache-{init}"
        if not ((out / "manifest.json").exists() and read_manifest(out).get("complete")):
            settings = CacheConfig(out=str(out), model=source, init=init, model_seed=config.model_seed,
                                   hooks=[config.hook], n_tokens=config.n_tokens, dataset=config.dataset,
                                   dtype=config.cache_dtype, compute_dtype=config.compute_dtype,
                                   device=config.device)
            manifest = cache_activations(settings, progress)
            print(f"[demo] cached {manifest['n_tokens']:,} tokens of the {init} model: {out}", flush=True)
        caches[init] = str(out)
    return caches


def sae_dirs(config: DemoConfig, init: str, width: int) -> list[Path]:
    """The SAE folders of one init variant and width, one per seed (seed order)."""
    root = Path(config.out) / f"sae-{init}" / config.hook
    return [root / f"topk-{width}-k{config.k}-seed{seed}" for seed in config.seeds]


def train_saes(config: DemoConfig, caches: dict[str, str], progress: bool) -> None:
    """Every width x seed on each cache, in one pass per cache (skipped when all are trained)."""
    from saekit.train import TrainConfig, train

    for init, cache in caches.items():
        wanted = [d for w in config.widths for d in sae_dirs(config, init, w)]
        if all((d / "metrics.json").exists() for d in wanted):
            continue
        started = time.time()
        train(TrainConfig(cache=cache, out=str(Path(config.out) / f"sae-{init}"), hooks=[config.hook],
                          architecture="topk", d_sae=config.widths, k=[config.k], seeds=config.seeds,
                          n_tokens=config.train_tokens, batch_size=config.batch_size, lr=config.lr, warmup_steps=20,
                          dead_tokens=config.dead_tokens, checkpoint_every=0, log_every=20, device=config.device),
              progress)
        print(f"[demo] trained {len(wanted)} TopK SAEs on the {init} model in {time.time() - started:.0f} s",
              flush=True)


def evaluate_saes(config: DemoConfig, caches: dict[str, str], progress: bool) -> None:
    """eval.json for every SAE (skipped where it exists)."""
    from saekit.eval import EvalConfig, evaluate

    for init, cache in caches.items():
        for width in config.widths:
            for folder in sae_dirs(config, init, width):
                if not (folder / "eval.json").exists():
                    evaluate(EvalConfig(sae=str(folder), cache=cache, n_tokens=config.eval_tokens,
                                        ce_contexts=config.ce_contexts, device=config.device), progress)


def match_dir(config: DemoConfig, init: str, width: int) -> Path:
    return Path(config.out) / "match" / f"{init}-{width}"


def match_seeds(config: DemoConfig, caches: dict[str, str], progress: bool) -> None:
    """One match directory per init variant and width (skipped where match.json exists)."""
    from saekit.match import MatchConfig, match_saes

    for init, cache in caches.items():
        for width in config.widths:
            out = match_dir(config, init, width)
            if not (out / "match.json").exists():
                match_saes(MatchConfig(saes=[str(d) for d in sae_dirs(config, init, width)], out=str(out),
                                       threshold=config.threshold, cache=cache, n_tokens=config.eval_tokens,
                                       device=config.device), progress)


def null_sae_dirs(config: DemoConfig, width: int) -> list[Path]:
    """Untrained SAEs (the trainer's init, one per seed) that saw no data: the matching's null baseline."""
    return [Path(config.out) / "null" / f"topk-{width}-k{config.k}-seed{seed}" for seed in config.seeds]


def match_null(config: DemoConfig, d_in: int, progress: bool) -> None:
    """Match untrained SAEs of every width as the trained ones are matched (`OUT/match/null-<width>`):
    how much two seeds' latents agree by chance, in the same d_in and width."""
    from saekit.match import MatchConfig, match_saes
    from saekit.sae import SAEConfig, build_sae, save_sae

    for width in config.widths:
        out = match_dir(config, "null", width)
        if (out / "match.json").exists():
            continue
        for seed, folder in zip(config.seeds, null_sae_dirs(config, width)):
            if not (folder / "cfg.json").exists():
                save_sae(build_sae(SAEConfig(architecture="topk", d_in=d_in, d_sae=width, k=config.k,
                                             hook_name=config.hook, seed=seed)), folder)
        match_saes(MatchConfig(saes=[str(d) for d in null_sae_dirs(config, width)], out=str(out),
                               threshold=config.threshold, figures=False, device=config.device), progress)


def chosen_latents(config: DemoConfig, init: str, width: int) -> list[list[int]]:
    """Per seed, the latents to describe: a seeded sample of `n_latents` latents of seed 0 active on at
    least `min_frequency` of the evaluated tokens (eval.json), then each one's decoder partner in every
    other seed."""
    import pandas as pd

    folders = sae_dirs(config, init, width)
    frequency = np.asarray(json.loads((folders[0] / "eval.json").read_text())["latent_frequency"])
    alive = np.flatnonzero((frequency > 0) & (frequency >= config.min_frequency))
    if not len(alive):
        raise ValueError(f"{folders[0]}: no latent is active on {config.min_frequency} of the evaluated tokens "
                         f"(DemoConfig.min_frequency); nothing to describe")
    rng = np.random.default_rng(config.seeds[0] + 1000 * width)
    first = sorted(int(f) for f in rng.choice(alive, size=min(config.n_latents, len(alive)), replace=False))
    table = pd.read_parquet(match_dir(config, init, width) / "latents.parquet")
    out = [first]
    for j in range(1, len(folders)):
        rows = table[(table["sae"] == 0) & (table["other_sae"] == j) & table["latent"].isin(first)]
        out.append(sorted({int(p) for p in rows["decoder_partner"] if p >= 0}))
    return out


def describe_latents(config: DemoConfig, caches: dict[str, str], progress: bool) -> None:
    """Collect records and explain the chosen latents of every SAE, score those of the first seed
    (each step skipped when its file exists)."""
    from saekit.interp import (CollectConfig, ExplainConfig, ScoreConfig, collect_records, explain_latents,
                               score_latents)

    backend, llm_model, llm = llm_settings(config)
    embedder = None
    for init, cache in caches.items():
        for width in config.widths:
            for seed, folder, latents in zip(config.seeds, sae_dirs(config, init, width),
                                             chosen_latents(config, init, width)):
                records = folder / "records"
                if not latents:  # no partner in this seed (only when widths differ)
                    continue
                if not (records / "meta.json").exists():
                    collect_records(CollectConfig(sae=str(folder), cache=cache, out=str(records),
                                                  n_tokens=config.collect_tokens, first_context=-1, latents=latents,
                                                  n_top=20, n_explain=20, n_test=config.score_windows,
                                                  reservoir=max(100, 20 + config.score_windows),
                                                  n_random_negatives=config.score_windows, n_hard_negatives=10,
                                                  device=config.device), progress)
                if not (records / "explanations.jsonl").exists():
                    explain_latents(ExplainConfig(records=str(records), methods=config.methods, vocab_tokens=20,
                                                  tc_clamp=config.tc_clamp,
                                                  tc_sequences=config.tc_sequences, backend=backend, llm_model=llm_model, llm=llm,
                                                  device=config.device), progress=progress)
                if seed == config.seeds[0] and not (records / "scores.jsonl").exists():
                    if embedder is None and "embedding" in config.scorers:
                        from saekit.data.cache import resolve_device
                        from saekit.interp.score.examples import load_embedder

                        embedder = load_embedder(device=str(resolve_device(config.device)))
                    score_latents(ScoreConfig(records=str(records), scorers=config.scorers,
                                              n_activating=config.score_windows, n_negatives=config.score_windows,
                                              backend=backend, llm_model=llm_model, llm=llm, n_boot=200,
                                              device=config.device), embedder=embedder, progress=progress)
            print(f"[demo] described and scored latents of the {init} model's {width}-latent SAEs", flush=True)


def run_demo(config: DemoConfig, progress: bool = True) -> dict[str, Any]:
    """Run every step (module docstring), write OUT/summary.json and the report, print the table;
    returns the summary."""
    from saekit.demo.summary import summarize, summary_table
    from saekit.viz import write_report

    started = time.time()
    check_out(config)
    seconds: dict[str, float] = {}

    def step(name: str, fn: Any, *args: Any) -> Any:
        t0 = time.time()
        result = fn(*args)
        seconds[name] = round(time.time() - t0, 1)
        return result

    source = step("model", model_source, config)
    print(f"[demo] model: {source} ({seconds['model']:.0f} s)", flush=True)
    caches = step("cache", build_caches, config, source, progress)
    step("train", train_saes, config, caches, progress)
    step("eval", evaluate_saes, config, caches, progress)
    step("match", match_seeds, config, caches, progress)
    d_in = json.loads((sae_dirs(config, config.inits[0], config.widths[0])[0] / "cfg.json").read_text())["d_in"]
    step("match_null", match_null, config, d_in, progress)
    step("describe", describe_latents, config, caches, progress)
    summary = step("summarize", summarize, config)
    report = step("report", lambda: write_report(config.out, max_latents=config.report_latents, n_top=5,
                                                 n_per_quantile=1))
    seconds["total"] = round(time.time() - started, 1)
    summary.update(report=str(report), seconds=seconds)
    write_json_atomic(Path(config.out) / SUMMARY_FILE, summary)
    print("\n".join(["", f"[demo] summary ({Path(config.out) / SUMMARY_FILE}):", *summary_table(summary), ""]))
    print(f"[demo] seconds per step: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    print(f"[demo] report: {report}", flush=True)
    return summary
