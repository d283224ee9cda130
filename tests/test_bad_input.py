"""Bad input, each given one clear error naming the file or field, with nothing already written lost
or changed: truncated and corrupt shards, a manifest from another cache, NaN/Inf activations, a
cfg.json with the wrong d_in, an empty dataset, an unknown hook point, a full disk."""

import errno
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import context_blocks, random_contexts, small_train_config as config
from saekit.data import ActivationStore, CacheError, verify_cache, write_array_cache, write_cache
from saekit.data.shards import shard_path
from saekit.sae import SAEConfig, build_sae, load_sae_dir, save_sae
from saekit.train import train

N, CTX, D = 40, 16, 16


def array_cache(path: Path, seed: int = 0, values: torch.Tensor | None = None) -> Path:
    acts = torch.randn(N, CTX, D, generator=torch.Generator().manual_seed(seed)) if values is None else values
    write_array_cache(path, {"syn": acts}, contexts_per_shard=10)
    return path


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # not in the prefetch thread
def test_truncated_shard_is_named_everywhere_it_is_read(tmp_path):
    cache = array_cache(tmp_path / "cache")
    path = shard_path(cache, 1)
    path.write_bytes(path.read_bytes()[:-100])
    before = hashes(cache)
    with pytest.raises(CacheError, match=rf"{path}: truncated or corrupt shard"):
        verify_cache(cache)
    with pytest.raises(CacheError, match=rf"{path}: truncated"):
        list(ActivationStore(cache, "syn", batch_size=64, buffer_shards=1, prefetch=False))
    with pytest.raises(CacheError, match=rf"{path}: truncated"):
        train(config(cache, tmp_path / "run"), progress=False)
    assert hashes(cache) == before and not list((tmp_path / "run").glob("*/cfg.json"))


def test_flipped_bytes_fail_the_checksum(tmp_path):
    cache = array_cache(tmp_path / "cache")
    path = shard_path(cache, 2)
    data = bytearray(path.read_bytes())
    data[-40:-30] = bytes(b ^ 0xFF for b in data[-40:-30])
    path.write_bytes(bytes(data))
    verify_cache(cache)  # sizes and shapes still agree: only the checksums can tell
    with pytest.raises(CacheError, match=rf"{path}: checksum mismatch"):
        verify_cache(cache, checksums=True)
    header = bytearray(path.read_bytes())
    header[10] = ord("}")  # the JSON header no longer parses
    path.write_bytes(bytes(header))
    with pytest.raises(CacheError, match=rf"{path}: corrupt shard header"):
        verify_cache(cache)


def test_manifest_from_another_cache_is_refused(tmp_path):
    a, b = array_cache(tmp_path / "a"), array_cache(tmp_path / "b", seed=1)
    shutil.copy(b / "manifest.json", a / "manifest.json")  # same shapes, other shards
    before = hashes(a)
    for read in (lambda: verify_cache(a), lambda: ActivationStore(a, "syn", batch_size=64)):
        with pytest.raises(CacheError, match=rf"{a / 'manifest.json'}: the manifest does not belong"):
            read()
    other = tmp_path / "c"
    write_array_cache(other, {"syn": torch.zeros(N, CTX, D + 1)}, contexts_per_shard=10)
    older = json.loads((other / "manifest.json").read_text())
    del older["shards_sha256"]  # a manifest of before shard checksums were recorded, of another d_in
    (a / "manifest.json").write_text(json.dumps(older))
    with pytest.raises(CacheError, match=rf"{shard_path(a, 0)}: activations of 'syn' have shape"):
        ActivationStore(a, "syn", batch_size=64, prefetch=False).__iter__().__next__()
    assert {k: v for k, v in hashes(a).items() if k != "manifest.json"} == \
        {k: v for k, v in before.items() if k != "manifest.json"}


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_activations_stop_training_naming_the_shard(tmp_path, bad):
    acts = torch.randn(N, CTX, D, generator=torch.Generator().manual_seed(0))
    acts[23, 4, 5] = bad  # shard 2, context 3, position 4: row 52
    cache = array_cache(tmp_path / "cache", values=acts)
    with pytest.raises(ValueError, match=rf"NaN/Inf .*{shard_path(cache, 2)} rows 52..52"):
        train(config(cache, tmp_path / "run", n_tokens=256 * 20, normalize_sample_tokens=64), progress=False)
    assert not list((tmp_path / "run").glob("*/cfg.json"))  # no NaN SAE saved


def test_cfg_json_with_wrong_d_in_names_the_field(tmp_path):
    folder = save_sae(build_sae(SAEConfig(architecture="topk", d_in=16, d_sae=32, k=4, hook_name="h")),
                      tmp_path / "sae")
    raw = json.loads((folder / "cfg.json").read_text())
    raw["d_in"] = 24
    (folder / "cfg.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"cfg.json: d_in is 24 at the top level but 16 under 'saekit'"):
        load_sae_dir(folder)
    raw["saekit"]["d_in"] = 24
    (folder / "cfg.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"sae_weights.safetensors: W_enc has shape \(16, 32\) but cfg.json says "
                                         r"d_in = 24"):
        load_sae_dir(folder)


def test_resume_on_a_cache_of_another_d_in_is_refused(tmp_path):
    cache, run = array_cache(tmp_path / "cache"), tmp_path / "run"
    train(config(cache, run), progress=False)
    shutil.rmtree(cache)
    write_array_cache(cache, {"syn": torch.randn(N, CTX, D + 8)}, contexts_per_shard=10)
    before = hashes(run)
    with pytest.raises(CacheError, match=rf"digest .*{cache / 'manifest.json'}"):
        train(config(cache, run), progress=False)
    assert hashes(run) == before


def test_empty_dataset_and_unknown_hook_write_nothing(tiny_model, tmp_path):
    tokens, docs = random_contexts(12)
    with pytest.raises(CacheError, match="the dataset gave no contexts"):
        write_cache(tiny_model, iter([]), tmp_path / "empty", ["blocks.0.hook_resid_post"], 12, 4, progress=False)
    assert not (tmp_path / "empty").exists()
    with pytest.raises(CacheError, match=r"\['blocks.7.hook_resid_post'\] do not exist in this model"):
        write_cache(tiny_model, context_blocks(tokens, docs), tmp_path / "nohook", ["blocks.7.hook_resid_post"],
                    12, 4, progress=False)
    assert not (tmp_path / "nohook").exists()
    out = tmp_path / "cache"
    write_cache(tiny_model, context_blocks(tokens, docs), out, ["blocks.0.hook_resid_post"], 12, 4, progress=False)
    before = hashes(out)
    with pytest.raises(CacheError, match="do not exist in this model"):
        write_cache(tiny_model, context_blocks(tokens, docs), out, ["blocks.7.hook_resid_post"], 12, 4,
                    progress=False)
    assert hashes(out) == before


def test_disk_full_while_caching_keeps_the_written_shards(tiny_model, tmp_path, monkeypatch):
    tokens, docs = random_contexts(16)
    clean = tmp_path / "clean"
    write_cache(tiny_model, context_blocks(tokens, docs), clean, ["blocks.0.hook_resid_post"], 16, 4, progress=False)
    out = tmp_path / "cache"
    calls = []

    from safetensors.torch import save_file  # save_shard imports it at each call: patched below

    def full_disk(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 3:
            Path(filename).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr("safetensors.torch.save_file", full_disk)
    with pytest.raises(OSError, match=rf"No space left on device.*{shard_path(out, 2).name}") as err:
        write_cache(tiny_model, context_blocks(tokens, docs), out, ["blocks.0.hook_resid_post"], 16, 4,
                    progress=False)
    assert err.value.errno == errno.ENOSPC
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        "shard_00000.json", "shard_00000.safetensors", "shard_00001.json", "shard_00001.safetensors"]
    kept = hashes(out / "shards")
    monkeypatch.setattr("safetensors.torch.save_file", save_file)
    write_cache(tiny_model, context_blocks(tokens, docs), out, ["blocks.0.hook_resid_post"], 16, 4, progress=False)
    assert {k: v for k, v in hashes(out / "shards").items() if k in kept} == kept
    assert hashes(out / "shards") == hashes(clean / "shards")


def test_disk_full_while_checkpointing_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import saekit.train.checkpoint as checkpoint

    cache, run = array_cache(tmp_path / "cache"), tmp_path / "run"
    folder, = train(config(cache, run), progress=False)
    before = hashes(run)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(OSError) as err:  # re-running the finished run writes its final checkpoint again
        train(config(cache, run), progress=False)
    assert err.value.errno == errno.ENOSPC
    after = {k: v for k, v in hashes(run).items() if "/.tmp_step_" not in f"/{k}"}
    assert after == before  # latest.json, the checkpoint it names and the SAE folder are untouched
    assert np.isfinite(load_sae_dir(folder).W_dec.detach().numpy()).all()
