"""Stream shuffled batches of activations `[batch, d_in]` from a cache (`ActivationStore`).

An epoch is planned from `(seed, epoch)` alone (`saekit.data.order`): the cache's contexts are cut
into chunks of a few consecutive contexts, the chunks of the whole cache put in a random order,
and each run of `mix` consecutive chunks (a *window*, about `buffer_shards` shards' worth of rows,
drawn from up to `mix` shards spread over the corpus) is shuffled row by row; batches are cut from
the concatenated windows. Every token is yielded exactly once per epoch (the last batch may be
short unless `drop_last`), the order depends only on the seed, and `state_dict()` /
`load_state_dict()` give the consumer's position for an exact resume (skipping costs index
arithmetic only, no reads).

Batches are assembled off the training thread (`saekit.data.feed`): a producer thread gathers the
rows of each batch straight from the memory-mapped shards into a ring of reusable buffers (pinned
when the batches go to a GPU), at most `prefetch_batches` ahead; the consumer then makes one
host-to-device copy per hook per batch, on a side CUDA stream. Under torchrun (`rank`, `world`) a
rank gathers and copies only its own rows of each global batch.

`OnlineActivationStore` (in `saekit.data.online`) runs the model on the fly instead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saekit.data.feed import Background, BufferPool, RowGatherer
from saekit.data.online import OnlineActivationStore  # noqa: F401 (re-exported)
from saekit.data.order import EpochPlan, mixing
from saekit.data.shards import CacheError, check_hooks, check_manifest_matches_shards, read_manifest, shard_path

PLAN_VERSION = 2  # the order of `saekit.data.order`; 1 was whole shards read `buffer_shards` at a time


class ActivationStore:
    """Shuffled batches of one hook point's activations (or several hooks', row-aligned) from a cache.

    With `hook` a string, yields float tensors [rows, d_in] (contiguous, on `device`, in `dtype`);
    with a list of hooks, yields {hook: [rows, d_in_hook]} whose rows are the same tokens, so SAEs on
    several hook points of one cache train from one read of each batch. `rows` is `batch_size`, or
    this rank's share of it under `world` > 1 (rows [n r / w, n (r + 1) / w) of each global batch).

    buffer_shards: shards' worth of rows shuffled together (a window); mix: the number of chunks a
    window is drawn from (so up to `mix` shards spread over the corpus). prefetch: gather on a
    background thread, up to `prefetch_batches` batches ahead. reuse_buffers: yield views of a ring
    of reusable buffers (no allocation per batch) that stay valid only until the next batch is asked
    for; always the case for a GPU `device` (the yielded tensors are then device copies).
    pin_memory: page-locked ring buffers (default: when `device` is a GPU). gather_threads: threads
    copying the parts of one batch at once (more than 1 helps where cores are free, e.g. a GPU host).
    """

    def __init__(
        self,
        cache_dir: str | Path,
        hook: str | list[str],
        batch_size: int,
        seed: int = 0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        drop_bos: bool = True,
        shuffle: bool = True,
        buffer_shards: int = 4,
        context_range: tuple[int, int] | None = None,
        drop_last: bool = False,
        prefetch: bool = True,
        expected_d_in: int | None = None,
        mix: int = 64,
        prefetch_batches: int = 2,
        reuse_buffers: bool = False,
        rank: int = 0,
        world: int = 1,
        pin_memory: bool | None = None,
        gather_threads: int = 1,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.manifest = read_manifest(self.cache_dir)
        if not self.manifest.get("complete"):
            raise CacheError(f"{self.cache_dir / 'manifest.json'}: the cache is incomplete; run the same "
                             f"`saekit cache` command again to finish it")
        check_manifest_matches_shards(self.cache_dir, self.manifest)
        self.hooks: list[str] = [hook] if isinstance(hook, str) else list(hook)
        self._single = isinstance(hook, str)
        if not self.hooks:
            raise ValueError("ActivationStore needs at least one hook")
        for name in self.hooks:
            check_hooks(self.manifest, {name: expected_d_in if expected_d_in is not None
                                        else self.manifest["hooks"].get(name, -1)}, self.cache_dir)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not one of the {world} ranks")
        self.hook = self.hooks[0]
        self.d_in: int = self.manifest["hooks"][self.hook]
        self.d_ins: dict[str, int] = {name: self.manifest["hooks"][name] for name in self.hooks}
        self.last_rows: np.ndarray | None = None
        self.batch_size = batch_size
        self.seed = seed
        self.device = torch.device(device)
        self.dtype = dtype
        self.shuffle = shuffle
        self.buffer_shards = max(1, buffer_shards)
        self.drop_last = drop_last
        self.prefetch = prefetch
        self.prefetch_batches = max(1, prefetch_batches)
        self.reuse_buffers = reuse_buffers or self.device.type != "cpu"
        self.rank, self.world = rank, world
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else pin_memory
        self.ctx_len: int = self.manifest["ctx_len"]
        self.drop_bos = drop_bos and bool(self.manifest.get("prepend_bos", False))
        self._spans = self._shard_spans(context_range)
        self.context_range: tuple[int, int] = context_range or (0, self.manifest["n_contexts"])
        self.plan = EpochPlan(self._spans, self.ctx_len, self.drop_bos, batch_size, seed, shuffle,
                              self.buffer_shards * self.manifest["contexts_per_shard"], mix, drop_last)
        self._gatherer = RowGatherer(self.cache_dir, self.manifest, self._spans, self.hooks, dtype, gather_threads)
        self._copy_stream: Any = None
        self.epoch = 0
        self.batch_in_epoch = 0

    def _shard_spans(self, context_range: tuple[int, int] | None) -> list[tuple[int, int, int]]:
        """[(shard index, first local context, end local context)] of the shards in range."""
        per = self.manifest["contexts_per_shard"]
        total = self.manifest["n_contexts"]
        lo, hi = context_range if context_range is not None else (0, total)
        if not 0 <= lo < hi <= total:
            raise ValueError(f"context_range {context_range} is outside the cache's 0..{total} contexts")
        spans = []
        for index in range(self.manifest["n_shards"]):
            start, end = index * per, min((index + 1) * per, total)
            a, b = max(start, lo), min(end, hi)
            if a < b:
                spans.append((index, a - start, b - start))
        return spans

    @property
    def n_tokens(self) -> int:
        """Tokens per epoch (after dropping BOS positions), over all ranks."""
        return self.plan.n_rows

    @property
    def batches_per_epoch(self) -> int:
        return self.plan.n_batches

    def mixing(self, n_batches: int, epoch: int = 0, max_runs: int | None = None) -> dict[str, float]:
        """Mean distinct shards and contexts in `n_batches` consecutive batches (see `order.mixing`)."""
        return mixing(self.plan, [index for index, _, _ in self._spans], n_batches, epoch, max_runs)

    # ---- producing and delivering ---------------------------------------------------------------
    def _produce(self, epoch: int, first: int, n_epochs: int | None, pool: BufferPool,
                 stop: threading.Event) -> Iterator[tuple[int, int, np.ndarray, dict[str, torch.Tensor]]]:
        """(epoch, batch index, this rank's keys, filled buffers) from batch `first` of `epoch` on."""
        end = None if n_epochs is None else epoch + n_epochs
        while end is None or epoch < end:
            order = self.plan.order(epoch)
            for b in range(first, self.plan.n_batches):
                keys = order.batch_keys(b, self.rank, self.world)
                buffers = pool.acquire(len(keys), stop)
                try:
                    self._gatherer.gather(keys, buffers)
                except BaseException:
                    pool.release(buffers)
                    raise
                yield epoch, b, keys, buffers
            epoch, first = epoch + 1, 0

    def _deliver(self, host: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Any]:
        """The batch on `device` (one copy per hook), and the CUDA event that ends the copies."""
        if self.device.type == "cpu":
            return host, None
        if self.device.type != "cuda":
            return {h: t.to(self.device) for h, t in host.items()}, None
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(self.device)
        event = torch.cuda.Event()
        with torch.cuda.stream(self._copy_stream):
            moved = {h: t.to(self.device, non_blocking=True) for h, t in host.items()}
            event.record(self._copy_stream)
        current = torch.cuda.current_stream(self.device)
        current.wait_event(event)
        for t in moved.values():
            t.record_stream(current)  # allocated on the side stream, used on the current one
        return moved, event

    def _batches(self, n_epochs: int | None) -> Iterator[Any]:
        """Batches from the current position over `n_epochs` epochs (forever when None)."""
        if self.batch_in_epoch >= self.plan.n_batches:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        if self.plan.n_batches == 0:
            return
        ring = self.prefetch_batches + 2 if self.reuse_buffers else 0
        pool = BufferPool(self._gatherer, -(-self.batch_size // self.world), ring, self.pin_memory)
        stop = threading.Event()
        source: Any = self._produce(self.epoch, self.batch_in_epoch, n_epochs, pool, stop)
        if self.prefetch:
            source = Background(source, self.prefetch_batches, stop)
        try:
            for epoch, b, keys, host in source:
                self.last_rows = keys
                batch, event = self._deliver({h: t[:len(keys)] for h, t in host.items()})
                done = b + 1 == self.plan.n_batches
                self.epoch, self.batch_in_epoch = (epoch + 1, 0) if done else (epoch, b + 1)
                yield batch[self.hook] if self._single else batch
                pool.release(host, event)
        finally:
            stop.set()
            source.close()

    # ---- iteration, sampling and position --------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        """Batches from the current position to the end of the current epoch (then the epoch advances)."""
        return self._batches(1)

    def iter_batches(self, n_epochs: int | None = None) -> Iterator[Any]:
        """Batches over `n_epochs` more epochs (forever when None), from the current position."""
        return self._batches(n_epochs)

    def sample(self, n_rows: int, seed: int) -> torch.Tensor | dict[str, torch.Tensor]:
        """`n_rows` rows drawn uniformly without replacement from the whole store (every shard in
        range), on the CPU in `dtype`: [n, d_in], or {hook: [n, d_in]}. For the input scale and b_dec."""
        n = min(n_rows, self.plan.n_rows)
        flat = np.sort(np.random.default_rng([seed, 7]).choice(self.plan.n_rows, size=n, replace=False))
        keys = self.plan.keys_of_flat(flat)
        out = self._gatherer.allocate(n)
        self._gatherer.gather(keys, out)
        self.last_rows = keys
        return out[self.hook] if self._single else out

    def describe_rows(self, batch_rows: np.ndarray | torch.Tensor) -> str:
        """Where rows of the last batch (or sample) come from: shard files and token ranges.

        batch_rows: indices into the last yielded batch (e.g. rows holding NaN).
        """
        if self.last_rows is None:
            return "no batch yielded yet"
        keys = self.last_rows[np.asarray(batch_rows, dtype=np.int64)]
        parts = []
        for s in np.unique(keys >> 32):
            index, c0, _ = self._spans[int(s)]
            local = np.sort(keys[(keys >> 32) == s] & 0xFFFFFFFF)
            first_token = index * self.manifest["contexts_per_shard"] * self.ctx_len
            parts.append(f"{shard_path(self.cache_dir, index)} rows {local[0]}..{local[-1]} "
                         f"(dataset tokens {first_token + local[0]}..{first_token + local[-1]})")
        return "; ".join(parts)

    def state_dict(self) -> dict[str, int]:
        """The consumer's position, for checkpoints: resuming from it continues with the next batch
        exactly (batches the producer prepared ahead are not counted)."""
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "seed": self.seed,
                "batch_size": self.batch_size, "plan": PLAN_VERSION}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed or state.get("batch_size", self.batch_size) != self.batch_size:
            raise ValueError(f"store state was saved with seed {state.get('seed')} and batch_size "
                             f"{state.get('batch_size')}; this store has {self.seed} and {self.batch_size}")
        if state.get("plan", 1) != PLAN_VERSION:
            raise ValueError(f"store state was saved by a store with batch order version {state.get('plan', 1)}; "
                             f"this saekit plans batches with version {PLAN_VERSION}, so resuming would repeat "
                             f"and skip tokens: start the run again (another --out)")
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
