"""The store keeps a trainer fed: batches mixed across many shards, a normalisation sample over the
whole cache, a producer thread that stops with its consumer, ranks that read only their own rows,
and still every token exactly once per epoch with an exact resume from the consumer's position."""

import threading

import numpy as np
import pytest
import torch

from saekit.data import ActivationStore, write_array_cache
from saekit.data.shards import shard_path

N_CONTEXTS, CTX, PER_SHARD = 256, 16, 4  # 64 shards of 4 contexts


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """A cache whose row (context c, position p) holds [c, p, c * CTX + p, noise]: rows name themselves."""
    c = torch.arange(N_CONTEXTS, dtype=torch.float32)[:, None].expand(N_CONTEXTS, CTX)
    p = torch.arange(CTX, dtype=torch.float32)[None, :].expand(N_CONTEXTS, CTX)
    noise = torch.randn(N_CONTEXTS, CTX, generator=torch.Generator().manual_seed(0))
    acts = torch.stack([c, p, c * CTX + p, noise], dim=-1)
    out = tmp_path_factory.mktemp("feed") / "cache"
    write_array_cache(out, {"tag": acts}, contexts_per_shard=PER_SHARD)
    return out


def ids(batch: torch.Tensor) -> np.ndarray:
    return batch[:, 2].long().numpy()


def producer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "saekit-store-producer" and t.is_alive()]


def test_consecutive_batches_come_from_many_shards(tagged):
    """The first store read 4 whole shards at a time: a batch held rows of at most 4 (8 with the
    leftover) shards, and a million consecutive tokens came from the same stretch of the corpus."""
    store = ActivationStore(tagged, "tag", batch_size=64, seed=0, buffer_shards=4)  # mix: 64 chunks
    shards_per_batch = [len(np.unique(ids(b) // CTX // PER_SHARD)) for b in store]
    assert np.mean(shards_per_batch) >= 12  # a window: 16 contexts from 16 random shards of 64
    measured = store.mixing(4)
    assert measured["mean_distinct_shards"] >= 12 and measured["mean_distinct_contexts"] >= 12


def test_every_token_once_per_epoch_in_any_mode(tagged):
    """With or without the producer thread, reused buffers, gather threads: the same batches."""
    everything = np.arange(N_CONTEXTS * CTX)
    for kwargs in ({}, {"prefetch": False}, {"reuse_buffers": True, "prefetch_batches": 3}, {"mix": 1},
                   {"gather_threads": 3}):
        store = ActivationStore(tagged, "tag", batch_size=100, seed=2, **kwargs)
        got = np.concatenate([ids(b).copy() for b in store])
        assert np.array_equal(np.sort(got), everything), kwargs
        assert not np.array_equal(got, everything)
    same = [torch.cat([b.clone() for b in ActivationStore(tagged, "tag", batch_size=100, seed=2, **kw)])
            for kw in ({}, {"prefetch": False}, {"reuse_buffers": True}, {"gather_threads": 2})]
    assert all(torch.equal(same[0], other) for other in same[1:])


def test_resume_from_the_consumers_position_while_the_producer_runs_ahead(tagged):
    reference = [b.clone() for b in ActivationStore(tagged, "tag", batch_size=96, seed=5).iter_batches(2)]
    store = ActivationStore(tagged, "tag", batch_size=96, seed=5, prefetch_batches=6, reuse_buffers=True)
    stream = store.iter_batches(2)
    head = [next(stream).clone() for _ in range(50)]  # the producer is up to 6 batches further
    state = store.state_dict()
    stream.close()
    resumed = ActivationStore(tagged, "tag", batch_size=96, seed=5)
    resumed.load_state_dict(state)
    tail = list(resumed.iter_batches(2 - state["epoch"]))
    assert len(head) + len(tail) == len(reference) == 2 * store.batches_per_epoch
    assert all(torch.equal(a, b) for a, b in zip(head + tail, reference))
    with pytest.raises(ValueError, match="batch order version"):
        resumed.load_state_dict({k: v for k, v in state.items() if k != "plan"})  # a first-store checkpoint


def test_the_producer_thread_ends_with_its_consumer(tagged):
    store = ActivationStore(tagged, "tag", batch_size=64, seed=0)
    for i, _ in enumerate(store.iter_batches()):
        if i == 3:
            break
    assert not producer_threads()
    with pytest.raises(RuntimeError, match="in the training step"):
        for _ in store.iter_batches():
            raise RuntimeError("in the training step")
    assert not producer_threads()
    stream = store.iter_batches()
    next(stream)
    assert producer_threads()
    stream.close()
    assert not producer_threads()


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_corrupt_shard_read_by_the_producer_is_raised_in_the_consumer(tmp_path):
    write_array_cache(tmp_path / "c", {"tag": torch.randn(40, 8, 4)}, contexts_per_shard=4)
    path = shard_path(tmp_path / "c", 7)
    path.write_bytes(path.read_bytes()[:-64])
    with pytest.raises(Exception, match=rf"{path}: truncated"):
        list(ActivationStore(tmp_path / "c", "tag", batch_size=32, seed=0))
    assert not producer_threads()


def test_a_rank_gathers_only_its_own_rows(tagged, monkeypatch):
    whole = ActivationStore(tagged, "tag", batch_size=128, seed=3, drop_last=True)
    ranks = [ActivationStore(tagged, "tag", batch_size=128, seed=3, drop_last=True, rank=r, world=2)
             for r in range(2)]
    gathered = []
    for r in ranks:
        original = r._gatherer.gather
        monkeypatch.setattr(r._gatherer, "gather",
                            lambda keys, out, f=original: gathered.append(len(keys)) or f(keys, out))
    for a, b0, b1 in zip(whole, *ranks):
        assert b0.shape == b1.shape == (64, 4)
        assert torch.equal(a, torch.cat([b0, b1]))  # the single-process batch, row for row
    assert set(gathered) == {64} and len(gathered) == 2 * whole.batches_per_epoch
    with pytest.raises(ValueError, match="rank 2"):
        ActivationStore(tagged, "tag", batch_size=128, rank=2, world=2)


def test_normalisation_sample_spans_the_whole_cache(tagged):
    store = ActivationStore(tagged, "tag", batch_size=64, seed=0, context_range=(0, 240))
    sample = store.sample(512, seed=11)
    assert sample.shape == (512, 4)
    rows = ids(sample)
    assert len(np.unique(rows)) == 512 and rows.max() < 240 * CTX
    assert len(np.unique(rows // CTX // PER_SHARD)) >= 50  # of the 60 shards in range
    assert torch.equal(sample[:, 0] * CTX + sample[:, 1], sample[:, 2])  # whole rows
    assert torch.equal(store.sample(512, seed=11), sample)
    assert "shard_" in store.describe_rows([0])
    assert len(ids(store.sample(10**6, seed=1))) == 240 * CTX  # capped at the store's rows


def test_bfloat16_cache_read_as_bfloat16_and_float32(tmp_path):
    acts = torch.randn(24, 8, 6, generator=torch.Generator().manual_seed(1))
    write_array_cache(tmp_path / "c", {"h": acts}, contexts_per_shard=4, dtype="bfloat16")
    want = acts.reshape(-1, 6).to(torch.bfloat16)
    for dtype in (torch.bfloat16, torch.float32):
        for threads in (1, 2):
            got = torch.cat(list(ActivationStore(tmp_path / "c", "h", batch_size=40, shuffle=False, dtype=dtype,
                                                 gather_threads=threads)))
            assert got.dtype == dtype and torch.equal(got, want.to(dtype))


def test_training_scales_inputs_from_a_sample_of_every_shard(tmp_path):
    """Shard i's activations are (i + 1)^2 times larger: a sample from one shard (the first store's
    first buffer, with buffer_shards = 1) gives an input scale far from the whole cache's."""
    import json

    from conftest import small_train_config
    from saekit.sae.weights import estimate_activation_scale
    from saekit.train import train

    g = torch.Generator().manual_seed(0)
    factor = ((torch.arange(32, dtype=torch.float32) // 2 + 1) ** 2)[:, None, None]  # 2 contexts a shard
    acts = torch.randn(32, 16, 8, generator=g) * factor
    write_array_cache(tmp_path / "c", {"h": acts}, contexts_per_shard=2)
    cfg = small_train_config(tmp_path / "c", tmp_path / "run", n_tokens=128 * 2, batch_size=128,
                             normalize_sample_tokens=256, holdout_fraction=0.0)
    (folder,) = train(cfg, progress=False)
    got = json.loads((folder / "metrics.json").read_text())["activation_scale"]
    whole = estimate_activation_scale(acts.reshape(-1, 8))
    assert abs(got / whole - 1) < 0.2, (got, whole)
