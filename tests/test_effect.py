"""Memorization as an effect size: the member–non-member loss gap, its CI, and paired contrasts of many
configurations (group means, slopes) that can rank configurations differently from AUC."""

from __future__ import annotations

import math

import numpy as np
import pytest

from memlens.comparison import contrast, group_weights, paired_difference, replicates, slope_weights
from memlens.metrics import loss_gap


def test_loss_gap_known_answer_and_ci():
    rng = np.random.default_rng(0)
    before = rng.normal(3.0, 0.3, 400)
    drop = np.r_[np.full(200, 0.5), np.full(200, 0.2)] + rng.normal(0, 0.05, 400)
    g = loss_gap(before, before - drop, 200, n_boot=2000)
    assert g.gap == pytest.approx(drop[:200].mean() - drop[200:].mean())
    assert g.member_drop == pytest.approx(drop[:200].mean()) and g.nonmember_drop == pytest.approx(drop[200:].mean())
    assert g.gap_ci[0] < g.gap < g.gap_ci[1] and g.gap_ci[1] - g.gap_ci[0] < 0.03
    assert g.nonmember_ci[0] < 0.2 < g.nonmember_ci[1]
    assert g.ppl_ratio == pytest.approx(math.exp(g.gap))


def test_loss_gap_drops_nan_texts_and_warns_when_nothing_is_left():
    before, after = np.array([3.0, np.nan, 2.0, 2.5]), np.array([2.0, 1.0, 2.0, 2.5])
    g = loss_gap(before, after, 2, n_boot=10)
    assert (g.n_members, g.n_nonmembers, g.n_nan) == (1, 2, 1) and g.gap == pytest.approx(1.0)
    with pytest.warns(UserWarning, match="no member"):
        assert math.isnan(loss_gap(np.array([np.nan, 1.0]), np.array([1.0, 1.0]), 1).gap)
    with pytest.raises(ValueError, match="same texts"):
        loss_gap(np.zeros(3), np.zeros(4), 1)


def test_two_row_replicates_equal_the_pairwise_paired_bootstrap():
    rng = np.random.default_rng(3)
    truth = np.r_[np.ones(60), np.zeros(50)]
    a, b = rng.normal(size=110) + truth, rng.normal(size=110) + 0.5 * truth
    point, reps, dropped = replicates(np.stack([a, b]), 60, n_boot=500, seed=7)
    d = contrast(point, reps, [1, -1], metric="auc")
    ref = paired_difference(a, b, 60, n_boot=500, seed=7)[0]
    assert dropped == 0 and d.diff == pytest.approx(ref.diff)
    assert (d.ci_low, d.ci_high) == pytest.approx((ref.ci_low, ref.ci_high))


def test_a_constant_shift_of_member_drops_is_an_exact_gap_difference():
    rng = np.random.default_rng(1)
    a = rng.normal(0.3, 0.2, 80)
    b = a + np.r_[np.full(40, 0.25), np.zeros(40)]  # the same texts, members' drops 0.25 larger
    point, reps, _ = replicates(np.stack([a, b]), 40, statistic="gap", n_boot=400)
    d = contrast(point, reps, [1, -1], metric="gap")
    assert d.diff == pytest.approx(-0.25) and d.ci_low == pytest.approx(-0.25) and d.ci_high == pytest.approx(-0.25)
    assert d.p_value == pytest.approx(2 / 401) and d.verdict(-1) == "holds" and d.verdict(+1) == "reversed"


def test_slope_and_group_contrasts():
    point = np.array([0.60, 0.62, 0.66, 0.70, 0.71])
    reps = np.tile(point[:, None], (1, 50))
    x = np.log2([1, 2, 4, 8, 16])
    assert contrast(point, reps, slope_weights(x), metric="auc").diff == pytest.approx(np.polyfit(x, point, 1)[0])
    g = contrast(point, reps, group_weights(5, [3, 4], [0, 1]), metric="auc")
    assert g.diff == pytest.approx(0.705 - 0.61)
    with pytest.raises(ValueError, match="disjoint"):
        group_weights(5, [0, 1], [1, 2])
    with pytest.raises(ValueError, match="distinct"):
        slope_weights([2, 2, 2])
    with pytest.raises(ValueError, match="one weight"):
        contrast(point, reps, [1, -1], metric="auc")


def test_slope_within_groups_is_not_fooled_by_a_group_sampled_at_higher_x():
    """W_V at ranks 1, 4, 16, 64 and W_Q at 1, 4: a flat rank effect, but W_V sits 0.1 higher. The pooled slope
    sees a rise; the slope within matrices does not (and equals the common slope when there is one)."""
    x = np.log2([1, 4, 16, 64, 1, 4])
    groups = ["v", "v", "v", "v", "q", "q"]
    level = np.array([0.1, 0.1, 0.1, 0.1, 0.0, 0.0])
    assert slope_weights(x) @ level > 0.005
    assert slope_weights(x, groups) @ level == pytest.approx(0.0, abs=1e-12)
    assert slope_weights(x, groups) @ (level + 0.02 * x) == pytest.approx(0.02)
    assert np.allclose(slope_weights(np.tile([0.0, 1.0], 3), list("aabbcc")), slope_weights(np.tile([0.0, 1.0], 3)))
    with pytest.raises(ValueError, match="within a group"):
        slope_weights([0.0, 1.0], ["a", "b"])
    with pytest.raises(ValueError, match="statistic"):
        replicates(np.zeros((2, 4)), 2, statistic="median")


def test_auc_and_gap_can_rank_two_configurations_oppositely():
    """A: every text's loss falls a little, members a bit more and consistently (separable, small gap).
    B: losses fall a lot and unevenly, members much more on average (large gap, poorly separable) — the
    savine2025 W_Q/W_K vs W_V/W_O pattern. Both measures must be reported, each with its own verdict."""
    rng = np.random.default_rng(5)
    m = n = 150
    truth = np.r_[np.ones(m), np.zeros(n)]
    drop_a = 0.05 + 0.05 * truth + 0.03 * rng.normal(size=m + n)
    drop_b = 0.40 + 0.20 * truth + 0.60 * rng.normal(size=m + n)
    rows = np.stack([drop_a, drop_b])  # the reference attack's score is the loss drop
    auc = contrast(*replicates(rows, m, statistic="auc")[:2], [1, -1], metric="auc")
    gap = contrast(*replicates(rows, m, statistic="gap")[:2], [1, -1], metric="gap")
    assert auc.diff > 0 and auc.verdict(+1) == "holds"  # A separates members better
    assert gap.diff < 0 and gap.verdict(+1) == "reversed"  # B lowers the members' loss more
