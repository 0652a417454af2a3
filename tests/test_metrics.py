import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from memlens.metrics import auc_ci, evaluate, roc_auc, tpr_at_fpr


def test_sign_convention_higher_score_means_member():
    members, nonmembers = [3.0, 4.0, 5.0], [0.0, 1.0, 2.0]
    assert roc_auc(members, nonmembers) == 1.0
    assert roc_auc(nonmembers, members) == 0.0
    assert roc_auc([1.0, 1.0], [1.0, 1.0]) == 0.5  # ties count half


def test_auc_matches_sklearn_and_bootstrap_brackets_it():
    rng = np.random.default_rng(0)
    m, n = rng.normal(0.5, 1, 300), rng.normal(0, 1, 250)
    auc = roc_auc(m, n)
    assert auc == pytest.approx(roc_auc_score(np.r_[np.ones(300), np.zeros(250)], np.r_[m, n]))
    lo, hi = auc_ci(m, n, n_boot=500, seed=1)
    assert lo < auc < hi
    assert 0.05 < hi - lo < 0.2  # ~ ±2 standard errors at this size


def test_vectorised_bootstrap_auc_equals_sklearn_on_ties():
    m, n = np.array([1.0, 2.0, 2.0, 3.0]), np.array([2.0, 0.0, 2.0])
    lo, _hi = auc_ci(m, n, n_boot=1, confidence=0.5, seed=3)
    rng = np.random.default_rng(3)  # replay the one resample the bootstrap drew
    mi, ni = rng.integers(0, 4, (1, 4))[0], rng.integers(0, 3, (1, 3))[0]
    assert lo == pytest.approx(roc_auc(m[mi], n[ni]))


def test_tpr_at_fpr_uses_the_largest_tpr_within_budget():
    # 10 non-members: one scores 10 (above every member), the rest score 0.
    nonmembers = [10.0] + [0.0] * 9
    members = [9.0, 8.0, 7.0, 0.5, 0.5]
    # FPR 0 admits thresholds above 10 only -> TPR 0; FPR <= 0.1 admits the threshold 0.5 -> TPR 1.
    assert tpr_at_fpr(members, nonmembers, 0.05) == 0.0
    assert tpr_at_fpr(members, nonmembers, 0.1) == 1.0  # "<=": exactly at the budget counts
    assert tpr_at_fpr(members, nonmembers, 0.099) == 0.0  # the first point past the budget must not count


def test_evaluate_drops_nans_per_set_and_counts_them():
    out = evaluate([1.0, np.nan, 2.0], [0.0, -1.0, np.nan], fprs=[0.5], n_boot=50)
    assert out["n_nan"] == 2 and out["n_members"] == 2 and out["n_nonmembers"] == 2
    assert out["auc"] == 1.0 and out["tpr@fpr=0.5"] == 1.0


def test_bad_input():
    with pytest.raises(ValueError):
        roc_auc([], [1.0])


def test_infinite_scores_are_dropped_and_counted_like_nan():
    out = evaluate([1.0, np.inf, 2.0], [0.0, -np.inf, -1.0], fprs=[0.5], n_boot=20)
    assert out["n_nan"] == 2 and out["auc"] == 1.0


def test_tpr_below_one_nonmember_is_not_estimable():
    from memlens.metrics import tpr_detail

    rng = np.random.default_rng(0)
    m, n = rng.normal(1, 1, 300), rng.normal(0, 1, 200)
    out = evaluate(m, n, fprs=[0.001, 0.01], n_boot=20)
    assert np.isnan(out["tpr@fpr=0.001"]) and out["tpr"][0.001].note == "not estimable: needs ≥ 1000 non-members"
    t = tpr_detail(m, n, 0.01)
    assert t.tpr == tpr_at_fpr(m, n, 0.01) == out["tpr@fpr=0.01"] and t.note is None
    assert t.fp <= 2 and t.fpr_reached == t.fp / 200 <= 0.01 and t.tp == round(t.tpr * 300)
    assert t.ci_low < t.tpr < t.ci_high


def test_clopper_pearson_matches_known_values():
    from memlens.metrics import clopper_pearson

    assert clopper_pearson(0, 10) == (0.0, pytest.approx(0.3084971, abs=1e-6))
    low, high = clopper_pearson(5, 10)
    assert low == pytest.approx(0.1870860, abs=1e-6) and high == pytest.approx(0.8129140, abs=1e-6)
    assert clopper_pearson(10, 10)[1] == 1.0
