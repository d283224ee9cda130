"""Autointerp: collect latent examples, explain them with an LLM, score the explanations.

    from saekit.interp import LLMConfig, make_backend
    backend = make_backend(LLMConfig(backend="openai", model="gpt-4o-mini", cache_dir="runs/x/llm_cache"))
    results = backend.chat_many([[{"role": "user", "content": "..."}]])   # list[ChatResult]

LLM backends (llm.py; llm_http.py, llm_local.py, llm_cache.py): OpenAI-compatible HTTP and local
transformers, with bounded concurrency, retries, an on-disk reply cache and token counts.
"""

from saekit.interp.llm import Backend, ChatResult, LLMConfig, check_reply, make_backend

__all__ = [
    "Backend",
    "ChatResult",
    "LLMConfig",
    "check_reply",
    "make_backend",
]
