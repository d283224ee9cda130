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

- `SparseEncode`: ReLU of the selected pre-activations (the dense product is made without grad
  and read by the selections of saekit/sae/selection.py, `sparse_encode_many`). Backward:
  grad W_enc = (x - b_dec)^T @ S, grad b_enc = column sums of S, grad b_dec = -W_enc @ grad b_enc,
  where S is the sparse [tokens, d_sae] matrix of the selected latents' gradients.
- `SparseDecode`: recon = A @ W_dec with A the sparse latents. Backward: grad W_dec = A^T @ g and
  the gradient of each active value is the dot product of g with its decoder row, a sampled
  dense-dense product.

Two implementations of the same maths (`impl`): "csr" builds torch sparse CSR tensors (MKL on
CPU, the fastest on our CPUs; cuSPARSE on GPU); "gather" uses embedding_bag, index_add_ and row
gathers, works wherever torch does, and serves 16-bit floats on CPU, which MKL lacks. Both are
gradchecked against the dense computation in tests/test_sae_kernels.py, and on a CUDA device in
tests/test_gpu.py (marked `gpu`; not yet run on one). On CPU, "csr" takes S @ W with embedding_bag
(faster than MKL there), builds S^T itself from one stable sort (`_transposed_csr`) and sorts ids
on one thread (`_one_thread`); see bench/train_throughput.py. The three sparse products are torch
custom ops (`saekit::sparse_*`), so torch.compile and AOTAutograd see each as one call of known
shape and the compiled forward and backward have no graph break (tests/test_compile.py).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import Tensor

from saekit.sae.selection import (  # noqa: F401  (selections were defined here; kept importable)
    Selection, _one_thread, select_batch_topk, select_dead_topk, select_threshold, select_topk, select_topk_among,
)

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
        return _token_ids(self.offsets, self.values.numel())

    def to_dense(self, d_sae: int) -> Tensor:
        """[tokens, d_sae] dense latents (differentiable in `values`)."""
        dense = self.values.new_zeros(self.n_tokens, d_sae)
        return dense.index_put_((self.token_ids(), self.indices), self.values)


def _token_ids(offsets: Tensor, nnz: int) -> Tensor:
    """[nnz] the row of each entry of a CSR matrix with row pointers `offsets` (a size known upfront:
    no host sync)."""
    counts = offsets.diff()
    return torch.repeat_interleave(torch.arange(counts.numel(), device=offsets.device), counts, output_size=nnz)


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


# The sparse products as torch custom ops: torch.compile (and AOTAutograd's trace of the backward)
# sees each as one opaque call of known output shape, instead of tracing into CSR tensors, MKL and
# a Python lock. In eager mode they run the functions above.

@torch.library.custom_op("saekit::sparse_times", mutates_args=())
def _sparse_times_op(values: Tensor, indices: Tensor, offsets: Tensor, weight: Tensor, impl: str) -> Tensor:
    """S @ weight [tokens, d] for the CSR matrix S (values, indices, offsets) and weight [n_rows, d]."""
    with _no_autocast(weight):
        return _times(SparseLatents(values, indices, offsets), weight, impl)


@_sparse_times_op.register_fake
def _(values, indices, offsets, weight, impl):
    return weight.new_empty(offsets.shape[0] - 1, weight.shape[1])


@torch.library.custom_op("saekit::sparse_transpose_times", mutates_args=())
def _sparse_transpose_times_op(values: list[Tensor], indices: list[Tensor], offsets: list[Tensor], dense: Tensor,
                               n_cols: int, impl: str) -> Tensor:
    """sum over parts of S^T @ dense: [n_cols, d] for CSR parts S [tokens, n_cols] and dense [tokens, d]."""
    with _no_autocast(dense):
        return _transpose_times([SparseLatents(*part) for part in zip(values, indices, offsets)], dense, n_cols, impl)


@_sparse_transpose_times_op.register_fake
def _(values, indices, offsets, dense, n_cols, impl):
    return dense.new_empty(n_cols, dense.shape[1])


@torch.library.custom_op("saekit::sparse_row_dots", mutates_args=())
def _sparse_row_dots_op(values: Tensor, indices: Tensor, offsets: Tensor, left: Tensor, weight: Tensor,
                        impl: str) -> Tensor:
    """[nnz] <left[token], weight[latent]> at every entry of the CSR pattern (values only give the size)."""
    with _no_autocast(weight):
        return _row_dots(SparseLatents(values, indices, offsets), left, weight, impl)


@_sparse_row_dots_op.register_fake
def _(values, indices, offsets, left, weight, impl):
    return values.new_empty(values.shape)


class SparseEncode(torch.autograd.Function):
    """relu of selected pre-activations, with a backward over the selected entries only.

    The inputs are x, the parameters and, per selection, its raw values [nnz] (from the dense
    product, made without grad) with their indices and offsets; the outputs are relu(values) per
    selection. Several selections (TopK's and AuxK's) share one sparse product backward.
    """

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, impl: str,
                *parts: Tensor) -> tuple[Tensor, ...]:
        # Under autocast the product (and so the values) is 16-bit: the sparse rest runs in the
        # parameters' dtype, with autocast off (`_no_autocast`), as the sparse kernels need.
        acts = [values.to(W_enc.dtype).relu() for values in parts[0::3]]
        ctx.impl = impl
        ctx.save_for_backward(x, b_dec, W_enc, *[t for i, a in enumerate(acts) for t in (a, *parts[3 * i + 1:3 * i + 3])])
        return tuple(acts)

    @staticmethod
    def backward(ctx, *grads: Tensor | None):
        x, b_dec, W_enc, *saved = ctx.saved_tensors
        n_inputs = 3 * len(grads)
        parts = [(grad.to(acts.dtype) * (acts > 0), indices, offsets)
                 for acts, indices, offsets, grad in zip(saved[0::3], saved[1::3], saved[2::3], grads)
                 if grad is not None]
        need_x, need_w, need_b_enc, need_b_dec = ctx.needs_input_grad[:4]
        grad_x = grad_w = grad_b_enc = grad_b_dec = None
        if not parts:
            return None, None, None, None, None, *[None] * n_inputs
        values, indices, offsets = ([part[i] for part in parts] for i in range(3))
        with _no_autocast(W_enc):
            if need_w:
                centered = (x - b_dec).to(W_enc.dtype)
                grad_w = _sparse_transpose_times_op(values, indices, offsets, centered, W_enc.shape[1], ctx.impl).t()
            if need_b_enc or need_b_dec:
                grad_b_enc = W_enc.new_zeros(W_enc.shape[1])
                for part_values, part_indices in zip(values, indices):
                    grad_b_enc = grad_b_enc.index_add(0, part_indices, part_values)
            if need_x:
                W_t = W_enc.t()
                grad_x = sum(_sparse_times_op(*part, W_t, ctx.impl) for part in parts)
            if need_b_dec:  # -sum over tokens of grad_x, computed without grad_x when x needs none
                grad_b_dec = -(W_enc @ grad_b_enc)
        return (grad_x, grad_w, grad_b_enc if need_b_enc else None, grad_b_dec, None, *[None] * n_inputs)


class SparseDecode(torch.autograd.Function):
    """Sum over active latents of value * W_dec[latent]: [tokens, d_in], sparse forward and backward."""

    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor, offsets: Tensor, W_dec: Tensor, impl: str) -> Tensor:
        ctx.impl = impl
        ctx.save_for_backward(values, indices, offsets, W_dec)
        return _sparse_times_op(values, indices, offsets, W_dec, impl)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        values, indices, offsets, W_dec = ctx.saved_tensors
        grad_out = grad_out.to(W_dec.dtype).contiguous()
        grad_values = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_values = _sparse_row_dots_op(values, indices, offsets, grad_out, W_dec, ctx.impl)
        if ctx.needs_input_grad[3]:
            grad_w = _sparse_transpose_times_op([values], [indices], [offsets], grad_out, W_dec.shape[0], ctx.impl)
        return grad_values, None, None, grad_w, None


def sparse_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor,
                  select: Selection, impl: str = "csr") -> SparseLatents:
    """Active latents of x [tokens, d_in] under `select`; W_enc [d_in, d_sae], b_enc [d_sae], b_dec [d_in]."""
    return sparse_encode_many(x, W_enc, b_enc, b_dec, [select], impl)[0]


def sparse_encode_many(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor,
                       selects: list[Selection], impl: str = "csr") -> list[SparseLatents]:
    """One SparseLatents per selection, all from one encoder product (and one sparse backward).

    The dense product [tokens, d_sae] is made without grad and dropped once every selection read it.
    """
    impl = _resolve_impl(impl, W_enc)
    parts = _select(x, W_enc, b_enc, b_dec, selects)
    acts = SparseEncode.apply(x, W_enc, b_enc, b_dec, impl, *parts)
    return [SparseLatents(a, parts[3 * i + 1], parts[3 * i + 2]) for i, a in enumerate(acts)]


@torch.no_grad()
def _select(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, selects: list[Selection]) -> list[Tensor]:
    """(values, indices, offsets) of every selection, flat, from one dense product [tokens, d_sae]
    (freed on return)."""
    pre = ((x - b_dec) @ W_enc).add_(b_enc)  # cheaper than addmm's broadcast copy of b_enc on CPU
    return [t for select in selects for t in select(pre)]


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
