"""bench/gpu_step.py with its tiny config on the CPU, so the GPU bench never rots: it runs, prints
its table and writes the JSON the README's GPU table is read from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def run_bench(out: Path, *extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_step.py"), "--tiny", "--steps", "2",
                             "--warmup", "1", "--out", str(out), *extra],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| architecture" in result.stdout and f"wrote {out}" in result.stdout
    return json.loads(out.read_text())


def test_tiny_gpu_step_bench_writes_every_saekit_row_and_the_floor(tmp_path):
    result = run_bench(tmp_path / "gpu_step.json", "--skip", "sae_lens", "sparsify")
    assert result["device"] == "cpu" and result["dtype"] == "float32" and result["matmul_flops_per_s"] > 0
    config = result["configs"]["tiny"]
    assert (config["d_in"], config["d_sae"], config["k"], config["batch"]) == (64, 512, 8, 256)
    assert config["tokens_per_s"]["floor"]["floor"] > 0
    for arch in ("topk", "batchtopk", "jumprelu"):
        assert config["tokens_per_s"][arch]["saekit"] > 0, arch
        assert config["matmul_fraction"][arch]["saekit"] > 0, arch
    assert result["errors"] == {}


@pytest.mark.slow
def test_tiny_gpu_step_bench_times_the_peers_too(tmp_path):
    """sae-lens for every architecture, sparsify for TopK (it has no BatchTopK or JumpReLU)."""
    result = run_bench(tmp_path / "gpu_step.json", "--dtype", "bfloat16")
    rows = result["configs"]["tiny"]["tokens_per_s"]
    assert result["errors"] == {}
    assert set(rows["topk"]) == {"saekit", "sae_lens", "sparsify"}
    assert set(rows["batchtopk"]) == set(rows["jumprelu"]) == {"saekit", "sae_lens"}
