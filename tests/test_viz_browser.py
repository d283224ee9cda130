"""The report in a real browser (headless Chromium driven by Playwright): it loads with no JavaScript
error and no network request, every plot draws, and a latent's dashboard opens from the index.

Needs Debian's Chromium (`apt-get install chromium`, which .ci/run does) and the `playwright` Python
package (the dev extra); skipped, saying so, without them.
"""

import shutil
from pathlib import Path

import pytest

from saekit.viz import write_report

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).is_file()), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic"]

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not found: install it with "
                                                "`apt-get install chromium` (as root, or with sudo)"),
    pytest.mark.filterwarnings("ignore:.*scores.jsonl. 1 line"),
]


@pytest.fixture()
def browser_page(tmp_path):
    """(page, errors, remote requests) in a fresh Chromium profile under tmp_path."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                       headless=True, args=FLAGS,
                                                       viewport={"width": 1300, "height": 900})
        page = context.new_page()
        errors, remote = [], []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: remote.append(request.url)
                if not request.url.startswith(("file:", "data:", "blob:", "about:")) else None)
        yield page, errors, remote
        context.close()


def plot_counts(page, scope="body"):
    """(plot divs, plot divs holding a drawn svg) under the CSS selector `scope`."""
    return page.evaluate("""scope => {
        const plots = Array.from(document.querySelectorAll(scope + ' div.plot'));
        return [plots.length, plots.filter(d => d.querySelector('svg.main-svg')).length];
    }""", scope)


@pytest.mark.slow  # about 15 s on 2 cores: a browser, and every dashboard opened in turn
def test_report_opens_in_chromium_draws_every_plot_and_opens_dashboards(report_run, browser_page, tmp_path):
    run, _ = report_run
    page, errors, remote = browser_page
    report = write_report(run, tmp_path / "report.html")
    page.goto(report.as_uri())
    page.wait_for_load_state("load")

    overview = "section:not(.dashboard)"
    n_plots, n_drawn = plot_counts(page, overview)
    assert n_plots >= 5 and n_drawn == n_plots  # SAE-level plots draw on load
    assert page.locator("section.dashboard:visible").count() == 0
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)

    links = page.locator("a.latent-link")
    assert links.count() == page.locator("section.dashboard").count() > 0
    for i in range(links.count()):
        target = links.nth(i).get_attribute("href")[1:]
        links.nth(i).click()
        dashboard = page.locator(f"section#{target}")
        dashboard.wait_for(state="visible")
        assert page.locator("section.dashboard:visible").count() == 1
        assert dashboard.locator("div.plot").count() >= 1
        assert plot_counts(page, f"section#{target}")[1] == dashboard.locator("div.plot").count()
        if i == 0:
            dashboard.screenshot(path=str(tmp_path / "dashboard.png"))
    all_plots, all_drawn = plot_counts(page)
    assert all_drawn == all_plots  # every plot of the page, dashboards included, has been drawn
    assert errors == [] and remote == []
    for name in ("report.png", "dashboard.png"):
        assert (tmp_path / name).stat().st_size > 10_000
