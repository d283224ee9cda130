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
    store = ActivationStore(tagged, "tag", batch_size=64, seed=0, buffer_shards=4, mix=16)
    shards_per_batch = [len(np.unique(ids(b) // CTX // PER_SHARD)) for b in store]
    assert np.mean(shards_per_batch) >= 12  # a window: 16 contexts from 16 random shards of 64
    measured = store.mixing(4)
    assert measured["mean_distinct_shards"] >= 12 and measured["mean_distinct_contexts"] >= 12


def test_every_token_once_per_epoch_in_any_mode(tagged):
    everything = np.arange(N_CONTEXTS * CTX)
    for kwargs in ({}, {"prefetch": False}, {"reuse_buffers": True, "prefetch_batches": 3}, {"mix": 1}):
        store = ActivationStore(tagged, "tag", batch_size=100, seed=2, **kwargs)
        got = np.concatenate([ids(b).copy() for b in store])
        assert np.array_equal(np.sort(got), everything), kwargs
        assert not np.array_equal(got, everything)
    same = [torch.cat([b.clone() for b in ActivationStore(tagged, "tag", batch_size=100, seed=2, **kw)])
            for kw in ({}, {"prefetch": False}, {"reuse_buffers": True})]
    assert torch.equal(same[0], same[1]) and torch.equal(same[0], same[2])


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
    store = ActivationStore(tagged, "tag", batch_size=64, seed=0, prefetch_batches=2)
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
        monkeypatch.setattr(r._gatherer, "gather", lambda keys, out, f=original: gathered.append(len(keys)) or f(keys, out))
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
