"""The streaming passes of `saekit collect` over a cache: memory bounded by latents x examples kept.

`ContextReader` reads contexts (token ids, activations) by global index from memory-mapped shards;
`TopKeys` is a per-latent streaming top-k ([k, n_latents] tensors merged batch by batch); `scan` is
pass 1 (statistics, top contexts, uniform samples of activating and of silent windows) and
`scan_hard_negatives` pass 2. See collect.py for the whole procedure.

Windows (delphi's examples): each context's positions from `first_pos` on are cut into blocks of
`window` tokens, the last block shifted back to end at the context's end (so it may overlap the one
before it); `window_starts` gives their first positions. Quantile samples and random negatives are
drawn over these windows, not over whole contexts, so a latent that fires somewhere in most
contexts still has silent windows, and each activating window is one example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from saekit.data import open_shard
from saekit.data.shards import Shard, shard_path

if TYPE_CHECKING:
    from saekit.interp.records.collect import CollectConfig

Encoder = Callable[[torch.Tensor], torch.Tensor]


class TopKeys:
    """Per latent, the `k` entries with the largest keys pushed so far: a streaming top-k.

    Stored latent-major, keys [n_latents, k] (-inf = empty) and payload tensors alike. Candidates
    [batch, n_latents] are buffered and merged once at least max(k, 256) rows wait, with one
    `torch.topk` along the contiguous dimension (cheap with many latents); with `stable`, a stable
    sort instead, so that among equal keys the entry pushed first wins (the earliest context).
    """

    def __init__(self, k: int, n_latents: int, device: torch.device, payload: dict[str, torch.dtype],
                 stable: bool = False) -> None:
        self.k, self.stable = k, stable
        self.keys = torch.full((n_latents, k), -math.inf, device=device)
        self.payload = {name: torch.full((n_latents, k), -1, dtype=dtype, device=device)
                        for name, dtype in payload.items()}
        self._pending: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
        self._pending_rows = 0

    def push(self, keys: torch.Tensor, **payload: torch.Tensor) -> None:
        """Offer candidates: keys [batch, n_latents] (-inf = none), payload [batch, n_latents] or [batch, 1]."""
        if self.k == 0:
            return
        self._pending.append((keys.T, {name: values.expand_as(keys).T for name, values in payload.items()}))
        self._pending_rows += keys.shape[0]
        if self._pending_rows >= max(self.k, 256):
            self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        keys = torch.cat([self.keys] + [k for k, _ in self._pending], dim=1)
        if self.stable:
            merged, index = torch.sort(keys, dim=1, descending=True, stable=True)
            merged, index = merged[:, :self.k], index[:, :self.k]
        else:
            merged, index = torch.topk(keys, self.k, dim=1, sorted=False)
        for name, current in self.payload.items():
            both = torch.cat([current] + [p[name].to(current.dtype) for _, p in self._pending], dim=1)
            self.payload[name] = both.gather(1, index)
        self.keys, self._pending, self._pending_rows = merged, [], 0

    def numpy(self) -> dict[str, np.ndarray]:
        """{'valid': bool [n_latents, k], 'key': [n_latents, k], payload...} on the CPU, best first."""
        self._merge()
        order = torch.sort(self.keys, dim=1, descending=True, stable=True).indices
        out = {name: t.gather(1, order).cpu().numpy() for name, t in self.payload.items()}
        out["key"] = self.keys.gather(1, order).cpu().numpy()
        out["valid"] = np.isfinite(out["key"])
        return out


class ContextReader:
    """Token ids and activations of a cache's contexts by global context index (shards memory-mapped)."""

    def __init__(self, cache: str | Path, manifest: dict[str, Any], hook: str) -> None:
        self.cache, self.manifest, self.hook = Path(cache), manifest, hook
        self.ctx_len: int = manifest["ctx_len"]
        self.per_shard: int = manifest["contexts_per_shard"]
        self._shards: dict[int, Shard] = {}

    def shard(self, index: int) -> Shard:
        if index not in self._shards:
            self._shards[index] = open_shard(shard_path(self.cache, index), self.manifest)
        return self._shards[index]

    def _groups(self, contexts: np.ndarray) -> Iterator[tuple[Shard, np.ndarray, np.ndarray]]:
        """(shard, positions in `contexts`, local indices) per shard; contexts: int [r]."""
        shards = contexts // self.per_shard
        for index in np.unique(shards):
            where = np.nonzero(shards == index)[0]
            yield self.shard(int(index)), where, contexts[where] - index * self.per_shard

    def tokens(self, contexts: np.ndarray) -> np.ndarray:
        """int64 [r, ctx_len] token ids of the given global context indices."""
        out = np.zeros((len(contexts), self.ctx_len), dtype=np.int64)
        for shard, where, local in self._groups(np.asarray(contexts, dtype=np.int64)):
            out[where] = shard.tokens[local]
        return out

    def acts(self, contexts: np.ndarray) -> torch.Tensor:
        """[r * ctx_len, d_in] activations of the given contexts (row = context * ctx_len + position)."""
        contexts = np.asarray(contexts, dtype=np.int64)
        out = torch.empty(len(contexts), self.ctx_len, self.manifest["hooks"][self.hook])
        for shard, where, local in self._groups(contexts):
            rows = (local[:, None] * self.ctx_len + np.arange(self.ctx_len)).reshape(-1)
            out[torch.from_numpy(where)] = shard.acts(self.hook)[torch.from_numpy(rows)].float().view(
                len(local), self.ctx_len, -1)
        return out.view(-1, out.shape[-1])

    def batches(self, context_range: tuple[int, int], batch_contexts: int
                ) -> Iterator[tuple[int, np.ndarray, torch.Tensor]]:
        """(first global context, tokens [b, ctx_len], acts [b * ctx_len, d_in]) in order."""
        lo, hi = context_range
        for index in range(lo // self.per_shard, (hi - 1) // self.per_shard + 1):
            shard, base = self.shard(index), index * self.per_shard
            a, b = max(lo, base) - base, min(hi, base + shard.n_contexts) - base
            for c in range(a, b, batch_contexts):
                d = min(b, c + batch_contexts)
                acts = shard.acts(self.hook)[c * self.ctx_len:d * self.ctx_len]
                yield base + c, np.asarray(shard.tokens[c:d], dtype=np.int64), acts


def window_starts(ctx_len: int, first_pos: int, window: int) -> np.ndarray:
    """int64 [n_windows]: first positions of the blocks of `window` tokens (see the module docstring);
    window is clipped to the ctx_len - first_pos positions there are."""
    body = ctx_len - first_pos
    window = max(1, min(window, body))
    n_windows = -(-body // window)
    return first_pos + np.minimum(np.arange(n_windows) * window, body - window)


def contexts_per_batch(batch_tokens: int, ctx_len: int) -> int:
    """Whole contexts in a batch of about batch_tokens tokens (at least one)."""
    return max(1, batch_tokens // ctx_len)


def make_encoder(sae: Any, latent_ids: list[int] | None, device: torch.device) -> Encoder:
    """x [tokens, d_in] -> float32 activations [tokens, len(latent_ids)] (all latents for None)."""
    dtype = sae.W_enc.dtype
    select = None if latent_ids is None else torch.as_tensor(latent_ids, device=device)

    def encode(x: torch.Tensor) -> torch.Tensor:
        latents = sae.encode(x.to(device=device, dtype=dtype))
        return (latents if select is None else latents[:, select]).float()
    return encode


@dataclass
class ScanResult:
    """Pass 1's per-latent statistics ([n_latents] each) and samples (TopKeys.numpy() dicts, [n_latents, k]):
    `top` over contexts (context, position), `sample` and `random` over windows (context, start, and
    for `sample` the max position and value); n_windows counts every (context, window) scanned."""

    n_tokens: int
    n_active_tokens: np.ndarray
    act_sum: np.ndarray
    act_max: np.ndarray
    n_active_contexts: np.ndarray
    top: dict[str, np.ndarray]
    sample: dict[str, np.ndarray]
    random: dict[str, np.ndarray]
    hard: dict[str, np.ndarray] = field(default_factory=dict)
    n_windows: int = 0
    n_active_windows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@torch.no_grad()
def scan(reader: ContextReader, context_range: tuple[int, int], encode: Encoder, n_latents: int,
         config: "CollectConfig", first_pos: int, device: torch.device, progress: bool = True) -> ScanResult:
    """Pass 1 (see the module docstring) over the contexts of `context_range`."""
    ctx_len = reader.ctx_len
    ids = {"context": torch.int32, "position": torch.int32}
    top = TopKeys(config.n_top, n_latents, device, ids, stable=True)
    sample = TopKeys(config.reservoir, n_latents, device, {**ids, "start": torch.int32, "value": torch.float32})
    negatives = TopKeys(config.n_random_negatives, n_latents, device, {"context": torch.int32, "start": torch.int32})
    generator = torch.Generator(device=device).manual_seed(config.seed)
    n_active = torch.zeros(n_latents, dtype=torch.int64, device=device)
    act_sum = torch.zeros(n_latents, dtype=torch.float64, device=device)
    act_max = torch.zeros(n_latents, device=device)
    n_active_ctx = torch.zeros(n_latents, dtype=torch.int64, device=device)
    n_active_windows = torch.zeros(n_latents, dtype=torch.int64, device=device)
    starts = window_starts(ctx_len, first_pos, config.window)
    width = min(config.window, ctx_len - first_pos)
    block = torch.as_tensor(starts[:, None] - first_pos + np.arange(width), device=device)  # [n_windows, width]
    window_start = torch.as_tensor(starts, device=device, dtype=torch.int32)
    n_windows, n_tokens = 0, 0
    bar = tqdm(total=(context_range[1] - context_range[0]) * ctx_len, unit="tok", unit_scale=True,
               desc="collect", disable=not progress)
    for first, tokens, acts in reader.batches(context_range, contexts_per_batch(config.batch_tokens, ctx_len)):
        b = len(tokens)
        latents = encode(acts).view(b, ctx_len, n_latents)[:, first_pos:]
        n_tokens += b * (ctx_len - first_pos)
        n_active += (latents > 0).sum((0, 1))
        act_sum += latents.sum((0, 1), dtype=torch.float64)
        ctx_max, argmax = latents.max(1)  # [b, n_latents]
        act_max = torch.maximum(act_max, ctx_max.max(0).values)
        fires = ctx_max > 0
        n_active_ctx += fires.sum(0)
        contexts = torch.arange(first, first + b, device=device, dtype=torch.int32)[:, None]
        positions = (argmax + first_pos).int()
        top.push(torch.where(fires, ctx_max, -math.inf), context=contexts, position=positions)
        # windows: [b, n_windows, width, n_latents] -> one row per (context, window)
        win_max, win_arg = latents[:, block].max(2)  # [b, n_windows, n_latents]
        win_fires = (win_max > 0).view(-1, n_latents)
        n_active_windows += win_fires.sum(0)
        n_windows += win_fires.shape[0]
        win_context = contexts.expand(b, len(starts)).reshape(-1, 1)
        win_first = window_start.expand(b, -1).reshape(-1, 1)
        keys = torch.rand(win_fires.shape, generator=generator, device=device)
        sample.push(torch.where(win_fires, keys, -math.inf), context=win_context, start=win_first,
                    position=(win_arg.view(-1, n_latents) + win_first).int(), value=win_max.view(-1, n_latents))
        negatives.push(torch.where(win_fires, -math.inf, keys), context=win_context, start=win_first)
        bar.update(b * ctx_len)
    bar.close()
    return ScanResult(n_tokens, n_active.cpu().numpy(), act_sum.cpu().numpy(), act_max.cpu().numpy(),
                      n_active_ctx.cpu().numpy(), top.numpy(), sample.numpy(), negatives.numpy(),
                      n_windows=n_windows, n_active_windows=n_active_windows.cpu().numpy())


@torch.no_grad()
def scan_hard_negatives(reader: ContextReader, context_range: tuple[int, int], encode: Encoder,
                        hard_ids: np.ndarray, config: "CollectConfig", first_pos: int, device: torch.device,
                        progress: bool = True) -> dict[str, np.ndarray]:
    """Pass 2: per latent, a uniform sample of the contexts holding one of its `hard_ids` [n, m]
    (-1 = none) where it never fires. Returns TopKeys.numpy() with 'context'."""
    n_latents, ctx_len = hard_ids.shape[0], reader.ctx_len
    hard = TopKeys(config.n_hard_negatives, n_latents, device, {"context": torch.int32})
    ids = torch.as_tensor(hard_ids, device=device)
    has_id, lookup = ids >= 0, ids.clamp_min(0)
    generator = torch.Generator(device=device).manual_seed(config.seed + 1)
    bar = tqdm(total=(context_range[1] - context_range[0]) * ctx_len, unit="tok", unit_scale=True,
               desc="collect hard negatives", disable=not progress)
    for first, tokens, acts in reader.batches(context_range, contexts_per_batch(config.batch_tokens, ctx_len)):
        b = len(tokens)
        body = torch.from_numpy(tokens[:, first_pos:]).to(device)
        present = torch.zeros(b, max(int(body.max()), int(lookup.max())) + 1, dtype=torch.bool, device=device)
        present.scatter_(1, body, True)
        contains = (present[:, lookup] & has_id).any(-1)  # [b, n_latents]
        silent = encode(acts).view(b, ctx_len, n_latents)[:, first_pos:].amax(1) <= 0
        keys = torch.rand(b, n_latents, generator=generator, device=device)
        contexts = torch.arange(first, first + b, device=device, dtype=torch.int32)[:, None]
        hard.push(torch.where(contains & silent, keys, -math.inf), context=contexts)
        bar.update(b * ctx_len)
    bar.close()
    return hard.numpy()
