"""LLM backends: the OpenAI-compatible HTTP backend against a scripted local server, the reply
cache, and the transformers backend with a tiny random causal LM (whose gibberish tests the
malformed-reply path). Everything runs on 127.0.0.1 and offline."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import pytest

from saekit.interp import ChatResult, LLMConfig, check_reply, make_backend
from saekit.interp.llm.cache import ResponseCache, cache_key
from saekit.interp.llm.http import parse_retry_after

SECRET = "sk-test-0123456789-secret"
KEY_ENV = "SAEKIT_TEST_LLM_KEY"


@dataclass
class Reply:
    """What the fake server sends: status, body, extra headers, and a delay before answering."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def ok(content: str, prompt_tokens: int = 7, completion_tokens: int = 3) -> Reply:
    """A reply in OpenAI's chat-completion wire format."""
    body = {"id": "chatcmpl-test", "object": "chat.completion", "model": "fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}
    return Reply(200, json.dumps(body).encode())


def slow(reply: Reply, delay_s: float) -> Reply:
    return Reply(reply.status, reply.body, reply.headers, delay_s)


def error(status: int, **headers: str) -> Reply:
    return Reply(status, json.dumps({"error": {"message": f"status {status}"}}).encode(), headers)


class FakeOpenAI:
    """A ThreadingHTTPServer on 127.0.0.1 answering POST /v1/chat/completions from `script`.

    `script(n, body)` gets the 0-based index of this call to the server and the request JSON (whose
    last message's content the tests use as a prompt id) and returns a Reply. The server counts
    calls, the most requests in flight at once, and the Authorization headers it saw.
    """

    def __init__(self, script: Callable[[int, dict], Reply]) -> None:
        self.script = script
        self.lock = threading.Lock()
        self.calls = self.in_flight = self.max_in_flight = 0
        self.authorizations: list[str | None] = []
        self.bodies: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    n = server.calls
                    server.calls += 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.authorizations.append(self.headers.get("Authorization"))
                    server.bodies.append(body)
                try:
                    reply = server.script(n, body) if self.path == "/v1/chat/completions" else error(404)
                    time.sleep(min(reply.delay_s, 2.0))
                    self.send_response(reply.status)
                    for name, value in {"Content-Type": "application/json", **reply.headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:  # the client gave up (timeout test)
                    pass
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve(monkeypatch):
    """serve(script) -> a running FakeOpenAI; the key is in KEY_ENV and proxies are bypassed."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    servers: list[FakeOpenAI] = []

    def start(script: Callable[[int, dict], Reply]) -> FakeOpenAI:
        servers.append(FakeOpenAI(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def http_backend(server: FakeOpenAI, **overrides):
    config = dict(backend="openai", base_url=server.base_url, model="fake-model", api_key_env=KEY_ENV,
                  max_concurrency=4, timeout_s=5.0, max_retries=3, backoff_base_s=0.001, max_tokens=32)
    return make_backend(LLMConfig(**{**config, **overrides}))


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You explain latents."}, {"role": "user", "content": text}]


def prompt_of(body: dict) -> str:
    return body["messages"][-1]["content"]


def is_json_object(text: str) -> str | None:
    try:
        return None if isinstance(json.loads(text), dict) else "wrong_format"
    except ValueError:
        return "wrong_format"


# --- the HTTP backend -----------------------------------------------------------------------


def test_reply_is_read_with_token_counts_and_the_key_from_the_environment(serve):
    server = serve(lambda n, body: ok(f"echo {prompt_of(body)}", prompt_tokens=11, completion_tokens=4))
    backend = http_backend(server)
    results = backend.chat_many([ask(f"p{i}") for i in range(3)], progress=False)
    assert [r.text for r in results] == ["echo p0", "echo p1", "echo p2"]
    assert all(r.ok and r.error is None and r.attempts == 1 and not r.cached for r in results)
    assert (results[0].prompt_tokens, results[0].completion_tokens) == (11, 4)
    assert backend.usage == {"calls": 3, "cached": 0, "prompt_tokens": 33, "completion_tokens": 12, "failures": 0}
    assert server.authorizations == [f"Bearer {SECRET}"] * 3
    assert server.bodies[0]["model"] == "fake-model"
    assert (server.bodies[0]["temperature"], server.bodies[0]["max_tokens"]) == (0.0, 32)
    assert backend.name == "openai:fake-model"
    assert asyncio.run(backend.chat(ask("p"), temperature=0.5, top_p=0.9, seed=3)).ok  # sampling keywords pass on
    assert {k: server.bodies[-1][k] for k in ("temperature", "top_p", "seed")} == {"temperature": 0.5, "top_p": 0.9,
                                                                                  "seed": 3}


def test_429_is_retried_after_the_retry_after_header(serve):
    server = serve(lambda n, body: error(429, **{"Retry-After": "0.3"}) if n == 0 else ok("fine"))
    started = time.monotonic()
    result = asyncio.run(http_backend(server).chat(ask("p")))
    assert result.ok and result.attempts == 2 and server.calls == 2
    assert time.monotonic() - started >= 0.3


def test_server_errors_are_retried_up_to_max_retries_then_recorded(serve):
    server = serve(lambda n, body: error(500))
    backend = http_backend(server, max_retries=2)
    result = asyncio.run(backend.chat(ask("p")))
    assert (result.ok, result.error, result.attempts, result.text) == (False, "http_500", 3, "")
    assert server.calls == 3
    assert backend.usage["failures"] == 1 and backend.usage["calls"] == 3


def test_client_errors_other_than_429_are_not_retried(serve):
    server = serve(lambda n, body: error(400))
    result = asyncio.run(http_backend(server).chat(ask("p")))
    assert (result.ok, result.error, result.attempts, server.calls) == (False, "http_400", 1, 1)


def test_slow_reply_times_out_and_is_retried(serve):
    server = serve(lambda n, body: slow(ok("late"), 1.0) if n == 0 else ok("on time"))
    result = asyncio.run(http_backend(server, timeout_s=0.2).chat(ask("p")))
    assert (result.ok, result.text, result.attempts) == (True, "on time", 2)


def test_a_server_that_never_answers_in_time_is_recorded_as_timeout(serve):
    server = serve(lambda n, body: slow(ok("late"), 0.6))
    result = asyncio.run(http_backend(server, timeout_s=0.15, max_retries=1).chat(ask("p")))
    assert (result.ok, result.error, result.attempts) == (False, "timeout", 2)


def test_garbage_responses_are_retried(serve):
    garbage = [Reply(200, b"<html>not json{"), Reply(200, b'{"foo": 1}'), Reply(200, b'{"choices": []}')]
    server = serve(lambda n, body: garbage[n] if n < len(garbage) else ok("finally"))
    result = asyncio.run(http_backend(server).chat(ask("p")))
    assert (result.ok, result.text, result.attempts, server.calls) == (True, "finally", 4, 4)


def test_garbage_responses_past_the_limit_are_recorded_not_raised(serve):
    server = serve(lambda n, body: Reply(200, b"\x00\xffgarbage"))
    result = asyncio.run(http_backend(server, max_retries=1).chat(ask("p")))
    assert not result.ok and result.error.startswith("exception: unreadable response") and result.attempts == 2


def test_malformed_replies_are_labelled_and_retried_up_to_the_limit(serve):
    contents = {"empty": "   ", "refusal": "I'm sorry, but I can't help with that.", "too_long": "x" * 500,
                "wrong_format": "the latent fires on commas", "fine": '{"explanation": "commas"}'}
    server = serve(lambda n, body: ok(contents[prompt_of(body)]))
    backend = http_backend(server, max_retries=2, max_reply_chars=100)
    results = backend.chat_many([ask(label) for label in contents], validate=is_json_object, progress=False)
    by_label = dict(zip(contents, results))
    for label in ("empty", "refusal", "too_long", "wrong_format"):
        assert (by_label[label].ok, by_label[label].error, by_label[label].attempts) == (False, label, 3)
    assert by_label["fine"].ok and by_label["fine"].attempts == 1
    assert by_label["wrong_format"].text == contents["wrong_format"]  # the last reply is kept for inspection
    assert backend.usage["failures"] == 4 and backend.usage["calls"] == 13
    assert by_label["empty"].completion_tokens == 9  # tokens of all three attempts


def test_a_malformed_greedy_reply_is_retried_at_the_retry_temperature(serve):
    server = serve(lambda n, body: ok("no json here") if n == 0 else ok('{"ok": true}'))
    result = asyncio.run(http_backend(server, retry_temperature=0.8).chat(ask("p"), validate=is_json_object))
    assert result.ok and result.attempts == 2
    assert [body["temperature"] for body in server.bodies] == [0.0, 0.8]


def test_concurrency_never_exceeds_max_concurrency_and_results_keep_input_order(serve):
    server = serve(lambda n, body: slow(ok(f"echo {prompt_of(body)}"), 0.1))
    backend = http_backend(server, max_concurrency=3)
    results = backend.chat_many([ask(f"p{i}") for i in range(12)], progress=False)
    assert [r.text for r in results] == [f"echo p{i}" for i in range(12)]
    assert server.max_in_flight == 3


def test_a_second_run_with_the_same_cache_makes_no_calls(serve, tmp_path):
    server = serve(lambda n, body: error(500) if prompt_of(body) == "broken" else ok(f"echo {prompt_of(body)}"))
    prompts = [ask(f"p{i}") for i in range(5)] + [ask("broken")]
    first = http_backend(server, cache_dir=str(tmp_path / "llm_cache"), max_retries=1)
    first.chat_many(prompts, progress=False)
    calls_after_first = server.calls
    assert calls_after_first == 7 and len(first.cache) == 5  # only accepted replies are cached

    second = http_backend(server, cache_dir=str(tmp_path / "llm_cache"), max_retries=1)
    results = second.chat_many(prompts, progress=False)
    assert [r.text for r in results[:5]] == [f"echo p{i}" for i in range(5)]
    assert all(r.cached and r.ok and r.attempts == 0 and r.prompt_tokens == 0 for r in results[:5])
    assert server.calls == calls_after_first + 2  # only the failed request is tried again
    assert second.usage["cached"] == 5 and second.usage["calls"] == 2


def test_the_cache_key_covers_model_prompt_and_sampling(serve, tmp_path):
    server = serve(lambda n, body: ok(f"reply {n}"))
    backend = http_backend(server, cache_dir=str(tmp_path))
    asyncio.run(backend.chat(ask("p")))
    assert asyncio.run(backend.chat(ask("p"))).cached
    assert not asyncio.run(backend.chat(ask("p"), temperature=0.3)).cached
    assert not asyncio.run(backend.chat(ask("q"))).cached
    assert not asyncio.run(http_backend(server, cache_dir=str(tmp_path), model="other").chat(ask("p"))).cached


def test_a_cached_reply_that_fails_the_current_validator_is_asked_again(serve, tmp_path):
    server = serve(lambda n, body: ok("plain text") if n == 0 else ok('{"a": 1}'))
    asyncio.run(http_backend(server, cache_dir=str(tmp_path)).chat(ask("p")))
    result = asyncio.run(http_backend(server, cache_dir=str(tmp_path)).chat(ask("p"), validate=is_json_object))
    assert result.ok and not result.cached and result.text == '{"a": 1}'


def test_the_key_appears_in_no_cache_file_and_no_log(serve, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    server = serve(lambda n, body: error(503) if n == 0 else ok("fine"))
    backend = http_backend(server, cache_dir=str(tmp_path))
    results = backend.chat_many([ask("p"), ask("q")], progress=False)
    assert all(r.ok for r in results)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 2 and not any(SECRET in p.read_text() for p in files)
    assert "retrying" in caplog.text and SECRET not in caplog.text
    assert SECRET not in repr(vars(backend)) and SECRET not in repr(results)


def test_without_the_key_variable_requests_go_without_authorization(serve, monkeypatch, caplog):
    monkeypatch.delenv(KEY_ENV)
    server = serve(lambda n, body: ok("fine"))
    assert asyncio.run(http_backend(server).chat(ask("p"))).ok
    assert server.authorizations == [None]
    assert KEY_ENV in caplog.text


def test_connection_refused_is_recorded_after_retries(serve):
    server = serve(lambda n, body: ok("never"))
    backend = http_backend(server, max_retries=1)
    server.close()
    result = asyncio.run(backend.chat(ask("p")))
    assert not result.ok and result.error.startswith("exception:") and result.attempts == 2


def test_chat_many_works_inside_a_running_event_loop(serve):
    server = serve(lambda n, body: ok("fine"))
    backend = http_backend(server)

    async def notebook_cell() -> list[ChatResult]:
        return backend.chat_many([ask("p")], progress=False)

    assert asyncio.run(notebook_cell())[0].ok


# --- pieces ---------------------------------------------------------------------------------


def test_reply_checks_label_empty_too_long_refusal_and_validator_errors():
    assert check_reply(" \n", 10) == "empty"
    assert check_reply("x" * 11, 10) == "too_long"
    for refusal in ("I'm sorry, I can't do that.", "I cannot help", "As an AI language model, ...", "I can’t"):
        assert check_reply(refusal, 100) == "refusal"
    assert check_reply("Tokens after which I cannot appears", 100) is None
    assert check_reply("text", 100, lambda t: "wrong_format") == "wrong_format"
    assert check_reply("text", 100, lambda t: 1 / 0).startswith("wrong_format: validate raised ZeroDivisionError")


def test_retry_after_is_parsed_from_seconds_milliseconds_and_dates():
    assert parse_retry_after({"Retry-After": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({"Retry-After": "soon"}) is None and parse_retry_after({}) is None


def test_a_torn_or_foreign_cache_file_counts_as_a_miss(tmp_path):
    cache = ResponseCache(tmp_path)
    key = cache_key("m", ask("p"), {"temperature": 0.0})
    cache.put(key, "reply", "m", 1, 2)
    assert cache.get(key)["text"] == "reply"
    cache.path(key).write_text('{"format": 1, "te')
    assert cache.get(key) is None
    assert not list(Path(tmp_path).rglob("*.tmp"))


def test_backend_none_makes_no_backend_and_unknown_backends_are_rejected():
    assert make_backend(LLMConfig()) is None
    with pytest.raises(ValueError):
        LLMConfig(backend="anthropic-only")
    with pytest.raises(ValueError):
        make_backend(LLMConfig(backend="openai"))  # no model


# --- the transformers backend ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory) -> str:
    """A random 1-layer GPT-2 and a byte-level BPE trained here on a few sentences, saved to a folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    texts = ["the latent fires on commas and full stops", "this feature tracks numbers in code",
             "explain what the highlighted tokens have in common", "a sparse autoencoder reads activations"] * 20
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=1, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    folder = tmp_path_factory.mktemp("tiny_chat_model")
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def local_backend(folder: str, **overrides):
    config = dict(backend="transformers", model=folder, device="cpu", dtype="float32", batch_size=4,
                  max_tokens=12, max_retries=2)
    return make_backend(LLMConfig(**{**config, **overrides}))


def test_transformers_gibberish_is_recorded_as_wrong_format_after_retries(tiny_chat_model):
    backend = local_backend(tiny_chat_model)
    assert backend.name == f"transformers:{tiny_chat_model}"
    results = backend.chat_many([ask(f"explain latent {i}") for i in range(3)], validate=is_json_object,
                                progress=False)
    assert all(not r.ok and r.attempts == 3 and r.error in ("wrong_format", "empty") for r in results)
    assert any(r.error == "wrong_format" for r in results)
    assert backend.usage["calls"] == 9 and backend.usage["failures"] == 3
    assert backend.usage["prompt_tokens"] > 0 and 0 < backend.usage["completion_tokens"] <= 9 * 12


def test_transformers_requests_are_generated_in_left_padded_batches(tiny_chat_model):
    backend = local_backend(tiny_chat_model, max_retries=0)
    batch_sizes: list[int] = []
    generate = backend.generate

    def recording_generate(prompts, sampling):
        batch_sizes.append(len(prompts))
        return generate(prompts, sampling)

    backend.generate = recording_generate
    results = backend.chat_many([ask("short"), ask("a much longer prompt " * 3)] + [ask(f"p{i}") for i in range(3)],
                                progress=False)
    assert batch_sizes == [4, 1]
    assert backend.tokenizer.padding_side == "left"
    assert all(r.attempts == 1 and r.model == backend.name for r in results)


def test_transformers_prompt_uses_the_chat_template_when_there_is_one(tiny_chat_model):
    backend = local_backend(tiny_chat_model)
    assert backend.render(ask("hi")) == "system: You explain latents.\nuser: hi\nassistant:"
    backend.tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    backend.has_chat_template = True
    assert backend.render(ask("hi")) == "<system>You explain latents.<user>hi<assistant>"
