"""The input- vs output-description recipe: a micro run on a tiny local model writes the table for
every scorer and method on the same latents, and the paper's findings as paired differences."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import make_local_model_dir, small_train_config

sys.path.insert(0, str(Path(__file__).parent.parent / "analysis"))

import input_vs_output as iov  # noqa: E402


def test_config_needs_maxact_and_canonicalises_ensembles():
    config = iov.InputVsOutputConfig(sae="s", cache="c", methods=["maxact", "all", "ma+tc"])
    assert config.methods == ["maxact", "maxact+vocabproj+tokenchange", "maxact+tokenchange"]
    with pytest.raises(ValueError, match="maxact"):
        iov.InputVsOutputConfig(sae="s", cache="c", methods=["vocabproj"])


def test_paired_difference_sees_a_consistent_gap_that_unpaired_noise_would_hide():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.9, 60)  # latents differ a lot; the methods differ by 0.02 on every latent
    diff = iov.paired_difference(base + 0.02, base, n_boot=500, seed=0)
    assert diff[0] == pytest.approx(0.02) and diff[1] > 0 and iov._verdict(diff) == "yes"


@pytest.mark.slow
def test_a_micro_run_scores_every_method_with_every_scorer(tmp_path):
    from saekit.data import CacheConfig, cache_activations
    from saekit.train import train

    root = make_local_model_dir(tmp_path)
    cache = root / "cache"
    cache_activations(CacheConfig(out=str(cache), model=str(root / "model"), dataset=str(root / "data.jsonl"),
                                  hooks=["blocks.1.hook_resid_post"], n_tokens=16_384, ctx_len=32, device="cpu"),
                      progress=False)
    [sae] = train(small_train_config(cache, tmp_path / "train", d_sae=[64], k=[4], n_tokens=256 * 40), progress=False)
    out = tmp_path / "run"
    methods = ["maxact", "vocabproj", "tokenchange", "maxact+vocabproj", "all"]
    assert iov.main(["--out", str(out), "--sae", str(sae), "--cache", str(cache), "--n-candidates", "12",
                     "--collect-tokens", "8192", "--windows", "5", "--tc-sequences", "2", "--n-boot", "200",
                     "--scorers", "judgefree-input", "judgefree-output", "--methods", *methods,
                     "--device", "cpu"]) == 0
    results = pd.read_csv(out / "report" / "results.csv")
    assert set(results.scorer) == {"judgefree-input", "judgefree-output"}
    assert results.groupby("scorer").method.apply(list).apply(len).tolist() == [5, 5]
    assert results.groupby("scorer").n.nunique().eq(1).all()  # every method on the same latents
    assert results["mean"].between(0, 1).all() and (results.ci_low <= results["mean"] + 1e-9).all()
    summary = json.loads((out / "report" / "summary.json").read_text())
    claims = [c["claim"] for c in summary["checks"]]
    assert "maxact beats vocabproj on input evaluation" in claims
    assert "vocabproj beats maxact on output evaluation" in claims
    assert any(c.startswith("maxact+vocabproj+tokenchange beats the best single method") for c in claims)
    assert "| GPT-2 small, input | 42.5 |" in (out / "report" / "report.md").read_text()
