"""ActivationStore: every token once per epoch, seed-determined order, exact resume, bounded reads."""

import numpy as np
import pytest
import torch

from conftest import context_blocks, random_contexts
from saekit.data import ActivationStore, OnlineActivationStore, write_cache

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("store") / "cache"
    tokens, docs = random_contexts(90)
    write_cache(tiny_model, context_blocks(tokens, docs), out, [HOOK], n_contexts=90, contexts_per_shard=16,
                batch_size=16, progress=False)
    _, ref = tiny_model.run_with_cache(torch.from_numpy(tokens).long(), names_filter=[HOOK])
    return out, ref[HOOK]  # ref: [90, 32, 64]


def multiset(rows):
    """Rows as a sorted list of tuples (equal activation rows can repeat: same token at position 1)."""
    return sorted(map(tuple, rows.tolist()))


def test_every_token_exactly_once_per_epoch(cache):
    out, ref = cache
    store = ActivationStore(out, HOOK, batch_size=100, seed=3, buffer_shards=2)
    batches = list(store)
    assert multiset(torch.cat(batches)) == multiset(ref[:, 1:].reshape(-1, 64))  # BOS positions dropped
    assert store.n_tokens == 90 * 31 and len(batches) == store.batches_per_epoch == 28
    assert all(len(b) == 100 for b in batches[:-1]) and len(batches[-1]) == 90 * 31 - 27 * 100
    assert store.epoch == 1


def test_same_seed_gives_the_same_order_with_or_without_prefetch(cache):
    out, _ = cache
    a = torch.cat(list(ActivationStore(out, HOOK, batch_size=64, seed=1)))
    b = torch.cat(list(ActivationStore(out, HOOK, batch_size=64, seed=1, prefetch=False)))
    assert torch.equal(a, b)


def test_another_seed_reorders_the_same_rows(cache):
    out, _ = cache
    a = torch.cat(list(ActivationStore(out, HOOK, batch_size=64, seed=1)))
    c = torch.cat(list(ActivationStore(out, HOOK, batch_size=64, seed=2)))
    assert not torch.equal(a, c)
    assert multiset(a) == multiset(c)


def test_epochs_are_reshuffled(cache):
    out, _ = cache
    store = ActivationStore(out, HOOK, batch_size=64, seed=1)
    first, second = torch.cat(list(store)), torch.cat(list(store))
    assert not torch.equal(first, second)
    assert torch.allclose(first.sum(0), second.sum(0), atol=1e-3)


def test_resume_from_state_dict_continues_exactly(cache):
    out, _ = cache
    reference = list(ActivationStore(out, HOOK, batch_size=50, seed=5, buffer_shards=2).iter_batches(2))
    store = ActivationStore(out, HOOK, batch_size=50, seed=5, buffer_shards=2)
    stream = store.iter_batches(2)
    head = [next(stream) for _ in range(70)]  # into the second epoch
    state = store.state_dict()
    resumed_store = ActivationStore(out, HOOK, batch_size=50, seed=5, buffer_shards=2)
    resumed_store.load_state_dict(state)
    tail = list(resumed_store.iter_batches(2 - state["epoch"]))
    assert len(head) + len(tail) == len(reference)
    for got, want in zip(head + tail, reference):
        assert torch.equal(got, want)


def test_reads_are_bounded_to_the_window(cache):
    """Rows of a run of batches shorter than a window come from at most two windows' contexts
    (buffer_shards shards' worth each): the page-cache working set stays bounded."""
    out, _ = cache
    store = ActivationStore(out, HOOK, batch_size=64, seed=0, buffer_shards=2, prefetch=False)
    keys = []
    for _ in store:
        keys.append(store.last_rows.copy())
    window_contexts = 2 * 16
    for first in range(0, len(keys) - 7):
        run = np.concatenate(keys[first:first + 7])  # 448 rows < a window's 32 * 31
        contexts = np.unique((run >> 32) * 1000 + (run & 0xFFFFFFFF) // 32)
        assert len(contexts) <= 2 * window_contexts


def test_keep_bos_unshuffled_and_context_range(cache):
    out, ref = cache
    store = ActivationStore(out, HOOK, batch_size=32, shuffle=False, drop_bos=False, context_range=(20, 40))
    got = torch.cat(list(store))
    assert torch.equal(got, ref[20:40].reshape(-1, 64))


def test_drop_last_and_dtype_and_state_guard(cache):
    out, _ = cache
    store = ActivationStore(out, HOOK, batch_size=1000, drop_last=True, dtype=torch.float16)
    batches = list(store)
    assert len(batches) == 2 and all(b.shape == (1000, 64) and b.dtype == torch.float16 for b in batches)
    with pytest.raises(ValueError, match="seed"):
        ActivationStore(out, HOOK, batch_size=1000, seed=9).load_state_dict(store.state_dict())


class TaggingModel(torch.nn.Module):
    """A stand-in model whose hook activation at (context, position) is that token's id, repeated over
    3 features: with unique ids, the rows the store yields name exactly which positions they came from."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def run_with_hooks(self, tokens, stop_at_layer=None, fwd_hooks=()):
        acts = tokens.float()[..., None].expand(-1, -1, 3)
        for _, hook in fwd_hooks:
            hook(acts, None)


def test_online_store_yields_every_activation_once():
    n_contexts, ctx_len = 40, 32
    ids = torch.arange(n_contexts * ctx_len).reshape(n_contexts, ctx_len)  # unique per (context, position)
    store = OnlineActivationStore(TaggingModel(), iter(ids.numpy()), HOOK, batch_size=64, buffer_tokens=512,
                                  batch_contexts=4, seed=0)
    got = torch.cat(list(store))
    assert torch.equal(got[:, 0], got[:, 2])  # rows are whole rows, not mixed
    yielded = got[:, 0].long()
    assert torch.equal(yielded.sort().values, ids[:, 1:].flatten())  # each non-BOS position exactly once
    assert not torch.equal(yielded, ids[:, 1:].flatten())  # shuffled


def test_several_hooks_give_row_aligned_batches(tiny_model, tmp_path):
    from conftest import context_blocks
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    tokens, docs = random_contexts(40)
    write_cache(tiny_model, context_blocks(tokens, docs), tmp_path / "c", hooks, n_contexts=40,
                contexts_per_shard=16, progress=False)
    _, ref = tiny_model.run_with_cache(torch.from_numpy(tokens).long(), names_filter=hooks)
    store = ActivationStore(tmp_path / "c", hooks, batch_size=100, seed=4)
    both = list(store)
    assert all(set(b) == set(hooks) for b in both)
    pairs = torch.cat([torch.cat([b[hooks[0]], b[hooks[1]]], dim=1) for b in both])
    expected = torch.cat([ref[hooks[0]][:, 1:], ref[hooks[1]][:, 1:]], dim=-1).reshape(-1, 128)
    assert multiset(pairs) == multiset(expected)
    single = torch.cat(list(ActivationStore(tmp_path / "c", hooks[1], batch_size=100, seed=4)))
    assert torch.equal(single, torch.cat([b[hooks[1]] for b in both]))


def test_describe_rows_names_shard_and_tokens(cache):
    out, _ = cache
    store = ActivationStore(out, HOOK, batch_size=64, shuffle=False, drop_bos=False)
    next(iter(store))
    text = store.describe_rows([3, 5])
    assert "shard_00000.safetensors rows 3..5" in text and "dataset tokens 3..5" in text
