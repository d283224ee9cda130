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
  3. Certificate: LP duality. From the matching we solve for duals (a_i for rows, b_j for columns,
     a_i + b_j = cos on matched pairs) by a shortest-path problem over the candidate edges; the
     matching is optimal over *all* n_a x n_b pairs if a_i + b_j >= cos(i, j) - tol everywhere.
     Pairs outside the candidates have cos <= min(row_floor[i], col_floor[j]), which bounds each
     row's worst slack in O(n log n); rows the bound cannot clear are recomputed exactly (one matmul
     of those rows); violating pairs join the graph and step 2 runs again.
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

from saekit.match.similarity import DEFAULT_BLOCK_ROWS, Candidates, cosine_matrix, row_slack, top_candidates

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


def assignment_duals(rows: np.ndarray, cols: np.ndarray, sims: np.ndarray, partner: np.ndarray,
                     n_b: int) -> tuple[np.ndarray, np.ndarray]:
    """Duals (a [n_a], b [n_b]) proving `partner` optimal over the edge list (rows, cols, sims).

    They satisfy a_i + b_j >= sim on every listed edge, a_i + b_j = sim on matched pairs and b_j >= 0,
    = 0 on unmatched columns (n_a < n_b). With p = -a and b fixed by the matched pairs, each edge is a
    difference constraint p_i <= p_i' + w (i' the row matched to j); a node Z (p_Z = 0) carries the
    b_j >= 0 constraints of a rectangular problem. Bellman-Ford gives the two extreme solutions (rows'
    duals as small, then as large as they can be); their midpoint is returned, which leaves the most
    room for the pairs outside the edge list (the check in `_violations`).
    """
    n_a = len(partner)
    sims = sims.astype(np.float64)
    owner = np.full(n_b, -1, dtype=np.int64)
    owner[partner] = np.arange(n_a)
    matched_sim = np.zeros(n_b)
    is_matched_edge = partner[rows] == cols
    matched_sim[cols[is_matched_edge]] = sims[is_matched_edge]
    z = n_a
    other = ~is_matched_edge
    e_rows, e_cols, e_sims = rows[other], cols[other], sims[other]
    to_matched = owner[e_cols] >= 0
    src = [owner[e_cols[to_matched]], np.full(int((~to_matched).sum()), z)]
    dst = [e_rows[to_matched], e_rows[~to_matched]]
    weight = [matched_sim[e_cols[to_matched]] - e_sims[to_matched], -e_sims[~to_matched]]
    if n_a < n_b:  # b_j >= 0 for matched j: p_Z <= p_i' + matched_sim[j]
        src.append(np.arange(n_a))
        dst.append(np.full(n_a, z))
        weight.append(matched_sim[partner])
    src_all, dst_all, w_all = np.concatenate(src), np.concatenate(dst), np.concatenate(weight)
    highest = _shortest_distances(src_all, dst_all, w_all, n_a + 1)  # largest p <= 0
    lowest = -_shortest_distances(dst_all, src_all, w_all, n_a + 1)  # smallest p >= 0
    if n_a < n_b:
        highest, lowest = highest - highest[z], lowest - lowest[z]
    a = -(highest[:n_a] + lowest[:n_a]) / 2
    b = np.zeros(n_b)
    b[partner] = matched_sim[partner] - a
    return a, b


def _shortest_distances(src: np.ndarray, dst: np.ndarray, weight: np.ndarray, n_nodes: int,
                        min_gain: float = 1e-12) -> np.ndarray:
    """[n_nodes] shortest distances over arcs src -> dst (weights may be negative) from a virtual
    source joined to every node by a 0 arc: the largest d <= 0 with d[dst] <= d[src] + weight.

    Bellman-Ford with Jacobi sweeps, vectorised over arcs, stopped when no distance improves by more
    than min_gain (which also ends the sweeps on a rounding-error cycle of weight ~ -1e-16).
    """
    order = np.argsort(dst, kind="stable")
    src, dst, weight = src[order], dst[order], weight[order].astype(np.float64)
    heads, starts = np.unique(dst, return_index=True)
    distance = np.zeros(n_nodes)
    for _ in range(n_nodes + 1):
        if len(heads) == 0:
            return distance
        best = np.minimum.reduceat(distance[src] + weight, starts)
        improved = best < distance[heads] - min_gain
        if not improved.any():
            return distance
        distance[heads[improved]] = best[improved]
    raise RuntimeError("assignment_duals: negative cycle; the matching is not optimal on its own edges")


def _violations(a_dirs: Tensor, b_dirs: Tensor, cand: Candidates, a: np.ndarray, b: np.ndarray,
                tol: float, block_rows: int, device: str | torch.device
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Pairs (rows, cols, cosines) with a_i + b_j < cos - tol, and counts of what was checked.

    1. every stored candidate pair is checked directly;
    2. any other pair has cos <= min(row_floor[i], col_floor[j]): a row whose bound
       max_j min(row_floor[i], col_floor[j]) - b_j stays within a_i + tol is cleared in O(log n_b);
    3. the rows left are recomputed (one matmul of those rows against B) and checked exactly.
    """
    rows, cols, sims = cand.edges()
    excess = sims.astype(np.float64) - a[rows] - b[cols]
    bad = excess > tol
    found = [(rows[bad], cols[bad], sims[bad].astype(np.float64))]
    col_floor = cand.col_floor.astype(np.float64)
    order = np.argsort(col_floor)
    sorted_floor, sorted_b = col_floor[order], b[order]
    prefix_max = np.maximum.accumulate(sorted_floor - sorted_b)  # columns whose floor < the row's floor
    suffix_min_b = np.minimum.accumulate(sorted_b[::-1])[::-1]  # columns whose floor >= the row's floor
    row_floor = cand.row_floor.astype(np.float64)
    split = np.searchsorted(sorted_floor, row_floor, side="left")
    bound = np.full(len(a), -np.inf)
    has_low, has_high = split > 0, split < len(b)
    bound[has_low] = prefix_max[split[has_low] - 1]
    bound[has_high] = np.maximum(bound[has_high], row_floor[has_high] - suffix_min_b[split[has_high]])
    suspect = np.nonzero(bound > a + tol)[0]
    if len(suspect):
        n_keep = cand.row_values.shape[1]
        slack, columns = row_slack(a_dirs, b_dirs, suspect, b, n_keep, block_rows, device)
        excess = slack - a[suspect, None]
        bad = excess > tol
        found.append((np.repeat(suspect, n_keep)[bad.reshape(-1)], columns[bad], (slack + b[columns])[bad]))
    out_rows, out_cols, out_sims = (np.concatenate(parts) for parts in zip(*found))
    key = out_rows * len(b) + out_cols
    _, first = np.unique(key, return_index=True)
    counts = {"violations": int(len(first)), "recomputed_rows": int(len(suspect))}
    return out_rows[first], out_cols[first], out_sims[first], counts


def sparse_assignment(a_dirs: Tensor, b_dirs: Tensor, candidates: int = 16, tol: float = 1e-6,
                      max_rounds: int = 30, block_rows: int = DEFAULT_BLOCK_ROWS,
                      device: str | torch.device = "cpu") -> Assignment:
    """The optimal matching of unit rows a_dirs [n_a, d] to b_dirs [n_b, d] (n_a <= n_b), certified.

    `candidates` is m: the graph starts from the m largest cosines of every row and column; the
    certificate keeps CERTIFICATE_FACTOR * m of them. After `max_rounds` rounds without a
    certificate the best matching found is returned with certified=False (and a warning).
    """
    n_a, n_b = a_dirs.shape[0], b_dirs.shape[0]
    if n_a > n_b:
        raise ValueError(f"sparse_assignment needs n_a <= n_b, got {n_a} rows and {n_b} columns")
    start = time.perf_counter()
    m = max(1, candidates)
    while True:
        cand = top_candidates(a_dirs, b_dirs, CERTIFICATE_FACTOR * m, block_rows, device)
        rows, cols, sims = cand.edges(m)
        partner = _match_edges(rows, cols, sims, n_a, n_b)
        if partner is not None or m >= n_b:
            break
        m *= 2  # the candidate graph has no matching that covers every row
    if partner is None:
        raise RuntimeError("no one-to-one matching found on the full cosine graph (cannot happen for n_a <= n_b)")
    info: dict = {"candidates": m, "rounds": 0, "violations": [], "recomputed_rows": []}
    certified = False
    for round_ in range(1, max_rounds + 1):
        a, b = assignment_duals(rows, cols, sims, partner, n_b)
        bad_rows, bad_cols, bad_sims, counts = _violations(a_dirs, b_dirs, cand, a, b, tol, block_rows, device)
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
           tol: float = 1e-6, block_rows: int = DEFAULT_BLOCK_ROWS,
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
