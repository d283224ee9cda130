"""The LP-dual optimality certificate of saekit.match.assign (what `sparse_assignment` relies on): it
accepts the optimal matching and rejects a deliberately suboptimal one (two rows' partners swapped),
both when the better pairs are in the graph the duals are solved on and when they are outside it; the
streamed check returns exactly the violating pairs of corrupted duals (including one outside every
candidate list), and no streamed block exceeds its element budget."""

import numpy as np
import pytest
import torch

from saekit.match.assign import _violations, assignment_duals, exact_assignment, sparse_assignment
from saekit.match.similarity import Blocks, cosine_matrix, top_candidates, unit_rows


def random_dirs(n, d, seed):
    return unit_rows(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)))


def certified(a_dirs, b_dirs, partner, rows, cols, m):
    """sparse_assignment's check of `partner`: duals solved on the edges (rows, cols), then every one of
    the n_a x n_b pairs checked against them (m candidates per row and column). False = rejected."""
    sim = cosine_matrix(a_dirs, b_dirs)
    try:
        a, b = assignment_duals(rows, cols, sim[rows, cols], partner, sim.shape[1])
    except RuntimeError:  # "negative cycle; the matching is not optimal on its own edges"
        return False
    cand = top_candidates(a_dirs, b_dirs, m)
    bad_rows, _, _, _ = _violations(a_dirs, b_dirs, cand, a, b, tol=1e-6, block_rows=64, device="cpu")
    return len(bad_rows) == 0


def swapped(partner, sim):
    """partner with the two rows swapped that lose the most total cosine (strictly worse), and the loss."""
    own = sim[np.arange(len(partner)), partner]
    crossed = sim[:, partner]  # [i, j]: row i with row j's partner
    loss = own[:, None] + own[None, :] - crossed - crossed.T
    i, j = np.unravel_index(np.argmax(loss), loss.shape)
    worse = partner.copy()
    worse[i], worse[j] = partner[j], partner[i]
    return worse, float(loss[i, j])


@pytest.mark.parametrize("n_a,n_b", [(60, 60), (60, 90)])
def test_certificate_on_the_full_graph_accepts_the_optimum_and_rejects_a_swap(n_a, n_b):
    a_dirs, b_dirs = random_dirs(n_a, 16, 3), random_dirs(n_b, 16, 4)
    sim = cosine_matrix(a_dirs, b_dirs)
    best = exact_assignment(sim).partner
    worse, loss = swapped(best, sim)
    assert loss > 0.1  # strictly worse: the swap loses this much total cosine
    assert sim[np.arange(n_a), worse].sum() == pytest.approx(sim[np.arange(n_a), best].sum() - loss, abs=1e-5)
    rows, cols = np.nonzero(np.ones_like(sim, dtype=bool))
    assert certified(a_dirs, b_dirs, best, rows, cols, m=n_a)
    assert not certified(a_dirs, b_dirs, worse, rows, cols, m=n_a)


def test_certificate_rejects_a_matching_beaten_by_pairs_outside_its_graph():
    """Planted: B is a noisy permutation of A, so the optimum is that permutation. On a graph of only the
    matching's own edges, any matching is optimal and gets duals; the check of all pairs must then find
    the better pairs of the two swapped rows, and find none for the optimum."""
    n, d = 80, 32
    a_dirs = random_dirs(n, d, 0)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    b_dirs = torch.empty_like(a_dirs)
    b_dirs[perm] = unit_rows(a_dirs + 0.1 * random_dirs(n, d, 2))
    sim = cosine_matrix(a_dirs, b_dirs)
    best = exact_assignment(sim).partner
    assert np.array_equal(best, perm.numpy())
    worse = best.copy()
    worse[[0, 1]] = best[[1, 0]]
    assert sim[[0, 1], best[[0, 1]]].sum() - sim[[0, 1], worse[[0, 1]]].sum() > 1.0  # strictly worse

    for partner, accepted in ((best, True), (worse, False)):
        rows = np.arange(n)
        assert certified(a_dirs, b_dirs, partner, rows, partner, m=4) is accepted
    a, b = assignment_duals(np.arange(n), worse, sim[np.arange(n), worse], worse, n)
    bad_rows, bad_cols, _, _ = _violations(a_dirs, b_dirs, top_candidates(a_dirs, b_dirs, 4), a, b, tol=1e-6,
                                           block_rows=64, device="cpu")
    found = set(zip(bad_rows.tolist(), bad_cols.tolist()))
    assert {(0, int(best[0])), (1, int(best[1]))} <= found  # the pairs the swap gave up


# --- the streamed check finds exactly the violating pairs, in bounded blocks ----------------------

def dense_violations(sim, a, b, tol=1e-6):
    """{(i, j)} with a_i + b_j < sim[i, j] - tol, from the dense matrix."""
    return set(zip(*[x.tolist() for x in np.nonzero(sim - a[:, None] - b[None, :] > tol)]))


@pytest.mark.parametrize("n_a,n_b", [(120, 120), (90, 150)])
def test_streamed_check_finds_every_violating_pair_of_corrupted_duals(n_a, n_b):
    """Optimal duals with noise added: the streamed check (candidate lists, floor bound, recomputed rows
    in blocks of <= 500 cosines) must return exactly the pairs the dense matrix says violate."""
    a_dirs, b_dirs = random_dirs(n_a, 16, 5), random_dirs(n_b, 16, 6)
    sim = cosine_matrix(a_dirs, b_dirs)
    best = exact_assignment(sim).partner
    rows, cols = np.nonzero(np.ones_like(sim, dtype=bool))
    a, b = assignment_duals(rows, cols, sim[rows, cols], best, n_b)
    g = np.random.default_rng(0)
    a_bad = a - np.abs(g.normal(0, 0.02, n_a)) * (g.random(n_a) < 0.3)  # 30% of rows lowered
    blocks = Blocks(rows=4096, elements=500)
    found_rows, found_cols, found_sims, counts = _violations(a_dirs, b_dirs, top_candidates(a_dirs, b_dirs, 4),
                                                             a_bad, b, 1e-6, blocks, "cpu", keep=n_b)
    expected = dense_violations(sim, a_bad, b)
    assert len(expected) > 20  # the corruption broke many pairs
    assert set(zip(found_rows.tolist(), found_cols.tolist())) == expected
    assert np.allclose(found_sims, sim[found_rows, found_cols], atol=1e-5)
    assert counts["recomputed_rows"] > 0 and blocks.largest <= max(500, n_b)
    # and the optimal duals themselves pass the same check
    assert len(_violations(a_dirs, b_dirs, top_candidates(a_dirs, b_dirs, 4), a, b, 1e-6, blocks, "cpu")[0]) == 0


def test_a_violating_pair_outside_every_candidate_list_is_found():
    """Column j's dual made very low: pair (i, j) lies outside the candidate lists of row i and column j,
    so only the floor bound and the streamed recomputation can find it."""
    a_dirs, b_dirs = random_dirs(100, 16, 8), random_dirs(100, 16, 9)
    sim = cosine_matrix(a_dirs, b_dirs)
    best = exact_assignment(sim).partner
    rows, cols = np.nonzero(np.ones_like(sim, dtype=bool))
    a, b = assignment_duals(rows, cols, sim[rows, cols], best, 100)
    cand = top_candidates(a_dirs, b_dirs, 3)
    i = 0
    j = int(next(c for c in np.argsort(sim[i]) if c not in cand.row_indices[i] and i not in cand.col_indices[:, c]))
    b_bad = b.copy()
    b_bad[j] -= 5.0
    found_rows, found_cols, _, counts = _violations(a_dirs, b_dirs, cand, a, b_bad, 1e-6, 16, "cpu", keep=1)
    assert (i, j) in set(zip(found_rows.tolist(), found_cols.tolist()))
    assert counts["recomputed_rows"] >= 1


def test_block_budget_bounds_the_largest_block_whatever_n_is():
    """The instrumented block plan: with a budget of 1,200 cosines every streamed pass (candidates,
    certificate) stays within it at n_b = 300 and at n_b = 600; the default budget uses larger blocks."""
    for n in (300, 600):
        a_dirs, b_dirs = random_dirs(n // 2, 16, 10), random_dirs(n, 16, 11)
        blocks = Blocks(rows=4096, elements=1200)
        small = sparse_assignment(a_dirs, b_dirs, candidates=2, block_rows=blocks)
        assert small.certified and 0 < small.info["largest_block"] <= 1200
        default = sparse_assignment(a_dirs, b_dirs, candidates=2)
        assert default.info["largest_block"] > 1200  # the instrument sees the real block size
        assert default.total == pytest.approx(small.total, abs=1e-6 * n)
