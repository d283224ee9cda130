"""Sparse encode/decode for TopK-style SAEs: touch only the active latents, forward and backward.

A TopK SAE with d_sae latents and k active per token needs one dense product, the encoder's
forward `(x - b_dec) @ W_enc` ([tokens, d_in] x [d_in, d_sae]), to know which latents win. After
that everything is sparse: the decoder sums k rows of W_dec per token, and the backward passes of
both the decoder and the encoder only concern the (token, latent) pairs that were selected. A plain
autograd implementation instead multiplies a dense [tokens, d_sae] latent matrix by W_dec and,
backward, takes four more dense products of the same size (see bench/sae_step.py).

The active set is held in CSR form (`SparseLatents`: values, latent indices, row offsets), so that
TopK (k per token), BatchTopK (a variable number per token) and a thresholded inference path share
one pair of autograd functions:

- `SparseEncode`: pre-activations, a selection function, ReLU of the selected values. Backward:
  grad W_enc = (x - b_dec)^T @ S, grad b_enc = column sums of S, grad b_dec = -W_enc @ grad b_enc,
  where S is the sparse [tokens, d_sae] matrix of the selected latents' gradients.
- `SparseDecode`: recon = A @ W_dec with A the sparse latents. Backward: grad W_dec = A^T @ g and
  the gradient of each active value is the dot product of g with its decoder row, a sampled
  dense-dense product.

Two implementations of the same maths (`impl`): "csr" builds torch sparse CSR tensors (MKL on
CPU, the fastest on our CPUs; cuSPARSE on GPU, untested here); "gather" uses embedding_bag,
index_add_ and row gathers, works wherever torch does, and serves 16-bit floats on CPU, which MKL
lacks. Both are gradchecked against the dense computation in tests/test_sae.py. On CPU, "csr"
takes S @ W with embedding_bag (faster than MKL there), builds S^T itself from one stable sort
(`_transposed_csr`) and sorts ids on one thread (`_one_thread`); see bench/train_throughput.py.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from typing import Callable, NamedTuple

import torch
from torch import Tensor

IMPLS = ("csr", "gather")
_GATHER_CHUNK = 16384  # (token, latent) pairs per chunk in the gather implementation (bounds memory)


class SparseLatents(NamedTuple):
    """The active latents of a batch in CSR form (token t owns entries offsets[t]:offsets[t+1])."""

    values: Tensor  # [nnz] latent activations
    indices: Tensor  # [nnz] int64 latent ids, increasing within each token
    offsets: Tensor  # [tokens + 1] int64 row pointers

    @property
    def n_tokens(self) -> int:
        return self.offsets.numel() - 1

    def token_ids(self) -> Tensor:
        """[nnz] the token each entry belongs to."""
        counts = self.offsets.diff()
        return torch.repeat_interleave(torch.arange(self.n_tokens, device=counts.device), counts)

    def to_dense(self, d_sae: int) -> Tensor:
        """[tokens, d_sae] dense latents (differentiable in `values`)."""
        dense = self.values.new_zeros(self.n_tokens, d_sae)
        return dense.index_put_((self.token_ids(), self.indices), self.values)


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


# A selection maps pre-activations [tokens, d_sae] (no grad) to (values [nnz], indices [nnz],
# offsets [tokens + 1]) of the entries to keep; values are the raw pre-activations there.
Selection = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]


def select_topk(k: int) -> Selection:
    """The k largest pre-activations of each token (Gao et al. 2024)."""
    def select(pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        values, indices = pre.topk(k, dim=1, sorted=False)
        with _one_thread(pre.device):
            indices, order = indices.sort(dim=1)
            values = values.gather(1, order)
            offsets = torch.arange(0, pre.shape[0] * k + 1, k, device=pre.device)
        return values.reshape(-1), indices.reshape(-1), offsets
    return select


def select_topk_among(latents: Tensor, k: int) -> Selection:
    """The k largest pre-activations of each token among `latents` [m] (increasing latent ids).

    AuxK's selection (the top k_aux dead latents): it reads the same pre-activations as the main
    selection, so the dead latents' encoder product is not computed a second time.
    """
    def select(pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        values, positions = pre.index_select(1, latents).topk(k, dim=1, sorted=False)
        with _one_thread(pre.device):
            positions, order = positions.sort(dim=1)
            values = values.gather(1, order)
            offsets = torch.arange(0, pre.shape[0] * k + 1, k, device=pre.device)
            indices = latents[positions.reshape(-1)]
        return values.reshape(-1), indices, offsets
    return select


def _offsets(rows: Tensor, n_tokens: int) -> Tensor:
    """[tokens + 1] CSR row pointers from the sorted row of each entry."""
    offsets = torch.zeros(n_tokens + 1, dtype=torch.long, device=rows.device)
    offsets[1:] = torch.bincount(rows, minlength=n_tokens).cumsum(0)
    return offsets


def _select_mask(pre: Tensor, keep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """CSR of the entries of `pre` where the boolean `keep` [tokens, d_sae] is true."""
    rows, cols = keep.nonzero(as_tuple=True)  # row-major, so columns increase within a row
    return pre[rows, cols], cols, _offsets(rows, pre.shape[0])


def select_batch_topk(k: int, hint: float = 0.0, oversample: int = 4) -> Selection:
    """The tokens*k largest positive pre-activations of the whole batch (Bussmann et al. 2024).

    Exact, without a top-k over all tokens*d_sae entries. With a `hint` > 0 (the previous batches'
    threshold), the candidates are the entries above hint / 2: one pass over the batch. Otherwise,
    or when fewer than tokens*k entries pass, they are each token's `oversample*k` largest values,
    which hold the answer unless some token had all of its candidates kept; then the full top-k.
    """
    def select(pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n_tokens, d_sae = pre.shape
        n_keep = min(n_tokens * k, n_tokens * d_sae)
        if hint > 0:
            rows, cols = (pre > hint / 2).nonzero(as_tuple=True)
            if rows.numel() >= n_keep:
                values = pre[rows, cols]
                cutoff = values.topk(n_keep, sorted=False).values.min()
                keep = values >= cutoff
                return values[keep], cols[keep], _offsets(rows[keep], n_tokens)
        per_token = min(oversample * k, d_sae)
        candidates = pre.topk(per_token, dim=1, sorted=False).values  # [tokens, per_token]
        cutoff = candidates.reshape(-1).topk(n_keep, sorted=False).values.min()
        if per_token < d_sae and bool((candidates.amin(dim=1) >= cutoff).any()):
            cutoff = pre.reshape(-1).topk(n_keep, sorted=False).values.min()
        return _select_mask(pre, pre >= cutoff.clamp_min(torch.finfo(pre.dtype).tiny))
    return select


def select_threshold(threshold: Tensor) -> Selection:
    """The pre-activations above a per-latent threshold [d_sae] (and above 0): JumpReLU inference."""
    def select(pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return _select_mask(pre, pre > threshold.clamp_min(0))
    return select


def _no_autocast(like: Tensor) -> torch.autocast:
    """Autocast off on like's device: the sparse products run in the parameters' dtype (CPU's MKL
    and embedding_bag need one dtype; under autocast `@` would cast a CSR product to 16 bits)."""
    return torch.autocast(like.device.type, enabled=False)


def _csr(offsets: Tensor, indices: Tensor, values: Tensor, n_cols: int) -> Tensor:
    with warnings.catch_warnings():  # torch's one-time "sparse CSR support is in beta" warning
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(offsets, indices, values, (offsets.numel() - 1, n_cols),
                                       check_invariants=False)


def _transposed_csr(token_ids: Tensor, indices: Tensor, values: Tensor, n_tokens: int, n_cols: int) -> Tensor:
    """S^T as a CSR tensor [n_cols, tokens] from S's entries (token, latent, value), in any order.

    One stable sort of the latent ids. On CPU, torch's own `csr.t() @ dense` converts the transpose
    through COO (two index copies and an int64 sort); this is about 2x cheaper and gives the same
    matrix. Entries may repeat a (token, latent) pair: the product sums them.
    """
    with _one_thread(indices.device):
        keys = indices.to(torch.int32) if n_cols < 2**31 else indices
        order = keys.sort(stable=True).indices
        offsets = torch.zeros(n_cols + 1, dtype=torch.long, device=keys.device)
        offsets[1:] = torch.bincount(indices, minlength=n_cols).cumsum(0)
        return _csr(offsets, token_ids[order], values[order], n_tokens)


def _transpose_times(parts: list[SparseLatents], dense: Tensor, n_cols: int, impl: str) -> Tensor:
    """sum over parts of S^T @ dense, for sparse [tokens, n_cols] matrices S: [n_cols, d].

    Several parts (the TopK selection and AuxK's) make one product over all their entries on CPU.
    """
    if impl == "csr" and dense.device.type == "cpu":
        token_ids = torch.cat([part.token_ids() for part in parts]) if len(parts) > 1 else parts[0].token_ids()
        indices = torch.cat([part.indices for part in parts]) if len(parts) > 1 else parts[0].indices
        values = torch.cat([part.values for part in parts]) if len(parts) > 1 else parts[0].values
        return _transposed_csr(token_ids, indices, values, parts[0].n_tokens, n_cols) @ dense
    out: Tensor | None = None
    for latents in parts:
        if impl == "csr":
            product = _csr(latents.offsets, latents.indices, latents.values, n_cols).t() @ dense
        else:
            product = dense.new_zeros(n_cols, dense.shape[1])
            tokens = latents.token_ids()
            for start in range(0, latents.values.numel(), _GATHER_CHUNK):
                chunk = slice(start, start + _GATHER_CHUNK)
                product.index_add_(0, latents.indices[chunk], latents.values[chunk, None] * dense[tokens[chunk]])
        out = product if out is None else out.add_(product)
    assert out is not None
    return out


def _times(latents: SparseLatents, weight: Tensor, impl: str) -> Tensor:
    """S @ weight for the sparse [tokens, n_rows] matrix S and weight [n_rows, d]: [tokens, d].

    On CPU both implementations use embedding_bag here (about 1.7x faster than MKL's CSR product).
    """
    if impl == "csr" and weight.device.type != "cpu":
        return _csr(latents.offsets, latents.indices, latents.values, weight.shape[0]) @ weight
    return torch.nn.functional.embedding_bag(
        latents.indices, weight.contiguous(), latents.offsets[:-1], mode="sum",
        per_sample_weights=latents.values)


def _row_dots(latents: SparseLatents, left: Tensor, weight: Tensor, impl: str) -> Tensor:
    """[nnz] <left[token], weight[latent]> for every active (token, latent) pair."""
    if impl == "csr":
        pattern = _csr(latents.offsets, latents.indices, torch.zeros_like(latents.values), weight.shape[0])
        return torch.sparse.sampled_addmm(pattern, left, weight.t(), beta=0.0).values()
    out = torch.empty_like(latents.values)
    tokens = latents.token_ids()
    for start in range(0, out.numel(), _GATHER_CHUNK):
        part = slice(start, start + _GATHER_CHUNK)
        out[part] = (weight[latents.indices[part]] * left[tokens[part]]).sum(-1)
    return out


class SparseEncode(torch.autograd.Function):
    """relu(selected entries of (x - b_dec) @ W_enc + b_enc), with a backward over those entries only.

    Several selections of the same pre-activations (TopK's and AuxK's) share the one dense product
    forward and one sparse product backward; outputs are (values, indices, offsets) per selection.
    """

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, impl: str,
                *selects: Selection) -> tuple[Tensor, ...]:
        centered = x - b_dec
        pre = (centered @ W_enc).add_(b_enc)  # cheaper than addmm's broadcast copy of b_enc on CPU
        outputs: list[Tensor] = []
        for select in selects:
            values, indices, offsets = select(pre)
            # Under autocast the product (and so `values`) is 16-bit: the sparse rest runs in the
            # parameters' dtype, with autocast off (`_no_autocast`), as the sparse kernels need.
            outputs += [values.to(W_enc.dtype).relu(), indices, offsets]
        del pre
        ctx.impl = impl
        ctx.save_for_backward(centered, W_enc, *outputs)
        ctx.mark_non_differentiable(*outputs[1::3], *outputs[2::3])
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grads: Tensor | None):
        centered, W_enc, *outputs = ctx.saved_tensors
        parts = []
        for acts, indices, offsets, grad_acts in zip(outputs[0::3], outputs[1::3], outputs[2::3], grads[0::3]):
            if grad_acts is not None:
                parts.append(SparseLatents(grad_acts.to(acts.dtype) * (acts > 0), indices, offsets))
        need_x, need_w, need_b_enc, need_b_dec = ctx.needs_input_grad[:4]
        grad_x = grad_w = grad_b_enc = grad_b_dec = None
        if not parts:
            return None, None, None, None, None, *[None] * (len(grads) // 3)
        with _no_autocast(W_enc):
            if need_w:
                grad_w = _transpose_times(parts, centered, W_enc.shape[1], ctx.impl).t()
            if need_b_enc or need_b_dec:
                grad_b_enc = W_enc.new_zeros(W_enc.shape[1])
                for part in parts:
                    grad_b_enc.index_add_(0, part.indices, part.values)
            if need_x:
                grad_x = sum(_times(part, W_enc.t(), ctx.impl) for part in parts)
            if need_b_dec:  # -sum over tokens of grad_x, computed without grad_x when x needs none
                grad_b_dec = -(W_enc @ grad_b_enc)
        return (grad_x, grad_w, grad_b_enc if need_b_enc else None, grad_b_dec, None,
                *[None] * (len(grads) // 3))


class SparseDecode(torch.autograd.Function):
    """Sum over active latents of value * W_dec[latent]: [tokens, d_in], sparse forward and backward."""

    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor, offsets: Tensor, W_dec: Tensor, impl: str) -> Tensor:
        ctx.impl = impl
        ctx.save_for_backward(values, indices, offsets, W_dec)
        with _no_autocast(W_dec):
            return _times(SparseLatents(values, indices, offsets), W_dec, impl)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        values, indices, offsets, W_dec = ctx.saved_tensors
        grad_out = grad_out.to(W_dec.dtype).contiguous()
        grad_values = grad_w = None
        with _no_autocast(W_dec):
            if ctx.needs_input_grad[0]:
                grad_values = _row_dots(SparseLatents(values, indices, offsets), grad_out, W_dec, ctx.impl)
            if ctx.needs_input_grad[3]:
                grad_w = _transpose_times([SparseLatents(values, indices, offsets)], grad_out, W_dec.shape[0], ctx.impl)
        return grad_values, None, None, grad_w, None


def sparse_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor,
                  select: Selection, impl: str = "csr") -> SparseLatents:
    """Active latents of x [tokens, d_in] under `select`; W_enc [d_in, d_sae], b_enc [d_sae], b_dec [d_in]."""
    return sparse_encode_many(x, W_enc, b_enc, b_dec, [select], impl)[0]


def sparse_encode_many(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor,
                       selects: list[Selection], impl: str = "csr") -> list[SparseLatents]:
    """One SparseLatents per selection, all from one encoder product (and one sparse backward)."""
    impl = _resolve_impl(impl, W_enc)
    outputs = SparseEncode.apply(x, W_enc, b_enc, b_dec, impl, *selects)
    return [SparseLatents(*outputs[i:i + 3]) for i in range(0, len(outputs), 3)]


def sparse_decode(latents: SparseLatents, W_dec: Tensor, impl: str = "csr") -> Tensor:
    """[tokens, d_in] = sum of value * W_dec[latent] over each token's active latents (no bias)."""
    impl = _resolve_impl(impl, W_dec)
    return SparseDecode.apply(latents.values, latents.indices, latents.offsets, W_dec, impl)


def topk_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int,
                impl: str = "csr") -> tuple[Tensor, Tensor]:
    """(top_acts [tokens, k], top_indices [tokens, k]) of relu((x - b_dec) @ W_enc + b_enc)."""
    latents = sparse_encode(x, W_enc, b_enc, b_dec, select_topk(k), impl)
    return latents.values.view(-1, k), latents.indices.view(-1, k)


def topk_decode(top_acts: Tensor, top_indices: Tensor, W_dec: Tensor, impl: str = "csr") -> Tensor:
    """[tokens, d_in] = sum_j top_acts[:, j] * W_dec[top_indices[:, j]] (no bias).

    Indices need not be sorted along k (they are put in order for the CSR form when they are not).
    """
    n_tokens, k = top_acts.shape
    if k > 1 and not bool((top_indices.diff(dim=1) > 0).all()):
        top_indices, order = top_indices.sort(dim=1)
        top_acts = top_acts.gather(1, order)
    offsets = torch.arange(0, n_tokens * k + 1, k, device=top_acts.device)
    latents = SparseLatents(top_acts.reshape(-1), top_indices.reshape(-1), offsets)
    return sparse_decode(latents, W_dec, impl)


def _resolve_impl(impl: str, like: Tensor) -> str:
    """impl, except "gather" where "csr" has no kernel: 16-bit floats on CPU (MKL is float32/64 only)."""
    if impl not in IMPLS:
        raise ValueError(f"sparse_impl must be one of {IMPLS}, got {impl!r}")
    if impl == "csr" and like.device.type == "cpu" and like.dtype not in (torch.float32, torch.float64):
        return "gather"
    return impl
