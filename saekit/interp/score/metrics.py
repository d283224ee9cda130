"""The arithmetic of the scorers: balanced accuracy, accuracy per group, AUROC, pooled correlation,
success rates and bootstrap confidence intervals. Pure functions of numbers (no model, no LLM)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def balanced_accuracy(labels: Sequence[int], predictions: Sequence[int]) -> float | None:
    """(TP / P + TN / N) / 2 of 0/1 labels and predictions; None without both classes."""
    labels, predictions = np.asarray(labels, dtype=int), np.asarray(predictions, dtype=int)
    positive, negative = labels == 1, labels == 0
    if not positive.any() or not negative.any():
        return None
    tpr = float((predictions[positive] == 1).mean())
    tnr = float((predictions[negative] == 0).mean())
    return (tpr + tnr) / 2


def accuracy_by_group(labels: Sequence[int], predictions: Sequence[int], groups: Sequence[Any]) -> dict[str, float]:
    """{str(group): fraction of the group's predictions equal to their labels}; numeric groups
    (quantiles) first, in order, then named ones."""
    correct = np.asarray(labels, dtype=int) == np.asarray(predictions, dtype=int)
    groups = [str(g) for g in groups]
    out: dict[str, float] = {}
    numeric = lambda g: g.lstrip("-").isdigit()  # noqa: E731
    for group in sorted(set(groups), key=lambda g: (0, int(g), "") if numeric(g) else (1, 0, g)):
        members = [i for i, g in enumerate(groups) if g == group]
        out[group] = float(correct[members].mean())
    return out


def auroc(positive_scores: Sequence[float], negative_scores: Sequence[float]) -> float | None:
    """Area under the ROC curve: P(a positive scores above a negative), ties counting one half
    (the Mann-Whitney U statistic over n_pos * n_neg); None when either side is empty."""
    from scipy.stats import rankdata

    pos, neg = np.asarray(positive_scores, dtype=float), np.asarray(negative_scores, dtype=float)
    if not len(pos) or not len(neg):
        return None
    ranks = rankdata(np.concatenate([pos, neg]))  # average ranks for ties
    u = ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation of two equal-length sequences; None when either is constant or too short."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"pearson: lengths differ ({len(x)} vs {len(y)})")
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def pooled_correlation(true: Sequence[Sequence[float]], predicted: Sequence[Sequence[float]]) -> float | None:
    """Bills et al.'s "all" score: the correlation of every token's true and predicted activation,
    all excerpts concatenated (not the mean of per-excerpt correlations)."""
    if len(true) != len(predicted) or any(len(t) != len(p) for t, p in zip(true, predicted)):
        raise ValueError("pooled_correlation: every excerpt needs one prediction per token")
    if not len(true):
        return None
    return pearson(np.concatenate([np.asarray(t, dtype=float) for t in true]),
                   np.concatenate([np.asarray(p, dtype=float) for p in predicted]))


def success_rate(successes: Sequence[bool]) -> float | None:
    """The fraction of successful trials; None for no trials."""
    return float(np.mean(np.asarray(successes, dtype=float))) if len(successes) else None


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, level: float = 0.95, seed: int = 0
                 ) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of `values` (resampled with replacement, n_boot
    times); None for no values, (v, v) for a single one."""
    values = np.asarray(values, dtype=float)
    if not len(values):
        return None
    if len(values) == 1:
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def summarize(scores: Sequence[float | None], chance: float, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """{mean, n, ci_low, ci_high, chance, n_failed} of per-latent scores (None = not scored)."""
    valid = [float(s) for s in scores if s is not None]
    ci = bootstrap_ci(valid, n_boot, seed=seed)
    return {"mean": float(np.mean(valid)) if valid else None, "n": len(valid),
            "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None, "chance": chance,
            "n_failed": len(scores) - len(valid)}
