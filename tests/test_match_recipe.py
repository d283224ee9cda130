"""The seed-sharing recipe: its configs parse, and a micro run on a synthetic cache writes the report."""

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from saekit.config import load_config

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "analysis"))

import seed_sharing  # noqa: E402

CONFIGS = sorted((ROOT / "analysis" / "configs").glob("seed_sharing*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_seed_sharing_configs_parse(path):
    config = load_config(seed_sharing.SeedSharingConfig, path)
    assert len(config.seeds) >= 2 and config.sweep_width in config.widths and 0 < config.threshold < 1


def test_a_micro_run_writes_tables_figures_and_the_closing_note(tmp_path):
    from saekit.data import write_array_cache

    g = torch.Generator().manual_seed(0)
    features = torch.randn(48, 16, generator=g)  # sparse combinations of 48 directions in 16 dims
    codes = torch.rand(60, 16, 48, generator=g) * (torch.rand(60, 16, 48, generator=g) < 0.06)
    write_array_cache(tmp_path / "cache", {"syn": codes @ features}, contexts_per_shard=20)
    assert seed_sharing.main([
        "--out", str(tmp_path / "run"), "--caches", json.dumps({"synthetic": str(tmp_path / "cache")}),
        "--hook", "syn", "--widths", "16", "32", "--ks", "2", "4", "--sweep-width", "16",
        "--tokens", "2048", "4096", "--batch-size", "256", "--device", "cpu"]) == 0
    report = tmp_path / "run" / "report"
    results = pd.read_csv(report / "results.csv")
    assert len(results) == 2 + 1 + 1 + 1  # TopK at both widths, TopK k=4 at 16, ReLU, the shorter TopK run
    assert set(results.architecture) == {"topk", "relu"}
    assert results.fraction_shared.between(0, 1).all()
    summary = json.loads((report / "summary.json").read_text())
    claims = [c["claim"] for c in summary["checks"]]
    assert any("falls as width grows" in c for c in claims) and any("ReLU-L1" in c for c in claims)
    assert "| synthetic | syn | topk | 32 | 2 | 4,096 (" in (report / "report.md").read_text()
    assert (results.shared_ci_low <= results.fraction_shared + 1e-9).all()
    assert (results.fraction_shared <= results.shared_ci_high + 1e-9).all()
    assert results.fraction_shared_live.fillna(0).between(0, 1).all() and results.live_fraction.between(0, 1).all()
    assert {c["verdict"] for c in summary["checks"] if "verdict" in c} <= {"yes", "NO", "unclear"}
    assert {c["verdict_cos"] for c in summary["checks"] if "verdict_cos" in c} <= {"yes", "NO", "unclear"}
    # --report-only rebuilds the same table from the folders, training and matching nothing
    sae = next((tmp_path / "run" / "train" / "synthetic" / "topk" / "syn").iterdir())
    stamp = (sae / "cfg.json").stat().st_mtime_ns
    assert seed_sharing.main([
        "--out", str(tmp_path / "run"), "--caches", json.dumps({"synthetic": str(tmp_path / "cache")}),
        "--hook", "syn", "--widths", "16", "32", "--ks", "2", "4", "--sweep-width", "16",
        "--tokens", "2048", "4096", "--batch-size", "256", "--device", "cpu", "--report-only", "true"]) == 0
    again = pd.read_csv(report / "results.csv")
    assert (sae / "cfg.json").stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(again, results.drop(columns=["train_seconds"]))
    assert any("falls as k grows (d_sae=16)" in c for c in claims)
    assert (report / "figures.html").read_text().count("plotly") > 10
