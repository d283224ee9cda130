"""The order in which `ActivationStore` visits a cache's rows: planned from `(seed, epoch)` alone.

A row is a (context, position) of the cache, named by a key `span id << 32 | row in its shard`
(int64), where a span is the part of one shard inside the store's context range. An epoch:

1. every span is cut into *chunks* of `chunk_contexts` consecutive contexts, and all the chunks of
   the cache are put in one random order;
2. consecutive chunks of that order form *windows* of `window_chunks` chunks (so about
   `window_contexts` contexts, drawn from `window_chunks` random stretches of the whole corpus:
   with the defaults, 64 different places rather than the 4 whole shards of the first store);
3. the rows of each window are shuffled and the windows concatenated: the *stream*. Batch `b` of
   the epoch is `stream[b * batch_size : (b + 1) * batch_size]` (the last one short unless
   `drop_last`), so every row occurs exactly once per epoch, and finding batch `b` costs index
   arithmetic over the chunks only (a resume reads nothing it skips).

A batch is handed out sorted by key, so each shard's rows form one contiguous block of the output
and are read in file order (an SAE's loss is the same for any order of the rows within a batch).
Under torchrun, rank `r` of `w` takes rows `[n r / w, n (r + 1) / w)` of each sorted global batch
of `n` and reads only those: the ranks' rows, concatenated, are the single-process batch, in the
same order, so a data-parallel run follows the single-process run to float tolerance. (A rank's
rows thus come from part of the batch's chunks; every loss but BatchTopK's selection is computed
over the global batch, and the gradients are averaged.)

Memory: the chunk table (3 int64 per chunk) and the keys of at most two windows.
"""

from __future__ import annotations

import numpy as np


class EpochPlan:
    """The chunks of a store's rows, and per epoch their order (`order(epoch)`).

    spans: [(shard index, first context, end context)] (contexts local to the shard).
    """

    def __init__(self, spans: list[tuple[int, int, int]], ctx_len: int, drop_bos: bool, batch_size: int,
                 seed: int, shuffle: bool, window_contexts: int, mix: int, drop_last: bool) -> None:
        self.spans = spans
        self.ctx_len = ctx_len
        self.positions = np.arange(1 if drop_bos else 0, ctx_len, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.chunk_contexts = max(1, window_contexts // max(1, mix))
        self.window_chunks = max(1, window_contexts // self.chunk_contexts)
        span_id, first, end = [], [], []
        for s, (_, c0, c1) in enumerate(spans):
            starts = np.arange(c0, c1, self.chunk_contexts, dtype=np.int64)
            span_id.append(np.full(len(starts), s, dtype=np.int64))
            first.append(starts)
            end.append(np.minimum(starts + self.chunk_contexts, c1))
        self.chunk_span = np.concatenate(span_id) if spans else np.zeros(0, np.int64)
        self.chunk_first = np.concatenate(first) if spans else np.zeros(0, np.int64)
        self.chunk_end = np.concatenate(end) if spans else np.zeros(0, np.int64)
        self.chunk_rows = (self.chunk_end - self.chunk_first) * len(self.positions)
        self.n_rows = int(self.chunk_rows.sum())
        span_rows = np.array([(c1 - c0) * len(self.positions) for _, c0, c1 in spans], dtype=np.int64)
        self._span_starts = np.concatenate([[0], np.cumsum(span_rows)])

    @property
    def n_batches(self) -> int:
        full, rest = divmod(self.n_rows, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def order(self, epoch: int) -> "EpochOrder":
        return EpochOrder(self, epoch)

    def chunk_keys(self, chunk: int) -> np.ndarray:
        """[rows of the chunk] keys, in file order."""
        s, c0, c1 = int(self.chunk_span[chunk]), int(self.chunk_first[chunk]), int(self.chunk_end[chunk])
        rows = (np.arange(c0, c1, dtype=np.int64)[:, None] * self.ctx_len + self.positions[None, :]).reshape(-1)
        return (np.int64(s) << 32) | rows

    def keys_of_flat(self, flat: np.ndarray) -> np.ndarray:
        """Keys of rows numbered 0..n_rows-1 in corpus order (span by span, context by context)."""
        flat = np.asarray(flat, dtype=np.int64)
        s = np.searchsorted(self._span_starts, flat, side="right") - 1
        local = flat - self._span_starts[s]
        c0 = np.array([c for _, c, _ in self.spans], dtype=np.int64)[s]
        context, pos = np.divmod(local, len(self.positions))
        return (s << 32) | ((c0 + context) * self.ctx_len + self.positions[pos])


class EpochOrder:
    """One epoch's stream of keys: chunk order, windows, and the batches cut from them."""

    def __init__(self, plan: EpochPlan, epoch: int) -> None:
        self.plan = plan
        rng = np.random.default_rng([plan.seed, epoch])
        n = len(plan.chunk_rows)
        self.chunks = rng.permutation(n) if plan.shuffle else np.arange(n)
        self.n_windows = -(-n // plan.window_chunks)
        ends = np.cumsum(plan.chunk_rows[self.chunks])
        bounds = np.minimum(np.arange(1, self.n_windows + 1) * plan.window_chunks, n) - 1
        self.window_end = ends[bounds] if n else np.zeros(0, np.int64)  # stream position after window w
        self._cache: dict[int, np.ndarray] = {}
        self.epoch = epoch

    def window_keys(self, w: int) -> np.ndarray:
        """[rows of window w] keys in stream order (shuffled within the window)."""
        if w not in self._cache:
            plan = self.plan
            chunks = self.chunks[w * plan.window_chunks:(w + 1) * plan.window_chunks]
            keys = np.concatenate([plan.chunk_keys(int(c)) for c in chunks])
            if plan.shuffle:
                keys = keys[np.random.default_rng([plan.seed, self.epoch, 1, w]).permutation(len(keys))]
            self._cache = {k: v for k, v in self._cache.items() if k == w - 1}  # at most two windows
            self._cache[w] = keys
        return self._cache[w]

    def stream(self, start: int, stop: int) -> np.ndarray:
        """Keys at stream positions [start, stop)."""
        parts = []
        w = int(np.searchsorted(self.window_end, start, side="right"))
        while start < stop:
            begin = int(self.window_end[w - 1]) if w else 0
            keys = self.window_keys(w)
            take = keys[start - begin:min(stop, int(self.window_end[w])) - begin]
            parts.append(take)
            start += len(take)
            w += 1
        if not parts:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def batch_keys(self, b: int, rank: int = 0, world: int = 1) -> np.ndarray:
        """Keys of this rank's rows of batch b: the batch sorted by key (one contiguous block per shard,
        in file order), then rows [n r / w, n (r + 1) / w) of it, so the ranks' rows, concatenated,
        are the single-process batch row for row (and a run on w ranks follows the 1-rank run)."""
        start = b * self.plan.batch_size
        n = min(self.plan.batch_size, self.plan.n_rows - start)
        keys = self.stream(start, start + n)
        if self.plan.shuffle:
            keys = np.sort(keys)
        return keys[n * rank // world:n * (rank + 1) // world]


def mixing(plan: EpochPlan, shard_of_span: list[int], n_batches: int, epoch: int = 0,
           max_runs: int | None = None) -> dict[str, float]:
    """How local the stream is: the mean number of distinct shards and of distinct contexts that
    `n_batches` consecutive batches touch (over the epoch's disjoint runs of `n_batches` batches, the
    first `max_runs` of them when given). Index arithmetic only: reads nothing."""
    order = plan.order(epoch)
    shards, contexts = [], []
    span_shard = np.asarray(shard_of_span, dtype=np.int64)
    firsts = range(0, plan.n_batches - n_batches + 1, n_batches)
    for first in firsts if max_runs is None else firsts[:max_runs]:
        keys = order.stream(first * plan.batch_size, min(plan.n_rows, (first + n_batches) * plan.batch_size))
        shard = span_shard[keys >> 32]
        shards.append(len(np.unique(shard)))
        contexts.append(len(np.unique(shard * (1 << 32) + (keys & 0xFFFFFFFF) // plan.ctx_len)))
    return {"batches": n_batches, "mean_distinct_shards": float(np.mean(shards)) if shards else 0.0,
            "mean_distinct_contexts": float(np.mean(contexts)) if contexts else 0.0}
