"""Paired comparisons: DeLong and the paired bootstrap agree, pairing finds differences that overlapping
intervals hide, verdicts follow the CI of the difference, Holm adjusts a family of tests."""

from __future__ import annotations

import numpy as np
import pytest

from memlens.comparison import contrast, delong, holm, paired_difference, verdict
from memlens.metrics import auc_ci, roc_auc, tpr_at_fpr, tpr_rows


def correlated(n_members=150, n_nonmembers=150, gap=0.15, seed=0):
    """Two attacks sharing most of their signal (as two trials on the same texts do); b is a bit weaker."""
    rng = np.random.default_rng(seed)
    truth = np.r_[np.ones(n_members), np.zeros(n_nonmembers)]
    shared = rng.normal(size=len(truth)) + 0.8 * truth
    a = shared + gap * truth + 0.15 * rng.normal(size=len(truth))
    b = shared + 0.15 * rng.normal(size=len(truth))
    return a, b, n_members


def test_tpr_rows_equals_tpr_at_fpr_with_ties():
    rng = np.random.default_rng(1)
    members = rng.integers(0, 8, (40, 30)).astype(float)
    nonmembers = rng.integers(0, 8, (40, 25)).astype(float)
    for f in (0.0, 0.01, 0.04, 0.1, 0.5, 1.0):
        rows = tpr_rows(members, nonmembers, f)
        assert rows.tolist() == [tpr_at_fpr(m, n, f) for m, n in zip(members, nonmembers, strict=True)], f


def test_delong_and_paired_bootstrap_agree():
    a, b, m = correlated()
    d = delong(a, b, m)
    boot = paired_difference(a, b, m, n_boot=4000)[0]
    assert d.diff == pytest.approx(boot.diff) == pytest.approx(roc_auc(a[:m], a[m:]) - roc_auc(b[:m], b[m:]))
    assert d.ci_low == pytest.approx(boot.ci_low, abs=0.006) and d.ci_high == pytest.approx(boot.ci_high, abs=0.006)


def test_pairing_sees_a_difference_that_overlapping_intervals_hide():
    a, b, m = correlated(gap=0.12, seed=3)
    ci_a, ci_b = auc_ci(a[:m], a[m:]), auc_ci(b[:m], b[m:])
    assert ci_a[0] < ci_b[1]  # the two AUC intervals overlap: unpaired, this looks inconclusive
    d = delong(a, b, m)
    assert d.ci_low > 0 and d.verdict() == "holds" and d.p_value < 0.01
    assert paired_difference(a, b, m)[0].verdict() == "holds"
    assert delong(b, a, m).verdict() == "reversed"


def test_identical_scores_differ_by_exactly_zero():
    a, _, m = correlated()
    d = delong(a, a.copy(), m)
    assert (d.diff, d.ci_low, d.ci_high, d.p_value) == (0.0, 0.0, 0.0, 1.0)
    auc, tpr = paired_difference(a, a.copy(), m, fprs=[0.05])
    assert (auc.ci_low, auc.ci_high, tpr.ci_low, tpr.ci_high) == (0.0, 0.0, 0.0, 0.0)
    assert auc.verdict() == "inconclusive"


def test_tpr_difference_and_nan_texts_dropped_from_both():
    a, b, m = correlated()
    a[[0, m + 1]] = np.nan  # one member and one non-member lose their score in a: gone from both
    auc, tpr = paired_difference(a, b, m, fprs=[0.05])
    keep = np.isfinite(a)
    am, an, bm, bn = a[:m][keep[:m]], a[m:][keep[m:]], b[:m][keep[:m]], b[m:][keep[m:]]
    assert auc.b == pytest.approx(roc_auc(bm, bn))
    assert tpr.diff == pytest.approx(tpr_at_fpr(am, an, 0.05) - tpr_at_fpr(bm, bn, 0.05)) and tpr.fpr == 0.05
    assert tpr.ci_low <= tpr.diff <= tpr.ci_high


@pytest.mark.parametrize(
    ("low", "high", "direction", "expected"),
    [
        (0.01, 0.2, 1, "holds"),
        (-0.2, -0.01, 1, "reversed"),
        (-0.01, 0.2, 1, "inconclusive"),
        (-0.2, -0.01, -1, "holds"),
    ],
)
def test_verdict_follows_the_interval(low, high, direction, expected):
    assert verdict(low, high, direction) == expected
    assert verdict(float("nan"), high, direction) == "inconclusive"


def test_a_contrast_with_undefined_replicates_is_not_estimable():
    """An R² of a resample whose values are all equal is NaN: the p-value must not count such replicates as
    'not crossing zero' (that made p small with no interval)."""
    rng = np.random.default_rng(0)
    reps = np.array([[0.6], [0.1]]) + rng.normal(0, 0.05, (2, 400))  # (statistics, replicates)
    ok = contrast(np.array([0.6, 0.1]), reps, [1, -1], metric="r2")
    assert ok.ci_low < ok.diff < ok.ci_high and ok.p_value == pytest.approx(2 / 401)
    reps[0, :100] = np.nan
    d = contrast(np.array([0.6, 0.1]), reps, [1, -1], metric="r2")
    assert d.diff == pytest.approx(0.5) and np.isnan(d.ci_low) and np.isnan(d.ci_high) and d.p_value is None
    assert d.verdict() == "inconclusive"


def test_holm_matches_a_hand_computation():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="same texts"):
        delong(np.zeros(4), np.zeros(5), 2)
    with pytest.raises(ValueError, match="n_members"):
        paired_difference(np.zeros(4), np.zeros(4), 4)


@pytest.fixture(scope="module")
def two_trials(tiny_dir, tmp_path_factory):
    """A store with three finished trials: two on the same texts, one on other texts."""
    from helpers import tiny_config

    from memlens.experiments.sweep import expand, run_sweep

    base = tiny_config(tiny_dir, "unused", training={"epochs": 2, "lr": 3e-3})
    base.pop("output")
    variants = [{"label": "full"}, {"label": "head", "method": "head"}, {"label": "other data", "data.seed": 7}]
    folder = tmp_path_factory.mktemp("cmp")
    assert run_sweep(expand({"name": "cmp", "base": base, "variants": variants}), folder) == {"done": 3}
    return folder


def test_compare_two_trials_from_the_store(two_trials):
    import pandas as pd

    from memlens.experiments.compare import compare
    from memlens.experiments.store import Store

    c = compare("full", "2", store=two_trials, fprs=[0.01, 0.5], n_boot=300)
    assert (c.a, c.b) == ("trial 1 (full)", "trial 2 (head)") and c.rows[0].epoch == 2
    loss = next(r for r in c.rows if r.attack == "loss")
    store = Store(two_trials, create=False)
    res = store.results()
    auc = {
        t: res[(res.trial == t) & (res.attack == "loss") & (res.metric == "auc") & (res.epoch == 2)].value.item()
        for t in (1, 2)
    }
    assert loss.auc_delong.a == pytest.approx(auc[1]) and loss.auc_delong.b == pytest.approx(auc[2])
    assert loss.n_members == loss.n_nonmembers == 24
    assert loss.tpr[0].method.startswith("not estimable") and np.isnan(loss.tpr[0].diff)  # 24 < 1 / 0.01
    assert loss.tpr[1].ci_low <= loss.tpr[1].diff <= loss.tpr[1].ci_high
    assert all(r.p_holm >= (r.auc_delong.p_value or 0) for r in c.rows)
    scores = pd.read_csv(store.trial_dir(1) / "scores.csv")
    assert {"nll"} & {r.attack for r in c.rows} == set() and len(c.rows) == scores.attack.nunique() - 1
    gap = {  # the stored loss-gap records are what the paired comparison compares
        t: res[(res.trial == t) & (res.kind == "effect") & (res.metric == "loss_gap") & (res.epoch == 2)].value.item()
        for t in (1, 2)
    }
    assert c.gap is not None and (c.gap.a, c.gap.b) == pytest.approx((gap[1], gap[2]), abs=1e-5)  # scores.csv rounds
    assert c.gap.diff == pytest.approx(gap[1] - gap[2], abs=1e-5) and c.gap.ci_low <= c.gap.diff <= c.gap.ci_high
    assert c.gap_verdict in ("a > b", "a < b", "no difference shown")
    assert compare("full", "head", store=two_trials, epoch=0, n_boot=50).gap is None  # nothing fine-tuned yet


def test_compare_cli_and_its_errors(two_trials):
    from helpers import assert_one_line_error, invoke

    result = invoke("compare", "1", "head", "--dir", two_trials, "--bootstrap", "200")
    assert result.exit_code == 0, result.output
    assert "ΔAUC" in result.stdout and "Holm-adjusted over" in result.stdout and "not estimable" in result.stdout
    assert "loss gap" in result.stdout and "nats/token" in result.stdout
    assert_one_line_error(invoke("compare", "1", "3", "--dir", two_trials), "scored different texts")
    assert_one_line_error(invoke("compare", "1", "nope", "--dir", two_trials), "no finished trial 'nope'")
    assert_one_line_error(invoke("compare", "1", "1", "--dir", two_trials), "compared with itself")
    assert_one_line_error(invoke("compare", "1", "2", "--dir", two_trials, "--epoch", "9"), "no scores at epoch 9")
    assert_one_line_error(invoke("compare", "1", "2", "--dir", two_trials, "--fpr", "2"), "--fpr must be")


def test_compare_two_run_folders_as_two_trials(two_trials):
    """Run folders (each with its scores.csv) compare exactly as the same two trials of a store do."""
    from helpers import assert_one_line_error, invoke

    from memlens.experiments.compare import compare
    from memlens.experiments.store import Store

    store = Store(two_trials, create=False)
    one, two = store.trial_dir(1), store.trial_dir(2)
    store.close()
    runs, trials = compare(one, two, n_boot=100), compare("1", "2", store=two_trials, n_boot=100)
    assert runs.a == f"run {one}" and [r.attack for r in runs.rows] == [r.attack for r in trials.rows]
    assert [r.auc_delong for r in runs.rows] == [r.auc_delong for r in trials.rows]
    assert [r.p_holm for r in runs.rows] == [r.p_holm for r in trials.rows] and runs.gap == trials.gap
    result = invoke("compare", str(one), str(two), "--bootstrap", "50")
    assert result.exit_code == 0, result.output
    assert f"a=run{one}vsb=run{two}" in "".join(result.stdout.split()) and "ΔAUC" in result.stdout
    assert_one_line_error(invoke("compare", str(one), str(one)), "compared with itself")
    assert_one_line_error(invoke("compare", str(one), str(two_trials / "nope")), "is not a run folder")
    assert_one_line_error(invoke("compare", str(one), str(two_trials)), "scores.csv is missing")
    for name, text in (("empty", ""), ("other", "a,b\n1,2\n")):
        (two_trials.parent / name).mkdir(exist_ok=True)
        (two_trials.parent / name / "scores.csv").write_text(text)
        result = invoke("compare", str(one), str(two_trials.parent / name))
        assert_one_line_error(result, "cannot be read as per-text scores|is not a memlens scores.csv")
