"""The random-vs-trained recipe: its configs parse, the abstractness proxy and the token-information
check on hand-made data, and a micro run on a tiny random local model writes the report."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_local_model_dir
from saekit.config import load_config
from saekit.interp.records.format import Example

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "analysis"))

import random_vs_trained as rvt  # noqa: E402

CONFIGS = sorted((ROOT / "analysis" / "configs").glob("random_vs_trained*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_random_vs_trained_configs_parse(path):
    config = load_config(rvt.RandomVsTrainedConfig, path)
    assert config.inits[0] == "trained" and config.control in config.inits and config.scorers
    assert config.collect["n_top"] >= 1 and config.n_latents >= 2


def test_token_entropy_of_hand_made_token_ids():
    assert rvt.token_entropy([7, 7, 7, 7]) == 0.0
    assert rvt.token_entropy([1, 2, 3, 4]) == pytest.approx(2.0)
    assert rvt.token_entropy(np.array([5, 5, 9, 9])) == pytest.approx(1.0)
    assert rvt.token_entropy([1, 1, 1, 2]) == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
    assert math.isnan(rvt.token_entropy([]))


def test_abstractness_reads_the_token_at_each_examples_max_activating_position():
    def example(tokens, anchor, start=10):
        return Example("top", np.array(tokens), np.zeros(len(tokens), np.float32), 0, start, start + anchor)

    examples = [example([1, 7, 3], 1), example([7, 2, 2], 0), example([4, 5, 9], 2)]
    assert rvt.anchor_tokens(examples).tolist() == [7, 7, 9]

    class Records:
        def examples(self, latent, kind):
            assert kind == "top"
            return examples

    found = rvt.latent_abstractness(Records(), 0)
    assert found["token_entropy"] == pytest.approx(rvt.token_entropy([7, 7, 9]))
    assert found["top_token_fraction"] == pytest.approx(2 / 3) and found["top_token_id"] == 7


def test_token_information_is_high_for_a_token_lookup_and_nil_for_noise(tmp_path):
    from saekit.data import write_array_cache

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 20, (64, 16), generator=g).numpy()
    tokens[:, 0] = 0
    tokens[40:48] = tokens[:8]  # 8 repeated contexts
    table = torch.randn(20, 8, generator=g)
    lookup = table[torch.from_numpy(tokens).long()] + 0.1 * torch.randn(64, 16, 8, generator=g)
    noise = torch.randn(64, 16, 8, generator=g)
    write_array_cache(tmp_path / "lookup", {"h": lookup}, tokens=tokens, prepend_bos=True)
    write_array_cache(tmp_path / "noise", {"h": noise}, tokens=tokens, prepend_bos=True)
    looked_up = rvt.token_information(tmp_path / "lookup", "h")
    noisy = rvt.token_information(tmp_path / "noise", "h")
    assert looked_up["token_r2"] > 0.95
    assert noisy["token_r2"] < 0.01
    assert looked_up["duplicate_contexts"] == noisy["duplicate_contexts"] == pytest.approx(8 / 64)


def test_a_micro_run_writes_tables_figures_and_the_paper_checks(tmp_path):
    from saekit.models import load_model
    from saekit.models.folder import save_state_dict

    root = make_local_model_dir(tmp_path)
    (root / "model" / "step0").mkdir()
    save_state_dict(load_model(root / "model", init="random", seed=7), root / "model" / "step0" / "model.safetensors")
    inits = ["trained", "step0", "random", "gaussian-embeddings"]
    assert rvt.main([
        "--out", str(tmp_path / "run"), "--model", str(root / "model"), "--inits", *inits, "--model-seed", "1",
        "--hook", "blocks.0.hook_resid_post", "--dataset", str(root / "data.jsonl"), "--cache-tokens", "3072",
        "--ctx-len", "32", "--d-sae", "64", "--k", "4", "--train-tokens", "6000", "--batch-size", "256",
        "--warmup-steps", "2", "--dead-tokens", "2000", "--eval-tokens", "512", "--ce-contexts", "4",
        "--holdout-fraction", "0.2",
        "--n-latents", "4", "--min-examples", "3", "--n-boot", "200", "--device", "cpu",
        "--collect", json.dumps({"window": 12, "n_top": 5, "n_quantiles": 2, "n_explain": 4, "n_test": 6,
                                 "reservoir": 20, "n_random_negatives": 6, "n_hard_negatives": 0}),
        "--score", json.dumps({"n_activating": 5, "n_negatives": 5})]) == 0
    report = tmp_path / "run" / "report"
    results = pd.read_csv(report / "results.csv")
    assert results.variant.tolist() == inits
    for column in ("fvu", "l0", "dead_fraction", "ce_loss_score", "score", "score_ci_low", "score_token_match",
                   "token_entropy", "token_r2", "position_r2"):
        assert np.isfinite(results[column]).all(), column
    assert (results.l0 == 4).all() and results.score.between(0, 1).all()
    latents = pd.read_csv(report / "latents.csv")
    assert latents.groupby("variant").size().tolist() == [4] * 4  # the same number of latents per variant
    assert latents.token_entropy.between(0, math.log2(5) + 1e-9).all()
    assert results.set_index("variant").loc["trained", "score"] == pytest.approx(
        latents[latents.variant == "trained"].score.mean())
    gaussian = results.set_index("variant").loc["gaussian-embeddings"]
    assert gaussian.token_r2 < 0.05 < results.set_index("variant").loc["trained", "token_r2"]
    summary = json.loads((report / "summary.json").read_text())
    claims = {(c["variant"], c["claim"].split(" (")[0]) for c in summary["checks"]}
    for scorer in ("judgefree-input score", "token-match score"):
        assert ("gaussian-embeddings", f"the control's {scorer} is clearly below trained's") in claims
        assert ("random", f"{scorer} the same as trained's") in claims
        assert ("step0", f"{scorer} the same as trained's") in claims
    verdicts = {c["verdict"] for c in summary["checks"] if "equivalence" in c["claim"]}
    assert verdicts and all(v in ("equivalent", "different", "inconclusive") or v.startswith("refused") for v in verdicts)
    assert ("random", "latents more single-token than trained's") in claims
    assert "| gaussian-embeddings | 0 |" in (report / "report.md").read_text()
    assert (report / "figures.html").read_text().count("plotly") > 10


def test_evaluation_reaching_into_training_contexts_is_refused_before_training(tmp_path):
    root = make_local_model_dir(tmp_path)
    with pytest.raises(ValueError, match="eval_tokens 2,048 .* held-out contexts"):
        rvt.main(["--out", str(tmp_path / "run"), "--model", str(root / "model"), "--inits", "trained",
                  "--control", "", "--hook", "blocks.0.hook_resid_post", "--dataset", str(root / "data.jsonl"),
                  "--cache-tokens", "3072", "--ctx-len", "32", "--eval-tokens", "2048", "--device", "cpu"])
    assert (tmp_path / "run" / "cache-trained").exists() and not (tmp_path / "run" / "sae-trained").exists()
