"""The recipes' statistics: the equivalence test refuses a reference at chance, and direction
verdicts need separated intervals."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent / "analysis"))

from study_stats import direction_verdict, equivalence, grouped_fraction_ci  # noqa: E402


def test_equivalence_is_refused_while_the_reference_is_at_chance():
    rng = np.random.default_rng(0)
    at_chance = 0.5 + rng.normal(0, 0.05, 200)
    result = equivalence(at_chance, at_chance.copy(), margin=0.03, chance=0.5)
    assert result["verdict"].startswith("refused") and "difference" not in result


def test_equivalence_needs_the_whole_interval_inside_the_margin():
    rng = np.random.default_rng(0)
    reference = 0.7 + rng.normal(0, 0.05, 400)
    assert equivalence(reference + 0.002, reference, margin=0.03, chance=0.5)["verdict"] == "equivalent"
    assert equivalence(reference - 0.1, reference, margin=0.03, chance=0.5)["verdict"] == "different"
    few = 0.7 + rng.normal(0, 0.2, 8)  # a noisy small sample: the interval is wider than the margin
    assert equivalence(few, reference, margin=0.03, chance=0.5)["verdict"] in ("inconclusive", "different")
    assert equivalence(few, reference, margin=0.03, chance=0.5)["verdict"] != "equivalent"


def test_direction_verdicts_need_separated_intervals():
    assert direction_verdict((0.8, 0.75, 0.85), (0.4, 0.35, 0.45), falls=True) == "yes"
    assert direction_verdict((0.4, 0.35, 0.45), (0.8, 0.75, 0.85), falls=True) == "NO"
    assert direction_verdict((0.5, 0.4, 0.6), (0.45, 0.35, 0.55), falls=True) == "unclear"
    assert direction_verdict((0.4, 0.35, 0.45), (0.8, 0.75, 0.85), falls=False) == "yes"


def test_grouped_fraction_interval_covers_the_mean_of_the_groups():
    groups = [np.arange(100) < 30, np.arange(200) < 50]  # 0.30 and 0.25
    mean, low, high = grouped_fraction_ci(groups, n_boot=500)
    assert mean == np.mean([0.30, 0.25]) and low < mean < high and high - low < 0.15
