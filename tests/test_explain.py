"""saekit explain: VocabProj equals a direct matrix product, TokenChange's steering equals a direct
hooked forward pass, raw descriptions for every method, and the LLM path through a fake backend."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_local_model_dir
from saekit.data import CacheConfig, cache_activations
from saekit.interp.explain import evidence as ev
from saekit.interp.records.collect import CollectConfig, collect_records
from saekit.interp.explain.run import ExplainConfig, canonical_method, explain_latents, read_explanations
from saekit.interp.prompts import description_validator, load_template, parse_description
from saekit.interp.records.format import load_records
from saekit.models import load_model
from saekit.sae import SAEConfig, build_sae, save_sae

HOOK = "blocks.0.hook_resid_post"
N_CONTEXTS, CTX, D_SAE = 40, 32, 64


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = make_local_model_dir(tmp_path_factory.mktemp("explain"))
    cache = root / "cache"
    cache_activations(CacheConfig(out=str(cache), model=str(root / "model"), dataset=str(root / "data.jsonl"),
                                  hooks=[HOOK], n_tokens=N_CONTEXTS * CTX, ctx_len=CTX, shard_tokens=CTX * 16,
                                  device="cpu"), progress=False)
    sae = build_sae(SAEConfig(architecture="topk", d_in=64, d_sae=D_SAE, k=8, hook_name=HOOK, seed=1,
                              normalize_activations="none"))
    folder = save_sae(sae, root / "sae")
    records = collect_records(CollectConfig(sae=str(folder), cache=str(cache), n_tokens=0, n_top=6, n_explain=8,
                                            n_test=8, n_quantiles=4, n_random_negatives=4, n_hard_negatives=2,
                                            window=16, device="cpu"), progress=False)
    return root, folder, sae, records, load_model(root / "model")


def small_config(records, **changes):
    values = dict(records=str(records), n_latents=6, tc_sequences=8, tc_seq_len=16, vocab_tokens=20,
                  maxact_examples=4, device="cpu")
    return ExplainConfig(**{**values, **changes})


def test_vocabproj_equals_a_direct_matrix_product(setup):
    root, folder, sae, records, model = setup
    dirs = sae.W_dec[:5].detach()
    centred = dirs - dirs.mean(-1, keepdim=True)
    normed = centred / (centred.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
    with_bias = (normed * model.ln_final.w + model.ln_final.b) @ model.W_U + model.b_U
    torch.testing.assert_close(ev.vocab_projection(model, dirs), with_bias, rtol=1e-4, atol=1e-4)
    without_bias = (normed * model.ln_final.w) @ model.W_U
    torch.testing.assert_close(ev.vocab_projection(model, dirs, include_bias=False), without_bias, rtol=1e-4, atol=1e-4)
    rows = explain_latents(small_config(records, methods=["vocabproj"], latents=[3]), progress=False)
    text = ev.TokenText(model.tokenizer)
    top = torch.topk(with_bias[3], 20).indices.tolist()
    bottom = torch.topk(-with_bias[3], 20).indices.tolist()
    evidence = rows[0]["evidence"]
    assert (evidence["top"], evidence["bottom"]) == (text.many(top), text.many(bottom))
    np.testing.assert_allclose(evidence["top_logits"], with_bias[3, top].tolist(), atol=1e-3)
    np.testing.assert_allclose(evidence["bottom_logits"], with_bias[3, bottom].tolist(), atol=1e-3)
    assert evidence["top_logits"] == sorted(evidence["top_logits"], reverse=True)


def direct_steered_change(model, sae, tokens, latent, value, hook_name=HOOK):
    """Mean (steered - clean) logits over sequences and positions 1.. with latent clamped, error kept."""
    def hook(act, hook):
        act = act.clone()
        flat = act[:, 1:].reshape(-1, act.shape[-1])
        latents = sae.encode(flat)
        clamped = latents.clone()
        clamped[:, latent] = value
        error = flat - sae.decode(latents)
        act[:, 1:] = (sae.decode(clamped) + error).reshape(act[:, 1:].shape)
        return act

    with torch.no_grad():
        clean = model(tokens)
        steered = model.run_with_hooks(tokens, fwd_hooks=[(hook_name, hook)])
    return (steered - clean)[:, 1:].mean(dim=(0, 1))


def test_tokenchange_equals_a_direct_hooked_forward_pass(setup):
    root, folder, sae, records, model = setup
    meta = load_records(records).meta
    from saekit.interp.records.collect import ContextReader
    from saekit.data import read_manifest

    reader = ContextReader(meta["cache"], read_manifest(meta["cache"]), HOOK)
    tokens = torch.from_numpy(reader.tokens(ev.sample_contexts((0, N_CONTEXTS), 8, 0))[:, :16])
    assert (tokens[:, 0] == model.tokenizer.bos_token_id).all()
    changes = ev.logit_changes(model, sae, HOOK, tokens, [5, 7, 5], [10.0, 10.0, -10.0], start=1)
    for row, (latent, value) in enumerate([(5, 10.0), (7, 10.0), (5, -10.0)]):
        torch.testing.assert_close(changes[row], direct_steered_change(model, sae, tokens, latent, value),
                                   rtol=1e-3, atol=1e-4)
    rows = explain_latents(small_config(records, methods=["tokenchange"], latents=[5]), progress=False)
    text = ev.TokenText(model.tokenizer)
    evidence = rows[0]["evidence"]
    assert evidence["clamp"] == 10.0
    assert evidence["plus_top"] == text.many(torch.topk(changes[0], 10).indices.tolist())
    assert evidence["minus_bottom"] == text.many(torch.topk(-changes[2], 10).indices.tolist())
    lists = [evidence[k] for k in ("plus_top", "plus_bottom", "minus_top", "minus_bottom")]
    assert len(evidence["tokens"]) <= 40 and set(evidence["tokens"]) == set(sum(lists, []))  # ids deduplicated


def test_tokenchange_at_other_hook_points_equals_a_direct_hooked_forward_pass(setup):
    root, folder, sae, records, model = setup
    hook = "blocks.0.hook_mlp_out"
    mlp_sae = build_sae(SAEConfig(architecture="relu", d_in=64, d_sae=32, hook_name=hook, seed=2,
                                  normalize_activations="none"))
    tokens = torch.randint(1, model.cfg.d_vocab, (4, 12))
    tokens[:, 0] = model.tokenizer.bos_token_id
    assert ev.resume_layer(model, hook) is None and ev.resume_layer(model, HOOK) == 1
    changes = ev.logit_changes(model, mlp_sae, hook, tokens, [3, 9], [5.0, -5.0], start=1)
    for row, (latent, value) in enumerate([(3, 5.0), (9, -5.0)]):
        torch.testing.assert_close(changes[row], direct_steered_change(model, mlp_sae, tokens, latent, value, hook),
                                   rtol=1e-3, atol=1e-4)
    last = "blocks.1.hook_resid_post"  # the last block's output: steering resumes at ln_final
    assert ev.resume_layer(model, last) == model.cfg.n_layers
    changes = ev.logit_changes(model, sae, last, tokens, [4], [8.0], start=1)
    torch.testing.assert_close(changes[0], direct_steered_change(model, sae, tokens, 4, 8.0, last), rtol=1e-3, atol=1e-4)


def test_clamp_can_be_relative_to_the_latents_max(setup):
    root, folder, sae, records, model = setup
    latent = int(load_records(records).table["max_activation"].idxmax())
    rows = explain_latents(small_config(records, methods=["tc"], latents=[latent], tc_clamp="2x"), progress=False)
    assert rows[0]["evidence"]["clamp"] == pytest.approx(2 * load_records(records).stats(latent)["max_activation"],
                                                         rel=1e-3)
    assert ev.parse_clamp("10", 3.0) == 10.0 and ev.parse_clamp("0.5x", 3.0) == 1.5
    with pytest.raises(ValueError, match="tc_clamp|clamp"):
        ExplainConfig(records="x", tc_clamp="big")


def test_raw_descriptions_for_every_method_and_ensembles(setup):
    root, folder, sae, records, model = setup
    methods = ["maxact", "vocabproj", "tokenchange", "vp+ma", "all", "concat"]
    rows = explain_latents(small_config(records, methods=methods), progress=False)
    assert len(rows) == 6 * 6
    on_disk = read_explanations(Path(records) / "explanations.jsonl")
    assert on_disk == json.loads(json.dumps(rows))
    by = {(r["latent"], r["method"]): r for r in rows}
    latent = next(f for f in range(6) if load_records(records).stats(f)["n_active_tokens"] > 0)
    assert by[(latent, "maxact")]["description"].startswith("activates on: ")
    assert by[(latent, "vocabproj")]["description"].startswith("promotes: ")
    assert "steered to 10.0 promotes" in by[(latent, "tokenchange")]["description"]
    ensemble = by[(latent, "maxact+vocabproj")]
    assert set(ensemble["evidence"]) == {"maxact", "vocabproj"} and " || vocabproj: promotes" in ensemble["description"]
    assert set(by[(latent, "maxact+vocabproj+tokenchange")]["evidence"]) == {"maxact", "vocabproj", "tokenchange"}
    assert by[(latent, "concat")]["description"].count(" | ") >= 2
    for row in rows:
        assert row["backend"] == "none" and row["prompt_version"] in ("raw", "concat:raw,raw,raw") and row["ok"]
        assert row["hook_name"] == HOOK and row["sae"] == str(folder)
    shown = by[(latent, "maxact")]["evidence"]["examples"]
    assert shown and all("<<" in e["text"] and ">>" in e["text"] for e in shown)


class FakeBackend:
    """The Backend interface of saekit.interp.llm.backend with canned replies; records what it was asked."""

    name = "fake"

    def __init__(self, reply="Thinking it over.\nExplanation: **words about caches**"):
        self.reply, self.requests, self.usage = reply, [], {"calls": 0}

    def chat_many(self, requests, validate=None, progress=True, **sampling):
        from saekit.interp.llm.backend import ChatResult

        self.requests += requests
        self.usage["calls"] += len(requests)
        error = validate(self.reply) if validate else None
        return [ChatResult(self.reply if error is None else "", error is None, error, 1, False, 10, 5, "fake-model")
                for _ in requests]


def test_llm_path_shows_marked_tokens_and_parses_the_reply(setup, tmp_path):
    root, folder, sae, records, model = setup
    backend = FakeBackend()
    out = tmp_path / "explanations.jsonl"
    rows = explain_latents(small_config(records, methods=["maxact", "vocabproj", "all"], out=str(out),
                                        llm_model="fake-model"), backend=backend, progress=False)
    assert len(backend.requests) == 3 * 6
    assert all(m[0]["role"] == "system" and m[1]["role"] == "user" for m in backend.requests)
    maxact_prompts = [m[1]["content"] for m in backend.requests if "Excerpts where the feature" in m[1]["content"]]
    assert maxact_prompts and any("<<" in p and ">>" in p and "activating tokens:" in p for p in maxact_prompts)
    assert any("[INPUT]" in m[1]["content"] and "[OUTPUT]" in m[1]["content"] for m in backend.requests)
    rows = read_explanations(out)
    assert {r["description"] for r in rows} == {"words about caches"}
    for row in rows:
        assert set(row) >= {"latent", "method", "description", "evidence", "backend", "model", "prompt_version"}
        assert row["backend"] == "fake" and row["model"] == "fake-model"
    assert {r["prompt_version"] for r in rows} == {"maxact/1", "vocabproj/1", "ensemble/1"}


def test_a_rejected_reply_is_recorded_not_raised(setup, tmp_path):
    root, folder, sae, records, model = setup
    rows = explain_latents(small_config(records, methods=["vocabproj"], n_latents=2, out=str(tmp_path / "e.jsonl"),
                                        max_description_chars=5), backend=FakeBackend(), progress=False)
    assert all(not r["ok"] and r["description"] == "" and "longer than 5" in r["error"] for r in rows)


def test_reply_parsing_and_validation():
    assert parse_description("Explanation: the word 'the'") == "the word 'the'"
    assert parse_description("Some thoughts.\n\nEXPLANATION:\n  \"Python keywords\"\nmore") == "Python keywords"
    assert parse_description("- **dates and times**") == "dates and times"
    validate = description_validator(20)
    assert validate("Explanation: short") is None
    assert validate("Explanation:   ") is not None and validate("Explanation: " + "x" * 30) is not None


def test_templates_are_versioned_and_fill_every_placeholder():
    for name in ("maxact", "vocabproj", "tokenchange", "ensemble"):
        template = load_template(name)
        assert template.version == "1" and template.id == f"{name}/1" and "Explanation:" in template.system
    with pytest.raises(KeyError, match="examples"):
        load_template("maxact").messages()


def test_method_names_and_aliases():
    assert canonical_method("vp+ma") == "maxact+vocabproj"
    assert canonical_method("all") == "maxact+vocabproj+tokenchange"
    assert canonical_method("TC") == "tokenchange" and canonical_method("concat") == "concat"
    with pytest.raises(ValueError, match="methods: unknown method 'maxactt'"):
        ExplainConfig(records="x", methods=["maxactt"])


def test_marking_and_scaling_follow_the_paper():
    from saekit.interp.records.format import Example

    example = Example("top", np.array([1, 2, 3, 4]), np.array([0.0, 0.5, 1.0, 0.04], dtype=np.float32), 0, 1, 3, 1.0)
    text = ev.TokenText(None)
    marked, activations = ev.mark_example(example, text, max_activation=1.0)
    assert marked == "#1<<#2#3>>#4" and activations == [("#2", 5), ("#3", 10)]
    np.testing.assert_array_equal(ev.scaled_activations(np.array([-1.0, 0.19, 2.0]), 2.0), [0, 0, 10])


def test_the_cli_collects_and_explains(setup, tmp_path):
    root, folder, sae, records, model = setup
    from saekit.cli import main

    out = tmp_path / "records"
    assert main(["collect", str(folder), "--cache", str(root / "cache"), "--out", str(out), "--n-latents", "4",
                 "--n-hard-negatives", "0", "--device", "cpu"]) == 0
    assert main(["explain", str(out), "--methods", "maxact", "vocabproj", "--tc-sequences", "4",
                 "--device", "cpu"]) == 0
    rows = read_explanations(out / "explanations.jsonl")
    assert len(rows) == 8 and {r["method"] for r in rows} == {"maxact", "vocabproj"}


RECIPE_DIR = Path(__file__).parent.parent / "autointerp"
RECIPE_CONFIGS = sorted((RECIPE_DIR / "configs").glob("explain_*.toml"))


def recipe_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("autointerp_explain", RECIPE_DIR / "explain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", RECIPE_CONFIGS, ids=lambda p: p.name)
def test_recipe_configs_parse(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # as after `make demo`: runs/ exists, the configs' SAE folders need not
    (tmp_path / "runs").mkdir()
    recipe = recipe_module()
    collect, explain, reuse = recipe.configs(recipe.parse_args([str(path.resolve())]))
    assert collect.sae and explain.methods and reuse
    if not collect.out and collect.sae.startswith("runs/"):  # a local SAE: records go in its folder
        assert Path(explain.records) == Path(collect.sae) / "records"
    assert explain.records.endswith("records")


def test_the_recipe_collects_and_describes(setup, tmp_path, capsys):
    root, folder, sae, records, model = setup
    recipe = recipe_module()
    assert recipe.main([str(RECIPE_DIR / "configs" / "explain_tiny.toml"), "--sae", str(folder), "--cache",
                        str(root / "cache"), "--records", str(tmp_path / "rec"), "--n-latents", "3",
                        "--methods", "maxact", "vp+tc"]) == 0
    rows = read_explanations(tmp_path / "rec" / "explanations.jsonl")
    assert len(rows) == 6 and {r["method"] for r in rows} == {"maxact", "vocabproj+tokenchange"}
    assert "[autointerp] maxact:" in capsys.readouterr().out


def test_a_latent_without_activating_examples_gets_no_maxact_request():
    from saekit.interp.explain.run import llm_results

    example = {"text": "a <<b>>", "activations": [["b", 10]]}
    evidence = {"maxact": {0: {"examples": [], "top_tokens": [], "max_activation": 0.0},
                           1: {"examples": [example], "top_tokens": [["b", 1]], "max_activation": 2.0}}}
    backend = FakeBackend()
    results = llm_results(["maxact"], [0, 1], evidence, ExplainConfig(records="x"), backend, progress=False)
    assert len(backend.requests) == 1 and "a <<b>>" in backend.requests[0][1]["content"]
    assert results[("maxact", 0)][:3] == ("", False, "no activating examples")
    assert results[("maxact", 1)][:2] == ("words about caches", True)
