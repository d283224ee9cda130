"""`saekit cache` end to end as a user runs it: a real process, killed with SIGKILL and resumed,
and two ranks under torchrun; `saekit info` on the result."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import make_local_model_dir
from saekit.data import ActivationStore, verify_cache
from saekit.data.shards import completed_shards

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    """A local model folder (random tiny model + locally trained BPE) and a jsonl dataset."""
    return make_local_model_dir(tmp_path_factory.mktemp("cli"))


def cache_command(root: Path, out: Path, n_tokens: int, shard_tokens: int) -> list[str]:
    return ["-m", "saekit", "cache", "--model", str(root / "model"), "--dataset", str(root / "data.jsonl"),
            "--hooks", *HOOKS, "--n-tokens", str(n_tokens), "--ctx-len", "64", "--shard-tokens",
            str(shard_tokens), "--batch-size", "8", "--device", "cpu", "--out", str(out)]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1",
            "PYTHONPATH": str(Path(__file__).parent.parent)}


def shard_digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "shards").glob("*.safetensors"))}


def manifest_without_timestamps(out: Path) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.pop("finished", None)
    manifest["config"].pop("out", None)
    return manifest


@pytest.mark.slow
def test_killed_cache_run_resumes_to_identical_contents(model_and_data, tmp_path):
    root = model_and_data
    n_tokens, shard_tokens = 64 * 1200, 64 * 40  # 30 shards
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, *cache_command(root, reference, n_tokens, shard_tokens)], env=env(),
                   check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, *cache_command(root, killed, n_tokens, shard_tokens)], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(completed_shards(killed)) < 3 and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_done = len(completed_shards(killed))
    assert json.loads((killed / "manifest.json").read_text())["complete"] is False, "killed too late"
    assert 3 <= n_done < 30

    subprocess.run([sys.executable, *cache_command(root, killed, n_tokens, shard_tokens)], env=env(),
                   check=True, capture_output=True)
    assert shard_digests(killed) == shard_digests(reference)
    assert manifest_without_timestamps(killed) == manifest_without_timestamps(reference)
    verify_cache(killed, checksums=True)
    assert not list((killed / "shards").glob("*.tmp*"))


@pytest.mark.slow
def test_torchrun_two_ranks_write_one_identical_cache(model_and_data, tmp_path):
    root = model_and_data
    n_tokens, shard_tokens = 64 * 300, 64 * 40
    single, multi = tmp_path / "single", tmp_path / "multi"
    subprocess.run([sys.executable, *cache_command(root, single, n_tokens, shard_tokens)], env=env(),
                   check=True, capture_output=True)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", "29517", *cache_command(root, multi, n_tokens, shard_tokens)],
                            env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert shard_digests(multi) == shard_digests(single) and len(shard_digests(single)) == 8
    assert manifest_without_timestamps(multi) == manifest_without_timestamps(single)


def test_cli_cache_then_info_then_store(model_and_data, tmp_path, capsys):
    from saekit.cli import main

    out = tmp_path / "c"
    args = cache_command(model_and_data, out, 64 * 50, 64 * 16)[2:]
    assert main(args) == 0
    manifest = verify_cache(out, checksums=True)
    assert manifest["n_tokens"] == 64 * 50 and manifest["dataset"]["source"].endswith("data.jsonl")
    assert manifest["model"]["init"] == "trained" and manifest["hooks"] == {h: 64 for h in HOOKS}
    assert main(["info", str(out), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "3,200 in 50 contexts, 4 shards" in printed and "verified" in printed
    batch = next(iter(ActivationStore(out, HOOKS[1], batch_size=128)))
    assert batch.shape == (128, 64) and torch.isfinite(batch).all()


def test_cli_reports_bad_hook_and_missing_dataset(model_and_data, tmp_path, capsys):
    from saekit.cli import main

    args = cache_command(model_and_data, tmp_path / "c", 640, 640)[2:]
    bad_hook = [a if a != HOOKS[0] else "blocks.7.hook_resid_post" for a in args]
    assert main(bad_hook) == 2
    assert "blocks.7.hook_resid_post" in capsys.readouterr().err
    missing = [a if not a.endswith("data.jsonl") else str(tmp_path / "nope.jsonl") for a in args]
    assert main(missing) == 2
    assert "nope.jsonl" in capsys.readouterr().err


def test_info_on_an_unknown_folder_is_an_error(tmp_path, capsys):
    from saekit.cli import main

    assert main(["info", str(tmp_path)]) == 2
    assert "not a saekit cache" in capsys.readouterr().err
