"""Resuming a training run loses nothing and changes nothing: after SIGKILL at any point (between
steps, or inside a checkpoint write) and a rerun, every file the run writes is what the
uninterrupted run writes; a run folder that was moved resumes; a changed n_tokens is refused.

Runs that train after a kill are real processes (`python -m saekit train`, one thread) and so are
their references, so that both sides compute with the same thread count and compare bit for bit.
`SAEKIT_TEST_PAUSE_AT` (saekit.train.pause) stops a process at a named point for the kill.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from saekit.data import write_array_cache
from saekit.train import TrainConfig, train
from saekit.train import trainer as trainer_module
from saekit.train.checkpoint import load_latest_checkpoint
from saekit.train.pause import ENV as PAUSE_ENV

ARCHITECTURES = ["relu", "topk", "batchtopk", "jumprelu", "matryoshka_batchtopk"]
BATCH, STEPS = 128, 40
WALL_CLOCK = ("tokens_per_s",)  # fields of training_log.jsonl and metrics.json that measure time
# Checkpoint tensors that differ between any two processes: torch seeds its global generators anew in
# each process, and training draws nothing from them (every draw has its own seeded generator).
PROCESS_RNG = ("rng/",)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """2,560 tokens of 32 dims (19 training batches an epoch: 40 steps cross an epoch boundary)."""
    g = torch.Generator().manual_seed(0)
    features = torch.randn(96, 32, generator=g)
    codes = torch.rand(40 * 64, 96, generator=g).pow(8)  # sparse-ish, so latents fire and die
    out = tmp_path_factory.mktemp("resume") / "cache"
    write_array_cache(out, {"syn": (codes @ features).reshape(40, 64, 32)}, contexts_per_shard=10)
    return out


def config(cache: Path, out: Path, architecture: str = "topk", **changes) -> TrainConfig:
    """40 steps; checkpoints every 7 steps, log lines every 5 (not aligned); latents die after 6 steps."""
    values = dict(cache=str(cache), out=str(out), architecture=architecture, d_sae=[64], k=[4], seeds=[0],
                  n_tokens=BATCH * STEPS, batch_size=BATCH, lr=4e-3, warmup_steps=4, sparsity_warmup_fraction=0.2,
                  dead_tokens=BATCH * 6, drop_bos=False, normalize_sample_tokens=512, buffer_shards=2,
                  checkpoint_every=BATCH * 7, log_every=5, device="cpu")
    values.update(changes)
    return TrainConfig(**values)


def toml_value(value) -> str:
    """A TOML value: JSON's, but a dict as an inline table."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def command(cfg: TrainConfig, toml: Path) -> list[str]:
    toml.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in vars(cfg).items() if v is not None))
    return [sys.executable, "-m", "saekit", "train", str(toml)]


def run_env(**extra: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
            "PYTHONPATH": str(Path(__file__).parent.parent), **extra}


def run(cfg: TrainConfig) -> None:
    """A whole `saekit train` in its own process."""
    result = subprocess.run(command(cfg, Path(cfg.out + ".toml")), env=run_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def kill_when_paused(cfg: TrainConfig, point: str, timeout: float = 120) -> None:
    """Start `saekit train`, wait until it pauses at `point` (see saekit.train.pause), SIGKILL it."""
    proc = subprocess.Popen(command(cfg, Path(cfg.out + ".toml")), env=run_env(**{PAUSE_ENV: point}),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    paused, tail = False, []
    try:
        for line in proc.stderr:
            tail.append(line)
            if f"{PAUSE_ENV}: paused at" in line:
                paused = True
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        watchdog.cancel()
        proc.stderr.close()
    assert paused, f"the run never paused at {point}:\n{''.join(tail[-30:])}"


@pytest.fixture(scope="module")
def reference(cache, tmp_path_factory):
    """architecture -> run folder of an uninterrupted run (trained once per module)."""
    done = {}

    def get(architecture: str) -> Path:
        if architecture not in done:
            out = tmp_path_factory.mktemp("reference") / architecture
            run(config(cache, out, architecture))
            done[architecture] = out
        return done[architecture]
    return get


def without(record: dict, *fields: str) -> dict:
    return {k: v for k, v in record.items() if k not in fields}


def assert_same_outputs(expected: Path, actual: Path) -> None:
    """Every file of run `actual` is that of run `expected`: bytes, or for training_log.jsonl and
    metrics.json every field but WALL_CLOCK; the final checkpoints (weights, Adam moments, log sums,
    tokens-since-fired, store position, scheduler; not PROCESS_RNG) bit for bit; train_config.json but for `out`, the folder's own path."""
    files = sorted(p.relative_to(expected) for p in expected.rglob("*") if p.is_file()
                   and "checkpoints" not in p.relative_to(expected).parts)
    assert files == sorted(p.relative_to(actual) for p in actual.rglob("*") if p.is_file()
                           and "checkpoints" not in p.relative_to(actual).parts)
    for rel in files:
        a, b = expected / rel, actual / rel
        if rel.name == "training_log.jsonl":
            lines_a, lines_b = a.read_text().splitlines(), b.read_text().splitlines()
            assert len(lines_a) == len(lines_b), rel
            for line_a, line_b in zip(lines_a, lines_b):
                assert without(json.loads(line_a), *WALL_CLOCK) == without(json.loads(line_b), *WALL_CLOCK), rel
        elif rel.name == "metrics.json":
            assert without(json.loads(a.read_text()), *WALL_CLOCK) == without(json.loads(b.read_text()), *WALL_CLOCK)
        elif rel.name == "train_config.json":
            assert without(json.loads(a.read_text()), "out") == without(json.loads(b.read_text()), "out")
        else:
            assert a.read_bytes() == b.read_bytes(), rel
    (tensors_a, state_a), (tensors_b, state_b) = load_latest_checkpoint(expected), load_latest_checkpoint(actual)
    assert sorted(tensors_a) == sorted(tensors_b)
    for key in tensors_a:
        if not key.startswith(PROCESS_RNG):
            assert torch.equal(tensors_a[key], tensors_b[key]), key
    last = {n: without(line, *WALL_CLOCK) for n, line in state_a.pop("last_log", {}).items()}
    assert {n: without(line, *WALL_CLOCK) for n, line in state_b.pop("last_log", {}).items()} == last
    assert state_a == state_b


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_run_killed_between_checkpoints_writes_what_an_uninterrupted_run_writes(cache, reference, tmp_path,
                                                                                  architecture):
    """Killed at step 33: the checkpoint is step 28 (mid log window 26-30), log line 30 is on disk."""
    cfg = config(cache, tmp_path / "killed", architecture)
    kill_when_paused(cfg, "step:33")
    assert json.loads((tmp_path / "killed" / "checkpoints" / "latest.json").read_text())["step"] == 28
    run(cfg)
    assert_same_outputs(reference(architecture), tmp_path / "killed")


@pytest.mark.parametrize("point", ["checkpoint-written", "checkpoint-swap", "checkpoint-pointer"])
def test_a_kill_inside_a_checkpoint_write_leaves_one_to_resume_from(cache, reference, tmp_path, point):
    """keep_checkpoints = 1, killed while step 14 replaces step 7."""
    cfg = config(cache, tmp_path / "killed")
    kill_when_paused(cfg, f"{point}:14")
    assert load_latest_checkpoint(tmp_path / "killed")[1]["step"] in (7, 14)
    run(cfg)
    assert_same_outputs(reference("topk"), tmp_path / "killed")


@pytest.mark.parametrize("point", ["checkpoint-written", "checkpoint-swap", "checkpoint-pointer"])
def test_a_kill_while_a_finished_run_rewrites_its_checkpoint_leaves_one_to_resume_from(cache, tmp_path, point):
    """Re-running a finished run writes its last step's checkpoint again (keep_checkpoints = 1,
    no checkpoint before the end): a kill at any moment of that rewrite leaves a readable one."""
    cfg = config(cache, tmp_path / "run", checkpoint_every=0, n_tokens=BATCH * 10)
    train(cfg, progress=False)
    finished = tmp_path / "finished"
    shutil.copytree(tmp_path / "run", finished)
    kill_when_paused(cfg, f"{point}:10")
    assert load_latest_checkpoint(tmp_path / "run")[1]["step"] == 10
    train(cfg, progress=False)
    assert_same_outputs(finished, tmp_path / "run")
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name != "latest.json"] \
        == [json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text())["path"]]


class Interrupted(Exception):
    pass


def interrupt_at_step(monkeypatch, stop: int) -> None:
    """Make train() raise at the start of step index `stop` (after `stop` steps), in this process."""
    real = trainer_module._member_step

    def member_step(m, x, scale, step, *args):
        if step == stop:
            raise Interrupted
        return real(m, x, scale, step, *args)
    monkeypatch.setattr(trainer_module, "_member_step", member_step)


def test_rerunning_a_finished_run_rewrites_the_same_files(cache, tmp_path):
    cfg = config(cache, tmp_path / "run", n_tokens=BATCH * 12)
    train(cfg, progress=False)
    shutil.copytree(tmp_path / "run", tmp_path / "first")
    train(cfg, progress=False)
    assert_same_outputs(tmp_path / "first", tmp_path / "run")


def test_a_moved_run_folder_resumes(cache, tmp_path, monkeypatch):
    train(config(cache, tmp_path / "reference"), progress=False)
    with monkeypatch.context() as patch:
        interrupt_at_step(patch, 23)
        with pytest.raises(Interrupted):
            train(config(cache, tmp_path / "here"), progress=False)
    shutil.move(tmp_path / "here", tmp_path / "moved")
    train(config(cache, tmp_path / "moved"), progress=False)
    assert_same_outputs(tmp_path / "reference", tmp_path / "moved")
    assert json.loads((tmp_path / "moved" / "train_config.json").read_text())["out"] == str(tmp_path / "moved")


def test_resuming_with_another_n_tokens_is_refused_naming_both_values(cache, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        interrupt_at_step(patch, 10)
        with pytest.raises(Interrupted):
            train(config(cache, tmp_path / "run", n_tokens=BATCH * 20), progress=False)
    with pytest.raises(ValueError, match=r"TrainConfig\.n_tokens was 2560, now 5120"):
        train(config(cache, tmp_path / "run", n_tokens=BATCH * 40), progress=False)
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["n_tokens"] == BATCH * 20
    assert load_latest_checkpoint(tmp_path / "run")[1]["step"] == 7


@pytest.fixture(scope="module")
def two_hook_cache(tmp_path_factory):
    """The same codes read out at two hooks: x [32 dims] and y [24 dims], for transcoders x -> y."""
    g = torch.Generator().manual_seed(1)
    codes = torch.rand(40 * 64, 96, generator=g).pow(8)
    x, y = codes @ torch.randn(96, 32, generator=g), codes @ torch.randn(96, 24, generator=g)
    out = tmp_path_factory.mktemp("resume2") / "cache"
    write_array_cache(out, {"x": x.reshape(40, 64, 32), "y": y.reshape(40, 64, 24)}, contexts_per_shard=10)
    return out


@pytest.mark.slow
def test_a_killed_grid_of_an_sae_and_transcoders_writes_what_an_uninterrupted_run_writes(two_hook_cache, tmp_path):
    """Matryoshka: an SAE on x and transcoders x -> y with and without the skip, in one pass."""
    grid = dict(hooks=["x"], transcode={"x": "y"}, skip_connection=[False, True], sae={"matryoshka_prefixes": [8, 32]})
    run(config(two_hook_cache, tmp_path / "reference", "matryoshka_batchtopk", **grid))
    cfg = config(two_hook_cache, tmp_path / "killed", "matryoshka_batchtopk", **grid)
    kill_when_paused(cfg, "step:33")
    run(cfg)
    assert len(list((tmp_path / "killed").rglob("cfg.json"))) == 3
    assert_same_outputs(tmp_path / "reference", tmp_path / "killed")
