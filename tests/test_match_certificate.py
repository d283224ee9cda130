"""The LP-dual optimality certificate of saekit.match.assign (what `sparse_assignment` relies on): it
accepts the optimal matching and rejects a deliberately suboptimal one (two rows' partners swapped),
both when the better pairs are in the graph the duals are solved on and when they are outside it."""

import numpy as np
import pytest
import torch

from saekit.match.assign import _violations, assignment_duals, exact_assignment
from saekit.match.similarity import cosine_matrix, top_candidates, unit_rows


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
