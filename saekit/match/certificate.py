"""The LP-dual optimality certificate of `assign.sparse_assignment`, in memory linear in n.

A matching of rows (A's latents) to columns (B's) is optimal over *all* n_a x n_b pairs when there
are duals a [n_a], b [n_b] (b >= 0, = 0 on unmatched columns) with a_i + b_j = cos(i, j) on matched
pairs and a_i + b_j >= cos(i, j) - tol on every pair. `assignment_duals` solves for duals from the
matching's edge list (a shortest-path problem); `violations` checks every pair against them without
ever holding more than one streamed block of the cosine matrix:

1. the stored candidate pairs (m per row and per column) are checked directly, on the lists;
2. a pair outside them has cos <= min(row_floor[i], col_floor[j]), which bounds each row's worst
   slack in O(log n_b) after one sort of the columns; most rows are cleared here;
3. the rows left ("suspect") are recomputed exactly, block by block (`similarity.row_slack`: at most
   `Blocks.elements` cosines at once), keeping only each row's `keep` most violated pairs.

Memory: O(n * m) for the lists and the violating pairs, plus one block; nothing [n_a, n_b].
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from saekit.match.similarity import DEFAULT_BLOCK_ROWS, Blocks, Candidates, row_slack


def assignment_duals(rows: np.ndarray, cols: np.ndarray, sims: np.ndarray, partner: np.ndarray,
                     n_b: int) -> tuple[np.ndarray, np.ndarray]:
    """Duals (a [n_a], b [n_b]) proving `partner` optimal over the edge list (rows, cols, sims).

    They satisfy a_i + b_j >= sim on every listed edge, a_i + b_j = sim on matched pairs and b_j >= 0,
    = 0 on unmatched columns (n_a < n_b). With p = -a and b fixed by the matched pairs, each edge is a
    difference constraint p_i <= p_i' + w (i' the row matched to j); a node Z (p_Z = 0) carries the
    b_j >= 0 constraints of a rectangular problem. Bellman-Ford gives the two extreme solutions (rows'
    duals as small, then as large as they can be); their midpoint is returned, which leaves the most
    room for the pairs outside the edge list (the check in `violations`).
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


def candidate_violations(cand: Candidates, a: np.ndarray, b: np.ndarray, tol: float
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, cosines float64) of the stored candidate pairs with a_i + b_j < cos - tol.

    Checked on the [n_a, m] row lists and the [m, n_b] column lists in place (a pair in both lists
    may come out twice); memory O((n_a + n_b) * m).
    """
    row_excess = cand.row_values - a[:, None] - b[cand.row_indices]  # [n_a, m] float64
    r_i, r_k = np.nonzero(row_excess > tol)
    col_excess = cand.col_values - a[cand.col_indices] - b[None, :]  # [m, n_b]
    c_k, c_j = np.nonzero(col_excess > tol)
    rows = np.concatenate([r_i, cand.col_indices[c_k, c_j]])
    cols = np.concatenate([cand.row_indices[r_i, r_k], c_j])
    sims = np.concatenate([cand.row_values[r_i, r_k], cand.col_values[c_k, c_j]]).astype(np.float64)
    return rows, cols, sims


def suspect_rows(cand: Candidates, a: np.ndarray, b: np.ndarray, tol: float) -> np.ndarray:
    """Rows i whose pairs outside the candidates might break the duals: max_j min(row_floor[i],
    col_floor[j]) - b_j > a_i + tol (the bound on cos outside the lists). O((n_a + n_b) log n_b)."""
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
    return np.nonzero(bound > a + tol)[0]


def violations(a_dirs: Tensor, b_dirs: Tensor, cand: Candidates, a: np.ndarray, b: np.ndarray, tol: float,
               block_rows: int | Blocks = DEFAULT_BLOCK_ROWS, device: str | torch.device = "cpu",
               keep: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Pairs (rows, cols, cosines) with a_i + b_j < cos - tol among ALL n_a x n_b pairs, and counts.

    a_dirs [n_a, d], b_dirs [n_b, d] unit rows; a [n_a], b [n_b] the duals. Every pair is covered by
    one of the three checks of the module docstring. A recomputed row contributes at most `keep`
    (default: the candidate lists' m) of its most violated pairs, so the output is O(n_a * m) pairs;
    the check itself is complete: an empty output means no pair violates by more than tol.
    """
    found = [candidate_violations(cand, a, b, tol)]
    suspect = suspect_rows(cand, a, b, tol)
    if len(suspect):
        n_keep = cand.row_values.shape[1] if keep is None else keep
        slack, columns = row_slack(a_dirs, b_dirs, suspect, b, n_keep, block_rows, device)
        bad = slack - a[suspect, None] > tol  # [len(suspect), n_keep]
        found.append((np.repeat(suspect, slack.shape[1])[bad.reshape(-1)], columns[bad],
                      (slack + b[columns])[bad]))
    out_rows, out_cols, out_sims = (np.concatenate(parts) for parts in zip(*found))
    _, first = np.unique(out_rows.astype(np.int64) * len(b) + out_cols, return_index=True)
    counts = {"violations": int(len(first)), "recomputed_rows": int(len(suspect))}
    return out_rows[first], out_cols[first], out_sims[first], counts
