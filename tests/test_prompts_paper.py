"""The `paper` prompt set renders Gur-Arieh et al. 2025's prompts exactly (issue 14, part 2).

Expected strings are copied from the authors' code: https://github.com/yoavgur/Feature-Descriptions,
feature_descriptions_pipeline.ipynb, commit eb6ed5fceaa80c2985ceba3340a7e02f0942d4f3. The few-shot
numbers of FEW_SHOT_1 and FEW_SHOT_3 are their MaxAct examples `example1` and `example3`.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from saekit.interp.explain.evidence import TokenText
from saekit.interp.explain.run import ExplainConfig, gather_evidence, llm_results, prompt_messages
from saekit.interp.llm.backend import Backend, Completion, LLMConfig
from saekit.interp.prompts import load_template, paper
from saekit.interp.records.format import Example
from saekit.interp.score.examples import Item
from saekit.interp.score.model import run_input, run_output
from saekit.interp.score.run import ScoreConfig

MAXACT_FIRST_SENTENCE = ("We're studying neurons in a neural network. Each neuron looks for some particular thing "
                         "in a short document.")
MAXACT_SUFFIX = "\nExplanation of neuron 1 behavior: the main thing this neuron does is find"
# their example3, as build_sys_prompt() writes it into MAX_ACT_SYS_PROMPT
FEW_SHOT_3_TEXT = (
    "Neuron 3\n    Activations:\n<start>\nthe\t0\n sense\t0\n of\t0\n together\t5\nness\t10\n in\t0\n our\t1\n"
    " town\t2\n is\t0\n strong\t0\n .\t0\n<end>\n<start>\na\t0\n buoy\t0\nant\t0\n romantic\t0\n comedy\t0\n about\t0\n"
    " friendship\t0\n,\t0\n love\t0\n,\t0\n and\t0\n the\t0\n truth\t0\n that\t0\n we\t2\n're\t4\n all\t3\n in\t7\n"
    " this\t10\n together\t5\n .\t0\n<end>\n\nExplanation of neuron 3 behavior: the main thing this neuron does is "
    "find phrases related to community.\n")
FEW_SHOT_3 = [
    {"tokens": ["the", " sense", " of", " together", "ness", " in", " our", " town", " is", " strong", " ."],
     "acts": [0, 0, 0, 1, 2, 0, 0.23, 0.5, 0, 0, 0], "max_act": 2},
    {"tokens": ["a", " buoy", "ant", " romantic", " comedy", " about", " friendship", ",", " love", ",", " and", " the",
                " truth", " that", " we", "'re", " all", " in", " this", " together", " ."],
     "acts": [-0.15, -2.33, -1.4, -2.17, -2.53, -0.85, 0.23, -1.89, 0.09, -0.47, -0.5, -0.58, -0.87, 0.22, 0.58, 1.34,
              0.98, 2.21, 2.84, 1.7, -0.89], "max_act": 2.84}]
FEW_SHOT_1 = [
    {"tokens": ["t", "urt", "ur", "ro", " is", " fab", "ulously", " funny", " and", " over", " the", " top", " as",
                " a", " '", "very", " sneaky", "'", " but", "ler", " who", " excel", "s", " in", " the", " art", " of",
                " impossible", " disappearing", "/", "re", "app", "earing", " acts"],
     "acts": [-0.71, -1.85, -2.39, -2.58, -1.34, -1.92, -1.69, -0.84, -1.25, -1.75, -1.42, -1.47, -1.51, -0.8, -1.89,
              -1.56, -1.63, 0.44, -1.87, -2.55, -2.09, -1.76, -1.33, -0.88, -1.63, -2.39, -2.63, -0.99, 2.83, -1.11,
              -1.19, -1.33, 4.24, -1.51], "max_act": 4.24},
    {"tokens": ["esc", "aping", " the", " studio", " ,", " pic", "col", "i", " is", " warm", "ly", " affecting", " and",
                " so", " is", " this", " ad", "roit", "ly", " minimalist", " movie", " ."],
     "acts": [-0.69, 4.12, 1.83, -2.28, -0.28, -0.79, -2.2, -2.03, -1.77, -1.71, -2.44, 1.6, -1, -0.38, -1.93, -2.09,
              -1.63, -1.94, -1.82, -1.64, -1.32, -1.92], "max_act": 4.12}]
FEW_SHOT_1_ZERO_FREE = ("\nSame activations, but with all zeros filtered out:\n<start>\n'\t1\n disappearing\t6\n"
                        "earing\t10\n<end>\n<start>\naping\t10\n the\t4\n affecting\t3\n<end>\n")
VOCAB = {"top": ["could", " Could"], "bottom": ["xyz"]}
TOKENCHANGE = {"clamp": 10.0, "plus_top": ["up", "also"], "plus_bottom": ["down"], "minus_top": ["neg_up", "up"],
               "minus_bottom": ["neg_down"]}
TC_SET = "['up', 'also', 'down', 'neg_up', 'neg_down']"


def small_maxact():
    return {"examples": [{"text": "The <<cat>> sat", "activations": [[" cat", 10]]}],
            "records": [{"tokens": ["The", " cat", " sat"], "acts": [0.0, 2.0, 1.5], "max_act": 2.0}]}


SMALL_USER = "Neuron 1\n    Activations:\n<start>\nThe\t0\n cat\t10\n sat\t7\n<end>\n" + MAXACT_SUFFIX


class Scripted(Backend):
    """Replies from answer(messages); records every request."""

    def __init__(self, answer):
        super().__init__(LLMConfig(backend="openai", model="scripted", max_retries=0), "scripted")
        self.answer, self.requests = answer, []

    async def _complete(self, messages, sampling):
        self.requests.append(messages)
        return Completion(self.answer(messages))


# ---- MaxAct ----------------------------------------------------------------------------------------
def test_maxact_system_prompt_is_theirs_with_three_few_shot_examples():
    template = load_template("maxact", prompt_set="paper")
    assert template.id == "maxact/paper-1"
    assert template.system.startswith(MAXACT_FIRST_SENTENCE)
    assert "The activation format is token<tab>activation. Activation values range from 0 to 10." in template.system
    assert template.system.endswith(FEW_SHOT_3_TEXT)
    assert [template.system.count(f"Neuron {i}\n    Activations:") for i in (1, 2, 3)] == [1, 1, 1]
    assert "Explanation of neuron 1 behavior: the main thing this neuron does is find present tense verbs ending in " \
           "'ing'.\n" in template.system


def test_our_formatting_reproduces_their_few_shot_examples():
    system = load_template("maxact", prompt_set="paper").system
    third = paper.maxact_user_prompt({"records": FEW_SHOT_3})
    third = third.replace("Neuron 1", "Neuron 3").replace("neuron 1", "neuron 3")
    assert third + " phrases related to community.\n" == FEW_SHOT_3_TEXT
    first = paper.maxact_user_prompt({"records": FEW_SHOT_1})
    assert first + " present tense verbs ending in 'ing'.\n" in system
    assert FEW_SHOT_1_ZERO_FREE in first  # 6 of 56 values non-zero: the zero-free block follows


def test_maxact_user_prompt_is_a_tab_separated_block_per_example():
    messages, version = prompt_messages("maxact", small_maxact(), "", "paper")
    assert version == "maxact/paper-1" and [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["content"] == SMALL_USER


def test_activations_are_scaled_per_example_to_integers_0_to_10():
    assert paper.normalize_activations([-1.0, 0.5, 1.5, 4.0], 4.0) == [0, 1, 3, 10]
    assert paper.normalize_activations([0.0, 0.0], 0.0) == [0, 0] and paper.normalize_activations([9.0], 3.0) == [10]
    records = [{"tokens": ["a", "b"], "acts": [1.0, 2.0], "max_act": 2.0},
               {"tokens": ["c", "d"], "acts": [10.0, 5.0], "max_act": 10.0}]  # each example by its own max
    assert paper.format_records(records, omit_zeros=False) == \
        "\n<start>\na\t5\nb\t10\n<end>\n<start>\nc\t10\nd\t5\n<end>\n"


def test_the_zero_free_block_appears_only_under_20_percent_non_zero():
    one_in_ten = [{"tokens": [f"t{i}" for i in range(10)], "acts": [0.0] * 9 + [3.0], "max_act": 3.0}]
    assert paper.non_zero_proportion(one_in_ten) == pytest.approx(0.1)
    assert paper.maxact_user_prompt({"records": one_in_ten}).endswith(
        "t9\t10\n<end>\n\nSame activations, but with all zeros filtered out:\n<start>\nt9\t10\n<end>\n" + MAXACT_SUFFIX)
    one_in_five = [{"tokens": [f"t{i}" for i in range(5)], "acts": [0.0] * 4 + [3.0], "max_act": 3.0}]
    assert paper.non_zero_proportion(one_in_five) == pytest.approx(0.2)  # not under 20%: no second block
    assert "Same activations" not in paper.maxact_user_prompt({"records": one_in_five})
    assert "Same activations" not in paper.maxact_user_prompt({"records": FEW_SHOT_3})  # 10 of 32


def test_explain_gathers_every_token_of_each_window_for_the_paper_set():
    window = Example("top", np.array([5, 6, 7]), np.array([0.0, 2.0, 1.5], dtype=np.float32), 0, 0, 1, 2.0)
    records = SimpleNamespace(examples=lambda f, kind: [window], stats=lambda f: {"max_activation": 4.0})
    evidence = gather_evidence(records, [3], {"maxact"}, ExplainConfig(records="x", prompt_set="paper"), None, None,
                               TokenText(None))
    assert evidence["maxact"][3]["records"] == [{"tokens": ["#5", "#6", "#7"], "acts": [0.0, 2.0, 1.5], "max_act": 2.0}]
    plain = gather_evidence(records, [3], {"maxact"}, ExplainConfig(records="x"), None, None, TokenText(None))
    assert "records" not in plain["maxact"][3]  # saekit's prompts: evidence unchanged


# ---- VocabProj, TokenChange, ensembles -------------------------------------------------------------
def test_vocabproj_is_one_unlabelled_list_of_top_and_bottom_tokens():
    messages, version = prompt_messages("vocabproj", VOCAB, "", "paper")
    assert version == "vocabproj/paper-1"
    system = messages[0]["content"]
    assert system.startswith("You will be given a list of tokens related to a specific vector. "
                             "These tokens represent a combination of embeddings that reconstruct the vector.")
    assert "\nExplanation of vector 1 behavior: this vector is related to the word could.\nVector 2\n" in system
    assert system.endswith("like tomorrow, tonight and yesterday.\n\n")
    assert messages[1]["content"] == ("Vector 4\n    Tokens: ['could', ' Could', 'xyz']\n"
                                      "Explanation of vector 4 behavior: this vector is related to")


def test_tokenchange_is_the_token_set_of_both_clamp_directions():
    messages, version = prompt_messages("tokenchange", TOKENCHANGE, "", "paper")
    assert version == "tokenchange/paper-1" and messages[1]["content"] == TC_SET
    assert messages[0]["content"].startswith(
        "You will be given a list of tokens related to a feature in an LLM. These tokens are the ones whose "
        "probabilities changed most when amplifying the feature.")


def test_ensembles_show_the_maxact_prompt_and_both_clamp_directions():
    evidence = {"maxact": small_maxact(), "vocabproj": VOCAB, "tokenchange": TOKENCHANGE}
    messages, version = prompt_messages("maxact+tokenchange", evidence, "", "paper")
    assert version == "ensemble_tm/paper-1"
    assert messages[0]["content"].startswith("We're studying neurons in a neural network. Each neuron has certain "
                                             "inputs that activate it and outputs that it leads to.")
    assert messages[1]["content"] == \
        f"Neuron 4\n[INPUT]\n{SMALL_USER}\n\n[OUTPUT]\n{TC_SET}\n\nExplanation of neuron 4 behavior:"
    assert "neg_up" in messages[1]["content"] and "neg_down" in messages[1]["content"]
    messages, version = prompt_messages("maxact+vocabproj", evidence, "", "paper")
    assert version == "ensemble_vm/paper-1"
    assert "[OUTPUT]\n['could', ' Could', 'xyz']\n\nExplanation" in messages[1]["content"]
    messages, version = prompt_messages("maxact+vocabproj+tokenchange", evidence, "", "paper")
    assert version == "ensemble_all/paper-1"
    assert messages[1]["content"] == (f"Neuron 4\n\n[INPUT]\n{SMALL_USER}\n\n[OUTPUT]\n['could', ' Could', 'xyz']\n"
                                      f"{TC_SET}\n\nExplanation of neuron 4 behavior:")
    messages, version = prompt_messages("vocabproj+tokenchange", evidence, "", "paper")
    assert version == "vocabproj/paper-1"
    assert "Tokens: ['could', ' Could', 'xyz', 'up', 'also', 'down', 'neg_up', 'neg_down']\n" in messages[1]["content"]
    silent = {**evidence, "maxact": {"examples": [], "records": []}}
    user = prompt_messages("maxact+vocabproj", silent, "", "paper")[0][1]["content"]
    assert "[INPUT]\nNo activations found for feature.\n" in user


def test_the_paper_explainer_keeps_the_whole_reply_as_the_description():
    backend = Scripted(lambda m: " words related to cats." if "Neuron 1" in m[-1]["content"]
                       else '{"Explanation": "cats"}')
    evidence = {"maxact": {0: small_maxact()}, "vocabproj": {0: VOCAB}}
    results = llm_results(["maxact", "vocabproj"], [0], evidence, ExplainConfig(records="x", prompt_set="paper"),
                          backend, progress=False)
    assert results[("maxact", 0)] == ("words related to cats.", True, None, "maxact/paper-1")
    assert results[("vocabproj", 0)][:2] == ("cats", True)
    assert backend.requests[0][1]["content"] == SMALL_USER


# ---- judges ----------------------------------------------------------------------------------------
def test_output_judge_is_one_user_message_with_their_set_format():
    generation = {"targets": [0.25, -0.5], "completions": [["a\nb", "c"], ["d", "e"]]}
    assert paper.set_text(generation, ["I think", "We"]) == \
        "\n<+0.25>'I think': 'a\\nb'\n<+0.25>'We': 'c'\n<-0.5>'I think': 'd'\n<-0.5>'We': 'e'"
    generations = {f: {"targets": [0.25], "completions": [[f"text of {f}"]], "values": [1.0], "kl": [0.3],
                       "hit": [True]} for f in (0, 1, 2)}
    backend = Scripted(lambda m: "Set 2 mentions it.\n2")
    config = SimpleNamespace(prompt_dir="", prompt_set="paper", output_prompts=["We"], output_trials=1, seed=0)
    rows = run_output([Item(0, "m", "dates")], generations, config, backend, progress=False)
    (message,) = backend.requests[0]
    assert message["role"] == "user" and rows[0]["prompt_version"] == "output_judge/paper-1"
    assert message["content"].startswith("You are analyzing the behavior of a specific neuron in a language model. "
                                         "You will receive:\n\n1. A hypothesized explanation")
    assert "You must pick one of the three sets.\n\n\nExplanation: dates\n\n# Set 1\n\n<+0.25>'We': 'text of " \
        in message["content"]
    assert message["content"].endswith("'\n")
    assert rows[0]["details"]["trials"][0]["chosen_set"] == 2


def test_input_judge_is_their_gen_lists_prompt():
    backend = Scripted(lambda m: '{"positive": ["a"], "negative": ["b"]}')
    config = SimpleNamespace(prompt_dir="", prompt_set="paper", input_sentences=5)
    template = load_template("input_sentences", prompt_set="paper")
    (message,) = template.messages(explanation="dates", n=5)
    assert message["role"] == "user" and message["content"].startswith(
        "I'm going to give you explanations and interpretations of features from LLMs. You must take in each "
        "expalantion, and generate 5 sentences for which you think the feature will have a high activation")
    assert message["content"].endswith("The explanations should be five and five overall, not per line.\n\ndates\n")
    model = SimpleNamespace(W_U=np.zeros(1))  # no sentence parses, so the model never runs
    backend = Scripted(lambda m: "no json")
    rows = run_input([Item(0, "m", "dates")], model, None, "h", config, backend, prepend_bos=True, progress=False)
    assert rows[0]["prompt_version"] == "input_sentences/paper-1" and backend.requests[0] == [message]


# ---- the prompt_set setting ------------------------------------------------------------------------
def test_prompt_set_is_validated_and_prompt_dir_wins(tmp_path):
    with pytest.raises(ValueError, match="ExplainConfig.prompt_set"):
        ExplainConfig(records="x", prompt_set="bogus")
    with pytest.raises(ValueError, match="ScoreConfig.prompt_set"):
        ScoreConfig(records="x", prompt_set="Paper")
    assert ExplainConfig(records="x").prompt_set == "saekit" and ScoreConfig(records="x").prompt_set == "saekit"
    assert load_template("detection", prompt_set="paper").id == "detection/1"  # the paper has none: saekit's
    assert load_template("maxact").id == "maxact/1"  # saekit's default is unchanged
    (tmp_path / "maxact.txt").write_text("version: mine\n### system\nS\n### user\nU $activations\n")
    assert load_template("maxact", tmp_path, prompt_set="paper").id == "maxact/mine"
