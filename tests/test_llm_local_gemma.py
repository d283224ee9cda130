"""The local `transformers` LLM backend end to end on a real model: Gemma 3 270M, from its package.

`LLMConfig(backend="transformers", model="gemma-3-270m")` builds a transformers Gemma3ForCausalLM
from the converted TransformerLens folder (saekit.models.hf, offline), then explains a latent with
the real MaxAct prompt and judges a detection prompt built by the scorer's own code. The 270M base
model is a poor explainer and judge: the tests check that the path runs (replies come back, token
counts grow, each reply is parsed or its failure recorded), not that its answers are good.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from saekit.interp.llm import LLMConfig, make_backend

pytestmark = pytest.mark.slow
MAX_TOKENS = 24
DAYS = ["We met again on Monday at noon.", "The shop is closed on Friday evenings."]
OTHERS = ["He poured the milk into a bowl.", "The river was wide and slow."]


@pytest.fixture(scope="module")
def backend():
    started = time.time()
    backend = make_backend(LLMConfig(backend="transformers", model="gemma-3-270m", device="cpu", dtype="float32",
                                     max_tokens=MAX_TOKENS, max_retries=1, batch_size=2))
    backend.load_seconds = time.time() - started
    yield backend
    backend.close()


def test_the_backend_is_gemma_built_from_the_converted_folder(backend):
    assert type(backend.model).__name__ == "Gemma3ForCausalLM" and backend.name == "transformers:gemma-3-270m"
    assert backend.model.lm_head.weight.data_ptr() == backend.model.model.embed_tokens.weight.data_ptr()
    assert backend.tokenizer.padding_side == "left" and backend.tokenizer.bos_token_id == 2
    assert backend.load_seconds < 40, backend.load_seconds  # measured ~10 s: no GGUF parse


def test_its_logits_equal_transformer_lens_on_the_same_weights(backend):
    from saekit.models import load_model

    tl = load_model("gemma-3-270m")
    tokens = tl.to_tokens("The capital of France is Paris. def add(a, b):\n    return a + b")
    with torch.no_grad():
        ours, theirs = backend.model(tokens).logits, tl(tokens)
    del tl
    assert (ours - theirs).abs().max() < 1e-3, (ours - theirs).abs().max()  # measured: 4.6e-5
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()
    print(f"\nmax |logit difference| {(ours - theirs).abs().max():.2e}")


def maxact_evidence(texts: list[str], word_of: dict[str, str]) -> dict:
    """MaxAct evidence as explain's evidence step writes it: each window with its marked token."""
    examples = []
    for text in texts:
        word = word_of[text]
        examples.append({"text": text.replace(word, f"<<{word}>>"), "activations": [(word, 10)]})
    return {"examples": examples, "top_tokens": [(word_of[t], 1) for t in texts]}


def test_a_description_with_the_real_explain_prompt(backend):
    from saekit.interp.explain.run import prompt_messages
    from saekit.interp.prompts import description_validator, parse_description

    messages, version = prompt_messages("maxact", maxact_evidence(DAYS, {DAYS[0]: "Monday", DAYS[1]: "Friday"}), "")
    assert version == "maxact/1" and "<<Monday>>" in messages[-1]["content"]
    before = dict(backend.usage)
    validate = description_validator(300)
    started = time.time()
    [reply] = backend.chat_many([messages], validate=validate, progress=False)
    seconds = time.time() - started
    assert not reply.cached and 1 <= reply.attempts <= 2
    assert reply.prompt_tokens > 300 and 0 < reply.completion_tokens <= reply.attempts * MAX_TOKENS
    assert backend.usage["prompt_tokens"] - before["prompt_tokens"] == reply.prompt_tokens
    assert backend.usage["completion_tokens"] - before["completion_tokens"] == reply.completion_tokens
    if reply.ok:  # the description the explain stage would record
        assert reply.error is None and validate(reply.text) is None and parse_description(reply.text)
    else:  # recorded, not raised: the failure label the explain stage writes
        assert backend.usage["failures"] == before["failures"] + 1 and reply.error
    print(f"\nexplain: {seconds:.1f}s ok={reply.ok} error={reply.error} text={reply.text!r}")


def test_a_detection_judgement_through_the_scorers_own_code(backend):
    from saekit.interp.records.format import Example
    from saekit.interp.score.examples import Item, run_classifier

    tokenizer = backend.tokenizer
    windows = {kind: [Example(kind, np.array(tokenizer(text, add_special_tokens=False)["input_ids"]),
                              np.zeros(1, np.float32), context, 0, 0, 1.0, 0 if kind == "test" else -1)
                      for context, text in enumerate(texts)]
               for kind, texts in (("test", DAYS), ("random", OTHERS))}
    records = SimpleNamespace(examples=lambda latent, kind: windows.get(kind, []))
    config = SimpleNamespace(prompt_dir="", prompt_set="saekit", seed=0, n_activating=2, n_negatives=2,
                             negatives=["random"], examples_per_prompt=5, fuzz_threshold=0.3, fuzz_type="default")
    before = dict(backend.usage)
    started = time.time()
    [row] = run_classifier("detection", [Item(0, "maxact", "names of days of the week")], records,
                           lambda token: tokenizer.decode([token]), backend, config, progress=False)
    seconds = time.time() - started
    assert row["prompt_version"] == "detection/1" and row["details"]["n_activating"] == 2
    [reply] = row["details"]["replies"]
    assert reply.strip() and backend.usage["calls"] > before["calls"]
    assert backend.usage["completion_tokens"] > before["completion_tokens"]
    predictions = [s["prediction"] for s in row["details"]["samples"]]
    if row["details"]["n_unanswered"] == 0:  # parsed: one 0/1 label per excerpt, scored
        assert all(p in (0, 1) for p in predictions) and len(predictions) == 4 and row["score"] is not None
    else:  # the judge's reply did not parse after the retry: recorded as such
        assert predictions == [None] * 4 and reply.startswith("<wrong_format")
        assert backend.usage["failures"] == before["failures"] + 1
    print(f"\ndetection: {seconds:.1f}s score={row['score']} predictions={predictions} reply={reply!r}")
