"""LLM backends for explainers and judges: OpenAI-compatible HTTP (http.py) and local transformers
(local.py) behind one interface (backend.py), with an on-disk reply cache (cache.py)."""

from saekit.interp.llm.backend import Backend, ChatResult, LLMConfig, check_reply, make_backend

__all__ = ["Backend", "ChatResult", "LLMConfig", "check_reply", "make_backend"]
