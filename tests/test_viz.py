"""saekit.viz: token shading escapes text and scales colour by activation, figures are built from
their inputs or skipped when those are missing, and the report holds one dashboard per described
latent with its scores, output tokens and partner, plotly.js once and nothing fetched."""

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from saekit.cli import main
from saekit.interp.explain.run import read_explanations
from saekit.viz import (activation_histogram_figure, comparison_figure, discover, shared_vs_width_figure,
                        shaded_tokens, training_curves_figure, vocab_logits_figure, write_report)
from saekit.viz.page import Page, script_json
from saekit.viz.tokens import show_token

pytestmark = pytest.mark.filterwarnings("ignore:.*scores.jsonl. 1 line")  # the fixture's cut line, on purpose

SPAN = re.compile(r'<span class="tok[^"]*"(?: style="background:rgba\(\d+,\d+,\d+,([0-9.]+)\)")? title="([^"]+)"')


def test_token_shading_escapes_text_and_scales_colour_by_activation():
    tokens = ["<b>", " a&b", "</script>", '"q"', "x"]
    acts = [0.0, 1.0, 2.0, 4.0, -1.0]
    out = shaded_tokens(tokens, acts, max_act=2.0, anchor=2)
    assert "<b>" not in out and "</script>" not in out
    assert "&lt;b&gt;" in out and " a&amp;b" in out and "&lt;/script&gt;" in out and "&quot;q&quot;" in out
    spans = SPAN.findall(out)
    assert len(spans) == len(tokens) - 1  # the inactive token is a bare <span>, with no hover text
    assert out.count("<span>&lt;b&gt;</span>") == 1
    alphas = [float(a) if a else 0.0 for a, _ in spans]
    assert alphas == [0.5, 1.0, 1.0, 0.0]  # act / max, clipped to [0, 1]
    assert [float(t) for _, t in spans] == acts[1:]  # the value on hover
    assert out.count("tok anchor") == 1 and 'class="tok anchor" style="background:rgba(255,100,0,1.000)"' in out


def test_shading_refuses_mismatched_lengths_and_shows_control_characters():
    with pytest.raises(ValueError, match="2 tokens but 1 activations"):
        shaded_tokens(["a", "b"], [1.0], 1.0)
    assert show_token("a\x1a\n<") == "a\\x1a\u21b5\n&lt;"


def test_figures_are_none_when_their_inputs_are_missing():
    assert activation_histogram_figure(np.zeros(5)) is None
    assert training_curves_figure({}) is None and training_curves_figure({"a": []}) is None
    assert training_curves_figure({"a": [{"step": 1, "tokens": 10}]}) is None
    assert comparison_figure([]) is None and comparison_figure([{"variant": "x", "fvu": None}]) is None
    assert shared_vs_width_figure([]) is None
    assert vocab_logits_figure([], [], [], []) is None


def test_activation_histogram_counts_every_nonzero_activation_on_a_log_axis():
    acts = np.array([0.0, 0.5, 1.0, 1.0, 3.0, 0.0, 2.5])
    fig = activation_histogram_figure(acts, n_bins=5)
    assert sum(fig.data[0].y) == 5
    assert fig.layout.yaxis.type == "log"


def test_comparison_figure_draws_the_mean_of_each_variant_and_skips_absent_metrics():
    rows = pd.DataFrame({"variant": ["trained", "trained", "random"], "name": ["a", "b", "c"],
                         "fvu": [0.1, 0.3, 0.5], "l0": [8.0, 8.0, float("nan")], "ce_loss_score": [None, None, None]})
    fig = comparison_figure(rows.to_dict("records"))
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["fvu", "l0"]
    bars = [t for t in fig.data if t.type == "bar"]
    assert list(bars[0].x) == ["trained", "random"] and bars[0].y == pytest.approx((0.2, 0.5))
    assert list(bars[1].y)[0] == pytest.approx(8.0) and list(bars[1].y)[1] is None
    points = [t for t in fig.data if t.type == "scatter"]
    assert list(points[0].text) == ["a", "b", "c"]


def test_training_curves_have_one_panel_per_logged_quantity_and_a_line_per_sae():
    logs = {name: [{"step": s, "tokens": 100 * s, "loss": 1.0 / s, "l0": 8.0, "tokens_per_s": 5.0}
                   for s in range(1, 4)] for name in ("seed0", "seed1")}
    fig = training_curves_figure(logs)
    assert [a.text for a in fig.layout.annotations] == ["loss", "l0"]
    assert len(fig.data) == 4 and list(fig.data[0].x) == [100, 200, 300]


def test_shared_vs_width_sorts_each_series_by_width():
    points = [{"series": "topk k=8", "d_sae": 256, "fraction_shared": 0.4},
              {"series": "topk k=8", "d_sae": 64, "fraction_shared": 0.6},
              {"series": "relu", "d_sae": 64, "fraction_shared": 0.3}]
    fig = shared_vs_width_figure(points)
    assert [t.name for t in fig.data] == ["topk k=8", "relu"]
    assert list(fig.data[0].x) == [64, 256] and list(fig.data[0].y) == [0.6, 0.4]
    assert fig.layout.xaxis.type == "log"


def test_figure_json_cannot_close_its_script_element():
    text = script_json({"label": "</script><script>alert(1)</script>"})
    assert "<" not in text and json.loads(text) == {"label": "</script><script>alert(1)</script>"}
    page = Page("t")
    html = page.figure(activation_histogram_figure(np.array([1.0, 2.0]), title="</script>"))
    assert html.count("</script>") == 1  # only the element's own end tag


def dashboards(html):
    return set(re.findall(r'<section class="dashboard" id="(latent-r\d+-\d+)"', html))


@pytest.fixture(scope="module")
def report(report_run, tmp_path_factory):
    run, saes = report_run
    out = write_report(run, tmp_path_factory.mktemp("report") / "report.html")
    return run, saes, out.read_text()


def test_report_has_one_dashboard_per_described_latent_linked_from_the_index(report):
    run, saes, html = report
    found = discover(run)
    assert len(found.records) == 2 and len(found.saes) == 2 and len(found.matches) == 1
    expected = set()
    for i, rec in enumerate(found.records):
        described = {row["latent"] for row in read_explanations(rec.path / "explanations.jsonl")}
        expected |= {f"latent-r{i}-{f}" for f in described}
    assert dashboards(html) == expected
    assert set(re.findall(r'class="latent-link" href="#(latent-r\d+-\d+)"', html)) == expected


def test_report_is_self_contained(report):
    run, saes, html = report
    from plotly.offline import get_plotlyjs

    assert html.count(get_plotlyjs()) == 1  # plotly.js inlined once
    ours = html.replace(get_plotlyjs(), "")
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|<img|<iframe", ours)
    assert not re.search(r"https?://", ours)  # no CDN, no remote asset (plotly.js only names map-tile URLs)
    figures = re.findall(r'<script type="application/json" id="(fig\d+)-json">(.*?)</script>', html)
    assert figures and len(figures) == html.count('<div class="plot" id="fig')
    for _, blob in figures:
        assert json.loads(blob)["data"]


def test_dashboard_shows_scores_vocab_logits_tokenchange_and_partner(report):
    run, saes, html = report
    found = discover(run)
    index = next(i for i, r in enumerate(found.records) if r.path == saes[0] / "records")
    section = re.search(rf'<section class="dashboard" id="latent-r{index}-3".*?</section>', html, re.S).group(0)
    assert "detection: 0.650" in section  # the scores.jsonl row of latent 3
    assert "VocabProj" in section and "TokenChange" in section
    table = found.matches[0].table
    for latent in range(8):
        section = re.search(rf'<section class="dashboard" id="latent-r{index}-{latent}".*?</section>', html,
                            re.S).group(0)
        row = table[(table["sae"] == 0) & (table["latent"] == latent)].iloc[0]
        assert f"{row['decoder_cos']:.4g}" in section and f"{row['encoder_cos']:.4g}" in section
        partner = int(row["decoder_partner"])
        described_partner = partner < 8  # seed 1's first 8 latents have dashboards: a partner among them is linked
        assert (f'href="#latent-r{1 - index}-{partner}"' in section) == described_partner


def test_sections_without_inputs_are_left_out(report_run, tmp_path):
    run, saes = report_run
    only = tmp_path / "only-records"
    shutil.copytree(saes[0] / "records", only)
    (only / "explanations.jsonl").unlink()
    (only / "scores.jsonl").unlink()
    html = write_report(only).read_text()
    for section in ("saes", "training", "frequency", "comparison", "matching"):
        assert f'<section id="{section}">' not in html
    firing = {int(f) for f, freq in discover(only).records[0].records.table["frequency"].items() if freq > 0}
    assert dashboards(html) == {f"latent-r0-{f}" for f in firing}
    assert "No descriptions yet" in html
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "Nothing to show" in write_report(empty).read_text()


def test_bad_lines_of_a_scores_file_are_skipped_with_a_warning(report_run):
    run, saes = report_run
    with pytest.warns(UserWarning, match="scores.jsonl: 1 line"):
        found = discover(run)
    rec = next(r for r in found.records if r.path == saes[0] / "records")
    assert len(rec.scores) == 16 and len(rec.explanations) == 24


def test_cli_report_writes_the_file(report_run, tmp_path, capsys):
    run, saes = report_run
    out = tmp_path / "cli.html"
    assert main(["report", str(run), "--out", str(out), "--max-latents", "2"]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    assert len(dashboards(out.read_text())) == 4  # 2 per records directory
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_descriptions_show_every_score_escaped_and_a_null_score_as_a_dash():
    from saekit.viz.dashboard import descriptions_html

    html = descriptions_html([{"latent": 1, "method": "maxact", "description": "<i>x</i>"}],
                             [{"latent": 1, "method": "maxact", "scorer": "detection", "score": 0.75},
                              {"latent": 1, "method": "maxact", "scorer": "fuzzing", "score": None,
                               "error": "judge <failed>"},
                              {"latent": 1, "method": "vocabproj", "scorer": "output", "score": 0.5}])
    assert "&lt;i&gt;x&lt;/i&gt;" in html and "<i>" not in html
    assert "detection: 0.750" in html and 'title="judge &lt;failed&gt;"' in html
    assert "output: 0.500" in html and "no description in the report" in html


def test_sae_paths_match_by_folder_not_by_name(tmp_path):
    from saekit.viz.dashboard import same_sae

    trained, random = (tmp_path / run / "blocks.1.hook_resid_post" / "topk-64-k8-seed0"
                       for run in ("sae-trained", "sae-random"))
    assert not same_sae(str(trained), str(random), [tmp_path])  # the demo's layout: same names, other runs
    assert same_sae("sae-trained/blocks.1.hook_resid_post/topk-64-k8-seed0", str(trained), [tmp_path])


def test_an_unreadable_records_directory_is_left_out_with_a_warning(report_run, tmp_path):
    run, saes = report_run
    broken = tmp_path / "broken"
    shutil.copytree(saes[1] / "records", broken)
    (broken / "examples_00000.safetensors").unlink()
    with pytest.warns(UserWarning) as caught:
        found = discover(tmp_path)
    messages = " ".join(str(w.message) for w in caught)
    assert "records not readable" in messages and "explanations.jsonl: no records directory" in messages
    assert found.records == []
    with pytest.warns(UserWarning):  # the same two warnings
        assert "Nothing to show" in write_report(tmp_path).read_text()
