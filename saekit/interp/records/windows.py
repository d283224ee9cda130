"""Example windows for `saekit collect`: where a window sits in its context, the tokens it shows and
the latent's activation at each of them (the step after the streaming passes).

Quantile examples and random negatives are the scan's own windows (fixed blocks of `window` tokens,
see scan.py), shown as they are. A top example or hard negative gets a window of `window` tokens
placed around its anchor token (the latent's max token in the context; for a hard negative the
first of the latent's top tokens) with `after` tokens after it and the rest before it, shifted to
stay inside the context and off the BOS position. Activations are recomputed by encoding, in batches, only the contexts that
the chunk's activating examples need.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from saekit.interp.records.format import ACTIVATING_KINDS


@dataclass(frozen=True)
class WindowGeometry:
    """Window placement in contexts of ctx_len tokens whose positions < first_pos (BOS) are skipped."""

    ctx_len: int
    first_pos: int
    window: int
    before: int
    after: int

    def starts(self, anchors: np.ndarray) -> np.ndarray:
        """First position of the window around each anchor position (same shape as anchors)."""
        return np.clip(anchors - self.before, self.first_pos, self.ctx_len - self.window)


def window_geometry(ctx_len: int, first_pos: int, window: int, tokens_after: int) -> WindowGeometry:
    """Windows of min(window, ctx_len - first_pos) tokens with up to tokens_after after the anchor."""
    window = max(1, min(window, ctx_len - first_pos))
    after = min(tokens_after, window - 1)
    return WindowGeometry(ctx_len, first_pos, window, window - 1 - after, after)


def hard_token_ids(reader: Any, top: dict[str, np.ndarray], n_ids: int) -> np.ndarray:
    """int64 [n_latents, n_ids]: each latent's most frequent token ids at the max position of its
    top contexts (ties: the stronger context first), -1 padded. top: TopKeys.numpy() of pass 1."""
    valid = top["valid"]  # [n_latents, k]
    out = np.full((valid.shape[0], n_ids), -1, dtype=np.int64)
    if n_ids == 0 or not valid.any():
        return out
    unique, inverse = np.unique(top["context"][valid], return_inverse=True)
    grid = np.full(valid.shape, -1, dtype=np.int64)
    grid[valid] = reader.tokens(unique)[inverse, top["position"][valid]]
    for j in range(valid.shape[0]):
        row = grid[j]
        common = [t for t, _ in Counter(row[row >= 0].tolist()).most_common(n_ids)]
        out[j, :len(common)] = common
    return out


def _anchors(kind: str, slots: dict[str, np.ndarray], tokens_of: np.ndarray, rows: np.ndarray,
             hard_ids: np.ndarray, geometry: WindowGeometry, rng: np.random.Generator) -> np.ndarray:
    """int [c, slots] anchor positions; rows [c, slots] index each slot's context in tokens_of [u, ctx_len]."""
    if kind in ACTIVATING_KINDS:
        return slots["anchor"].astype(np.int64)
    if kind == "random" and "start" in slots:  # a silent window: any of its positions
        return slots["start"].astype(np.int64) + rng.integers(0, geometry.window, size=rows.shape)
    if kind == "random":
        return rng.integers(geometry.first_pos, geometry.ctx_len, size=rows.shape)
    # hard: the first position holding one of the latent's top token ids (64 latents at a time)
    anchors = np.full(rows.shape, geometry.first_pos, dtype=np.int64)
    for lo in range(0, len(rows), 64):
        ids = hard_ids[lo:lo + 64, None, None, :]  # [c', 1, 1, m]
        match = ((tokens_of[rows[lo:lo + 64]][..., None] == ids) & (ids >= 0)).any(-1)  # [c', slots, ctx_len]
        match[..., :geometry.first_pos] = False
        anchors[lo:lo + 64] = np.where(match.any(-1), match.argmax(-1), geometry.first_pos)
    return anchors


def build_chunk(reader: Any, encode: Callable[[torch.Tensor], torch.Tensor], slots: dict[str, dict[str, np.ndarray]],
                hard_ids: np.ndarray, geometry: WindowGeometry, batch_contexts: int, rng: np.random.Generator,
                progress: bool = True) -> dict[str, torch.Tensor]:
    """The examples tensors (records.py layout) of one chunk of c latents.

    slots: {kind: {'context' [c, s] (-1 empty), 'anchor', 'value', 'quantile' and 'start' (when known)}}:
    a slot with a 'start' shows that fixed window (explain, test, random: windows of the scan), else
    the window placed around its anchor (top, hard);
    encode: activations [tokens, d_in] -> this chunk's latents [tokens, c].
    """
    w = geometry.window
    offsets = np.arange(w)
    contexts = [s["context"][s["context"] >= 0] for s in slots.values()]
    needed = np.unique(np.concatenate(contexts)) if contexts else np.zeros(0, dtype=np.int64)
    tokens_of = reader.tokens(needed) if len(needed) else np.zeros((1, geometry.ctx_len), dtype=np.int64)
    out: dict[str, torch.Tensor] = {}
    requests: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for kind, s in slots.items():
        context = s["context"].astype(np.int64)
        valid = context >= 0
        rows = np.searchsorted(needed, np.where(valid, context, needed[0] if len(needed) else 0))
        rows = np.minimum(rows, len(tokens_of) - 1)
        anchors = np.where(valid, _anchors(kind, s, tokens_of, rows, hard_ids, geometry, rng), 0)
        placed = s["start"].astype(np.int64) if "start" in s else geometry.starts(anchors)  # fixed windows
        starts = np.where(valid, placed, 0)
        tokens = np.where(valid[..., None], tokens_of[rows[..., None], starts[..., None] + offsets], 0)
        out[f"{kind}/tokens"] = torch.from_numpy(tokens.astype(np.int32))
        out[f"{kind}/context"] = torch.from_numpy(np.where(valid, context, -1).astype(np.int32))
        out[f"{kind}/start"] = torch.from_numpy(starts.astype(np.int32))
        out[f"{kind}/anchor"] = torch.from_numpy(anchors.astype(np.int32))
        if kind in ACTIVATING_KINDS:
            out[f"{kind}/value"] = torch.from_numpy(np.where(valid, s["value"], 0).astype(np.float32))
            requests[kind] = (context, starts, valid)
        if "quantile" in s:
            out[f"{kind}/quantile"] = torch.from_numpy(s["quantile"].astype(np.int8))
    for kind, acts in window_acts(reader, encode, requests, geometry, batch_contexts, progress).items():
        out[f"{kind}/acts"] = torch.from_numpy(acts)
    return out


@torch.no_grad()
def window_acts(reader: Any, encode: Callable[[torch.Tensor], torch.Tensor],
                requests: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], geometry: WindowGeometry,
                batch_contexts: int, progress: bool = True) -> dict[str, np.ndarray]:
    """{kind: float32 [c, slots, window]}: latent j's activation over each requested window.

    requests: {kind: (context [c, slots], start [c, slots], valid [c, slots])}. Each needed context
    is encoded once, in batches of batch_contexts, in context order.
    """
    out = {kind: np.zeros(ctx.shape + (geometry.window,), dtype=np.float32) for kind, (ctx, _, _) in requests.items()}
    parts = []
    for k, (kind, (context, starts, valid)) in enumerate(requests.items()):
        j, s = np.nonzero(valid)
        parts.append(np.stack([np.full(len(j), k), context[j, s], j, s, starts[j, s]], 1))
    entries = np.concatenate(parts) if parts else np.zeros((0, 5), dtype=np.int64)
    if not len(entries):
        return out
    unique, rows = np.unique(entries[:, 1], return_inverse=True)
    order = np.argsort(rows, kind="stable")
    entries, rows = entries[order], rows[order]
    kinds = list(requests)
    offsets = torch.arange(geometry.window)
    bar = tqdm(total=len(unique), unit="ctx", desc="collect windows", disable=not progress)
    for b0 in range(0, len(unique), batch_contexts):
        batch = unique[b0:b0 + batch_contexts]
        latents = encode(reader.acts(batch)).view(len(batch), geometry.ctx_len, -1).cpu()
        latents[:, :geometry.first_pos] = 0
        lo, hi = np.searchsorted(rows, [b0, b0 + len(batch)])
        e = torch.from_numpy(entries[lo:hi])
        local = torch.from_numpy(rows[lo:hi] - b0)
        values = latents[local[:, None], e[:, 4:5] + offsets, e[:, 2:3]].numpy()  # [r, window]
        for k, kind in enumerate(kinds):
            mine = entries[lo:hi, 0] == k
            out[kind][entries[lo:hi][mine, 2], entries[lo:hi][mine, 3]] = values[mine]
        bar.update(len(batch))
    bar.close()
    return out
