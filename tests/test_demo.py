"""`saekit demo` (saekit.demo): the whole pipeline, shortened, on a small local model."""

import json
import math
from pathlib import Path

import pytest

from conftest import make_local_model_dir
from saekit.demo import DemoConfig, llm_settings, run_demo, summary_table

METHODS = ("maxact", "vocabproj", "tokenchange")
WIDTHS = (32, 64)


def small_config(root, **changes):
    values = dict(out=str(root / "run"), model=str(root / "model"), model_seed=1,  # the model's own seed is 0
                  dataset=str(root / "data.jsonl"), n_tokens=8_000,
                  widths=list(WIDTHS), k=4, train_tokens=12_000, batch_size=256, dead_tokens=4_000, eval_tokens=1_000,
                  ce_contexts=4, n_latents=4, collect_tokens=4_000, score_windows=4, device="cpu")
    return DemoConfig(**{**values, **changes})


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """(config, summary) of a shortened demo: 2 variants x 2 widths x 2 seeds of TopK SAEs."""
    root = make_local_model_dir(tmp_path_factory.mktemp("demo"))
    config = small_config(root)
    return config, run_demo(config, progress=False)


def finite(value):
    return value is not None and math.isfinite(float(value))


@pytest.mark.slow
def test_summary_has_finite_eval_and_matching_numbers_per_variant_and_width(demo_run):
    config, summary = demo_run
    assert set(summary["by_width"]) == {"trained", "random"}
    for init, widths in summary["by_width"].items():
        assert set(widths) == {str(w) for w in WIDTHS}
        for width, row in widths.items():
            for key in ("fvu", "l0", "dead_fraction", "ce_loss_score", "fraction_shared", "decoder_mean_cos"):
                assert finite(row[key]), f"{init} {width} {key} = {row[key]}"
            assert 0 <= row["fraction_shared"] <= 1
            assert 0 < row["l0"] <= config.k + 1e-6


@pytest.mark.slow
def test_summary_has_a_finite_mean_embedding_score_per_method_and_variant(demo_run):
    _, summary = demo_run
    for init in ("trained", "random"):
        by_method = summary["scores"][init]["embedding"]
        assert set(by_method) == set(METHODS)
        for method, s in by_method.items():
            assert finite(s["mean"]) and 0 <= s["mean"] <= 1, f"{init} {method}: {s}"
            assert s["n"] >= 1 and s["chance"] == 0.5


@pytest.mark.slow
def test_summary_json_and_report_are_written(demo_run):
    config, summary = demo_run
    on_disk = json.loads((Path(config.out) / "summary.json").read_text())
    assert on_disk["by_width"] == summary["by_width"]
    assert on_disk["seconds"]["total"] > 0
    report = Path(summary["report"])
    assert report.exists() and report.name == "saekit-report.html"
    page = report.read_text()
    assert 'id="matching"' in page and 'class="dashboard"' in page  # matching section, latent dashboards


@pytest.mark.slow
def test_printed_table_names_every_variant_width_and_method(demo_run):
    _, summary = demo_run
    text = "\n".join(summary_table(summary))
    for init in ("trained", "random"):
        for width in WIDTHS:
            assert any(line.split()[:2] == [init, str(width)] for line in text.splitlines())
    for method in METHODS:
        assert method in text
    assert "shared@0.7" in text


@pytest.mark.slow
def test_second_run_of_the_same_config_reuses_every_output(demo_run):
    config, summary = demo_run
    files = sorted(Path(config.out).glob("sae-*/*/*/sae_weights.safetensors")) + \
        sorted(Path(config.out).glob("sae-*/*/*/records/scores.jsonl"))
    assert len(files) == 2 * len(WIDTHS) * 2 + 2 * len(WIDTHS)  # weights of every SAE, scores of every seed 0
    before = {f: f.stat().st_mtime_ns for f in files}
    again = run_demo(config, progress=False)
    assert {f: f.stat().st_mtime_ns for f in files} == before
    assert again["by_width"] == summary["by_width"] and again["scores"] == summary["scores"]


@pytest.mark.slow
def test_an_out_holding_another_config_is_refused(demo_run):
    config, _ = demo_run
    other = DemoConfig(**{**{k: getattr(config, k) for k in config.__dataclass_fields__}, "widths": [32]})
    with pytest.raises(ValueError, match="widths"):
        run_demo(other, progress=False)


def test_config_checks_name_the_field():
    with pytest.raises(ValueError, match="seeds"):
        DemoConfig(seeds=[0])
    with pytest.raises(ValueError, match="k"):
        DemoConfig(widths=[8, 64], k=16)
    with pytest.raises(ValueError, match="methods"):
        DemoConfig(methods=["maxact", "nonsense"])
    assert DemoConfig(methods=["ma", "vp+tc"]).methods == ["maxact", "vocabproj+tokenchange"]


def test_llm_settings_come_from_the_config_or_the_environment(monkeypatch, tmp_path):
    for name in ("SAEKIT_LLM_BACKEND", "SAEKIT_LLM_MODEL", "SAEKIT_LLM_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    assert llm_settings(DemoConfig(out=str(tmp_path))) == ("none", "", {})
    monkeypatch.setenv("SAEKIT_LLM_BACKEND", "openai")
    with pytest.raises(ValueError, match="SAEKIT_LLM_MODEL"):
        llm_settings(DemoConfig(out=str(tmp_path)))
    monkeypatch.setenv("SAEKIT_LLM_MODEL", "some-model")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:8000/v1")
    backend, model, llm = llm_settings(DemoConfig(out=str(tmp_path)))
    assert (backend, model) == ("openai", "some-model")
    assert llm == {"base_url": "http://localhost:8000/v1", "cache_dir": str(tmp_path / "llm_cache")}
    # the config wins over the environment
    assert llm_settings(DemoConfig(out=str(tmp_path), backend="none"))[0] == "none"


def test_cli_demo_takes_a_config_file_and_overrides(tmp_path):
    from saekit.cli import _config, build_parser

    path = tmp_path / "demo.toml"
    path.write_text('out = "runs/x"\nwidths = [64, 128]\nk = 4\n')
    args = build_parser().parse_args(["demo", "--config", str(path), "--n-latents", "3"])
    config = _config(DemoConfig, args)
    assert (config.out, config.widths, config.k, config.n_latents) == ("runs/x", [64, 128], 4, 3)


def test_cli_demo_help_lists_every_field(capsys):
    from saekit.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["demo", "--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    for name in DemoConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in shown


def test_gpu_box_config_is_a_valid_demo_config():
    from saekit.config import load_config

    config = load_config(DemoConfig, Path(__file__).resolve().parents[1] / "analysis/configs/demo_pythia70m.toml")
    assert config.model == "pythia-70m-deduped" and config.device == "cuda"
    assert len(config.widths) == 2 and len(config.seeds) >= 2
