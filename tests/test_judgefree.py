"""The judge-free scorers on planted latents: the right description must beat wrong ones offline.

Input side: an SAE on the token embedding whose latents fire exactly on one word each. Output side:
an SAE on the last residual stream whose decoder rows point along one word's unembedding each, so
steering a latent raises that word. Each latent has its right description, the next latent's
(shuffled) and one naming nothing in the vocabulary.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import make_local_model_dir
from saekit.data import CacheConfig, cache_activations
from saekit.interp.records.collect import CollectConfig, collect_records
from saekit.interp.score.judgefree import description_terms
from saekit.interp.score.run import ScoreConfig, score_latents
from saekit.models import load_model
from saekit.sae import SAEConfig, build_sae, save_sae

WORDS = (" reads", " autoencoder", " residual", " to")  # single tokens of the test BPE
EMBED, LAST = "hook_embed", "blocks.1.hook_resid_post"
CTX = 32


def write_explanations(records, ids_of):
    with (records / "explanations.jsonl").open("w") as f:
        for f_, word in enumerate(WORDS):
            other = WORDS[(f_ + 1) % len(WORDS)]
            for method, text in (("right", f"the word '{word.strip()}'"), ("shuffled", f"the word '{other.strip()}'"),
                                 ("nothing", "dates and times in a calendar")):
                f.write(json.dumps({"latent": f_, "method": method, "description": text, "ok": True}) + "\n")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = make_local_model_dir(tmp_path_factory.mktemp("judgefree"))
    cache = root / "cache"
    cache_activations(CacheConfig(out=str(cache), model=str(root / "model"), dataset=str(root / "data.jsonl"),
                                  hooks=[EMBED, LAST], n_tokens=96 * CTX, ctx_len=CTX, shard_tokens=CTX * 32,
                                  device="cpu"), progress=False)
    model = load_model(root / "model")
    ids = [model.tokenizer.encode(w, add_special_tokens=False) for w in WORDS]
    assert all(len(i) == 1 for i in ids), ids
    ids = [i[0] for i in ids]
    n = len(WORDS)
    # input side: latent f fires (0.1) exactly on the token WORDS[f]
    embed_sae = build_sae(SAEConfig(architecture="relu", d_in=64, d_sae=n, hook_name=EMBED, seed=1,
                                    normalize_activations="none"))
    with torch.no_grad():
        for f, token in enumerate(ids):
            e = model.W_E[token]
            embed_sae.W_enc[:, f] = e / e.pow(2).sum()
            embed_sae.b_enc[f] = -0.9
            embed_sae.W_dec[f] = e / e.norm()
    # output side: latent f's decoder row raises WORDS[f]'s logit; its encoder is random (fires sometimes)
    out_sae = build_sae(SAEConfig(architecture="relu", d_in=64, d_sae=n, hook_name=LAST, seed=2,
                                  normalize_activations="none"))
    with torch.no_grad():
        for f, token in enumerate(ids):
            direction = model.W_U[:, token] - model.W_U.mean(1)
            out_sae.W_dec[f] = direction / direction.norm()
    folders = {}
    for name, sae in (("input", embed_sae), ("output", out_sae)):
        folder = save_sae(sae, root / f"sae-{name}")
        records = collect_records(CollectConfig(sae=str(folder), cache=str(cache), n_tokens=0, n_top=4, n_explain=4,
                                                n_test=20, n_quantiles=2, n_random_negatives=20, n_hard_negatives=0,
                                                window=8, tokens_after=2, device="cpu"), progress=False)
        write_explanations(records, ids)
        folders[name] = records
    return SimpleNamespace(root=root, records=folders, ids=ids)


def scores(rows):
    return {(r["latent"], r["method"]): r for r in rows}


def test_description_terms_read_quotes_then_words_and_skip_what_is_suppressed():
    assert description_terms("activates on: ' bytes' (5), \"'s\" (2)") == ["bytes", "'s"]
    assert description_terms("promotes: 'left', ' side' | suppresses: 'right'") == ["left", "side"]
    assert description_terms("steered to 10 promotes: 'a' | suppresses: 'b'") == ["a"]
    assert description_terms("Dates and times in a calendar") == ["dates", "times", "calendar"]


def test_judgefree_input_ranks_the_right_description_first(planted, tmp_path):
    rows = score_latents(ScoreConfig(records=str(planted.records["input"]), scorers=["judgefree-input"],
                                     n_activating=20, n_negatives=20, min_activating=5, out=str(tmp_path / "s.jsonl"),
                                     device="cpu", n_boot=100), progress=False)
    got = scores(rows)
    for f in range(len(WORDS)):
        right, shuffled, nothing = (got[(f, m)] for m in ("right", "shuffled", "nothing"))
        assert right["error"] is None and right["n"] >= 10
        assert right["score"] == pytest.approx(1.0)  # every held-out activating window holds the word, no silent one
        assert shuffled["score"] < right["score"] - 0.2
        assert nothing["score"] == pytest.approx(0.5)  # names nothing found anywhere: chance exactly
    summary = json.loads((tmp_path / "s_summary.json").read_text())["summary"]["judgefree-input"]
    assert summary["right"]["ci_low"] > 0.5 > summary["nothing"]["ci_low"] - 1e-9


def test_judgefree_input_leaves_out_the_contexts_maxact_was_shown(planted):
    from saekit.interp.records.format import load_records
    from saekit.interp.score.judgefree import input_samples

    records = load_records(planted.records["input"])
    config = ScoreConfig(records=str(records.path), n_activating=20, n_negatives=20)
    activating, _ = input_samples(records, 0, config)
    shown = {e.context for e in records.examples(0, "top")}
    assert activating and not {e.context for e in activating} & shown
    assert len(activating) < len(records.examples(0, "test"))  # some test windows shared a top context


def test_judgefree_output_ranks_the_steered_word_above_the_others(planted, tmp_path):
    rows = score_latents(ScoreConfig(records=str(planted.records["output"]), scorers=["judgefree-output"],
                                     out=str(tmp_path / "s.jsonl"), device="cpu", n_boot=100), progress=False)
    got = scores(rows)
    right = [got[(f, "right")]["score"] for f in range(len(WORDS))]
    shuffled = [got[(f, "shuffled")]["score"] for f in range(len(WORDS))]
    assert right == [1.0] * len(WORDS)  # under each latent's steering its own word outranks the 3 others
    assert np.mean(shuffled) < 0.7
    for f in range(len(WORDS)):
        details = got[(f, "right")]["details"]
        assert all(abs(k - t) <= 0.1 + 1e-6 or k >= t for k, t in zip(details["kl"], details["targets"]))
        assert got[(f, "nothing")]["score"] is None and "names no vocabulary token" in got[(f, "nothing")]["error"]
