"""Stream shuffled batches of activations `[batch, d_in]` from a cache, or from a model on the fly.

`ActivationStore` (from a cache) — an epoch is planned from `(seed, epoch)` alone:
1. the shards (optionally only those within `context_range`) are put in a random order;
2. they are read `buffer_shards` at a time (memory-mapped, so a cache larger than RAM works: at
   most `buffer_shards` shards are in memory, plus one being prefetched);
3. the rows of a buffer (minus BOS positions with `drop_bos`) and the rows left over from the
   previous buffer are shuffled together and cut into batches; the leftover (< batch_size) moves on.
Every token is yielded exactly once per epoch (the last batch may be short unless `drop_last`), the
order depends only on the seed, and `state_dict()` / `load_state_dict()` give the position for an
exact resume (skipping costs index arithmetic only, no reads).

`OnlineActivationStore` — no cache: runs the model on packed contexts, keeps a mixing buffer of
activations, and yields random halves of it, refilling as it goes (for small models).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saekit.data.shards import (CacheError, check_hooks, check_manifest_matches_shards, open_shard, read_manifest,
                                shard_path)


class ActivationStore:
    """Shuffled batches of one hook point's activations (or several hooks', row-aligned) from a cache.

    With `hook` a string, yields float tensors [batch_size, d_in] (contiguous, on `device`, in
    `dtype`); with a list of hooks, yields {hook: [batch_size, d_in_hook]} whose rows are the same
    tokens, so SAEs on several hook points of one cache train from one read of each batch.
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
        self.ctx_len: int = self.manifest["ctx_len"]
        self.drop_bos = drop_bos and bool(self.manifest.get("prepend_bos", False))
        self._spans = self._shard_spans(context_range)
        self.context_range: tuple[int, int] = context_range or (0, self.manifest["n_contexts"])
        self.epoch = 0
        self.batch_in_epoch = 0

    # ---- planning -------------------------------------------------------------------------------
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

    def _rows_of(self, span: tuple[int, int, int]) -> np.ndarray:
        """Row indices (context * ctx_len + pos) of a shard span, BOS positions dropped if asked."""
        _, c0, c1 = span
        positions = np.arange(1 if self.drop_bos else 0, self.ctx_len)
        return (np.arange(c0, c1)[:, None] * self.ctx_len + positions[None, :]).reshape(-1)

    @property
    def n_tokens(self) -> int:
        """Tokens per epoch (after dropping BOS positions)."""
        per_ctx = self.ctx_len - (1 if self.drop_bos else 0)
        return sum((c1 - c0) * per_ctx for _, c0, c1 in self._spans)

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.n_tokens, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def _plan(self, epoch: int) -> Iterator[tuple[list[int], list[np.ndarray]]]:
        """Per buffer, lazily: (span ids read, batches), a batch being row keys (span id << 32 | row).

        Only one buffer's index arrays exist at a time, so planning a 1B-token epoch is cheap.
        """
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self._spans)) if self.shuffle else np.arange(len(self._spans))
        leftover = np.zeros(0, dtype=np.int64)
        for start in range(0, len(order), self.buffer_shards):
            span_ids = [int(s) for s in order[start:start + self.buffer_shards]]
            rows = np.concatenate([leftover] + [(np.int64(s) << 32) | self._rows_of(self._spans[s])
                                                for s in span_ids])
            if self.shuffle:
                rows = rows[rng.permutation(len(rows))]
            n_full = len(rows) // self.batch_size
            batches = [rows[i * self.batch_size:(i + 1) * self.batch_size] for i in range(n_full)]
            leftover = rows[n_full * self.batch_size:]
            if start + self.buffer_shards >= len(order) and len(leftover) and not self.drop_last:
                batches.append(leftover)
            yield span_ids, batches

    # ---- reading --------------------------------------------------------------------------------
    def _load(self, span_ids: list[int]) -> dict[int, dict[str, torch.Tensor]]:
        """{span id: {hook: the shard's [rows, d_in] activations read into memory as `dtype`}}."""
        loaded = {}
        for s in span_ids:
            shard = open_shard(shard_path(self.cache_dir, self._spans[s][0]), self.manifest)
            loaded[s] = {}
            for name in self.hooks:
                acts = shard.acts(name)
                loaded[s][name] = acts.to(self.dtype) if acts.dtype != self.dtype else acts.clone()
        return loaded

    def _batches(self, epoch: int, skip: int) -> Iterator[Any]:
        """The epoch's batches after the first `skip`; buffers wholly skipped are never read.

        Memory: the current buffer's shards, the shards that rows carried over from earlier buffers
        came from, and (with prefetch) the next buffer being read by a background thread.
        """
        pinned = self.device.type == "cuda"
        loaded: dict[int, dict[str, torch.Tensor]] = {}
        prefetched: dict[str, Any] = {}
        plan = self._plan(epoch)
        upcoming = next(plan, None)
        seen = 0
        while upcoming is not None:
            span_ids, batches = upcoming
            upcoming = next(plan, None)
            first = max(0, skip - seen)
            seen += len(batches)
            if first >= len(batches):
                continue
            needed = {int(s) for b in batches[first:] for s in np.unique(b >> 32)}
            loaded = {s: t for s, t in loaded.items() if s in needed}
            if prefetched.get("spans") == span_ids:
                prefetched["thread"].join()
                loaded.update(prefetched.get("data") or self._load(span_ids))
            loaded.update(self._load([s for s in needed if s not in loaded]))
            prefetched = {}
            if self.prefetch and upcoming is not None:
                prefetched = {"spans": upcoming[0]}
                target = prefetched
                prefetched["thread"] = threading.Thread(target=self._prefetch, args=(target,), daemon=True)
                prefetched["thread"].start()
            for rows in batches[first:]:
                yield self._gather(loaded, rows, pinned)

    def _prefetch(self, target: dict[str, Any]) -> None:
        """Read the next buffer in the background; on an error (a corrupt shard) leave it to the main
        thread, which reads that buffer again and raises the error where it can be caught."""
        try:
            target.update(data=self._load(target["spans"]))
        except Exception:
            pass

    def _gather(self, loaded: dict[int, dict[str, torch.Tensor]], rows: np.ndarray,
                pinned: bool) -> torch.Tensor | dict[str, torch.Tensor]:
        self.last_rows = rows
        span_of = rows >> 32
        local = torch.from_numpy(rows & 0xFFFFFFFF)
        spans = np.unique(span_of)
        masks = {int(s): torch.from_numpy(span_of == s) for s in spans}
        batch = {}
        for name in self.hooks:
            if len(spans) == 1:
                out = loaded[int(spans[0])][name].index_select(0, local)
                out = out.pin_memory() if pinned else out
            else:
                out = torch.empty(len(rows), self.d_ins[name], dtype=self.dtype, pin_memory=pinned)
                for s, mask in masks.items():
                    out[mask] = loaded[s][name].index_select(0, local[mask])
            batch[name] = out.to(self.device, non_blocking=True) if self.device.type != "cpu" else out
        return batch[self.hook] if self._single else batch

    def describe_rows(self, batch_rows: np.ndarray | torch.Tensor) -> str:
        """Where rows of the last batch come from: shard files and token ranges (for error messages).

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

    # ---- iteration and position -------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        """Batches from the current position to the end of the current epoch (then the epoch advances)."""
        for batch in self._batches(self.epoch, self.batch_in_epoch):
            self.batch_in_epoch += 1
            yield batch
        self.epoch += 1
        self.batch_in_epoch = 0

    def iter_batches(self, n_epochs: int | None = None) -> Iterator[Any]:
        """Batches over `n_epochs` more epochs (forever when None), from the current position."""
        done = 0
        while n_epochs is None or done < n_epochs:
            yield from self
            done += 1

    def state_dict(self) -> dict[str, int]:
        """The position, for checkpoints: resuming from it continues with the next batch exactly."""
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "seed": self.seed,
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed or state.get("batch_size", self.batch_size) != self.batch_size:
            raise ValueError(f"store state was saved with seed {state.get('seed')} and batch_size "
                             f"{state.get('batch_size')}; this store has {self.seed} and {self.batch_size}")
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])


class OnlineActivationStore:
    """Activations computed on the fly from a model: a mixing buffer, no cache on disk.

    contexts: an iterator of [ctx_len] token arrays (e.g. `saekit.corpus.pack_contexts`).
    Yields [batch_size, d_in] tensors; each refill runs the model over `batch_contexts` contexts at a
    time until the buffer holds `buffer_tokens` rows, then yields a random half of them.
    """

    def __init__(self, model: Any, contexts: Iterator[np.ndarray], hook: str, batch_size: int,
                 buffer_tokens: int = 1 << 16, seed: int = 0, drop_bos: bool = True,
                 batch_contexts: int = 32, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        from saekit.data.cache import _stop_layer

        self.model = model
        self.contexts = contexts
        self.hook = hook
        self.batch_size = batch_size
        self.buffer_tokens = max(buffer_tokens, 2 * batch_size)
        self.generator = torch.Generator().manual_seed(seed)
        self.drop_bos = drop_bos
        self.batch_contexts = batch_contexts
        self.device = torch.device(device)
        self.dtype = dtype
        self._stop = _stop_layer([hook])

    def _run(self, tokens: np.ndarray) -> torch.Tensor:
        grabbed: list[torch.Tensor] = []
        model_device = next(self.model.parameters()).device
        batch = torch.from_numpy(np.stack(tokens).astype(np.int64)).to(model_device)
        with torch.inference_mode():
            self.model.run_with_hooks(batch, stop_at_layer=self._stop,
                                      fwd_hooks=[(self.hook, lambda act, hook: grabbed.append(act))])
        acts = grabbed[0]
        if self.drop_bos:
            acts = acts[:, 1:]
        return acts.reshape(-1, acts.shape[-1]).to("cpu", self.dtype)

    def __iter__(self) -> Iterator[Any]:
        buffer = torch.zeros(0)
        exhausted = False
        while True:
            parts = [buffer]
            n = len(buffer)
            while n < self.buffer_tokens and not exhausted:
                chunk = [c for _, c in zip(range(self.batch_contexts), self.contexts)]
                if not chunk:
                    exhausted = True
                    break
                acts = self._run(chunk)
                parts.append(acts)
                n += len(acts)
            buffer = torch.cat([p for p in parts if p.numel()]) if n else torch.zeros(0)
            if n == 0:
                return
            buffer = buffer[torch.randperm(len(buffer), generator=self.generator)]
            n_out = len(buffer) if exhausted else len(buffer) // 2
            n_out -= n_out % self.batch_size if not exhausted else 0
            for start in range(0, n_out, self.batch_size):
                yield buffer[start:start + self.batch_size].contiguous().to(self.device)
            buffer = buffer[n_out:]
            if exhausted:
                return
