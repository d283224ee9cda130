"""Errors a user meets on the hub, each through saekit's CLI against the local hub (tests/hub): a repo
that does not exist, a file or a revision a repo lacks, a gated repo without a token, and the server
going away in the middle of a download. saekit must say which repo, file or revision, and what to do.

The CLI cases run in one child process (`saekit.cli.main` called once per case, stderr captured), so
that the imports are paid once; the gated repo's 401 comes from the fixture's proxy, with the hub's
`X-Error-Code: GatedRepo` (olah has no gating)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load as load_safetensors

from hub.repos import DATASET_REPO, GATED_REPO, PYTHIA_NO_STEP0_REPO, SAELENS_RELEASE, SPARSIFY_REPO, file_at
from hub.server import GATED_TOKEN

CASES: dict[str, list[str]] = {
    "missing_sae_repo": ["export", "saekit-hub/no-such-repo/layers.0", "OUT", "--to", "saelens"],
    "missing_registry_file": ["export", f"{SAELENS_RELEASE}/blocks.3.hook_resid_pre", "OUT", "--to", "saelens"],
    "missing_hookpoint": ["export", f"{SPARSIFY_REPO}/layers.7", "OUT", "--to", "saelens"],
    "missing_model_repo": ["cache", "--model", "EleutherAI/pythia-14m", "--n-tokens", "32", "--ctx-len", "16",
                           "--hooks", "blocks.0.hook_resid_post", "--device", "cpu", "--out", "OUT"],
    "missing_model_revision": ["cache", "--model", "pythia-160m", "--init", "step0", "--n-tokens", "32",
                               "--ctx-len", "16", "--hooks", "blocks.0.hook_resid_post", "--device", "cpu",
                               "--out", "OUT"],
    "missing_dataset_revision": ["cache", "--model", "pythia-160m", "--dataset", f"{DATASET_REPO}@v9",
                                 "--n-tokens", "32", "--ctx-len", "16", "--hooks", "blocks.0.hook_resid_post",
                                 "--device", "cpu", "--out", "OUT"],
    "gated_without_token": ["export", f"{GATED_REPO}/layers.0", "OUT", "--to", "saelens"],
    "gated_with_token": ["export", f"{GATED_REPO}/layers.0", "OUT", "--to", "saelens"],
}
"""saekit CLI arguments of each case; OUT is replaced by a fresh folder."""

CASES_SCRIPT = """
import contextlib, io, json, os, sys, traceback
from saekit.cli import main
cases, token, results = json.loads(sys.argv[1]), sys.argv[2], {}
for name, args in cases.items():
    if name == "gated_with_token":
        os.environ["HF_TOKEN"] = token
    args = [a.replace("OUT", f"out-{name}") for a in args]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = main(args)
        except BaseException as e:  # an error the CLI let through: a traceback for the user
            rc, _ = "raised", traceback.print_exc(file=err)
    results[name] = {"rc": rc, "stderr": err.getvalue()}
json.dump(results, open("cases.json", "w"))
"""


@pytest.fixture(scope="module")
def cases(local_hub, tmp_path_factory) -> dict[str, dict]:
    """{case: {rc, stderr}} of every CLI case of CASES, run in one child process against the local hub."""
    tmp = tmp_path_factory.mktemp("hub_errors")
    done = local_hub.run_python(CASES_SCRIPT, tmp / "home", tmp, extra_args=[json.dumps(CASES), GATED_TOKEN])
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((tmp / "cases.json").read_text())


def last_line(case: dict) -> str:
    """The error line the CLI printed (the last line of stderr)."""
    lines = [line for line in case["stderr"].splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_a_repo_that_does_not_exist(cases):
    case = cases["missing_sae_repo"]
    assert case["rc"] == 2, case["stderr"][-2000:]
    assert last_line(case).startswith("saekit export: error: hub model repo 'saekit-hub/no-such-repo' not found on "
                                      "http://127.0.0.1:")


def test_a_model_repo_that_does_not_exist(cases):
    case = cases["missing_model_repo"]
    assert case["rc"] == 2, case["stderr"][-2000:]
    assert "load_model('EleutherAI/pythia-14m', init='trained'): hub model repo 'EleutherAI/pythia-14m' not found" \
        in last_line(case)


def test_a_file_the_repo_lacks(cases):
    """The registry names a repo; the hook's folder is not in it (a registry entry newer than the repo)."""
    case = cases["missing_registry_file"]
    assert case["rc"] == 2, case["stderr"][-2000:]
    assert "hub model repo 'jbloom/GPT2-Small-SAEs-Reformatted' has no file 'blocks.3.hook_resid_pre/cfg.json'" \
        in last_line(case)


def test_a_hookpoint_the_sparsify_repo_lacks(cases):
    case = cases["missing_hookpoint"]
    assert case["rc"] == 2 and "layers.7" in last_line(case) and "layers.0" in last_line(case)


def test_a_revision_the_model_repo_lacks(cases):
    """init step0 of a model whose hub repo has no step0 branch."""
    case = cases["missing_model_revision"]
    assert case["rc"] == 2, case["stderr"][-2000:]
    assert f"hub model repo '{PYTHIA_NO_STEP0_REPO}' has no revision 'step0'" in last_line(case)


def test_a_revision_the_dataset_repo_lacks(cases):
    case = cases["missing_dataset_revision"]
    assert case["rc"] == 2, case["stderr"][-2000:]
    assert f"hub dataset repo '{DATASET_REPO}' has no revision 'v9'" in last_line(case)


def test_a_gated_repo_without_a_token_names_hf_token(cases):
    case = cases["gated_without_token"]
    assert case["rc"] == 2, case["stderr"][-2000:]
    line = last_line(case)
    assert f"hub model repo '{GATED_REPO}' is gated" in line and "HF_TOKEN" in line


def test_a_gated_repo_with_a_token_is_read(cases):
    assert cases["gated_with_token"]["rc"] == 0, cases["gated_with_token"]["stderr"][-2000:]


@pytest.mark.parametrize("url, parts", [
    ("http://h/api/models/gpt2/revision/main", {"repo_type": "model", "repo_id": "gpt2", "revision": "main"}),
    ("http://h/api/datasets/a/b", {"repo_type": "dataset", "repo_id": "a/b"}),
    ("http://h/a/b/resolve/step0/x/y.json", {"repo_type": "model", "repo_id": "a/b", "revision": "step0",
                                             "file": "x/y.json"}),
    ("http://h/datasets/a/b/resolve/v9/d/t.parquet", {"repo_type": "dataset", "repo_id": "a/b", "revision": "v9",
                                                      "file": "d/t.parquet"}),
    ("http://h/mirror/a/b/resolve/main/cfg.json", {"repo_type": "model", "repo_id": "a/b", "revision": "main",
                                                   "file": "cfg.json"}),
])
def test_hub_url_parts_name_the_repo_revision_and_file(url, parts):
    from saekit.hub import hub_url_parts

    assert hub_url_parts(url, endpoint="http://h/mirror") == parts


def test_the_server_going_away_mid_download_fails_clearly_and_the_rerun_completes(local_hub, tmp_path):
    """The hub drops the connection 4 KB into an SAE's weights and then answers nothing (huggingface_hub
    retries 5 times, then gives up): saekit's error says the hub went away and to rerun. Once it is
    back, the same command completes with the repo's tensors, downloading only the file that had not
    finished (huggingface_hub 2.x drops a partial file; the cfg.json that finished is kept)."""
    hub, home = local_hub, tmp_path / "home"
    args = ["export", f"{SPARSIFY_REPO}/layers.1", str(tmp_path / "out"), "--to", "sparsify"]
    hub.fail_download("layers.1/sae.safetensors", 4096)
    try:
        failed = hub.run_saekit(args, home, tmp_path)
    finally:
        hub.restore()
    assert failed.returncode == 2, failed.stderr[-3000:]
    line = [line for line in failed.stderr.splitlines() if line.strip()][-1]
    assert line.startswith("saekit export: error: the hub at http://127.0.0.1:") and "went away" in line
    assert "'layers.1/sae.safetensors' of hub model repo 'EleutherAI/sae-pythia-70m-32k'" in line
    assert "rerun the same command" in line and not (tmp_path / "out" / "sae.safetensors").exists()

    before = len(hub.requests)
    rerun = hub.run_saekit(args, home, tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    served = load_safetensors(file_at(hub.mirror, SPARSIFY_REPO, "main", "layers.1/sae.safetensors"))
    exported = load_safetensors((tmp_path / "out" / "sae.safetensors").read_bytes())
    assert torch.equal(exported["encoder.weight"], served["encoder.weight"])
    downloaded = [path for method, path, _ in hub.requests[before:] if method == "GET" and "/resolve/" in path]
    assert [path.rsplit("/", 2)[-2:] for path in downloaded] == [["layers.1", "sae.safetensors"]]
