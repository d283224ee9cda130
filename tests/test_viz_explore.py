"""saekit.viz.explore: the table of described latents, search by description or token, and one
latent's dashboard as a page of its own (also in a real browser, inline in an iframe)."""

import html
import math
import re

import pytest

from saekit.viz import iframe_html, latent_dashboard_html, latent_table, search_latents

pytestmark = pytest.mark.filterwarnings("ignore:.*scores.jsonl. 1 line")


@pytest.fixture(scope="module")
def table(report_run):
    return latent_table(report_run[0])


def test_table_has_a_row_per_records_dir_latent_and_method(table):
    assert len(table) == 2 * 8 * 3  # two seeds' records, 8 latents explained, 3 methods
    assert set(table["method"]) == {"maxact", "vocabproj", "tokenchange"}
    assert set(table["records_index"]) == {0, 1}
    assert set(table["variant"]) == {"trained"}
    assert table.groupby(["records", "latent"]).size().eq(3).all()


def test_table_joins_each_description_with_its_scores(table, report_run):
    _, saes = report_run
    seed0 = table[table["sae"].str.endswith(saes[0].name)]
    for _, row in seed0.iterrows():
        if row["method"] in ("maxact", "vocabproj"):  # the fixture's scores.jsonl: 0.5 + latent / 20
            assert row["score"] == pytest.approx(0.5 + row["latent"] / 20)
        else:
            assert math.isnan(row["score"])
    assert table[~table["sae"].str.endswith(saes[0].name)]["score"].isna().all()


def test_table_carries_input_and_output_tokens_from_the_evidence(table):
    with_input = table[table["input_tokens"].map(len) > 0]
    assert len(with_input) > 0
    assert (table["output_tokens"].map(len) > 0).all()  # VocabProj evidence exists for every latent
    for _, row in with_input[with_input["method"] == "maxact"].iterrows():
        for token in row["input_tokens"][:3]:
            assert repr(token) in row["description"]  # the raw MaxAct description lists the same tokens


def test_search_by_description_text_is_a_case_insensitive_substring(table):
    hits = search_latents(table, text="PROMOTES")
    assert len(hits) > 0
    assert hits["description"].str.lower().str.contains("promotes").all()
    assert not table.drop(hits.index)["description"].str.lower().str.contains("promotes").any()


def test_search_by_token_finds_the_latents_that_fire_on_or_promote_it(table):
    token = table[table["input_tokens"].map(len) > 0].iloc[0]["input_tokens"][0]
    by_input = search_latents(table, token=token, side="input")
    assert len(by_input) > 0
    assert by_input["input_tokens"].map(lambda ts: any(t.strip().lower() == token.strip().lower() or t == token
                                                       for t in ts)).all()
    promoted = table.iloc[0]["output_tokens"][0]
    by_output = search_latents(table, token=promoted, side="output", method="vocabproj")
    assert len(by_output) > 0 and set(by_output["method"]) == {"vocabproj"}
    both = search_latents(table, token=token)
    assert set(by_input.index) <= set(both.index)


def test_search_puts_the_best_scores_first_and_unscored_last(table):
    hits = search_latents(table, text="")  # every row
    scores = hits["score"].tolist()
    finite = [s for s in scores if not math.isnan(s)]
    assert finite == sorted(finite, reverse=True)
    assert all(math.isnan(s) for s in scores[len(finite):])


def test_search_needs_a_query_and_a_known_side(table):
    with pytest.raises(ValueError, match="text"):
        search_latents(table)
    with pytest.raises(ValueError, match="side"):
        search_latents(table, token="a", side="middle")


def test_dashboard_page_shows_one_latent_outside_the_router(report_run, table):
    run, _ = report_run
    latent = int(table.iloc[0]["latent"])
    page = latent_dashboard_html(run, latent, records=0)
    assert page.startswith("<!DOCTYPE html>") and "Plotly.newPlot" in page  # plotly.js and the drawing script
    sections = re.findall(r"<section[^>]*>", page)
    assert len(sections) == 1 and 'class="dashboard single"' in sections[0] and "hidden" not in sections[0]
    assert f"Latent {latent} " in page and "Partner in the other seed" in page
    by_path = latent_dashboard_html(run, latent, records=str(table.iloc[0]["records"]))
    assert by_path == page


def test_dashboard_errors_name_the_latent_or_the_records(report_run):
    run, _ = report_run
    with pytest.raises(ValueError, match="latent 9999"):
        latent_dashboard_html(run, 9999)
    with pytest.raises(ValueError, match="records index 5"):
        latent_dashboard_html(run, 0, records=5)
    with pytest.raises(ValueError, match="not a records directory"):
        latent_dashboard_html(run, 0, records="nowhere/records")


def test_iframe_holds_the_whole_page_escaped():
    page = '<!DOCTYPE html><html><body><p class="x">a & b</p><script>var s = "</script>";</script></body></html>'
    frame = iframe_html(page, height=300)
    srcdoc = re.search(r'srcdoc="([^"]*)"', frame).group(1)
    assert html.unescape(srcdoc) == page
    assert "height:300px" in frame and 'sandbox="allow-scripts"' in frame


# --- in a real browser (the report's browser test's Chromium and fixture) -----------------------------

from test_viz_browser import CHROMIUM, browser_page, plot_counts  # noqa: E402,F401  (browser_page: a fixture)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not found (apt-get install chromium)")
def test_dashboard_page_draws_in_chromium_on_its_own_and_inside_an_iframe(report_run, table, browser_page, tmp_path):
    run, _ = report_run
    page, errors, remote = browser_page
    dashboard = latent_dashboard_html(run, int(table.iloc[0]["latent"]), records=0)
    (tmp_path / "dashboard.html").write_text(dashboard)
    page.goto((tmp_path / "dashboard.html").as_uri())
    page.wait_for_load_state("load")
    assert page.locator("section.dashboard:visible").count() == 1  # the router leaves it shown
    n_plots, n_drawn = plot_counts(page)
    assert n_plots >= 1 and n_drawn == n_plots

    (tmp_path / "notebook.html").write_text(f"<html><body><h1>a notebook</h1>{iframe_html(dashboard)}</body></html>")
    page.goto((tmp_path / "notebook.html").as_uri())
    frame = page.frame_locator("iframe")
    frame.locator("section.dashboard").wait_for(state="visible")
    frame.locator("div.plot svg.main-svg").first.wait_for(state="attached")
    assert frame.locator("div.plot").count() == frame.locator("div.plot:has(svg.main-svg)").count() >= 1
    assert errors == [] and remote == []
