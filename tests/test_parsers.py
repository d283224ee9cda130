"""Judges' replies are read robustly (issue 14, part 1): each bug's reply text, verbatim, and the
refusal check that keeps hedged answers but still catches genuine refusals."""

import asyncio

import pytest

from saekit.interp.llm.backend import REFUSAL_MAX_CHARS, Backend, Completion, LLMConfig, check_reply, is_refusal
from saekit.interp.prompts import description_validator
from saekit.interp.score import examples as se
from saekit.interp.score import model as sm

REFUSAL = "I'm sorry, I cannot help with that."
HEDGED = "I can't be certain, but set 2 ..."


# ---- parse_activations -----------------------------------------------------------------------------
def test_activations_keep_the_first_line_of_an_index_and_skip_trailing_prose():
    assert se.parse_activations("1\t0\n2\t10\n3\t0\n3 tokens, 1 active", 3) == [0, 10, 0]


def test_activations_a_repeated_index_keeps_its_first_value():
    assert se.parse_activations("1\t0\n2\t10\n2\t3\n3\t5", 3) == [0, 10, 5]


def test_activations_a_plain_list_of_n_numbers():
    assert se.parse_activations("0 10 0", 3) == [0, 10, 0]
    assert se.parse_activations("0, 10, 0", 3) == [0, 10, 0]
    assert se.parse_activations("[0 10 0]", 3) == [0, 10, 0]
    assert se.parse_activations("Answer: 0, 4, 12", 3) == [0, 4, 10]  # clipped to 10
    assert se.parse_activations("0 10", 3) is None  # too few


def test_activations_the_documented_line_formats_still_parse():
    assert se.parse_activations("1\tthe\t0\n2\t cat\t7\n3\t12", 3) == [0, 7, 10]
    assert se.parse_activations("Answer:\n1\t2019\t3\n2 | x | 0.5\n", 2) == [3, 0.5]
    assert se.parse_activations("1\t0\n3\t4", 3) is None  # token 2 missing
    assert se.parse_activations("Here: [0, 5, 10]", 3) == [0, 5, 10]


# ---- parse_choice ----------------------------------------------------------------------------------
def test_choice_comes_from_the_first_answer_line():
    assert sm.parse_choice("2\nSet 1 has ... set 2 has more.") == 2


def test_choice_reason_line_then_number_line():
    assert sm.parse_choice("Set 2 repeats the dates.\n3") == 3
    assert sm.parse_choice("The completions mention dates.\n\n**Set 1**") == 1
    assert sm.parse_choice("Answer: 3\nbecause set 1 and set 2 are unrelated") == 3


def test_choice_from_a_stated_or_single_mentioned_set_else_none():
    assert sm.parse_choice("I pick set 2.") == 2
    assert sm.parse_choice("Set #1 mentions dates, so it is the first one") == 1
    assert sm.parse_choice("Set 1 has dates, set 2 has more dates") is None  # two sets, no answer
    assert sm.parse_choice("none of them") is None


# ---- refusals --------------------------------------------------------------------------------------
def test_a_hedged_answer_is_not_a_refusal():
    assert check_reply(HEDGED, 2000, sm.choice_validator()) is None
    assert sm.parse_choice(HEDGED) == 2


def test_a_hedged_list_of_labels_is_not_a_refusal():
    assert check_reply("I can't be sure, but: [1, 0, 1, 1, 0]", 2000, se.labels_validator(5)) is None


def test_genuine_refusals_are_still_refusals_for_every_kind_of_caller():
    for validate in (None, sm.choice_validator(), se.labels_validator(5), se.activations_validator(3),
                     sm.sentences_validator(), description_validator(300)):
        assert check_reply(REFUSAL, 2000, validate) == "refusal"
    assert check_reply("As an AI language model, I cannot judge this.", 2000, description_validator(300)) == "refusal"


def test_a_long_reply_without_an_answer_gets_the_validators_label_not_refusal():
    long = "I cannot say which set it is, " + "since all three look alike and unrelated to it, " * 5
    assert len(long) >= REFUSAL_MAX_CHARS
    assert check_reply(long, 2000, sm.choice_validator()).startswith("wrong_format")
    assert not is_refusal(long) and is_refusal(REFUSAL) and not is_refusal(REFUSAL, answered=True)


class Scripted(Backend):
    def __init__(self, replies):
        super().__init__(LLMConfig(backend="openai", model="scripted", max_retries=1, backoff_base_s=0.0), "s")
        self.replies = list(replies)

    async def _complete(self, messages, sampling):
        return Completion(self.replies.pop(0))


def test_the_request_loop_keeps_a_hedged_judgment_and_retries_a_refusal():
    hedged = asyncio.run(Scripted([HEDGED]).chat([{"role": "user", "content": "p"}], validate=sm.choice_validator()))
    assert (hedged.ok, hedged.attempts, hedged.text) == (True, 1, HEDGED)
    refused = asyncio.run(Scripted([REFUSAL, REFUSAL]).chat([{"role": "user", "content": "p"}],
                                                            validate=sm.choice_validator()))
    assert (refused.ok, refused.error, refused.attempts) == (False, "refusal", 2)


# ---- parse_labels ----------------------------------------------------------------------------------
@pytest.mark.parametrize("reply", ["1 0 1 1 0", "1,0,1,1,0", "[1 0 1 1 0]", "Answer: 1, 0, 1, 1, 0"])
def test_labels_space_and_comma_separated(reply):
    assert se.parse_labels(reply, 5) == [1, 0, 1, 1, 0]


def test_labels_the_bracketed_comma_list_still_parses():
    assert se.parse_labels("[1, 0, 1, 1, 0]", 5) == [1, 0, 1, 1, 0]


def test_labels_of_the_wrong_count_or_kind_are_rejected():
    assert se.parse_labels("1 0 1 1", 5) is None and se.parse_labels("1 0 2 1 0", 5) is None
    assert se.parse_labels("no", 1) is None  # yes/no words only inside a bracketed list
    assert se.parse_labels("Excerpt 3 is the odd one: 1 0 1", 5) is None
    assert se.parse_labels("[True, false, '1']", 3) == [1, 0, 1]
