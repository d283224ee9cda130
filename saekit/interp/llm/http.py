"""OpenAI-compatible chat completions over HTTP: OpenAI, vLLM, OpenRouter, llama.cpp servers.

`POST {base_url}/chat/completions` with `{"model", "messages", "temperature", "max_tokens", ...}`
(any extra sampling keyword goes into the body as is: `top_p`, `seed`, `stop`, ...), and the reply's
`choices[0].message.content` and `usage.{prompt,completion}_tokens` read back (missing usage counts
as 0 tokens). Uses only the standard library: each attempt is a blocking `urllib` request run in a
thread pool of `max_concurrency` threads, so the event loop stays free.

The API key is read from the environment variable `config.api_key_env` at every request and sent
as `Authorization: Bearer ...`; it is never stored on the backend, logged, put in an error label or
cached. When the variable is unset or empty the request goes without the header (local servers
need none). `timeout_s` is a socket timeout: an attempt times out when the server sends nothing for
that long. Retry-After (seconds or an HTTP date; also `retry-after-ms`) is honoured as the least
wait before the next attempt.
"""

from __future__ import annotations

import asyncio
import email.utils
import http.client
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping

from saekit.interp.llm.backend import Backend, Completion, LLMConfig, Messages, TransportError

log = logging.getLogger(__name__)


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds a `Retry-After` (or `retry-after-ms`) header asks the client to wait, if any."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def parse_completion(raw: bytes) -> Completion:
    """Text and token counts of an OpenAI chat-completion body; TransportError when it is not one."""
    try:
        body = json.loads(raw)
        message = body["choices"][0]["message"]
        content = message.get("content")
        usage = body.get("usage") or {}
        return Completion(text=content if isinstance(content, str) else "",
                          prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as error:
        raise TransportError(f"exception: unreadable response ({type(error).__name__}): {raw[:80]!r}") from None


def is_retryable_status(code: int) -> bool:
    """429 (rate limit), 408, 409 and server errors are worth another try (as the openai client does)."""
    return code in (408, 409, 429) or code >= 500


class OpenAIBackend(Backend):
    """Chat completions from any OpenAI-compatible server (see the module docstring)."""

    def __init__(self, config: LLMConfig) -> None:
        super().__init__(config, f"openai:{config.model}")
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self._opener = urllib.request.build_opener()
        self._executor = ThreadPoolExecutor(max_workers=config.max_concurrency, thread_name_prefix="saekit-llm")
        if not os.environ.get(config.api_key_env):
            log.warning("environment variable %s is not set: requests to %s go without an API key",
                        config.api_key_env, self.url)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.config.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post(self, body: bytes) -> bytes:
        """One blocking POST (run in the thread pool); raises TransportError on any failure."""
        request = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
        try:
            with self._opener.open(request, timeout=self.config.timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            retry_after = parse_retry_after(error.headers)
            error.close()
            raise TransportError(f"http_{error.code}", is_retryable_status(error.code), retry_after) from None
        except urllib.error.URLError as error:
            if isinstance(error.reason, (TimeoutError, socket.timeout)):
                raise TransportError("timeout") from None
            raise TransportError(f"exception: URLError: {error.reason}"[:300]) from None
        except (TimeoutError, socket.timeout):
            raise TransportError("timeout") from None
        except (http.client.HTTPException, OSError) as error:
            raise TransportError(f"exception: {type(error).__name__}: {error}"[:300]) from None

    async def _complete(self, messages: Messages, sampling: dict[str, Any]) -> Completion:
        body = json.dumps({"model": self.config.model, "messages": messages, **sampling}).encode("utf-8")
        raw = await asyncio.get_running_loop().run_in_executor(self._executor, self._post, body)
        return parse_completion(raw)

    def close(self) -> None:
        """Stop the thread pool."""
        self._executor.shutdown(wait=False, cancel_futures=True)
