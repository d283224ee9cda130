"""One-to-one assignment of A's latents to B's maximising the total cosine: exact, and a scalable
sparse solver that certifies it found the same optimum.

Rows are A's latents, columns B's, n_a <= n_b (match the smaller SAE into the larger): every row gets
a distinct column.

- `exact_assignment`: scipy's `linear_sum_assignment` maximising the total on the dense [n_a, n_b]
  matrix, as Paulo & Belrose's sae_overlap does. Memory n_a * n_b * 12 bytes (float32 cosines plus
  the float64 copy scipy solves on): fine up to ~16K latents.
- `sparse_assignment`: never holds the dense matrix.
  1. `top_candidates`: the m largest cosines of every row and every column (blockwise, on the device).
  2. `min_weight_full_bipartite_matching` on that sparse graph with cost 2 - cosine (> 0, so no
     weight is an explicit zero that scipy's sparse formats drop). No perfect matching: double m.
  3. Certificate (certificate.py): LP duality. From the matching we solve for duals (a_i for rows,
     b_j for columns, a_i + b_j = cos on matched pairs) by a shortest-path problem over the graph's
     edges; the matching is optimal over *all* n_a x n_b pairs if a_i + b_j >= cos(i, j) - tol
     everywhere. Candidate pairs are checked on their lists; pairs outside them have
     cos <= min(row_floor[i], col_floor[j]), which clears most rows in O(n log n); the rows left are
     recomputed exactly in streamed blocks; each row's `candidates` most violated pairs join the
     graph and step 2 runs again.
  Memory: O(n * m) (candidate lists, the graph, the duals) plus one streamed block of at most
  `Blocks.elements` cosines, whatever n is; `info["largest_block"]` reports the largest one used.
  A certified result is optimal to within n_a * tol of total cosine (tol = 1e-6 by default), so it
  agrees with `exact_assignment` wherever that runs (tests compare them on random and planted data).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from torch import Tensor

from saekit.match.certificate import assignment_duals
from saekit.match.certificate import violations as _violations
from saekit.match.similarity import DEFAULT_BLOCK_ROWS, Blocks, as_blocks, cosine_matrix, top_candidates

METHODS = ("auto", "exact", "sparse")
CERTIFICATE_FACTOR = 4  # the certificate keeps 4x the candidates the matching graph starts from


@dataclass
class Assignment:
    """A one-to-one matching of rows (A's latents) to columns (B's), n_a <= n_b."""

    partner: np.ndarray  # [n_a] int64: the column matched to each row
    total: float  # sum of the matched cosines
    method: str  # "exact" | "sparse"
    certified: bool  # exact, or sparse with a dual certificate of optimality
    seconds: float
    row_max: np.ndarray  # [n_a] each row's largest cosine over all columns (the non-one-to-one baseline)
    col_max: np.ndarray  # [n_b] each column's largest cosine over all rows
    info: dict = field(default_factory=dict)  # sparse: candidates m, rounds, violations per round, edges


def exact_assignment(sim: np.ndarray) -> Assignment:
    """Optimal matching of a dense cosine matrix sim [n_a, n_b] (n_a <= n_b), maximising the total."""
    if sim.shape[0] > sim.shape[1]:
        raise ValueError(f"exact_assignment needs n_a <= n_b, got a matrix of shape {sim.shape}")
    start = time.perf_counter()
    # scipy solves in float64: negate into one float64 copy (maximize=True would make a second copy)
    rows, cols = linear_sum_assignment(np.negative(sim, dtype=np.float64))
    partner = np.empty(sim.shape[0], dtype=np.int64)
    partner[rows] = cols
    total = float(sim[rows, cols].astype(np.float64).sum())
    return Assignment(partner, total, "exact", True, time.perf_counter() - start, sim.max(axis=1), sim.max(axis=0))


def _match_edges(rows: np.ndarray, cols: np.ndarray, sims: np.ndarray, n_a: int, n_b: int) -> np.ndarray | None:
    """[n_a] partner of each row: the max-total matching over the given edges, or None if none covers every row."""
    cost = 2.0 - sims.astype(np.float64)  # in [1, 3]: never an explicit zero
    graph = sp.csr_matrix((cost, (rows, cols)), shape=(n_a, n_b))
    try:
        row_ind, col_ind = min_weight_full_bipartite_matching(graph)
    except ValueError:  # "no full matching exists"
        return None
    partner = np.full(n_a, -1, dtype=np.int64)
    partner[row_ind] = col_ind
    return partner


def sparse_assignment(a_dirs: Tensor, b_dirs: Tensor, candidates: int = 16, tol: float = 1e-6,
                      max_rounds: int = 30, block_rows: int | Blocks = DEFAULT_BLOCK_ROWS,
                      device: str | torch.device = "cpu") -> Assignment:
    """The optimal matching of unit rows a_dirs [n_a, d] to b_dirs [n_b, d] (n_a <= n_b), certified.

    `candidates` is m: the graph starts from the m largest cosines of every row and column; the
    certificate keeps CERTIFICATE_FACTOR * m of them (so m can double twice, when the first graph has
    no matching covering every row, without recomputing them). After `max_rounds` rounds without a
    certificate the best matching found is returned with certified=False (and a warning).
    block_rows: a row cap, or a `Blocks` plan (rows and elements per streamed block); cosines are
    computed on `device`, the matching and the duals on the CPU.
    """
    blocks = as_blocks(block_rows, device)
    n_a, n_b = a_dirs.shape[0], b_dirs.shape[0]
    if n_a > n_b:
        raise ValueError(f"sparse_assignment needs n_a <= n_b, got {n_a} rows and {n_b} columns")
    start = time.perf_counter()
    m = max(1, candidates)
    cand = top_candidates(a_dirs, b_dirs, CERTIFICATE_FACTOR * m, blocks, device)
    while True:
        rows, cols, sims = cand.edges(m)
        partner = _match_edges(rows, cols, sims, n_a, n_b)
        if partner is not None or m >= n_b:
            break
        m *= 2  # the candidate graph has no matching that covers every row: widen it from the lists
        if m > cand.row_values.shape[1]:  # past what the lists hold: recompute them (rare)
            cand = top_candidates(a_dirs, b_dirs, CERTIFICATE_FACTOR * m, blocks, device)
    if partner is None:
        raise RuntimeError("no one-to-one matching found on the full cosine graph (cannot happen for n_a <= n_b)")
    info: dict = {"candidates": m, "rounds": 0, "violations": [], "recomputed_rows": []}
    certified = False
    for round_ in range(1, max_rounds + 1):
        a, b = assignment_duals(rows, cols, sims, partner, n_b)
        bad_rows, bad_cols, bad_sims, counts = _violations(a_dirs, b_dirs, cand, a, b, tol, blocks, device,
                                                           keep=m)
        info["rounds"] = round_
        info["violations"].append(counts["violations"])
        info["recomputed_rows"].append(counts["recomputed_rows"])
        if len(bad_rows) == 0:
            certified = True
            break
        rows, cols, sims = _merge_edges((rows, cols, sims), (bad_rows, bad_cols, bad_sims), n_b)
        partner = _match_edges(rows, cols, sims, n_a, n_b)
        assert partner is not None  # a superset of a graph with a full matching
    info["edges"] = int(len(rows))
    info["largest_block"] = blocks.largest  # most cosines any streamed block held
    total = float(_pair_sims(rows, cols, sims, partner).sum())
    if not certified:
        warnings.warn(f"sparse_assignment: no optimality certificate after {max_rounds} rounds "
                      f"({info['violations'][-1]} dual violations left); raise candidates or use method='exact'")
    return Assignment(partner, total, "sparse", certified, time.perf_counter() - start,
                      cand.row_values[:, 0].copy(), cand.col_values[0].copy(), info)


def _merge_edges(old: tuple[np.ndarray, np.ndarray, np.ndarray], new: tuple[np.ndarray, np.ndarray, np.ndarray],
                 n_b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The union of two edge lists (rows, cols, cosines); a pair in both keeps its old cosine."""
    rows, cols, sims = (np.concatenate([o, n.astype(o.dtype)]) for o, n in zip(old, new))
    _, first = np.unique(rows * n_b + cols, return_index=True)
    return rows[first], cols[first], sims[first]


def _pair_sims(rows: np.ndarray, cols: np.ndarray, sims: np.ndarray, partner: np.ndarray) -> np.ndarray:
    """[n_a] the cosine of each row's matched edge, looked up in the edge list."""
    out = np.empty(len(partner), dtype=np.float64)
    matched = partner[rows] == cols
    out[rows[matched]] = sims[matched]
    return out


def assign(a_dirs: Tensor, b_dirs: Tensor, method: str = "auto", exact_max: int = 8192, candidates: int = 16,
           tol: float = 1e-6, block_rows: int | Blocks = DEFAULT_BLOCK_ROWS,
           device: str | torch.device = "cpu") -> Assignment:
    """Optimal matching of a_dirs [n_a, d] into b_dirs [n_b, d] (n_a <= n_b).

    method: exact | sparse | auto (exact while n_b <= exact_max, else sparse).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "exact" or (method == "auto" and b_dirs.shape[0] <= exact_max):
        sim = cosine_matrix(a_dirs, b_dirs, block_rows, device)
        return exact_assignment(sim)
    return sparse_assignment(a_dirs, b_dirs, candidates, tol, block_rows=block_rows, device=device)
