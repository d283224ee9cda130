"""The activation cache: exact activations, resumable writes, verification on read."""

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import context_blocks, random_contexts
from saekit.data import ActivationStore, CacheError, open_shard, read_manifest, verify_cache, write_cache
from saekit.data.shards import shard_path

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]


def make_cache(model, out, n_contexts=90, per_shard=16, dtype="float32", hooks=HOOKS):
    tokens, docs = random_contexts(100)
    return write_cache(model, context_blocks(tokens, docs), out, hooks, n_contexts=n_contexts,
                       contexts_per_shard=per_shard, dtype=dtype, batch_size=8, progress=False)


def test_cached_activations_equal_run_with_cache(tiny_model, tmp_path):
    manifest = make_cache(tiny_model, tmp_path / "c")
    tokens, _ = random_contexts(100)
    _, ref = tiny_model.run_with_cache(torch.from_numpy(tokens[:90]).long(), names_filter=HOOKS)
    assert manifest["n_shards"] == 6 and manifest["n_contexts"] == 90 and manifest["n_tokens"] == 90 * 32
    for index in range(manifest["n_shards"]):
        shard = open_shard(shard_path(tmp_path / "c", index), manifest)
        lo, hi = index * 16, min(90, (index + 1) * 16)
        assert np.array_equal(shard.tokens, tokens[lo:hi])
        assert np.array_equal(shard.context_index, np.arange(lo, hi))
        for hook in HOOKS:
            expected = ref[hook][lo:hi].reshape(-1, ref[hook].shape[-1])
            assert torch.equal(shard.acts(hook), expected), (index, hook)


@pytest.mark.parametrize("dtype,torch_dtype", [("float16", torch.float16), ("bfloat16", torch.bfloat16)])
def test_half_precision_caches_round_trip(tiny_model, tmp_path, dtype, torch_dtype):
    manifest = make_cache(tiny_model, tmp_path / "c", n_contexts=20, dtype=dtype)
    tokens, _ = random_contexts(20)
    _, ref = tiny_model.run_with_cache(torch.from_numpy(tokens).long(), names_filter=HOOKS)
    shard = open_shard(shard_path(tmp_path / "c", 0), manifest)
    acts = shard.acts(HOOKS[0])
    assert acts.dtype == torch_dtype
    assert torch.equal(acts, ref[HOOKS[0]][:16].reshape(-1, 64).to(torch_dtype))


def test_manifest_describes_the_cache(tiny_model, tmp_path):
    manifest = make_cache(tiny_model, tmp_path / "c", n_contexts=20)
    on_disk = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert on_disk["complete"] is True
    assert on_disk["hooks"] == {HOOKS[0]: 64, HOOKS[1]: 64}
    assert on_disk["ctx_len"] == 32 and on_disk["dtype"] == "float32"
    assert on_disk["n_shards"] == 2 and manifest == on_disk


def test_rerun_of_a_complete_cache_writes_nothing(tiny_model, tmp_path):
    make_cache(tiny_model, tmp_path / "c", n_contexts=20)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "c" / "shards").iterdir()}
    make_cache(tiny_model, tmp_path / "c", n_contexts=20)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "c" / "shards").iterdir()}
    assert before == after


def test_resume_redoes_only_missing_shards_with_identical_bytes(tiny_model, tmp_path):
    make_cache(tiny_model, tmp_path / "full", n_contexts=50)
    make_cache(tiny_model, tmp_path / "part", n_contexts=50)
    part = tmp_path / "part"
    # Simulate a kill after shard 1: manifest incomplete, shard 2's record gone, shard 3 half-written.
    manifest = json.loads((part / "manifest.json").read_text())
    manifest.update(complete=False, n_contexts=None, n_tokens=None, n_shards=None)
    (part / "manifest.json").write_text(json.dumps(manifest))
    (part / "shards" / "shard_00002.json").unlink()
    (part / "shards" / "shard_00003.json").unlink()
    shard_path(part, 3).write_bytes(b"garbage")
    kept = shard_path(part, 0).stat().st_mtime_ns
    make_cache(tiny_model, part, n_contexts=50)
    assert shard_path(part, 0).stat().st_mtime_ns == kept
    for index in range(4):
        assert shard_path(part, index).read_bytes() == shard_path(tmp_path / "full", index).read_bytes()
    verify_cache(part, checksums=True)


def test_resume_with_other_settings_is_refused_and_keeps_data(tiny_model, tmp_path):
    make_cache(tiny_model, tmp_path / "c", n_contexts=20)
    before = sorted(p.name for p in (tmp_path / "c" / "shards").iterdir())
    with pytest.raises(CacheError, match="dtype"):
        make_cache(tiny_model, tmp_path / "c", n_contexts=20, dtype="float16")
    assert sorted(p.name for p in (tmp_path / "c" / "shards").iterdir()) == before


def test_truncated_shard_is_named_in_the_error(tiny_model, tmp_path):
    make_cache(tiny_model, tmp_path / "c", n_contexts=40)
    path = shard_path(tmp_path / "c", 1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CacheError, match="shard_00001.safetensors.*truncated"):
        ActivationStore(tmp_path / "c", HOOKS[0], batch_size=64).iter_batches(1).__next__()
    assert path.exists() and path.stat().st_size == len(data) // 2  # nothing deleted


def test_corrupt_shard_fails_checksum_verification(tiny_model, tmp_path):
    make_cache(tiny_model, tmp_path / "c", n_contexts=40)
    path = shard_path(tmp_path / "c", 0)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    verify_cache(tmp_path / "c")  # sizes and headers still fine
    with pytest.raises(CacheError, match="shard_00000.safetensors.*checksum"):
        verify_cache(tmp_path / "c", checksums=True)


def test_corrupt_header_is_named_in_the_error(tiny_model, tmp_path):
    make_cache(tiny_model, tmp_path / "c", n_contexts=20)
    path = shard_path(tmp_path / "c", 0)
    data = bytearray(path.read_bytes())
    data[10:20] = b"\xff" * 10
    path.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="shard_00000.safetensors"):
        verify_cache(tmp_path / "c")


def test_manifest_that_does_not_match_shards_is_an_error(tiny_model, tmp_path):
    make_cache(tiny_model, tmp_path / "c", n_contexts=20)
    manifest = read_manifest(tmp_path / "c")
    manifest["hooks"][HOOKS[0]] = 128
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match=r"shard_00000.safetensors.*\(512, 128\)"):
        verify_cache(tmp_path / "c")


def test_wrong_d_in_is_an_error_naming_the_manifest(tiny_model, tmp_path):
    make_cache(tiny_model, tmp_path / "c", n_contexts=20)
    with pytest.raises(CacheError, match="manifest.json.*d_in 64, expected 128"):
        ActivationStore(tmp_path / "c", HOOKS[0], batch_size=8, expected_d_in=128)
    with pytest.raises(CacheError, match="no hook 'blocks.5.hook_resid_post'"):
        ActivationStore(tmp_path / "c", "blocks.5.hook_resid_post", batch_size=8)


def test_unknown_hook_point_is_refused_before_writing(tiny_model, tmp_path):
    with pytest.raises(CacheError, match="blocks.9.hook_resid_post"):
        make_cache(tiny_model, tmp_path / "c", hooks=["blocks.9.hook_resid_post"])
    assert not (tmp_path / "c" / "manifest.json").exists()


def test_non_cache_folder_is_not_overwritten(tiny_model, tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "precious.txt").write_text("keep me")
    with pytest.raises(CacheError, match="not empty"):
        make_cache(tiny_model, tmp_path / "c")
    assert (tmp_path / "c" / "precious.txt").read_text() == "keep me"


def test_incomplete_cache_is_refused_by_the_store(tiny_model, tmp_path):
    make_cache(tiny_model, tmp_path / "c", n_contexts=20)
    manifest = read_manifest(tmp_path / "c")
    manifest["complete"] = False
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="incomplete"):
        ActivationStore(tmp_path / "c", HOOKS[0], batch_size=8)


def test_array_cache_round_trips_through_the_store(tmp_path):
    from saekit.data import write_array_cache

    acts = torch.randn(10, 8, 5)
    manifest = write_array_cache(tmp_path / "c", {"synthetic": acts}, contexts_per_shard=4)
    assert manifest["n_shards"] == 3 and manifest["hooks"] == {"synthetic": 5}
    verify_cache(tmp_path / "c", checksums=True)
    got = torch.cat(list(ActivationStore(tmp_path / "c", "synthetic", batch_size=7, shuffle=False)))
    assert torch.equal(got, acts.reshape(-1, 5))
    with pytest.raises(CacheError, match="already exists"):
        write_array_cache(tmp_path / "c", {"synthetic": acts})
