"""Moving rows of a cache into batch buffers, off the training thread.

`RowGatherer.gather(keys, out)` copies rows straight from the memory-mapped shards into `out`
(one `np.take` per shard and hook, the destination of each a contiguous block because the keys are
sorted: one copy per byte; a cache dtype other than the store's goes through a staging buffer),
optionally split at shard boundaries over `threads` threads. Shards are opened on first use and
stay mapped, so pages already mapped cost nothing in later epochs (the first epoch maps them).

`BufferPool` holds a ring of preallocated batch buffers (pinned when the batches go to a GPU), so
the steady state allocates nothing; a buffer comes back to the pool once the consumer has moved on
(and, for a GPU, once its host-to-device copy has finished).

`Background` runs an iterator on a daemon thread into a bounded queue: errors are raised in the
consumer, `close()` stops and joins the thread (the store calls it when its generator is closed,
e.g. on `break` or an exception in the training loop).
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saekit.data.shards import DTYPES, Shard, open_shard, shard_path

_NUMPY_OF = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.uint16}


def numpy_view(t: torch.Tensor) -> np.ndarray:
    """The numpy array sharing `t`'s memory (bfloat16 as uint16)."""
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


def torch_view(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """The tensor sharing `a`'s memory, as `dtype` (uint16 read as bfloat16)."""
    t = torch.from_numpy(a)
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


class RowGatherer:
    """Copies rows named by keys (`span id << 32 | row in its shard`) out of a cache's shards."""

    def __init__(self, cache_dir: Path, manifest: dict[str, Any], spans: list[tuple[int, int, int]],
                 hooks: list[str], dtype: torch.dtype, threads: int = 1) -> None:
        self.cache_dir = cache_dir
        self.threads = max(1, threads)
        self._pool: ThreadPoolExecutor | None = None
        self.manifest = manifest
        self.spans = spans
        self.hooks = hooks
        self.dtype = dtype
        self.cache_dtype = DTYPES[manifest["dtype"]]
        self.d_ins = {h: manifest["hooks"][h] for h in hooks}
        self._shards: dict[int, Shard] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def shard(self, span: int) -> Shard:
        """The span's shard, memory-mapped and checked against the manifest (CacheError naming it)."""
        with self._lock:
            if span not in self._shards:
                self._shards[span] = open_shard(shard_path(self.cache_dir, self.spans[span][0]), self.manifest)
            return self._shards[span]

    def allocate(self, n: int, pinned: bool = False) -> dict[str, torch.Tensor]:
        """{hook: empty [n, d_in] tensor of the store's dtype}."""
        return {h: torch.empty(n, d, dtype=self.dtype, pin_memory=pinned) for h, d in self.d_ins.items()}

    def gather(self, keys: np.ndarray, out: dict[str, torch.Tensor]) -> None:
        """out[hook][i] = the activation row of keys[i], for i < len(keys).

        keys: [n] int64, best sorted (each shard's rows then form one block, read in file order).
        out: {hook: [>= n, d_in]} contiguous tensors of the store's dtype.
        With `threads` > 1, the rows are split at shard boundaries into that many parts copied at once.
        """
        n = len(keys)
        span = keys >> 32
        local = keys & 0xFFFFFFFF
        cuts = np.flatnonzero(span[1:] != span[:-1]) + 1
        starts = np.concatenate([[0], cuts]).astype(np.int64)
        staging = {h: self._staging(h, n) for h in self.hooks} if self.cache_dtype != self.dtype else {}
        if self.threads > 1 and len(starts) > 1 and n >= 256:
            at = np.unique(starts[np.searchsorted(starts, np.arange(1, self.threads) * n // self.threads)
                                  .clip(0, len(starts) - 1)])
            bounds = [0, *[int(x) for x in at if 0 < x < n], n]
            parts = [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="saekit-store-gather")
            for _ in self._pool.map(lambda part: self._copy(span, local, starts, part, out, staging), parts):
                pass
        else:
            self._copy(span, local, starts, (0, n), out, staging)

    def _copy(self, span: np.ndarray, local: np.ndarray, starts: np.ndarray, part: tuple[int, int],
              out: dict[str, torch.Tensor], staging: dict[str, np.ndarray]) -> None:
        """The rows [lo, hi) of a gather (lo, hi at shard boundaries); one np.take per shard and hook."""
        lo, hi = part
        edges = [lo, *[int(x) for x in starts if lo < x < hi], hi]
        for hook in self.hooks:
            dst = staging[hook] if staging else numpy_view(out[hook])
            for a, b in zip(edges[:-1], edges[1:]):
                # mode="clip": no bounds-check buffering of `out` (keys are valid by construction)
                np.take(self.shard(int(span[a]))._acts[hook], local[a:b], axis=0, out=dst[a:b], mode="clip")
            if staging:
                out[hook][lo:hi].copy_(torch_view(dst[lo:hi], self.cache_dtype))

    def _staging(self, hook: str, n: int) -> np.ndarray:
        """A reusable [n, d_in] array of the cache's dtype, one per thread and hook."""
        buffers = self._local.__dict__.setdefault("staging", {})
        if hook not in buffers or len(buffers[hook]) < n:
            buffers[hook] = np.empty((n, self.d_ins[hook]), dtype=_NUMPY_OF[self.cache_dtype])
        return buffers[hook][:n]


class Stopped(Exception):
    """Raised inside a producer when its consumer has gone."""


class BufferPool:
    """A ring of `size` buffer sets {hook: [batch_size, d_in]} (or fresh tensors when `size` is 0)."""

    def __init__(self, gatherer: RowGatherer, batch_size: int, size: int, pinned: bool) -> None:
        self.gatherer = gatherer
        self.batch_size = batch_size
        self.pinned = pinned
        self._free: queue.Queue = queue.Queue()
        for _ in range(size):
            self._free.put((gatherer.allocate(batch_size, pinned), None))
        self.ring = size > 0

    def acquire(self, n: int, stop: threading.Event | None = None) -> dict[str, torch.Tensor]:
        """{hook: [>= n, d_in]} to fill (a ring buffer, or a fresh [n, d_in] one); waits for a free
        ring buffer, raising Stopped once `stop` is set."""
        if not self.ring:
            return self.gatherer.allocate(n)
        while True:
            if stop is not None and stop.is_set():
                raise Stopped
            try:
                buffers, event = self._free.get(timeout=0.05)
                break
            except queue.Empty:
                continue
        if event is not None:
            event.synchronize()  # its host-to-device copy has finished
        return buffers

    def release(self, buffers: dict[str, torch.Tensor], event: Any = None) -> None:
        """Give back a buffer set that `acquire` returned (reused once `event`, if any, has completed)."""
        if self.ring:
            self._free.put((buffers, event))


_END = object()


class Background:
    """The items of `source` (an iterator), produced on a daemon thread, at most `maxsize` ahead."""

    def __init__(self, source: Iterator[Any], maxsize: int, stop: threading.Event) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, maxsize))
        self._stop = stop
        self.thread = threading.Thread(target=self._run, args=(source,), daemon=True, name="saekit-store-producer")
        self.thread.start()

    def _run(self, source: Iterator[Any]) -> None:
        try:
            for item in source:
                if not self._put(item):
                    return
            self._put(_END)
        except Stopped:
            pass
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(error)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> "Background":
        return self

    def __next__(self) -> Any:
        item = self._queue.get()
        if item is _END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop the producer and wait for its thread to end."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self.thread.join(timeout=30)
