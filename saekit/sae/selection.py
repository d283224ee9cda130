"""Which latents a sparse forward keeps: selections of the pre-activations [tokens, d_sae].

A selection maps pre-activations (no grad) to the CSR form of the entries to keep: (values [nnz],
latent indices [nnz] increasing within each token, offsets [tokens + 1]); values are the raw
pre-activations there (saekit/sae/kernels.py applies the ReLU and the sparse backward).

The training selections (`select_topk`, `select_dead_topk`, `select_batch_topk`) have shapes fixed
by the input's, with no data-dependent size and no host sync, so `torch.compile` traces them in
one graph and a GPU never waits on the CPU. `select_topk_among` and `select_threshold` (AuxK in
eager mode, inference) size their output from the data.

BatchTopK (`select_batch_topk`) keeps the tokens*k largest pre-activations of the *global* batch:
under torchrun each rank's candidates are all-gathered (tokens*k numbers per rank, not the
[tokens, d_sae] matrix), so 2 ranks keep what 1 process keeps.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor

Selection = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]

_thread_lock = threading.Lock()
_one_thread_users = 0
_saved_threads = 1


@contextlib.contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    """Run index bookkeeping (sorts and gathers of ~1e5-1e6 ids) on one CPU thread.

    Such operations take a few ms on one thread and gain nothing from more; on a busy machine each
    parallel region waits for all its threads to be scheduled, which measured 10-160 ms per
    operation on our 2-core machines (a stable sort of 131k ids: 3 ms on one thread, 160 ms on two).
    Re-entrant and safe across Python threads: the thread count is restored when the last user leaves.
    """
    global _one_thread_users, _saved_threads
    if device.type != "cpu":
        yield
        return
    with _thread_lock:
        if _one_thread_users == 0:
            _saved_threads = torch.get_num_threads()
            if _saved_threads != 1:
                torch.set_num_threads(1)
        _one_thread_users += 1
    try:
        yield
    finally:
        with _thread_lock:
            _one_thread_users -= 1
            if _one_thread_users == 0 and _saved_threads != 1:
                torch.set_num_threads(_saved_threads)


def bookkeeping(device: torch.device) -> contextlib.AbstractContextManager:
    """`_one_thread` in eager mode on CPU; nothing while torch.compile traces (a lock and a thread
    count are no part of a graph) or on other devices."""
    if torch.compiler.is_compiling() or device.type != "cpu":
        return contextlib.nullcontext()
    return _one_thread(device)


def _regular_offsets(n_tokens: int, per_token: int, device: torch.device) -> Tensor:
    return torch.arange(0, n_tokens * per_token + 1, per_token, device=device)


def _sorted_rows(values: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """values and indices [tokens, n] reordered so that indices increase along each row."""
    with bookkeeping(values.device):
        indices, order = indices.sort(dim=1)
        return values.gather(1, order), indices


def select_topk(k: int) -> Selection:
    """The k largest pre-activations of each token (Gao et al. 2024)."""
    def select(pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        values, indices = _sorted_rows(*pre.topk(k, dim=1, sorted=False))
        return values.reshape(-1), indices.reshape(-1), _regular_offsets(pre.shape[0], k, pre.device)
    return select


def select_topk_among(latents: Tensor, k: int) -> Selection:
    """The k largest pre-activations of each token among `latents` [m] (increasing latent ids).

    AuxK's selection in eager mode (the top k_aux dead latents): it reads the same pre-activations
    as the main selection, so the dead latents' encoder product is not computed a second time.
    """
    def select(pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        values, positions = _sorted_rows(*pre.index_select(1, latents).topk(k, dim=1, sorted=False))
        indices = latents[positions.reshape(-1)]
        return values.reshape(-1), indices, _regular_offsets(pre.shape[0], k, pre.device)
    return select


def select_dead_topk(dead_mask: Tensor, k: int) -> Selection:
    """Each token's k largest pre-activations among the latents where dead_mask [d_sae] is true,
    with a fixed shape: when fewer than k are dead the rest are -inf (ReLU makes them inactive).
    AuxK's selection under torch.compile (no nonzero, no count read back)."""
    def select(pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        masked = pre.masked_fill(~dead_mask, -math.inf)
        values, indices = _sorted_rows(*masked.topk(k, dim=1, sorted=False))
        return values.reshape(-1), indices.reshape(-1), _regular_offsets(pre.shape[0], k, pre.device)
    return select


def world_size() -> int:
    """Ranks of the default process group (1 outside torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_gather(values: Tensor) -> Tensor:
    """[world * n] the 1-D `values` [n] of every rank, rank order (a functional collective: traceable)."""
    from torch.distributed import _functional_collectives as funcol
    return funcol.all_gather_tensor(values.contiguous(), 0, dist.group.WORLD)  # waits on first use


def global_min(value: Tensor) -> Tensor:
    """The minimum of a scalar tensor over ranks (itself outside torchrun); no host sync."""
    if world_size() == 1:
        return value
    from torch.distributed import _functional_collectives as funcol
    return funcol.all_reduce(value.reshape(1), "min", dist.group.WORLD).reshape(())  # waits on first use


def select_batch_topk(k: int, oversample: int = 4, slack: float = 2.0) -> Selection:
    """The tokens*k largest pre-activations of the global batch (Bussmann et al. 2024), sparse.

    Static shapes, no host sync, no [tokens, d_sae] matrix beyond the pre-activations:
    1. candidates: each token's `oversample*k` largest values [tokens, m];
    2. this rank keeps its `capacity` largest candidates, capacity = min(tokens*m, global k*B,
       slack * local k*B) (= k*B in one process, and for 2 ranks);
    3. cutoff: the global k*B-th largest value, from every rank's kept candidates (all_gather of
       `capacity` numbers per rank under torchrun); entries below it get value 0 (inactive);
    4. CSR order: one sort of token * d_sae + latent; offsets by searchsorted.
    Exact (the same set as a top-k over the whole global batch, up to ties at the cutoff) unless a
    token holds more than m of the batch's top entries (it keeps its m largest), or, with more than
    2 ranks, a rank holds more than `slack` times its share.
    """
    def select(pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n_tokens, d_sae = pre.shape
        world = world_size()
        per_token = min(oversample * k, d_sae)
        n_keep = n_tokens * k * world  # the global batch's k*B
        capacity = min(n_tokens * per_token, n_keep, max(math.ceil(slack * n_tokens * k), n_keep // world))
        candidates, candidate_ids = pre.topk(per_token, dim=1, sorted=False)  # [tokens, m]
        values, positions = candidates.reshape(-1).topk(capacity, sorted=False)
        if world > 1:
            everyone = _all_gather(values)
            cutoff = everyone.topk(min(n_keep, everyone.numel()), sorted=False).values.amin()
            values = torch.where(values >= cutoff, values, torch.zeros_like(values))
        latents = candidate_ids.reshape(-1)[positions]
        tokens = torch.div(positions, per_token, rounding_mode="floor")
        with bookkeeping(pre.device):
            keys, order = (tokens * d_sae + latents).sort()
            rows = torch.div(keys, d_sae, rounding_mode="floor")
            offsets = torch.searchsorted(rows, torch.arange(n_tokens + 1, device=pre.device))
        return values[order], keys - rows * d_sae, offsets
    return select


def _offsets(rows: Tensor, n_tokens: int) -> Tensor:
    """[tokens + 1] CSR row pointers from the sorted row of each entry."""
    offsets = torch.zeros(n_tokens + 1, dtype=torch.long, device=rows.device)
    offsets[1:] = torch.bincount(rows, minlength=n_tokens).cumsum(0)
    return offsets


def select_threshold(threshold: Tensor) -> Selection:
    """The pre-activations above a per-latent threshold [d_sae] (and above 0): JumpReLU inference."""
    def select(pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        rows, cols = (pre > threshold.clamp_min(0)).nonzero(as_tuple=True)  # row-major: columns increase
        return pre[rows, cols], cols, _offsets(rows, pre.shape[0])
    return select
