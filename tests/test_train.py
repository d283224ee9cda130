"""The SAE trainer: recovers a known dictionary, resumes after kill -9 to the same weights, matches
the single-process run under torchrun, saves what SAELens loads, refuses bad input up front."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from saekit.data import CacheError, write_array_cache
from saekit.sae import load_sae_dir
from saekit.train import TrainConfig, train

D, N_FEATURES, N_CONTEXTS, CTX = 64, 256, 200, 64


def synthetic(seed: int = 0):
    """(true features [256, 64] unit-norm, activations [200, 64, 64]): each token sums 5 features
    with Uniform(0, 1) magnitudes, plus noise of std 0.01."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(N_FEATURES, D, generator=g)
    features /= features.norm(dim=1, keepdim=True)
    n = N_CONTEXTS * CTX
    chosen = torch.rand(n, N_FEATURES, generator=g).argsort(dim=1)[:, :5]
    x = (torch.rand(n, 5, generator=g)[:, :, None] * features[chosen]).sum(1) + 0.01 * torch.randn(n, D, generator=g)
    return features, x.reshape(N_CONTEXTS, CTX, D)


@pytest.fixture(scope="module")
def dictionary_cache(tmp_path_factory):
    # seed 7, not 0: features drawn with seed 0 are the rows of a seed-0 SAE's initial decoder, so
    # recovery would hold before any training (test_recovery_is_not_given_by_the_initialisation)
    features, acts = synthetic(seed=7)
    out = tmp_path_factory.mktemp("train") / "cache"
    write_array_cache(out, {"syn": acts}, contexts_per_shard=50)
    return features, out


def mmcs(features: torch.Tensor, decoder: torch.Tensor) -> float:
    """Mean over true features of the best cosine similarity with a decoder row."""
    decoder = decoder / decoder.norm(dim=1, keepdim=True)
    return float((features @ decoder.T).max(dim=1).values.mean())


def small_config(cache: Path, out: Path, **changes) -> TrainConfig:
    values = dict(cache=str(cache), out=str(out), d_sae=[512], k=[8], seeds=[0], n_tokens=N_CONTEXTS * CTX * 20,
                  batch_size=512, lr=4e-3, warmup_steps=10, dead_tokens=N_CONTEXTS * CTX, drop_bos=False,
                  checkpoint_every=0, log_every=20)
    values.update(changes)
    return TrainConfig(**values)


# Thresholds: TopK must reach 0.9 (the bar). BatchTopK's per-token L0 varies, JumpReLU's and
# ReLU-L1's sparsity comes from a penalty whose coefficient trades recovery against reconstruction,
# so 0.8 for them (the issue allows their own thresholds). Their settings come from a small sweep on
# this data: the penalties need more steps and a larger lr, with the penalty ramped in (JumpReLU's
# threshold and bandwidth on the scale of its pre-activations, ~1, not Gemma Scope's 0.001).
RECOVERY = [
    ("topk", {}, dict(epochs=20, lr=4e-3), 0.9),
    ("batchtopk", {}, dict(epochs=20, lr=4e-3), 0.8),
    ("jumprelu", {"l0_coef": 2.0, "jumprelu_init_threshold": 0.5, "jumprelu_bandwidth": 0.5},
     dict(epochs=40, lr=1e-2, sparsity_warmup_fraction=0.3), 0.8),
    ("relu", {"l1_coef": 1.0}, dict(epochs=40, lr=1e-2), 0.8),
]


def test_recovery_is_not_given_by_the_initialisation(dictionary_cache):
    """The planted features are far from every architecture's initial decoder (the recovery tests below
    measure training, not the draw)."""
    from saekit.sae import SAEConfig, build_sae

    features, _ = dictionary_cache
    for architecture, sae, _, threshold in RECOVERY:
        k = {"k": 8} if architecture in ("topk", "batchtopk") else {}
        model = build_sae(SAEConfig(architecture=architecture, d_in=D, d_sae=512, seed=0, **k, **sae))
        assert mmcs(features, model.W_dec.detach()) < 0.5 < threshold, architecture


@pytest.mark.slow
@pytest.mark.parametrize("architecture,sae,schedule,threshold", RECOVERY, ids=[r[0] for r in RECOVERY])
def test_recovers_a_known_dictionary(dictionary_cache, tmp_path, architecture, sae, schedule, threshold):
    features, cache = dictionary_cache
    schedule = dict(schedule)
    epochs = schedule.pop("epochs")
    config = small_config(cache, tmp_path / "run", architecture=architecture, sae=sae,
                          n_tokens=N_CONTEXTS * CTX * epochs, **schedule)
    folder, = train(config, progress=False)
    sae_model = load_sae_dir(folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert mmcs(features, sae_model.W_dec.detach()) >= threshold
    assert metrics["fvu"] < 0.3 and metrics["tokens"] == config.n_steps * 512


def test_several_seeds_and_sizes_train_in_one_pass(dictionary_cache, tmp_path):
    _, cache = dictionary_cache
    config = small_config(cache, tmp_path / "run", d_sae=[128, 256], seeds=[0, 1], n_tokens=512 * 30)
    folders = train(config, progress=False)
    names = sorted(str(f.relative_to(tmp_path / "run")) for f in folders)
    assert names == ["syn/topk-128-k8-seed0", "syn/topk-128-k8-seed1", "syn/topk-256-k8-seed0",
                     "syn/topk-256-k8-seed1"]
    w = {n: load_sae_dir(tmp_path / "run" / n).W_dec for n in names}
    assert not torch.equal(w[names[0]], w[names[1]])  # seeds differ in initialisation
    for folder in folders:
        log = [json.loads(line) for line in (folder / "training_log.jsonl").read_text().splitlines()]
        assert [line["step"] for line in log] == [20, 30]
        assert {"loss", "fvu", "l0", "dead_fraction", "tokens_per_s", "lr", "aux_k"} <= set(log[0])
        assert json.loads((folder / "metrics.json").read_text())["tokens"] == 512 * 30


def test_seed_only_changes_the_initialisation(dictionary_cache, tmp_path):
    """Same seed in two runs with different companions gives the same SAE: batches don't depend on seeds."""
    _, cache = dictionary_cache
    alone, = train(small_config(cache, tmp_path / "a", seeds=[1], n_tokens=512 * 10), progress=False)
    both = train(small_config(cache, tmp_path / "b", seeds=[0, 1], n_tokens=512 * 10), progress=False)
    assert torch.allclose(load_sae_dir(alone).W_dec, load_sae_dir(both[1]).W_dec, atol=1e-6)


def test_saved_sae_loads_in_saelens_with_equal_outputs(dictionary_cache, tmp_path):
    from sae_lens import SAE as SAELensSAE

    _, cache = dictionary_cache
    folder, = train(small_config(cache, tmp_path / "run", n_tokens=512 * 10), progress=False)
    ours = load_sae_dir(folder)
    theirs = SAELensSAE.load_from_disk(str(folder), device="cpu")
    x = torch.randn(32, D) * 3
    assert torch.allclose(theirs.encode(x), ours.encode(x), atol=1e-5)
    latents = ours.encode(x)
    assert torch.allclose(theirs.decode(latents), ours.decode(latents), atol=1e-5)


def test_bad_inputs_fail_before_training(dictionary_cache, tmp_path):
    _, cache = dictionary_cache
    with pytest.raises(CacheError, match="no hook point.*blocks.3"):
        train(small_config(cache, tmp_path / "a", hooks=["blocks.3.hook_resid_post"]), progress=False)
    with pytest.raises(ValueError, match="k .*must be at most d_sae"):
        train(small_config(cache, tmp_path / "b", k=[600]), progress=False)
    with pytest.raises(ValueError, match="d_sae must be a positive integer"):
        train(small_config(cache, tmp_path / "c", d_sae=[0]), progress=False)
    assert not (tmp_path / "a" / "syn").exists() and not (tmp_path / "b" / "syn").exists()


def test_nan_activations_name_the_shard(tmp_path):
    _, acts = synthetic()
    acts[3, 5, 7] = float("nan")
    write_array_cache(tmp_path / "cache", {"syn": acts}, contexts_per_shard=50)
    config = small_config(tmp_path / "cache", tmp_path / "run", n_tokens=512 * 40, normalize_sample_tokens=64)
    with pytest.raises(ValueError, match=r"NaN/Inf .*shard_00000.safetensors rows 197..197"):
        train(config, progress=False)
    skipped = small_config(tmp_path / "cache", tmp_path / "run2", n_tokens=512 * 40, nonfinite="skip",
                           normalize_sample_tokens=64)
    folder, = train(skipped, progress=False)
    assert torch.isfinite(load_sae_dir(folder).W_dec).all()


def test_resuming_with_other_settings_is_refused(dictionary_cache, tmp_path):
    _, cache = dictionary_cache
    train(small_config(cache, tmp_path / "run", n_tokens=512 * 4), progress=False)
    with pytest.raises(ValueError, match="other settings.*batch_size"):
        train(small_config(cache, tmp_path / "run", n_tokens=512 * 4, batch_size=256), progress=False)


def read_log(folder: Path, leave_out: tuple[str, ...] = ()) -> list[dict]:
    """The lines of an SAE's training_log.jsonl, without the fields `leave_out`."""
    lines = (json.loads(line) for line in (folder / "training_log.jsonl").read_text().splitlines())
    return [{k: v for k, v in line.items() if k not in leave_out} for line in lines]


def run_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}


def write_toml(path: Path, config: TrainConfig) -> Path:
    lines = []
    for key, value in vars(config).items():
        if value is None or key == "sae":
            continue
        lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


WALL_CLOCK = ("tokens_per_s",)  # log and metrics fields that measure time, not training


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["topk", "batchtopk"])
def test_killed_training_resumes_to_the_same_weights_and_log(dictionary_cache, tmp_path, architecture):
    """Killed at a random moment after step 100 (checkpoints every 7 steps, log lines every 6: the
    checkpoints 105, 112 and 119 fall inside log windows). tests/test_resume.py kills at chosen
    points, for every architecture and every output file."""
    _, cache = dictionary_cache
    common = dict(architecture=architecture, n_tokens=512 * 400, checkpoint_every=512 * 7, log_every=6,
                  dead_tokens=512 * 30)
    reference = write_toml(tmp_path / "ref.toml", small_config(cache, tmp_path / "ref", **common))
    killed = write_toml(tmp_path / "killed.toml", small_config(cache, tmp_path / "killed", **common))
    subprocess.run([sys.executable, "-m", "saekit", "train", str(reference)], env=run_env(), check=True,
                   capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "saekit", "train", str(killed)], env=run_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "killed" / "checkpoints" / "latest.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and json.loads(latest.read_text())["step"] >= 100:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step = json.loads(latest.read_text())["step"]
    assert 100 <= step < 400, "the run was killed too late to test resumption"
    subprocess.run([sys.executable, "-m", "saekit", "train", str(killed)], env=run_env(), check=True,
                   capture_output=True)
    name = f"syn/{architecture}-512-k8-seed0"
    a, b = load_sae_dir(tmp_path / "ref" / name), load_sae_dir(tmp_path / "killed" / name)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    log_a, log_b = (read_log(tmp_path / run / name, WALL_CLOCK) for run in ("ref", "killed"))
    assert [line["step"] for line in log_a] == [line["step"] for line in log_b]
    for line_a, line_b in zip(log_a, log_b):
        assert line_a == line_b


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["topk", "relu", "batchtopk"])
def test_two_torchrun_ranks_match_the_single_process_run(dictionary_cache, tmp_path, architecture):
    _, cache = dictionary_cache
    common = dict(architecture=architecture, n_tokens=512 * 60, dead_tokens=512 * 10, log_every=10)
    single = write_toml(tmp_path / "single.toml", small_config(cache, tmp_path / "single", **common))
    multi = write_toml(tmp_path / "multi.toml", small_config(cache, tmp_path / "multi", **common))
    subprocess.run([sys.executable, "-m", "saekit", "train", str(single)], env=run_env(), check=True,
                   capture_output=True)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", "29531", "-m", "saekit", "train", str(multi)],
                            env=run_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    name = f"syn/{architecture}-512{'-k8' if architecture in ('topk', 'batchtopk') else ''}-seed0"
    a, b = load_sae_dir(tmp_path / "single" / name), load_sae_dir(tmp_path / "multi" / name)
    for key, value in a.state_dict().items():
        assert torch.allclose(value, b.state_dict()[key], atol=2e-4, rtol=1e-4), (key, (value - b.state_dict()[key]).abs().max())
    # the whole run matches, not only its end: the same log lines with the same losses at every step
    log_single, log_multi = read_log(tmp_path / "single" / name), read_log(tmp_path / "multi" / name)
    assert [(x["step"], x["tokens"]) for x in log_single] == [(x["step"], x["tokens"]) for x in log_multi]
    for x, y in zip(log_single, log_multi):
        for key in ("loss", "mse", "fvu", "l0", "lr"):
            assert y[key] == pytest.approx(x[key], rel=1e-3, abs=1e-6), (x["step"], key)
