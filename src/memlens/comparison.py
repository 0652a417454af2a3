"""Paired comparisons of two attacks or two trials on the same members and non-members.

Trials of a sweep score the same texts, so the right question is not whether two AUC intervals overlap but
whether the *difference* is away from zero. Two estimators of the difference's uncertainty, tested against
each other:

- the paired bootstrap: each replicate resamples member and non-member indices once and applies them to both
  score vectors (:func:`paired_difference`), which also covers TPR at a fixed FPR;
- DeLong et al. (1988) for correlated ROC curves: the variance of AUC_a − AUC_b from the structural components
  of the two Mann–Whitney statistics (:func:`delong`).

Scores are higher = more likely a member (as everywhere in memlens). A difference is ``a − b``. Texts with a
NaN score in either vector are dropped from both (the pairing must hold) and counted.

Many configurations at once (a preset's findings): :func:`replicates` bootstraps a statistic of ``K`` score
vectors of the same texts with one set of resampled indices per replicate, and :func:`contrast` turns any
linear combination of the ``K`` statistics (a difference of group means, a slope) into a :class:`Difference`
with a percentile CI and a bootstrap p-value, ready for :func:`holm`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from memlens.metrics import auc_rows, boot_batches, min_nonmembers, roc_auc, tpr_at_fpr, tpr_rows


@dataclass(frozen=True)
class Difference:
    """``a − b`` of one metric with its CI, from paired data. ``p_value`` is two-sided (DeLong, AUC only)."""

    metric: str
    a: float
    b: float
    diff: float
    ci_low: float
    ci_high: float
    method: str
    p_value: float | None = None
    fpr: float | None = None

    def verdict(self, direction: int = 1) -> str:
        """``holds`` when the CI excludes 0 on the side of ``direction`` (+1: a > b expected), ``reversed``
        when it excludes 0 on the other side, ``inconclusive`` otherwise (or when not estimable)."""
        return verdict(self.ci_low, self.ci_high, direction)


def verdict(ci_low: float, ci_high: float, direction: int = 1) -> str:
    """The verdict on a difference whose expected sign is ``direction`` (see :meth:`Difference.verdict`)."""
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return "inconclusive"
    low, high = (ci_low, ci_high) if direction > 0 else (-ci_high, -ci_low)
    if low > 0:
        return "holds"
    if high < 0:
        return "reversed"
    return "inconclusive"


def _paired(scores_a, scores_b, n_members: int) -> tuple[np.ndarray, int, int]:
    """Both score vectors as ``(2, N)``, members first, without texts whose score is NaN in either."""
    a, b = np.asarray(scores_a, float), np.asarray(scores_b, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores need two 1-D arrays of the same texts, got shapes {a.shape} and {b.shape}")
    if not 0 < n_members < len(a):
        raise ValueError(f"n_members must leave members and non-members, got {n_members} of {len(a)}")
    ok = np.isfinite(a) & np.isfinite(b)
    m = int(ok[:n_members].sum())
    n = int(ok[n_members:].sum())
    if not m or not n:
        raise ValueError("no member or no non-member has a finite score in both vectors")
    return np.stack([a[ok], b[ok]]), m, n


def delong(scores_a, scores_b, n_members: int, *, confidence: float = 0.95) -> Difference:
    """DeLong's test of AUC_a − AUC_b on the same texts (first ``n_members`` are members): normal CI and p."""
    both, m, n = _paired(scores_a, scores_b, n_members)
    v10 = np.empty((2, m))  # per member: share of non-members it beats (ties half)
    v01 = np.empty((2, n))  # per non-member: share of members that beat it
    for r in range(2):
        x, y = both[r, :m], both[r, m:]
        ys, xs = np.sort(y), np.sort(x)
        v10[r] = (np.searchsorted(ys, x, "left") + np.searchsorted(ys, x, "right")) / (2 * n)
        v01[r] = 1 - (np.searchsorted(xs, y, "left") + np.searchsorted(xs, y, "right")) / (2 * m)
    aucs = v10.mean(axis=1)
    s10 = np.cov(v10) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(v01) if n > 1 else np.zeros((2, 2))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    diff = float(aucs[0] - aucs[1])
    se = math.sqrt(max(var, 0.0))
    z = norm.ppf(0.5 + confidence / 2)
    p = float(2 * norm.sf(abs(diff) / se)) if se > 0 else (1.0 if diff == 0 else 0.0)
    return Difference("auc", float(aucs[0]), float(aucs[1]), diff, diff - z * se, diff + z * se, "delong", p)


def paired_difference(
    scores_a,
    scores_b,
    n_members: int,
    *,
    fprs: tuple[float, ...] | list[float] = (0.01,),
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[Difference]:
    """AUC_a − AUC_b and TPR_a − TPR_b at each FPR with paired percentile-bootstrap CIs.

    ``scores_a`` and ``scores_b`` are 1-D, the same texts in the same order, the first ``n_members`` members.
    Each replicate draws member and non-member indices once and applies them to both vectors. A TPR at an FPR
    budget that the non-members cannot resolve (fewer than ``1 / fpr``) is NaN, its ``method`` saying why."""
    both, m, n = _paired(scores_a, scores_b, n_members)
    rng = np.random.default_rng(seed)
    auc_d = np.empty(n_boot)
    tpr_d = np.empty((len(fprs), n_boot))
    for start, size in boot_batches(n_boot, 2 * (m + n)):
        im, inn = rng.integers(0, m, (size, m)), m + rng.integers(0, n, (size, n))
        rows = [(both[r][im], both[r][inn]) for r in range(2)]
        auc_d[start : start + size] = auc_rows(*rows[0]) - auc_rows(*rows[1])
        for k, f in enumerate(fprs):
            tpr_d[k, start : start + size] = tpr_rows(*rows[0], f) - tpr_rows(*rows[1], f)
    alpha = (1 - confidence) / 2

    def interval(values: np.ndarray) -> tuple[float, float]:
        if not n_boot:
            return float("nan"), float("nan")
        lo, hi = np.quantile(values, [alpha, 1 - alpha])
        return float(lo), float(hi)

    ma, na, mb, nb = both[0, :m], both[0, m:], both[1, :m], both[1, m:]
    auc_a, auc_b = roc_auc(ma, na), roc_auc(mb, nb)
    out = [Difference("auc", auc_a, auc_b, auc_a - auc_b, *interval(auc_d), "paired bootstrap")]
    for k, f in enumerate(fprs):
        needed = min_nonmembers(f)
        if n < needed:  # the budget cannot be resolved: no number that looks measured
            nan = float("nan")
            out.append(
                Difference("tpr", nan, nan, nan, nan, nan, f"not estimable: needs ≥ {needed} non-members", fpr=f)
            )
            continue
        ta, tb = tpr_at_fpr(ma, na, f), tpr_at_fpr(mb, nb, f)
        out.append(Difference("tpr", ta, tb, ta - tb, *interval(tpr_d[k]), "paired bootstrap", fpr=f))
    return out


STATISTICS = ("auc", "gap")


def replicates(
    values, n_members: int, *, statistic: str = "auc", n_boot: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, int]:
    """A statistic of each of ``K`` vectors of the same ``N`` texts (``values`` is ``(K, N)``, the first
    ``n_members`` columns members), at the data and under a paired bootstrap: ``(point (K,), reps (K, B),
    n_dropped)``. Every replicate draws member and non-member indices once and applies them to all ``K`` rows.

    ``statistic``: ``"auc"`` (the rows are attack scores, higher = member) or ``"gap"`` (the rows are per-text
    loss drops L_before − L_after; the statistic is the members' mean minus the non-members' mean). Texts
    non-finite in any row are dropped from all rows and counted."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    v = np.asarray(values, float)
    if v.ndim != 2 or not 0 < n_members < v.shape[1]:
        raise ValueError(f"values must be (K, N) with members and non-members, got {v.shape}, {n_members} members")
    ok = np.isfinite(v).all(axis=0)
    members, nonmembers = v[:, :n_members][:, ok[:n_members]], v[:, n_members:][:, ok[n_members:]]
    m, n = members.shape[1], nonmembers.shape[1]
    if not m or not n:
        raise ValueError("no member or no non-member is finite in every row")

    def stat(xm: np.ndarray, xn: np.ndarray) -> np.ndarray:  # (..., m), (..., n) -> (...)
        if statistic == "gap":
            return xm.mean(axis=-1) - xn.mean(axis=-1)
        return auc_rows(xm.reshape(-1, m), xn.reshape(-1, n)).reshape(xm.shape[:-1])

    rng = np.random.default_rng(seed)
    reps = np.empty((len(v), n_boot))
    for start, size in boot_batches(n_boot, len(v) * (m + n)):
        im, inn = rng.integers(0, m, (size, m)), rng.integers(0, n, (size, n))
        reps[:, start : start + size] = stat(members[:, im], nonmembers[:, inn])  # (K, size, m|n) -> (K, size)
    return stat(members, nonmembers), reps, int((~ok).sum())


def contrast(
    point: np.ndarray,
    reps: np.ndarray,
    weights,
    *,
    metric: str,
    a: float = float("nan"),
    b: float = float("nan"),
    confidence: float = 0.95,
    method: str = "paired bootstrap",
) -> Difference:
    """``Σ_k w_k · stat_k`` of :func:`replicates`' output with a percentile CI and a two-sided bootstrap
    p-value, ``2·min(P*(d ≤ 0), P*(d ≥ 0))`` with add-one smoothing (never 0 from a finite bootstrap).

    A difference of group means uses weights ``+1/|high|`` and ``−1/|low|`` (``a``, ``b``: the two means);
    a least-squares slope against ``x`` uses ``(x − x̄) / Σ(x − x̄)²``. Not estimable (NaN CI, p ``None``)
    without replicates or when some replicate is undefined (e.g. an R² of a resample whose values are all
    equal): dropping those would condition the interval on the resamples where the statistic exists."""
    w = np.asarray(weights, float)
    if w.shape != point.shape:
        raise ValueError(f"need one weight per statistic ({point.shape[0]}), got {w.shape}")
    diff, d = float(w @ point), w @ reps
    alpha = (1 - confidence) / 2
    if not len(d) or not np.isfinite(d).all():
        return Difference(metric, a, b, diff, float("nan"), float("nan"), method, None)
    lo, hi = np.quantile(d, [alpha, 1 - alpha])
    tail = min(int((d <= 0).sum()), int((d >= 0).sum()))
    p = min(1.0, 2 * (tail + 1) / (len(d) + 1))
    return Difference(metric, a, b, diff, float(lo), float(hi), method, p)


def group_weights(n_total: int, high: list[int], low: list[int]) -> np.ndarray:
    """Weights of mean(stat[high]) − mean(stat[low]) over ``n_total`` statistics."""
    if not high or not low or set(high) & set(low):
        raise ValueError("a group contrast needs two non-empty, disjoint groups")
    w = np.zeros(n_total)
    w[high] += 1 / len(high)
    w[low] -= 1 / len(low)
    return w


def slope_weights(x, groups=None) -> np.ndarray:
    """Weights of the least-squares slope of the statistics against ``x`` (at least two distinct values).

    With ``groups`` (one label per statistic), the slope within groups (a fixed effect per group: ``x`` centred
    on its group's mean), so that groups sampled at different ``x`` do not pass their own level off as slope;
    on a balanced grid it equals the pooled slope."""
    x = np.asarray(x, float)
    labels = np.zeros(len(x), int) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    means = np.bincount(labels, x) / np.bincount(labels)
    centred = x - means[labels]
    ss = float((centred**2).sum())
    if ss == 0:
        raise ValueError("a slope needs at least two distinct x values (within a group)")
    return centred / ss


def holm(p_values: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (same order as given): compare each with the family's level."""
    order = np.argsort(p_values)
    k = len(p_values)
    adjusted = np.empty(k)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (k - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted.tolist()
