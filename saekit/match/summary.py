"""Numbers of a matching: fractions shared, the threshold curve, cosine histograms, several seeds.

Everything here is plain JSON-safe data computed from `PairMatch` objects; report.py draws it and
run.py writes it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from saekit.match.assign import Assignment
from saekit.match.pair import DEFAULT_THRESHOLD, PairMatch, SideMatch

CURVE_THRESHOLDS = [round(t, 2) for t in np.linspace(0.0, 1.0, 21)]
HISTOGRAM_EDGES = [round(t, 3) for t in np.linspace(-0.2, 1.0, 49)]  # cosines below -0.2 go to the first bin


def threshold_curve(side: SideMatch, thresholds: list[float] = CURVE_THRESHOLDS) -> list[float]:
    """Fraction of the side's latents shared at each threshold."""
    return [float(side.shared(t).mean()) for t in thresholds]


def histogram(values: np.ndarray, edges: list[float] = HISTOGRAM_EDGES) -> list[int]:
    """Counts of finite values per bin of `edges` (clipped into the outer bins)."""
    finite = values[np.isfinite(values)]
    clipped = np.clip(finite, edges[0], edges[-1])
    return [int(c) for c in np.histogram(clipped, bins=edges)[0]]


def _mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _assignment_info(assignment: Assignment) -> dict[str, Any]:
    return {"method": assignment.method, "certified": assignment.certified,
            "seconds": round(assignment.seconds, 3), "total_cos": assignment.total, **assignment.info}


def direction_stats(side: SideMatch, other: SideMatch, which: str, threshold: float) -> dict[str, Any]:
    """Decoder or encoder numbers of a pair, over the smaller side (`side`)."""
    cos = getattr(side, f"{which}_cos")
    return {
        "mean_matched_cos": _mean(cos),
        "median_matched_cos": float(np.nanmedian(cos)) if np.isfinite(cos).any() else math.nan,
        "mean_max_cos": _mean(getattr(side, f"{which}_max_cos")),  # non-one-to-one baseline
        "mean_max_cos_reverse": _mean(getattr(other, f"{which}_max_cos")),
        "fraction_above_threshold": float((cos >= threshold).mean()),
        "histogram": histogram(cos),
    }


def pair_summary(pair: PairMatch, threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """The JSON summary of one pair at `threshold` (fractions over each side and the smaller one)."""
    small, large = (pair.b, pair.a) if pair.swapped else (pair.a, pair.b)
    n_shared = pair.n_shared(threshold)
    decoder = direction_stats(small, large, "decoder", threshold)
    encoder = direction_stats(small, large, "encoder", threshold)
    return {
        "n_shared": n_shared,
        "fraction_shared": n_shared / small.d_sae,
        "fraction_shared_a": n_shared / pair.a.d_sae,
        "fraction_shared_b": n_shared / pair.b.d_sae,
        "fraction_same_partner": float(small.same_partner().mean()),
        "matched_from": "b" if pair.swapped else "a",
        "decoder": decoder,
        "encoder": encoder,
        "threshold_curve": threshold_curve(small),
        "assignment": {"decoder": _assignment_info(pair.decoder), "encoder": _assignment_info(pair.encoder)},
        "checks": {
            "hungarian_mean_at_most_max_mean": bool(decoder["mean_matched_cos"] <= decoder["mean_max_cos"] + 1e-6
                                                    and encoder["mean_matched_cos"] <= encoder["mean_max_cos"] + 1e-6),
            "encoder_below_decoder": bool(encoder["mean_matched_cos"] < decoder["mean_matched_cos"]),
        },
    }


def by_shared(values: np.ndarray, shared: np.ndarray) -> dict[str, float]:
    """Mean of `values` over shared and over orphan (not shared) latents, NaNs ignored."""
    return {"shared": _mean(values[shared]), "orphan": _mean(values[~shared])}


def seed_summary(n_saes: int, pairs: dict[tuple[int, int], PairMatch],
                 threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """Several SAEs: the matrix of fractions shared and SAE 0's latents shared with every other SAE.

    matrix[i][j] is the fraction of SAE i's latents shared with SAE j (1 on the diagonal).
    `reference.shared_with_count[c]` is the fraction of SAE 0's latents shared with exactly c others.
    """
    matrix = [[1.0 if i == j else math.nan for j in range(n_saes)] for i in range(n_saes)]
    for (i, j), pair in pairs.items():
        n_shared = pair.n_shared(threshold)
        matrix[i][j] = n_shared / pair.a.d_sae
        matrix[j][i] = n_shared / pair.b.d_sae
    counts = reference_counts(n_saes, pairs, threshold)
    off_diagonal = [matrix[i][j] for i in range(n_saes) for j in range(n_saes) if i != j]
    return {
        "matrix": matrix,
        "mean_pairwise_fraction": float(np.mean(off_diagonal)) if off_diagonal else math.nan,
        "reference": {
            "sae": 0,
            "fraction_shared_with_all": float((counts == n_saes - 1).mean()),
            "fraction_shared_with_none": float((counts == 0).mean()),
            "shared_with_count": [float((counts == c).mean()) for c in range(n_saes)],
        },
    }


def reference_counts(n_saes: int, pairs: dict[tuple[int, int], PairMatch],
                     threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """[d_sae of SAE 0] how many of the other SAEs each of SAE 0's latents is shared with."""
    counts = None
    for j in range(1, n_saes):
        shared = pairs[(0, j)].a.shared(threshold).astype(np.int64)
        counts = shared if counts is None else counts + shared
    return counts if counts is not None else np.zeros(0, dtype=np.int64)
