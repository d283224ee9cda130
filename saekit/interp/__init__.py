"""Autointerp: collect latent examples, explain them with an LLM, score the explanations.

    from saekit.interp import LLMConfig, make_backend
    backend = make_backend(LLMConfig(backend="openai", model="gpt-4o-mini", cache_dir="runs/x/llm_cache"))
    results = backend.chat_many([[{"role": "user", "content": "..."}]])   # list[ChatResult]

LLM backends (llm.py; llm_http.py, llm_local.py, llm_cache.py): OpenAI-compatible HTTP and local
transformers, with bounded concurrency, retries, an on-disk reply cache and token counts.

Latent records (collect.py; scan.py, windows.py, records.py) and descriptions (explain.py;
explain_evidence.py, prompts.py, prompts/*.txt):

    from saekit.interp import CollectConfig, collect_records, load_records, ExplainConfig, explain_latents
    records = load_records(collect_records(CollectConfig(sae="runs/sae/...", cache="runs/cache")))
    records.examples(latent, "top")   # also "explain", "test" (quantiles), "random", "hard" negatives
    rows = explain_latents(ExplainConfig(records=str(records.path), methods=["maxact", "vocabproj", "all"]))

Scores of the descriptions (score.py; score_examples.py, score_model.py, score_metrics.py):
detection, fuzzing, embedding, simulation (delphi, Bills et al.) and output-/input-based (Gur-Arieh et al.):

    rows = score_latents(ScoreConfig(records=str(records.path), scorers=["embedding"]))   # scores.jsonl rows

A published SAE end to end (pipeline.py: cache, collect, explain, score, summary.csv):

    score_published(PublishedConfig(sae="gpt2-small-res-jb/blocks.8.hook_resid_pre", scorers=["embedding"]))
"""

from saekit.interp.llm import Backend, ChatResult, LLMConfig, check_reply, make_backend
from saekit.interp.collect import CollectConfig, collect_records
from saekit.interp.explain import ExplainConfig, explain_latents, read_explanations
from saekit.interp.records import Example, LatentRecords, load_records
from saekit.interp.score import ScoreConfig, read_scores, score_latents, summarize_scores
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
