"""Intervals and verdicts shared by the study recipes: a difference of means with its bootstrap
interval, an equivalence test, and a direction verdict that needs the intervals to separate.

Verdicts are strings: "yes" (the claim holds beyond the intervals), "NO" (its opposite does),
"unclear" (the intervals overlap), or a refusal reason for the equivalence test.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def mean_ci(values: Sequence[float], n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 95% percentile-bootstrap interval) of `values`; NaNs for none."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if not len(x):
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (n_boot, len(x)))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(x.mean()), float(low), float(high)


def bootstrap_difference(a: Sequence[float], b: Sequence[float], n_boot: int = 1000,
                         seed: int = 0) -> tuple[float, float, float]:
    """(mean(a) - mean(b), 95% percentile-bootstrap interval), the two samples resampled independently."""
    a_values, b_values = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    diffs = (a_values[rng.integers(0, len(a_values), (n_boot, len(a_values)))].mean(1)
             - b_values[rng.integers(0, len(b_values), (n_boot, len(b_values)))].mean(1))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(a_values.mean() - b_values.mean()), float(low), float(high)


def grouped_fraction_ci(groups: Sequence[np.ndarray], n_boot: int = 1000,
                        seed: int = 0) -> tuple[float, float, float]:
    """Mean over groups (e.g. seed pairs) of each group's fraction of True, with a 95% bootstrap
    interval that resamples the items (latents) within every group. groups: [n_items_g] bool each."""
    groups = [np.asarray(g, dtype=float) for g in groups if len(g)]
    if not groups:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    boots = np.stack([g[rng.integers(0, len(g), (n_boot, len(g)))].mean(1) for g in groups]).mean(0)
    low, high = np.percentile(boots, [2.5, 97.5])
    return float(np.mean([g.mean() for g in groups])), float(low), float(high)


def direction_verdict(first: tuple[float, float, float], last: tuple[float, float, float], falls: bool) -> str:
    """Does the value fall (falls=True) or rise from `first` to `last`, each (mean, low, high)?
    "yes" when the intervals separate in that direction, "NO" when they separate the other way."""
    if not all(np.isfinite(v) for v in (*first, *last)):
        return "unclear"
    down = first[1] > last[2]  # first's interval entirely above last's
    up = last[1] > first[2]
    if (falls and down) or (not falls and up):
        return "yes"
    if (falls and up) or (not falls and down):
        return "NO"
    return "unclear"


def equivalence(other: Sequence[float], reference: Sequence[float], margin: float, chance: float,
                n_boot: int = 1000, seed: int = 0) -> dict[str, object]:
    """Is mean(other) equivalent to mean(reference) within +-margin?

    Refused (verdict "refused: ...") unless the reference is above chance first: its interval's low
    end above `chance` (two scores at chance are "equal" without meaning anything). Then "equivalent"
    when the difference's 95% interval lies inside [-margin, margin] (a two one-sided tests reading at
    the 2.5% level each), "different" when it excludes 0, otherwise "inconclusive"."""
    ref_mean, ref_low, ref_high = mean_ci(reference, n_boot, seed)
    out: dict[str, object] = {"reference": [ref_mean, ref_low, ref_high], "margin": margin, "chance": chance}
    if not np.isfinite(ref_low) or ref_low <= chance:
        out["verdict"] = f"refused: the reference score's interval [{ref_low:.3f}, {ref_high:.3f}] is not above " \
                         f"chance {chance}"
        return out
    diff, low, high = bootstrap_difference(other, reference, n_boot, seed)
    out["difference"] = [diff, low, high]
    if -margin <= low and high <= margin:
        out["verdict"] = "equivalent"
    elif low > 0 or high < 0:
        out["verdict"] = "different"
    else:
        out["verdict"] = "inconclusive"
    return out
