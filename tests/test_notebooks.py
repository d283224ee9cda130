"""The notebooks in notebooks/: stored without outputs, equal to what make_notebooks.py writes, and
each runs top to bottom (nbclient, a python3 kernel of this interpreter) on a small local model."""

import importlib.util
import json
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import make_local_model_dir

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))


def generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOK_DIR / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_three_notebooks_exist():
    assert NOTEBOOKS == ["01_train_and_match.ipynb", "02_explore_latents.ipynb", "03_score_published.ipynb"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_in_git_holds_no_outputs(name):
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, f"{name} has no code cells"
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name} cell {index} has outputs: run notebooks/make_notebooks.py"
            assert cell.execution_count is None, f"{name} cell {index} has an execution count"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_what_the_generator_writes(name):
    module = generator()
    assert sorted(module.NOTEBOOKS) == NOTEBOOKS
    stored = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    built = module.build(name)
    assert [(c.cell_type, c.source) for c in stored.cells] == [(c.cell_type, c.source) for c in built.cells], \
        f"{name} differs from notebooks/make_notebooks.py: run it to rewrite the notebook"


@pytest.fixture(scope="module")
def notebook_env(tmp_path_factory):
    """A small local model and dataset, and a python3 kernelspec that runs this interpreter."""
    root = make_local_model_dir(tmp_path_factory.mktemp("notebook_model"))
    spec = root / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (saekit tests)", "language": "python"}))
    return root


def run_notebook(name, workdir, env_root, monkeypatch):
    """Execute notebook `name` in `workdir`; nbclient raises CellExecutionError on a failing cell."""
    from nbclient import NotebookClient

    monkeypatch.setenv("JUPYTER_PATH", str(env_root / "jupyter"))  # our python3 kernelspec comes first
    monkeypatch.setenv("IPYTHONDIR", str(workdir / ".ipython"))
    monkeypatch.setenv("SAEKIT_HOME", str(workdir / "saekit-home"))  # never the user's tiny LM
    monkeypatch.setenv("SAEKIT_NOTEBOOK_MODEL", str(env_root / "model"))
    monkeypatch.setenv("SAEKIT_NOTEBOOK_DATASET", str(env_root / "data.jsonl"))
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    NotebookClient(notebook, kernel_name="python3", timeout=600,
                   resources={"metadata": {"path": str(workdir)}}).execute()
    return notebook


def outputs_of(notebook):
    """(all text and HTML of the outputs, the set of output MIME types, error outputs)."""
    texts, mimetypes, errors = [], set(), []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                errors.append(output)
            if output.output_type == "stream":
                texts.append(output.text)
            for mimetype, value in output.get("data", {}).items():
                mimetypes.add(mimetype)
                if isinstance(value, str):
                    texts.append(value)
    return "\n".join(texts), mimetypes, errors


def has_plotly(mimetypes, text):
    return "application/vnd.plotly.v1+json" in mimetypes or "Plotly.newPlot" in text


@pytest.mark.slow
def test_notebook_01_trains_matches_and_plots(tmp_path, notebook_env, monkeypatch):
    notebook = run_notebook("01_train_and_match.ipynb", tmp_path, notebook_env, monkeypatch)
    text, mimetypes, errors = outputs_of(notebook)
    assert not errors
    assert "latents shared at cosine >= 0.7" in text  # the match summary was printed
    assert "fvu" in text and "ce_loss_score" in text  # the eval table was shown
    assert has_plotly(mimetypes, text)
    assert (tmp_path / "runs/notebook-01/match/latents.parquet").exists()
    assert (tmp_path / "runs/notebook-01/saekit-report.html").stat().st_size > 100_000


@pytest.mark.slow
def test_notebook_02_searches_latents_and_shows_dashboards(tmp_path, notebook_env, monkeypatch):
    notebook = run_notebook("02_explore_latents.ipynb", tmp_path, notebook_env, monkeypatch)
    text, mimetypes, errors = outputs_of(notebook)
    assert not errors
    assert "mean embedding score per description method" in text  # the demo's summary table
    assert "most common input token" in text
    assert text.count("<iframe srcdoc=") == 3  # the token search's best latent, one per model variant
    assert "Latent " in text and "Top contexts" in text  # dashboard content inside the iframes (escaped)
    assert (tmp_path / "runs/notebook-02/summary.json").exists()


@pytest.mark.slow
def test_notebook_03_loads_a_sae_lens_folder_describes_and_scores(tmp_path, notebook_env, monkeypatch):
    notebook = run_notebook("03_score_published.ipynb", tmp_path, notebook_env, monkeypatch)
    text, mimetypes, errors = outputs_of(notebook)
    assert not errors
    assert "saekit and sae_lens encode the same: True" in text
    for method in ("maxact", "vocabproj", "tokenchange"):
        assert f"embedding  {method}" in text  # the score summary has a line per method
    assert has_plotly(mimetypes, text)
    assert "<iframe srcdoc=" in text
    scores_file = tmp_path / "runs/notebook-03/records/scores.jsonl"
    scores = [json.loads(line) for line in scores_file.read_text().splitlines()]
    assert {r["method"] for r in scores} == {"maxact", "vocabproj", "tokenchange"}
    assert any(r["score"] is not None for r in scores)
