"""LLM backends for autointerp: one small interface, any vendor.

    backend = make_backend(LLMConfig(backend="openai", model="gpt-4o-mini", cache_dir="runs/x/llm_cache"))
    results = backend.chat_many([[{"role": "user", "content": prompt}] for prompt in prompts],
                                validate=lambda text: None if text.startswith("{") else "wrong_format")
    backend.usage   # {"calls": ..., "cached": ..., "prompt_tokens": ..., "completion_tokens": ..., "failures": ...}

Backends: "openai" speaks OpenAI-compatible chat completions over HTTP (OpenAI, vLLM, OpenRouter,
llama.cpp servers; `llm_http.py`); "transformers" runs a local causal LM with batched generation
(`llm_local.py`). Both share the request loop in `Backend.chat`:

1. the on-disk cache (`llm_cache.py`) is looked up first; a hit that still passes the checks is
   returned with `cached=True` and costs nothing;
2. otherwise the request is sent, holding one of `max_concurrency` slots while it is in flight;
3. transport failures (HTTP 429 and 5xx, timeouts, connection errors, unreadable responses) are
   retried after an exponential backoff with jitter (`backoff_base_s * 2**k`, times a random factor
   in [0.5, 1.5), at most `MAX_BACKOFF_S`); a `Retry-After` header is honoured as a lower bound;
4. replies are checked: blank -> "empty", longer than `max_reply_chars` -> "too_long", then the
   caller's `validate` (None = fine, else an error label such as "wrong_format"); a reply with no
   answer in it (validate failed, or there is no validate) that is short (< `REFUSAL_MAX_CHARS`)
   and opens like "I'm sorry" / "I cannot" / "As an AI" -> "refusal" (`is_refusal`), so a hedged
   answer ("I can't be certain, but set 2 ...") is kept; a failed check is retried at once, sampling at
   `retry_temperature` when the request asked for greedy decoding (greedy retries repeat themselves);
5. after `max_retries` retries (so `1 + max_retries` attempts) the last error is recorded in the
   `ChatResult` (`ok=False`); nothing in this loop raises, so one bad reply never ends a run.
   Client errors other than 429 (400, 401, 404, ...) are not retried.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Coroutine

from tqdm.auto import tqdm

from saekit.config import doc
from saekit.interp.llm.cache import ResponseCache, cache_key

log = logging.getLogger(__name__)

BACKENDS = ("none", "openai", "transformers")
MAX_BACKOFF_S = 60.0
REFUSAL_PATTERN = re.compile(
    r"^\W*(i['’]?m sorry|i am sorry|sorry, (but )?i|i cannot|i can['’]?t|i can not|i['’]?m unable|i am unable"
    r"|i['’]?m not able|i am not able|as an ai)\b", re.IGNORECASE)
REFUSAL_MAX_CHARS = 200  # a refusal is short: longer replies that open with "I can't ..." are hedged answers

Messages = list[dict[str, str]]
Validator = Callable[[str], "str | None"]


@dataclass
class LLMConfig:
    """Which LLM explains and scores latents, and how it is called."""

    backend: str = doc("none | openai (any OpenAI-compatible server) | transformers (a local causal LM)", "none")
    base_url: str = doc("openai: the server's base URL (OpenAI, vLLM, OpenRouter, llama.cpp: .../v1)",
                        "https://api.openai.com/v1")
    model: str = doc("openai: model name on the server; transformers: a local folder or hub name", "")
    api_key_env: str = doc("openai: environment variable holding the API key (read per call, never stored)",
                           "OPENAI_API_KEY")
    max_concurrency: int = doc("requests in flight at once", 8)
    timeout_s: float = doc("openai: seconds without a byte from the server before an attempt times out", 60.0)
    max_retries: int = doc("retries of a failed or malformed reply (attempts = 1 + max_retries)", 5)
    backoff_base_s: float = doc("first backoff after a 429/5xx/timeout, doubled each retry, with jitter", 1.0)
    temperature: float = doc("sampling temperature (0 = greedy)", 0.0)
    retry_temperature: float = doc("temperature for retries of a malformed reply when temperature is 0", 0.7)
    max_tokens: int = doc("most tokens generated per reply", 256)
    cache_dir: str = doc("folder of the on-disk reply cache ('' = no cache), e.g. RUN_DIR/llm_cache", "")
    max_reply_chars: int = doc("longer replies are recorded as too_long", 2000)
    device: str = doc("transformers: auto | cpu | cuda | cuda:N", "auto")
    dtype: str = doc("transformers: auto (bfloat16 on GPU, float32 on CPU) | float32 | bfloat16 | float16",
                     "auto")
    batch_size: int = doc("transformers: prompts per generate() call", 8)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        for name in ("max_concurrency", "max_tokens", "max_reply_chars", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_retries < 0 or self.timeout_s <= 0 or self.backoff_base_s < 0:
            raise ValueError("max_retries and backoff_base_s must be >= 0 and timeout_s > 0")


@dataclass
class ChatResult:
    """One request's outcome. Token counts are what this call spent (all attempts; 0 when cached)."""

    text: str
    ok: bool
    error: str | None  # empty | too_long | refusal | <validate's label> | http_<code> | timeout | exception: ...
    attempts: int
    cached: bool
    prompt_tokens: int
    completion_tokens: int
    model: str


@dataclass
class Completion:
    """What a backend's transport returns for one attempt."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class TransportError(Exception):
    """A failed attempt: `label` goes into ChatResult.error; `retryable` says whether to try again."""

    def __init__(self, label: str, retryable: bool = True, retry_after_s: float | None = None) -> None:
        super().__init__(label)
        self.label = label
        self.retryable = retryable
        self.retry_after_s = retry_after_s


def is_refusal(text: str, answered: bool = False) -> bool:
    """Whether `text` refuses: it holds no answer (`answered` False), is short (< REFUSAL_MAX_CHARS
    characters once stripped) and opens like a refusal (REFUSAL_PATTERN: "I'm sorry", "I cannot", "As an AI").

    The opening alone is not enough: judges hedge ("I can't be certain, but set 2 ...") on exactly
    the hard items, and dropping those as refusals biases scores towards the easy ones."""
    return not answered and len(text.strip()) < REFUSAL_MAX_CHARS and REFUSAL_PATTERN.match(text) is not None


def check_reply(text: str, max_reply_chars: int, validate: Validator | None = None) -> str | None:
    """None when `text` is acceptable, else its error label (empty, too_long, refusal, or validate's).

    `validate` decides whether the reply holds an answer (None = it does); a reply it rejects, or any
    reply when there is no `validate`, is labelled "refusal" when `is_refusal` says so, else it gets
    validate's label. So a validator should reject a reply that only apologises (see
    prompts.description_validator, whose free-text answers could otherwise be anything)."""
    if not text.strip():
        return "empty"
    if len(text) > max_reply_chars:
        return "too_long"
    verdict = None
    if validate is not None:
        try:
            verdict = validate(text)
        except Exception as error:  # a validator that raises is a malformed reply, not a crashed run
            verdict = f"wrong_format: validate raised {type(error).__name__}: {error}"[:200]
    answered = validate is not None and verdict is None
    return "refusal" if is_refusal(text, answered) else verdict


def backoff_delay(retry: int, base_s: float, retry_after_s: float | None = None) -> float:
    """Seconds to wait before retry number `retry` (0-based): exponential, jittered, >= Retry-After."""
    delay = base_s * (2.0 ** retry) * (0.5 + random.random())
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return min(delay, MAX_BACKOFF_S)


def run_sync(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run `coroutine` to completion, also from inside a running event loop (e.g. a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coroutine)
        except BaseException as error:  # re-raised in the caller's thread
            box["error"] = error

    thread = threading.Thread(target=target, name="saekit-llm")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class Backend:
    """The request loop shared by all backends; a subclass implements `_complete` (one attempt)."""

    name: str = "backend"

    def __init__(self, config: LLMConfig, name: str) -> None:
        self.config = config
        self.name = name
        self.cache = ResponseCache(config.cache_dir) if config.cache_dir else None
        self.usage: dict[str, int] = {"calls": 0, "cached": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                      "failures": 0}
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = \
            weakref.WeakKeyDictionary()

    @property
    def concurrency(self) -> int:
        """Attempts allowed in flight at once."""
        return self.config.max_concurrency

    async def _complete(self, messages: Messages, sampling: dict[str, Any]) -> Completion:
        """One attempt; raise TransportError (or anything) on failure."""
        raise NotImplementedError

    def _slot(self) -> asyncio.Semaphore:
        """This event loop's semaphore (each `chat_many` runs its own loop)."""
        loop = asyncio.get_running_loop()
        if loop not in self._slots:
            self._slots[loop] = asyncio.Semaphore(self.concurrency)
        return self._slots[loop]

    def sampling_params(self, sampling: dict[str, Any]) -> dict[str, Any]:
        """The config's temperature and max_tokens, overridden by (and extended with) `sampling`."""
        return {"temperature": self.config.temperature, "max_tokens": self.config.max_tokens, **sampling}

    def _from_cache(self, key: str, validate: Validator | None) -> ChatResult | None:
        entry = self.cache.get(key) if self.cache is not None else None
        if entry is None or check_reply(entry["text"], self.config.max_reply_chars, validate) is not None:
            return None
        self.usage["cached"] += 1
        return ChatResult(entry["text"], True, None, 0, True, 0, 0, self.name)

    def _store(self, key: str, reply: Completion) -> None:
        if self.cache is None:
            return
        try:
            self.cache.put(key, reply.text, self.name, reply.prompt_tokens, reply.completion_tokens)
        except OSError as failure:  # a full disk costs a rerun its savings, not this run its result
            log.warning("%s: could not write the reply cache: %s", self.name, failure)

    async def chat(self, messages: Messages, validate: Validator | None = None, **sampling: Any) -> ChatResult:
        """One chat request through cache, retries and checks (see the module docstring); never raises."""
        params = self.sampling_params(sampling)
        key = cache_key(self.name, messages, params)
        hit = self._from_cache(key, validate)
        if hit is not None:
            return hit
        attempts = prompt_tokens = completion_tokens = transport_retries = 0
        text, error = "", "exception: no attempt made"
        attempt_params = params
        while attempts <= self.config.max_retries:
            attempts += 1
            try:
                async with self._slot():
                    self.usage["calls"] += 1
                    reply = await self._complete(messages, attempt_params)
            except Exception as failure:
                text = ""
                if not isinstance(failure, TransportError):
                    failure = TransportError(f"exception: {type(failure).__name__}: {failure}"[:300])
                error = failure.label
                if not failure.retryable or attempts > self.config.max_retries:
                    break
                delay = backoff_delay(transport_retries, self.config.backoff_base_s, failure.retry_after_s)
                transport_retries += 1
                log.info("%s: %s on attempt %d, retrying in %.2fs", self.name, error, attempts, delay)
                await asyncio.sleep(delay)
                continue
            prompt_tokens += reply.prompt_tokens
            completion_tokens += reply.completion_tokens
            self.usage["prompt_tokens"] += reply.prompt_tokens
            self.usage["completion_tokens"] += reply.completion_tokens
            text = reply.text
            error = check_reply(text, self.config.max_reply_chars, validate)
            if error is None:
                self._store(key, reply)
                return ChatResult(text, True, None, attempts, False, prompt_tokens, completion_tokens, self.name)
            log.info("%s: malformed reply (%s) on attempt %d", self.name, error, attempts)
            if params.get("temperature", 0.0) == 0.0:
                attempt_params = {**params, "temperature": self.config.retry_temperature}
        self.usage["failures"] += 1
        return ChatResult(text, False, error, attempts, False, prompt_tokens, completion_tokens, self.name)

    def chat_many(self, requests: list[Messages], validate: Validator | None = None, progress: bool = True,
                  **sampling: Any) -> list[ChatResult]:
        """All `requests` at once (bounded by `concurrency`), results in input order, with a progress bar."""
        if not requests:
            return []

        async def run_all() -> list[ChatResult]:
            bar = tqdm(total=len(requests), desc=self.name, unit="req", disable=not progress)

            async def one(messages: Messages) -> ChatResult:
                result = await self.chat(messages, validate, **sampling)
                bar.update(1)
                return result

            try:
                return list(await asyncio.gather(*(one(messages) for messages in requests)))
            finally:
                bar.close()

        started = time.time()
        results = run_sync(run_all())
        log.info("%s: %d requests in %.1fs, usage %s", self.name, len(requests), time.time() - started, self.usage)
        return results

    def close(self) -> None:
        """Release threads and models (the backend is not usable afterwards)."""


def make_backend(config: LLMConfig) -> Backend | None:
    """The backend `config.backend` names, or None for "none"."""
    if config.backend == "none":
        return None
    if not config.model:
        raise ValueError(f"LLM backend {config.backend!r} needs a model")
    if config.backend == "openai":
        from saekit.interp.llm.http import OpenAIBackend

        return OpenAIBackend(config)
    from saekit.interp.llm.local import TransformersBackend

    return TransformersBackend(config)
