"""Scoring-only runs on a published SAE (saekit.interp.pipeline, `saekit score --published`): an SAE
made and saved by the real sae-lens package, read from its folder, on a tiny random local model,
scored offline with the embedding scorer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import make_local_model_dir
from saekit.interp.pipeline import PublishedConfig, score_published
from saekit.interp.score.run import read_scores

sae_lens = pytest.importorskip("sae_lens")
from sae_lens.saes.sae import SAEMetadata  # noqa: E402

HOOK, D_MODEL, D_SAE, CTX = "blocks.0.hook_resid_post", 64, 32, 32
SMALL = {"collect": {"window": 12, "n_top": 5, "n_quantiles": 2, "n_explain": 4, "n_test": 6, "reservoir": 20,
                     "n_random_negatives": 6, "n_hard_negatives": 0},
         "score": {"n_activating": 6, "n_negatives": 6, "min_activating": 4, "n_boot": 200}}


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """(root, SAE folder written by sae_lens's save_model): a TopK SAE for the local model's HOOK that
    names the model folder as its model_name, as a downloaded SAELens SAE names its model."""
    root = make_local_model_dir(tmp_path_factory.mktemp("published"))
    cfg = sae_lens.TopKSAEConfig(d_in=D_MODEL, d_sae=D_SAE, k=4,
                                 metadata=SAEMetadata(hook_name=HOOK, model_name=str(root / "model")))
    sae = sae_lens.TopKSAE(cfg)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D_MODEL, D_SAE, generator=generator) / D_MODEL ** 0.5)
        sae.W_dec.copy_(torch.randn(D_SAE, D_MODEL, generator=generator) / D_MODEL ** 0.5)
    sae.save_model(str(root / "saelens-sae"))
    assert (root / "saelens-sae" / "cfg.json").is_file()
    return root, root / "saelens-sae"


def test_a_sae_lens_folder_is_collected_described_and_scored_offline(published, tmp_path):
    root, folder = published
    result = score_published(PublishedConfig(sae=str(folder), dataset=str(root / "data.jsonl"), n_tokens=48 * CTX,
                                             ctx_len=CTX, out=str(tmp_path / "run"), n_latents=5, device="cpu",
                                             **SMALL), progress=False)
    assert result["model"] == str(root / "model")  # named by the SAE's cfg.json
    assert (result["hook_name"], result["d_in"], result["d_sae"]) == (HOOK, D_MODEL, D_SAE)
    rows = read_scores(tmp_path / "run" / "scores.jsonl")
    assert sorted(r["latent"] for r in rows) == [0, 1, 2, 3, 4]
    assert {(r["scorer"], r["method"]) for r in rows} == {("embedding", "maxact")}
    assert all(r["score"] is not None and 0 <= r["score"] <= 1 and r["n"] > 6 for r in rows)
    assert all(r["description"].startswith("activates on") for r in rows)  # raw MaxAct, no LLM
    table = pd.read_csv(tmp_path / "run" / "summary.csv")
    assert list(table[["scorer", "method", "n"]].itertuples(index=False, name=None)) == [("embedding", "maxact", 5)]
    mean, low, high = table.loc[0, ["mean", "ci_low", "ci_high"]]
    assert all(math.isfinite(v) for v in (mean, low, high)) and low <= mean <= high
    assert mean == pytest.approx(sum(r["score"] for r in rows) / len(rows))
    summary = json.loads((tmp_path / "run" / "scores_summary.json").read_text())
    assert summary["summary"]["embedding"]["maxact"]["mean"] == pytest.approx(mean)
    saved = json.loads((tmp_path / "run" / "published.json").read_text())
    assert saved["summary_table"].endswith("summary.csv") and set(saved["seconds"]) == {"cache", "collect",
                                                                                         "explain", "score"}


def test_saekit_score_published_cli_scores_the_same_folder(published, tmp_path, capsys):
    from saekit.cli import main

    root, folder = published
    config = tmp_path / "small.toml"
    config.write_text(f"ctx_len = {CTX}\n[collect]\n" + "".join(f"{k} = {v}\n" for k, v in SMALL["collect"].items()))
    assert main(["score", "--published", str(folder), "--config", str(config), "--model", str(root / "model"),
                 "--dataset", str(root / "data.jsonl"), "--n-tokens", str(48 * CTX), "--n-latents", "3",
                 "--scorers", "embedding", "--n-activating", "4", "--n-negatives", "4", "--out",
                 str(tmp_path / "cli"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "embedding" in out and "maxact" in out and "summary.csv" in out
    rows = read_scores(tmp_path / "cli" / "scores.jsonl")
    assert len(rows) == 3 and all(r["n"] <= 8 and math.isfinite(r["score"]) for r in rows)
    assert json.loads((tmp_path / "cli" / "published.json").read_text())["config"]["score"]["n_activating"] == 4


def test_a_registry_id_goes_through_sae_lens_and_writes_under_runs_published(published, tmp_path, monkeypatch):
    root, folder = published
    theirs = sae_lens.SAE.load_from_disk(str(folder))
    asked = []
    monkeypatch.setattr(sae_lens.SAE, "from_pretrained",
                        lambda release, sae_id, **kwargs: asked.append((release, sae_id)) or theirs)
    monkeypatch.chdir(tmp_path)
    result = score_published(PublishedConfig(sae=f"gpt2-small-res-jb/{HOOK}", model=str(root / "model"),
                                             dataset=str(root / "data.jsonl"), n_tokens=48 * CTX, ctx_len=CTX,
                                             n_latents=2, device="cpu", **SMALL), progress=False)
    assert asked and asked[0] == ("gpt2-small-res-jb", HOOK)
    out = tmp_path / "runs" / "published" / "gpt2-small-res-jb" / HOOK / "autointerp"
    assert result["scores"] == str(Path("runs/published/gpt2-small-res-jb") / HOOK / "autointerp" / "scores.jsonl")
    assert len(read_scores(out / "scores.jsonl")) == 2 and (out / "summary.csv").is_file()


def test_a_bad_sae_path_is_an_error_naming_it(tmp_path, capsys):
    from saekit.cli import main

    missing = tmp_path / "no-such-sae"
    with pytest.raises(FileNotFoundError, match="no-such-sae"):
        score_published(PublishedConfig(sae=str(missing), model="gpt2", device="cpu"), progress=False)
    assert main(["score", "--published", str(missing), "--model", "gpt2"]) == 2
    assert "no-such-sae" in capsys.readouterr().err
    assert not missing.exists()


def test_llm_scorers_without_a_backend_fail_before_any_work(published, tmp_path):
    root, folder = published
    with pytest.raises(ValueError, match="ScoreConfig.backend"):
        score_published(PublishedConfig(sae=str(folder), scorers=["detection", "embedding"],
                                        out=str(tmp_path / "run")), progress=False)
    assert not (tmp_path / "run").exists()


def test_stage_tables_refuse_fields_that_are_not_theirs():
    with pytest.raises(ValueError, match="PublishedConfig.score"):
        PublishedConfig(sae="x", score={"records": "elsewhere"})
    with pytest.raises(ValueError, match="PublishedConfig.collect"):
        PublishedConfig(sae="x", collect={"windw": 3})


def test_the_gpu_box_config_parses():
    from saekit.config import load_config

    path = Path(__file__).parent.parent / "autointerp" / "configs" / "score_published_gpt2.toml"
    config = load_config(PublishedConfig, path)
    assert config.sae.startswith("gpt2-small-res-jb/") and config.scorers == ["embedding"]
    assert config.collect["n_test"] == 50 and config.score["n_negatives"] == 50
