"""Random vs trained (Heap et al. 2025) at small scale: SAEs on a model's trained weights, on its
random-init variants and on a Gaussian-embedding control, compared on reconstruction, sparsity,
CE recovered, autointerp scores of the same number of latents, and a token-entropy abstractness proxy.

    python analysis/random_vs_trained.py analysis/configs/random_vs_trained.toml [--out DIR] [--field value ...]

Steps, per init variant of `model` (saekit.models.INIT_VARIANTS; `control` names the null):
1. cache its activations at `hook` (reused when complete); measure how much of the activation is
   predicted by the token id alone (`token_r2`, held-out contexts) and the duplicate contexts:
   the control must carry no token information;
2. train TopK SAEs (same width, k, tokens, batches for every variant), evaluate them (FVU, L0,
   dead fraction, CE recovered on held-out contexts);
3. collect records for `candidates` x `n_latents` random latents; a latent is eligible when it has
   `n_top` top examples and at least `min_examples` test windows and random negatives;
4. take the same number of eligible latents from every SAE (`n_latents`, or fewer when some SAE has
   fewer), describe them (`methods`, raw MaxAct offline) and score them (the embedding scorer
   offline; detection and fuzzing too when `backend` is set);
5. per latent, the Shannon entropy (bits) of the token ids at the max-activating position of its
   top examples: an abstractness proxy (a single-token latent has 0); and an offline keyword
   judge of the raw MaxAct tokens on the scorer's windows (`score_token_match`, AUROC);
6. write OUT/report: results.csv (one row per SAE, a `variant` column), latents.csv (one row per
   scored latent), figures.html (plotly), report.md (the numbers and the paper's directions) and
   summary.json.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saekit.config import config_from_argv, config_to_dict, doc
from study_stats import bootstrap_difference, equivalence

PAPER = {  # Heap, Lawson, Farnik & Aitchison 2025 (arXiv 2501.17727), Pythia-70m-deduped, TopK, every layer
    "scores": "autointerp (detection, fuzzing) scores and reconstruction of SAEs on trained, step-0 and "
              "re-randomised Pythia are about the same",
    "control": "the Gaussian-embedding control (token embeddings replaced by N(0, 1) noise) is the real null: "
               "clearly lower scores",
    "abstractness": "v2: latents of random models are more single-token (lower token entropy of their "
                    "activating tokens) than those of the trained model",
}
LLM_DEFAULT_SCORERS = ["detection", "fuzzing", "judgefree-input", "embedding"]
OFFLINE_DEFAULT_SCORERS = ["judgefree-input", "embedding"]  # the first is the primary score


@dataclass
class RandomVsTrainedConfig:
    """The study: model and variants, the cache, the SAE, the latents scored and how."""

    out: str = doc("run directory (caches, SAEs, records, report/)", "runs/random-vs-trained")
    model: str = doc("model: 'tiny' (the offline tiny LM), a model folder or a TransformerLens name", "tiny")
    inits: list[str] = doc("init variants (saekit.models.INIT_VARIANTS), trained first",
                           default_factory=lambda: ["trained", "step0", "random", "random-keep-embeddings",
                                                    "gaussian-embeddings"])
    control: str = doc("the variant that is the null control ('' = none)", "gaussian-embeddings")
    model_seed: int = doc("seed of the re-drawn weights and of the Gaussian noise", 0)
    hook: str = doc("hook point", "blocks.1.hook_resid_post")
    dataset: str = doc("dataset to cache", "stdlib-docstrings")
    cache_tokens: int = doc("tokens cached per variant", 200_000)
    ctx_len: int = doc("tokens per context, BOS included (0 = min(128, the model's n_ctx))", 0)
    cache_dtype: str = doc("dtype of the cached activations: float32 | float16 | bfloat16", "float32")
    compute_dtype: str = doc("the model's forward pass when caching: float32 | bfloat16 (autocast)", "float32")
    keep_caches: bool = doc("keep each variant's cache (false: delete it once its SAEs are collected)", True)
    d_sae: int = doc("SAE width", 512)
    k: int = doc("TopK k", 16)
    seeds: list[int] = doc("SAE seeds per variant", default_factory=lambda: [0])
    train_tokens: int = doc("training tokens per SAE", 600_000)
    batch_size: int = doc("training batch (tokens)", 1024)
    lr: float | None = doc("Adam learning rate (None: the trainer's default for d_sae)", None)
    warmup_steps: int = doc("learning-rate warm-up steps", 20)
    dead_tokens: int = doc("tokens without firing before a latent counts as dead", 50_000)
    eval_tokens: int = doc("held-out tokens for FVU, L0 and dead fraction (at most the cache's held-out part, "
                           "holdout_fraction of it: more is refused)", 8_000)
    ce_contexts: int = doc("held-out contexts for CE recovered (at most the held-out contexts)", 64)
    holdout_fraction: float = doc("final fraction of each cache's contexts the SAEs never train on", 0.05)
    n_latents: int = doc("latents scored per SAE (the same number for every variant)", 40)
    candidates: int = doc("latents collected per SAE, as a multiple of n_latents (dead ones are skipped)", 2)
    min_examples: int = doc("an eligible latent has at least this many test windows and random negatives", 10)
    collect: dict[str, Any] = doc("other CollectConfig fields", default_factory=lambda: {
        "window": 24, "n_top": 20, "n_quantiles": 5, "n_explain": 20, "n_test": 20, "n_random_negatives": 20,
        "n_hard_negatives": 0})
    methods: list[str] = doc("explanation methods (raw descriptions when backend is none)",
                             default_factory=lambda: ["maxact"])
    scorers: list[str] = doc("scorers, the first the primary (empty: judgefree-input and embedding offline; detection, "
                             "fuzzing, judgefree-input and embedding with a backend)",
                             default_factory=list)
    backend: str = doc("explainer and judge: none | openai | transformers", "none")
    llm_model: str = doc("explainer and judge model", "")
    llm: dict[str, Any] = doc("other LLMConfig fields; cache_dir defaults to OUT/llm_cache", default_factory=dict)
    score: dict[str, Any] = doc("other ScoreConfig fields",
                                default_factory=lambda: {"n_activating": 15, "n_negatives": 15})
    close_margin: float = doc("equivalence margin: a variant's score is 'the same' as trained's when the 95% "
                              "interval of the difference lies inside +-close_margin (and trained's is above chance)",
                              0.03)
    chance: float = doc("chance level of the scores (AUROC scorers: 0.5)", 0.5)
    n_boot: int = doc("bootstrap resamples of the 95% intervals", 1000)
    seed: int = doc("seed of the latent sample, examples and bootstraps", 0)
    device: str = doc("auto | cpu | cuda", "auto")

    def __post_init__(self) -> None:
        from saekit.models import INIT_VARIANTS

        bad = [i for i in self.inits if i not in INIT_VARIANTS]
        if bad or not self.inits:
            raise ValueError(f"RandomVsTrainedConfig.inits: {bad or 'none'}; use some of {INIT_VARIANTS}")
        if "trained" not in self.inits:
            raise ValueError("RandomVsTrainedConfig.inits must include trained (the reference)")
        if self.control and self.control not in self.inits:
            raise ValueError(f"RandomVsTrainedConfig.control {self.control!r} is not one of inits {self.inits}")
        if self.n_latents < 2 or self.candidates < 1 or not self.seeds:
            raise ValueError("RandomVsTrainedConfig: n_latents >= 2, candidates >= 1 and one seed at least")
        if not self.scorers:
            self.scorers = list(OFFLINE_DEFAULT_SCORERS) if self.backend == "none" else list(LLM_DEFAULT_SCORERS)


# ---------------------------------------------------------------------------- abstractness proxy


def token_entropy(token_ids: Any) -> float:
    """Shannon entropy in bits of the empirical distribution of `token_ids` [n] (NaN for n = 0):
    0 when every id is the same, log2(n) when all n differ."""
    ids = np.asarray(token_ids).reshape(-1)
    if ids.size == 0:
        return float("nan")
    counts = np.unique(ids, return_counts=True)[1]
    p = counts / counts.sum()
    return float(max(0.0, -(p * np.log2(p)).sum()))


def anchor_tokens(examples: list[Any]) -> np.ndarray:
    """The token id at each example's anchor (its max-activating position) [n_examples]."""
    return np.asarray([int(e.tokens[e.anchor_in_window]) for e in examples], dtype=np.int64)


def latent_abstractness(records: Any, latent: int) -> dict[str, Any]:
    """token_entropy (bits) and top_token_fraction (share of the commonest id) over the latent's top
    examples' max-activating tokens, and that commonest id."""
    ids = anchor_tokens(records.examples(latent, "top"))
    if not len(ids):
        return {"token_entropy": float("nan"), "top_token_fraction": float("nan"), "top_token_id": -1, "n_top": 0}
    values, counts = np.unique(ids, return_counts=True)
    return {"token_entropy": token_entropy(ids), "top_token_fraction": float(counts.max() / len(ids)),
            "top_token_id": int(values[counts.argmax()]), "n_top": int(len(ids))}


def token_match_auroc(records: Any, latent: int, n_activating: int, n_negatives: int, seed: int) -> float | None:
    """An offline keyword judge of a raw MaxAct description: each window scores the largest weight of
    the description's tokens in it (weight = share of the latent's top examples whose max-activating
    token it is), then AUROC of the latent's test windows against its random negatives, sampled as
    the embedding scorer samples them (the same windows). 1: the top tokens tell firing windows apart;
    0.5: chance. None when either side is empty."""
    from saekit.interp.score.examples import latent_rng, select_examples
    from saekit.interp.score.metrics import auroc

    ids, counts = np.unique(anchor_tokens(records.examples(latent, "top")), return_counts=True)
    weight = dict(zip(ids.tolist(), (counts / max(counts.sum(), 1)).tolist()))
    activating, negatives = select_examples(records, latent, n_activating, n_negatives, ["random"],
                                            latent_rng(seed, latent))

    def judge(example: Any) -> float:
        return max((weight.get(int(t), 0.0) for t in example.tokens), default=0.0)
    return auroc([judge(e) for e in activating], [judge(e) for e in negatives])


# ---------------------------------------------------------------------------- token information


def token_information(cache: str | Path, hook: str) -> dict[str, float]:
    """How much of the activation the token id alone predicts, and how many contexts repeat.

    token_r2: 1 - SSE / SST on the odd contexts, where the prediction is the mean activation of the
    token id over the even contexts (the overall mean for ids not seen there); BOS positions are
    left out. ~0 (or below) means the activations carry no token information a lookup can use.
    position_r2: the same with the position in the context instead of the token id.
    duplicate_contexts: fraction of contexts whose token ids equal an earlier context's (identical
    contexts get identical Gaussian noise, the one way token identity could leak into the control).
    """
    import torch

    from saekit.data.shards import open_shard, read_manifest, shard_path

    manifest = read_manifest(cache)
    ctx_len, start = manifest["ctx_len"], 1 if manifest.get("prepend_bos") else 0
    rows: list[tuple[np.ndarray, torch.Tensor, int]] = []
    for index in range(manifest["n_shards"]):
        shard = open_shard(shard_path(Path(cache), index), manifest)
        tokens = np.asarray(shard.tokens)
        acts = shard.acts(hook).float().reshape(len(tokens), ctx_len, -1)
        rows.append((tokens, acts, int(shard.context_index[0])))
    tokens = np.concatenate([t for t, _, _ in rows])
    acts = torch.cat([a for _, a, _ in rows])
    seen = {row.tobytes() for row in tokens}
    duplicate = 1 - len(seen) / len(tokens)
    fit, test = slice(0, None, 2), slice(1, None, 2)
    ids = torch.from_numpy(tokens[:, start:].astype(np.int64))
    x = acts[:, start:]
    n_vocab = int(ids.max()) + 1
    fit_ids, fit_x = ids[fit].reshape(-1), x[fit].reshape(-1, x.shape[-1]).double()
    sums = torch.zeros(n_vocab, x.shape[-1], dtype=torch.float64).index_add_(0, fit_ids, fit_x)
    counts = torch.bincount(fit_ids, minlength=n_vocab).double()
    overall = fit_x.mean(0)
    means = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], overall)
    test_ids, test_x = ids[test].reshape(-1), x[test].reshape(-1, x.shape[-1]).double()
    sst = float((test_x - overall).pow(2).sum())
    by_position = x[fit].double().mean(0)  # [positions, d_in]
    position_sse = float((x[test].double() - by_position).pow(2).sum())
    sse = float((test_x - means[test_ids]).pow(2).sum())
    return {"token_r2": 1 - sse / sst if sst > 0 else float("nan"),
            "position_r2": 1 - position_sse / sst if sst > 0 else float("nan"), "duplicate_contexts": float(duplicate)}


# ---------------------------------------------------------------------------- the pipeline


def cache_variant(config: RandomVsTrainedConfig, init: str) -> str:
    """The variant's cache dir (cached now unless complete)."""
    from saekit.data import CacheConfig, cache_activations

    out = Path(config.out) / f"cache-{init}"
    cache_activations(CacheConfig(out=str(out), model=config.model, init=init, model_seed=config.model_seed,
                                  hooks=[config.hook], n_tokens=config.cache_tokens, ctx_len=config.ctx_len,
                                  dataset=os.path.expanduser(config.dataset), dtype=config.cache_dtype,
                                  compute_dtype=config.compute_dtype, device=config.device), progress=True)
    check_held_out(config, out)
    return str(out)


def check_held_out(config: RandomVsTrainedConfig, cache: str | Path) -> None:
    """Refuse evaluation settings that would reach into the contexts the SAEs train on: eval_tokens
    and ce_contexts must fit in the cache's held-out part (its last holdout_fraction of contexts)."""
    from saekit.data.shards import read_manifest

    manifest = read_manifest(cache)
    n_contexts, ctx_len = manifest["n_contexts"], manifest["ctx_len"]
    held_out = n_contexts - (n_contexts - int(n_contexts * config.holdout_fraction))
    needed = -(-config.eval_tokens // ctx_len)
    if needed > held_out or config.ce_contexts > held_out:
        raise ValueError(f"RandomVsTrainedConfig.eval_tokens {config.eval_tokens:,} ({needed} contexts of {ctx_len}) "
                         f"and ce_contexts {config.ce_contexts} must fit in the {held_out} held-out contexts of "
                         f"{cache} (holdout_fraction {config.holdout_fraction} of {n_contexts}): evaluation would "
                         f"include training contexts; lower them, or raise cache_tokens or holdout_fraction")


def train_and_collect(config: RandomVsTrainedConfig, init: str, cache: str) -> list[dict[str, Any]]:
    """Train and evaluate the variant's SAEs and collect records of candidate latents; one dict per SAE."""
    from saekit.eval import EvalConfig, evaluate
    from saekit.interp import CollectConfig, collect_records
    from saekit.train import TrainConfig, train

    folders = train(TrainConfig(cache=cache, out=str(Path(config.out) / f"sae-{init}"), hooks=[config.hook],
                                architecture="topk", d_sae=[config.d_sae], k=[config.k], seeds=config.seeds,
                                n_tokens=config.train_tokens, batch_size=config.batch_size, lr=config.lr,
                                warmup_steps=config.warmup_steps, dead_tokens=config.dead_tokens, checkpoint_every=0,
                                holdout_fraction=config.holdout_fraction, log_every=20, device=config.device),
                    progress=True)
    rng = np.random.default_rng(config.seed)
    candidates = rng.permutation(config.d_sae)[:config.candidates * config.n_latents].tolist()
    saes = []
    for seed, folder in zip(config.seeds, folders):
        result = evaluate(EvalConfig(sae=str(folder), cache=cache, n_tokens=config.eval_tokens,
                                     ce_contexts=config.ce_contexts, device=config.device), progress=False)
        records = collect_records(CollectConfig(sae=str(folder), cache=cache, n_tokens=0, latents=candidates,
                                                seed=config.seed, device=config.device, **config.collect),
                                  progress=False)
        saes.append({"variant": init, "seed": seed, "folder": str(folder), "records": str(records),
                     "eval": result, "eligible": eligible_latents(records, candidates, config)})
    return saes


def eligible_latents(records_dir: str | Path, candidates: list[int], config: RandomVsTrainedConfig) -> list[int]:
    """The candidates (in their order) with full top examples and enough test and negative windows."""
    from saekit.interp import load_records

    table = load_records(records_dir).table
    n_top = int(config.collect.get("n_top", 20))
    if "n_random" not in table:
        return []  # no random negatives were collected: nothing can be scored
    enough = config.min_examples
    ok = (table["n_top"] >= n_top) & (table["n_test"] >= enough) & (table["n_random"] >= enough)
    return [c for c in candidates if bool(ok.get(c, False))]


def describe_and_score(config: RandomVsTrainedConfig, sae: dict[str, Any], latents: list[int]) -> list[dict[str, Any]]:
    """Explain and score `latents` of one SAE; the score rows."""
    from saekit.interp import ExplainConfig, ScoreConfig, explain_latents, score_latents

    llm = {"cache_dir": str(Path(config.out) / "llm_cache"), **config.llm}
    explain_latents(ExplainConfig(records=sae["records"], latents=latents, methods=config.methods,
                                  backend=config.backend, llm_model=config.llm_model, llm=llm,
                                  device=config.device), progress=False)
    return score_latents(ScoreConfig(records=sae["records"], latents=latents, scorers=config.scorers,
                                     backend=config.backend, llm_model=config.llm_model, llm=llm,
                                     n_boot=config.n_boot, seed=config.seed, device=config.device, **config.score),
                         progress=False)


def per_latent_rows(sae: dict[str, Any], latents: list[int], scores: list[dict[str, Any]],
                    primary: tuple[str, str], config: RandomVsTrainedConfig) -> list[dict[str, Any]]:
    """One row per scored latent: stats, abstractness, description, every (scorer, method) score and
    the keyword judge's `score_token_match`."""
    from saekit.interp import load_records

    records = load_records(sae["records"])
    n_activating, n_negatives = int(config.score.get("n_activating", 50)), int(config.score.get("n_negatives", 50))
    by_latent: dict[int, dict[str, Any]] = {}
    for r in scores:
        by_latent.setdefault(r["latent"], {})[f"score_{r['scorer']}_{r['method']}"] = r["score"]
        if (r["scorer"], r["method"]) == primary:
            by_latent[r["latent"]]["description"] = r["description"]
    rows = []
    for latent in latents:
        stats = records.stats(latent)
        found = by_latent.get(latent, {})
        rows.append({"variant": sae["variant"], "seed": sae["seed"], "name": f"{sae['variant']} seed{sae['seed']}",
                     "latent": latent, "frequency": stats["frequency"], "max_activation": stats["max_activation"],
                     **latent_abstractness(records, latent),
                     "score": found.get(f"score_{primary[0]}_{primary[1]}"), **found,
                     "score_token_match": token_match_auroc(records, latent, n_activating, n_negatives, config.seed)})
    return rows


def result_row(sae: dict[str, Any], latent_rows: list[dict[str, Any]], info: dict[str, float],
               config: RandomVsTrainedConfig, n_eligible: int) -> dict[str, Any]:
    """One row of results.csv: the SAE's eval metrics, mean scores with CIs, abstractness, token info."""
    from saekit.interp.score.metrics import bootstrap_ci

    e = sae["eval"]
    row = {"variant": sae["variant"], "name": f"{sae['variant']} seed{sae['seed']}", "seed": sae["seed"],
           "d_sae": config.d_sae, "k": config.k, "fvu": e["fvu"], "l0": e["l0"], "dead_fraction": e["dead_fraction"],
           "ce_loss_score": e.get("ce_loss_score", float("nan")), "kl_div_score": e.get("kl_div_score", float("nan")),
           "ce_clean": e.get("ce_clean", float("nan")), "ce_sae": e.get("ce_sae", float("nan")),
           "ce_zero": e.get("ce_zero", float("nan")), "n_eligible": n_eligible, "n_scored": len(latent_rows)}
    columns = [c for c in latent_rows[0] if c.startswith("score")] if latent_rows else ["score"]
    for column in columns:
        values = [r[column] for r in latent_rows if r.get(column) is not None and np.isfinite(r[column])]
        ci = bootstrap_ci(values, config.n_boot, seed=config.seed) or (float("nan"), float("nan"))
        row[column] = float(np.mean(values)) if values else float("nan")
        if column == "score":
            row.update(score_ci_low=ci[0], score_ci_high=ci[1], n_failed=len(latent_rows) - len(values))
        if column == "score_token_match":
            row.update(token_match_ci_low=ci[0], token_match_ci_high=ci[1])
    entropies = [r["token_entropy"] for r in latent_rows if np.isfinite(r["token_entropy"])]
    ci = bootstrap_ci(entropies, config.n_boot, seed=config.seed) or (float("nan"), float("nan"))
    row.update(token_entropy=float(np.mean(entropies)) if entropies else float("nan"), token_entropy_ci_low=ci[0],
               token_entropy_ci_high=ci[1],
               top_token_fraction=float(np.mean([r["top_token_fraction"] for r in latent_rows])), **info)
    return row


def directions(rows: list[dict[str, Any]], latents: list[dict[str, Any]],
               config: RandomVsTrainedConfig) -> list[dict[str, Any]]:
    """The paper's directions and the control's sanity checks, each with the numbers it rests on."""
    def pooled(variant: str, key: str) -> list[float]:
        return [r[key] for r in latents if r["variant"] == variant and r[key] is not None and np.isfinite(r[key])]

    def info(variant: str, key: str) -> float:
        return float(np.mean([r[key] for r in rows if r["variant"] == variant]))

    checks = []
    for key, scorer in (("score", f"{config.scorers[0]} score"), ("score_token_match", "token-match score")):
        trained = pooled("trained", key)
        for variant in config.inits:
            if variant == "trained" or not trained or not pooled(variant, key):
                continue
            diff, low, high = bootstrap_difference(pooled(variant, key), trained, config.n_boot, config.seed)
            mean = float(np.mean(pooled(variant, key)))
            ours = {"trained": round(float(np.mean(trained)), 4), variant: round(mean, 4),
                    "difference": round(diff, 4), "difference_ci": [round(low, 4), round(high, 4)]}
            if variant == config.control:
                checks.append({"variant": variant, "claim": f"the control's {scorer} is clearly below trained's "
                               f"(difference CI < 0)", "paper": PAPER["control"], "ours": ours, "holds": high < 0,
                               "verdict": "yes" if high < 0 else ("NO" if low > 0 else "unclear")})
            else:
                test = equivalence(pooled(variant, key), trained, config.close_margin, config.chance, config.n_boot,
                                   config.seed)
                checks.append({"variant": variant, "claim": f"{scorer} the same as trained's (equivalence: the "
                               f"difference's 95% CI inside +-{config.close_margin}, trained above chance "
                               f"{config.chance})", "paper": PAPER["scores"], "ours": ours,
                               "verdict": test["verdict"], "holds": test["verdict"] == "equivalent"})
    for variant in config.inits:
        if variant in ("trained", config.control):
            continue
        mine, theirs = pooled(variant, "token_entropy"), pooled("trained", "token_entropy")
        if mine and theirs:
            diff, low, high = bootstrap_difference(mine, theirs, config.n_boot, config.seed)
            checks.append({"variant": variant, "claim": "latents more single-token than trained's (lower token "
                           "entropy)", "paper": PAPER["abstractness"],
                           "ours": {"trained": round(float(np.mean(theirs)), 3),
                                    variant: round(float(np.mean(mine)), 3),
                                    "difference_ci": [round(low, 3), round(high, 3)]}, "holds": diff < 0})
    if config.control:
        r2, dup = info(config.control, "token_r2"), info(config.control, "duplicate_contexts")
        checks.append({"variant": config.control, "claim": "sanity: the control carries no token information "
                       "(held-out token-id R^2 <= 0.01)", "ours": {"token_r2": round(r2, 4),
                       "trained token_r2": round(info("trained", "token_r2"), 4), "duplicate_contexts": round(dup, 4)},
                       "holds": r2 <= 0.01})
    return checks


def figures(rows: list[dict[str, Any]], latents: list[dict[str, Any]], config: RandomVsTrainedConfig) -> list[Any]:
    """Plotly figures: the variants compared (saekit.viz.comparison_figure), per-latent score and
    token-entropy distributions, and score against token entropy."""
    import plotly.graph_objects as go

    from saekit.viz import comparison_figure

    figs = [comparison_figure(rows, metrics=("fvu", "l0", "dead_fraction", "ce_loss_score", "score",
                                             "score_token_match"),
                              title=f"SAEs by model variant ({config.model}, {config.hook}, d_sae={config.d_sae}, "
                                    f"k={config.k}; score: mean {config.scorers[0]} score of {rows[0]['n_scored']} "
                                    f"latents)"),
            comparison_figure(rows, metrics=("token_entropy", "top_token_fraction", "token_r2", "position_r2"),
                              title="Abstractness (token entropy of top activations, bits) and token information")]
    for key, title in (("score", f"Per-latent {config.scorers[0]} score ({config.methods[0]})"),
                       ("score_token_match", "Per-latent token-match score (keyword judge of the raw MaxAct tokens)"),
                       ("token_entropy", "Per-latent token entropy of the top activations (bits)")):
        fig = go.Figure([go.Box(y=[r[key] for r in latents if r["variant"] == v], name=v, boxpoints="all",
                                jitter=0.4) for v in config.inits])
        fig.update_layout(title=title, yaxis_title=key)
        figs.append(fig)
    scatter = go.Figure([go.Scatter(x=[r["token_entropy"] for r in latents if r["variant"] == v],
                                    y=[r["score"] for r in latents if r["variant"] == v], mode="markers", name=v,
                                    text=[f"latent {r['latent']}: {str(r.get('description'))[:80]}" for r in latents
                                          if r["variant"] == v]) for v in config.inits])
    scatter.update_layout(title="Score vs token entropy, one point per latent", xaxis_title="token entropy (bits)",
                          yaxis_title="score")
    figs.append(scatter)
    return [f for f in figs if f is not None]


def write_report(rows: list[dict[str, Any]], latents: list[dict[str, Any]], config: RandomVsTrainedConfig,
                 out: Path, seconds: float) -> Path:
    """report/: results.csv, latents.csv, summary.json, figures.html and report.md."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "results.csv", index=False)
    pd.DataFrame(latents).to_csv(out / "latents.csv", index=False)
    checks = directions(rows, latents, config)
    (out / "summary.json").write_text(json.dumps({"config": config_to_dict(config), "rows": rows, "checks": checks,
                                                   "paper": PAPER, "seconds": round(seconds, 1)}, indent=2) + "\n")
    body = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figures(rows, latents, config))]
    (out / "figures.html").write_text("<!DOCTYPE html><html><head><meta charset='utf-8'><title>random vs trained"
                                      "</title></head><body>" + "\n".join(body) + "</body></html>")
    lines = ["# Random vs trained at small scale", "",
             f"Model `{config.model}`, hook `{config.hook}`, {config.cache_tokens:,} cached tokens per variant; TopK "
             f"d_sae={config.d_sae}, k={config.k}, {config.train_tokens:,} training tokens, seeds {config.seeds}; "
             f"{rows[0]['n_scored']} latents scored per SAE ({config.scorers} of {config.methods} descriptions, "
             f"backend {config.backend}); {seconds / 60:.1f} minutes in all.", "",
             f"| variant | seed | FVU | L0 | dead | CE recovered | {config.scorers[0]} score [95% CI] | token-match "
             "score [95% CI] | token entropy (bits) [95% CI] | top-token share | token R^2 | position R^2 | "
             "duplicate contexts |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['seed']} | {r['fvu']:.4f} | {r['l0']:.1f} | {r['dead_fraction']:.3f} | "
                     f"{r['ce_loss_score']:.3f} | {r['score']:.3f} [{r['score_ci_low']:.3f}, {r['score_ci_high']:.3f}] "
                     f"| {r['score_token_match']:.3f} [{r['token_match_ci_low']:.3f}, {r['token_match_ci_high']:.3f}] "
                     f"| {r['token_entropy']:.2f} [{r['token_entropy_ci_low']:.2f}, "
                     f"{r['token_entropy_ci_high']:.2f}] | "
                     f"{r['top_token_fraction']:.2f} | {r['token_r2']:.3f} | {r['position_r2']:.3f} | "
                     f"{r['duplicate_contexts']:.4f} |")
    lines += ["", "Scores: per-latent means (judgefree-input: AUROC of held-out windows by how many of their tokens "
              "the description names, no judge, chance 0.5; embedding: AUROC of description-window similarity, "
              "chance 0.5; "
              "token match: AUROC of an offline keyword judge of the raw MaxAct tokens on the same windows, chance "
              "0.5); token entropy: of the token ids at the max-activating position of each latent's top examples "
              "(0 = one token); token / position R^2: activation variance predicted by the token id / the position "
              "alone on held-out contexts.", "",
              "## The paper's directions, and sanity checks", "",
              "Verdicts: `equivalent` / `different` / `inconclusive` (equivalence test), `refused: ...` (trained's "
              "score is not above chance, so equality would mean nothing), `yes` / `NO` / `unclear` for directions.",
              "", "| variant | claim | ours | verdict | paper |", "|---|---|---|---|---|"]
    for c in checks:
        verdict = c.get("verdict", "yes" if c["holds"] else "NO")
        lines.append(f"| {c['variant']} | {c['claim']} | {json.dumps(c['ours'])} | {verdict} | {c.get('paper', '')} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    config = config_from_argv(RandomVsTrainedConfig, argv, __doc__.split("\n")[0])
    started = time.time()
    saes, info = [], {}
    for init in config.inits:
        step = time.time()
        cache = cache_variant(config, init)
        info[init] = token_information(cache, config.hook)
        saes += train_and_collect(config, init, cache)
        if not config.keep_caches:
            shutil.rmtree(cache)
        print(f"[random-vs-trained] {init}: cached, trained, evaluated, collected in {time.time() - step:.0f} s; "
              f"token R^2 {info[init]['token_r2']:.3f}, " + ", ".join(
                  f"seed {s['seed']}: fvu {s['eval']['fvu']:.4f} l0 {s['eval']['l0']:.1f} "
                  f"{len(s['eligible'])} eligible" for s in saes if s["variant"] == init), flush=True)
    n = min([config.n_latents] + [len(s["eligible"]) for s in saes])
    if n < 2:
        raise ValueError(f"only {n} eligible latents in some SAE ({[len(s['eligible']) for s in saes]}): raise "
                         f"candidates or cache_tokens, or lower min_examples")
    from saekit.interp.explain.run import canonical_method

    primary = (config.scorers[0], canonical_method(config.methods[0]))
    rows, latents = [], []
    for sae in saes:
        step = time.time()
        chosen = sae["eligible"][:n]
        scores = describe_and_score(config, sae, chosen)
        latent_rows = per_latent_rows(sae, chosen, scores, primary, config)
        latents += latent_rows
        rows.append(result_row(sae, latent_rows, info[sae["variant"]], config, len(sae["eligible"])))
        print(f"[random-vs-trained] {sae['variant']} seed {sae['seed']}: {n} latents scored in "
              f"{time.time() - step:.0f} s, mean {primary[0]} {rows[-1]['score']:.3f}, token entropy "
              f"{rows[-1]['token_entropy']:.2f} bits", flush=True)
    report = write_report(rows, latents, config, Path(config.out) / "report", seconds=time.time() - started)
    print(f"[random-vs-trained] report: {report} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
