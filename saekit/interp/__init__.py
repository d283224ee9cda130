"""Autointerp: collect latent examples, explain them with an LLM, score the explanations.

    from saekit.interp import LLMConfig, make_backend
    backend = make_backend(LLMConfig(backend="openai", model="gpt-4o-mini", cache_dir="runs/x/llm_cache"))
    results = backend.chat_many([[{"role": "user", "content": "..."}]])   # list[ChatResult]

Four rooms in data-flow order, each importing only the ones before it:

| folder | holds |
|---|---|
| `llm/` | LLM backends: OpenAI-compatible HTTP and local transformers, bounded concurrency, retries, reply cache |
| `records/` | `saekit collect`: the passes over a cache, example windows, the records directory |
| `explain/` | `saekit explain`: MaxAct, VocabProj, TokenChange evidence and descriptions |
| `score/` | `saekit score`: delphi's, Bills's and Gur-Arieh et al.'s scorers, and the judge-free ones |

`prompts/` holds the versioned prompt templates both explain and score render; `pipeline.py` runs a
published SAE end to end.

    from saekit.interp import CollectConfig, collect_records, load_records, ExplainConfig, explain_latents
    records = load_records(collect_records(CollectConfig(sae="runs/sae/...", cache="runs/cache")))
    records.examples(latent, "top")   # also "explain", "test" (quantiles), "random", "hard" negatives
    rows = explain_latents(ExplainConfig(records=str(records.path), methods=["maxact", "vocabproj", "all"]))

Scores of the descriptions: detection, fuzzing, embedding, simulation (delphi, Bills et al.) and output-/input-based (Gur-Arieh et al.):

    rows = score_latents(ScoreConfig(records=str(records.path), scorers=["embedding"]))   # scores.jsonl rows

A published SAE end to end (cache, collect, explain, score, summary.csv):

    score_published(PublishedConfig(sae="gpt2-small-res-jb/blocks.8.hook_resid_pre", scorers=["embedding"]))
"""

from saekit.interp.llm.backend import Backend, ChatResult, LLMConfig, check_reply, make_backend
from saekit.interp.records.collect import CollectConfig, collect_records
from saekit.interp.explain.run import ExplainConfig, explain_latents, read_explanations
from saekit.interp.records.format import Example, LatentRecords, load_records
from saekit.interp.score.run import ScoreConfig, read_scores, score_latents, summarize_scores
from saekit.interp.pipeline import PublishedConfig, score_published

__all__ = [
    "Backend",
    "ChatResult",
    "LLMConfig",
    "check_reply",
    "make_backend",
    "CollectConfig",
    "collect_records",
    "Example",
    "LatentRecords",
    "load_records",
    "ExplainConfig",
    "explain_latents",
    "read_explanations",
    "ScoreConfig",
    "score_latents",
    "read_scores",
    "summarize_scores",
    "PublishedConfig",
    "score_published",
]
