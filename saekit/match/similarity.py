"""Cosine similarities between two SAEs' latent directions, built in row blocks on any device.

A latent's *decoder direction* is its row of W_dec [d_sae, d_in]; its *encoder direction* is its
column of W_enc [d_in, d_sae] (the row of the `nn.Linear` weight in sparsify's layout). Both are
normalised to unit length; a zero row stays zero (its cosines are 0, where sae_overlap turns the
NaN of 0/0 into 0).

Nothing here holds the whole [n_a, n_b] matrix unless asked to (`cosine_matrix`): `top_candidates`
streams row blocks of A against all of B on the device and keeps, per row and per column, the m
largest cosines; `row_slack` recomputes chosen rows for the optimality check of `certificate.py`.
Every streamed block is at most `Blocks.elements` cosines (rows = elements // n_b), so the memory
of these passes does not grow with n; what they keep is O(n * m).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from saekit.sae import SAE

DEFAULT_BLOCK_ROWS = 4096
# one streamed [rows, n_b] block holds at most this many cosines (32 MiB in float32) whatever n_b is,
# so the memory of each blockwise pass is bounded by a constant, not by block_rows * n_b
DEFAULT_BLOCK_ELEMENTS = 2**23
CUDA_BLOCK_ELEMENTS = 2**26  # on a GPU: 256 MiB blocks of device memory, fewer kernel launches


@dataclass
class Blocks:
    """How the [n_a, n_b] cosine matrix is streamed: blocks of at most `rows` rows and `elements` cosines.

    `largest` records the most elements (rows * n_cols) of any block handed out so far, so tests and
    benchmarks can check the bound on what was actually computed, not on what was asked for.
    """

    rows: int = DEFAULT_BLOCK_ROWS
    elements: int = DEFAULT_BLOCK_ELEMENTS
    largest: int = 0

    def slices(self, n: int, n_cols: int) -> Iterator[slice]:
        """Slices of n rows, each at most `rows` rows and at most max(1, elements // n_cols) rows."""
        step = max(1, min(self.rows, self.elements // max(n_cols, 1)))
        for start in range(0, n, step):
            stop = min(n, start + step)
            self.largest = max(self.largest, (stop - start) * n_cols)
            yield slice(start, stop)


def as_blocks(block_rows: int | Blocks, device: str | torch.device = "cpu") -> Blocks:
    """`block_rows` as a Blocks plan: an int caps the rows, with the default element budget of the
    device (CUDA_BLOCK_ELEMENTS on a GPU, whose memory the host bound does not involve)."""
    if isinstance(block_rows, Blocks):
        return block_rows
    cuda = torch.device(device).type == "cuda"
    return Blocks(rows=int(block_rows), elements=CUDA_BLOCK_ELEMENTS if cuda else DEFAULT_BLOCK_ELEMENTS)


def unit_rows(directions: Tensor) -> Tensor:
    """[n, d] float32 rows scaled to unit norm; all-zero rows stay zero (cosine 0 with everything)."""
    directions = directions.detach().float()
    norms = directions.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, directions / norms.clamp_min(torch.finfo(torch.float32).tiny),
                       torch.zeros_like(directions))


def decoder_directions(sae: SAE) -> Tensor:
    """[d_sae, d_in] unit decoder directions (rows of W_dec)."""
    return unit_rows(sae.W_dec)


def encoder_directions(sae: SAE) -> Tensor:
    """[d_sae, d_in] unit encoder directions (columns of W_enc, i.e. rows of W_enc.T)."""
    return unit_rows(sae.W_enc.t())


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Exact float32 matmuls on CUDA (no TF32) for the duration; the caller's setting is restored."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def cosine_matrix(a: Tensor, b: Tensor, block_rows: int | Blocks = DEFAULT_BLOCK_ROWS,
                  device: str | torch.device = "cpu") -> np.ndarray:
    """The dense cosine matrix [n_a, n_b] float32 (numpy, in host memory) of unit rows a [n_a, d], b [n_b, d]."""
    device = torch.device(device)
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.float32)
    b_dev = b.to(device)
    with torch.no_grad(), full_precision(device):
        for rows in as_blocks(block_rows, device).slices(a.shape[0], b.shape[0]):
            out[rows] = (a[rows].to(device) @ b_dev.T).cpu().numpy()
    return out


@dataclass
class Candidates:
    """The m largest cosines of every row and every column of the [n_a, n_b] cosine matrix.

    Any pair (i, j) outside both lists has cosine <= min(row_floor[i], col_floor[j]).
    Memory: n_a * m + m * n_b entries of 12 bytes (float32 value, int64 index).
    """

    row_values: np.ndarray  # [n_a, m] float32, descending
    row_indices: np.ndarray  # [n_a, m] int64 columns
    col_values: np.ndarray  # [m, n_b] float32, descending along axis 0
    col_indices: np.ndarray  # [m, n_b] int64 rows

    @property
    def row_floor(self) -> np.ndarray:
        """[n_a] the m-th largest cosine of each row."""
        return self.row_values[:, -1]

    @property
    def col_floor(self) -> np.ndarray:
        """[n_b] the m-th largest cosine of each column."""
        return self.col_values[-1, :]

    def edges(self, m: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, cols, cosines) of the union of the first m row and column candidates, without duplicates."""
        m_row = self.row_indices.shape[1] if m is None else min(m, self.row_indices.shape[1])
        m_col = self.col_indices.shape[0] if m is None else min(m, self.col_indices.shape[0])
        n_a, n_b = self.row_indices.shape[0], self.col_indices.shape[1]
        rows = np.concatenate([np.repeat(np.arange(n_a), m_row), self.col_indices[:m_col].reshape(-1)])
        cols = np.concatenate([self.row_indices[:, :m_row].reshape(-1), np.tile(np.arange(n_b), m_col)])
        sims = np.concatenate([self.row_values[:, :m_row].reshape(-1), self.col_values[:m_col].reshape(-1)])
        _, first = np.unique(rows.astype(np.int64) * n_b + cols, return_index=True)
        return rows[first], cols[first], sims[first]


def _top_per_row(a: Tensor, b: Tensor, m: int, blocks: Blocks, device: torch.device
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(values [n_a, m] float32 descending, indices [n_a, m] int64) of the m largest a_i . b_j per row,
    streamed over row blocks of a [n_a, d] against b [n_b, d] (one block of <= blocks.elements at once)."""
    n_a, n_b = a.shape[0], b.shape[0]
    values = np.empty((n_a, m), dtype=np.float32)
    indices = np.empty((n_a, m), dtype=np.int64)
    b_dev = b.to(device)
    for rows in blocks.slices(n_a, n_b):
        top, where = (a[rows].to(device) @ b_dev.T).topk(m, dim=1)  # [block, n_b] -> [block, m]
        values[rows], indices[rows] = top.cpu().numpy(), where.cpu().numpy()
    return values, indices


def top_candidates(a: Tensor, b: Tensor, m: int, block_rows: int | Blocks = DEFAULT_BLOCK_ROWS,
                   device: str | torch.device = "cpu") -> Candidates:
    """Top-m cosines per row and per column of a [n_a, d] @ b [n_b, d].T, one block at a time.

    Two streamed passes: A's row blocks against B (row lists), then B's row blocks against A (column
    lists; a topk along contiguous rows, faster on CPU than one along the columns of the first
    pass's blocks). Memory on the device: a, b and one block of at most `Blocks.elements` cosines.
    """
    device = torch.device(device)
    blocks = as_blocks(block_rows, device)
    with torch.no_grad(), full_precision(device):
        row_values, row_indices = _top_per_row(a, b, min(m, b.shape[0]), blocks, device)
        col_values, col_indices = _top_per_row(b, a, min(m, a.shape[0]), blocks, device)
    return Candidates(row_values, row_indices, np.ascontiguousarray(col_values.T),
                      np.ascontiguousarray(col_indices.T))


def row_slack(a: Tensor, b: Tensor, rows: np.ndarray, col_offset: np.ndarray, n_keep: int,
              block_rows: int | Blocks = DEFAULT_BLOCK_ROWS, device: str | torch.device = "cpu"
              ) -> tuple[np.ndarray, np.ndarray]:
    """For each chosen row i: the n_keep largest cos(a_i, b_j) - col_offset[j] and their columns j.

    Returns (values [len(rows), n_keep] float64, columns [len(rows), n_keep] int64); certificate.py
    uses it to find the pairs that break a dual solution (col_offset = the column duals). Memory: one
    float32 and one float64 block of at most `Blocks.elements` entries, plus the outputs.
    """
    device = torch.device(device)
    n_keep = min(n_keep, b.shape[0])
    b_dev = b.to(device)
    offset = torch.as_tensor(col_offset, dtype=torch.float64, device=device)
    values = np.empty((len(rows), n_keep), dtype=np.float64)
    columns = np.empty((len(rows), n_keep), dtype=np.int64)
    with torch.no_grad(), full_precision(device):
        for part in as_blocks(block_rows, device).slices(len(rows), b.shape[0]):
            index = torch.as_tensor(rows[part], device=a.device)
            slack = (a[index].to(device) @ b_dev.T).double()
            slack -= offset  # in place: one float64 block, not two
            top, where = slack.topk(n_keep, dim=1)
            values[part], columns[part] = top.cpu().numpy(), where.cpu().numpy()
    return values, columns


def cosines_of_pairs(a: Tensor, b: Tensor, rows: np.ndarray, cols: np.ndarray, chunk: int = 2**16) -> np.ndarray:
    """[len(rows)] float32 cos(a[rows[t]], b[cols[t]]), without forming any matrix (chunk pairs at a time)."""
    out = np.zeros(len(rows), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(rows), chunk):
            r = torch.as_tensor(rows[start:start + chunk], dtype=torch.int64)
            c = torch.as_tensor(cols[start:start + chunk], dtype=torch.int64)
            out[start:start + chunk] = (a[r].float() * b[c].float()).sum(dim=1).numpy()
    return out
