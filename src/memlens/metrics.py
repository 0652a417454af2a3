"""Metrics of a membership-inference attack.

Every function takes ``member_scores`` and ``nonmember_scores`` (1-D arrays) where a HIGHER score means
"more likely a member". An AUC above 0.5 means the attack separates members from non-members; 0.5 is chance.
Non-finite scores (NaN, ±inf) are dropped from their own set (members and non-members are not paired, so
nothing misaligns); :func:`evaluate` reports how many were dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score, roc_curve


def _labelled(member_scores, nonmember_scores) -> tuple[np.ndarray, np.ndarray]:
    m, n = np.asarray(member_scores, float), np.asarray(nonmember_scores, float)
    if m.ndim != 1 or n.ndim != 1 or not len(m) or not len(n):
        raise ValueError("need two non-empty 1-D score arrays")
    return np.r_[np.ones(len(m)), np.zeros(len(n))], np.r_[m, n]


def roc_auc(member_scores, nonmember_scores) -> float:
    """Area under the ROC curve: P(member score > non-member score), ties counted half."""
    y, s = _labelled(member_scores, nonmember_scores)
    return float(roc_auc_score(y, s))


def roc_points(member_scores, nonmember_scores) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` of every threshold ("member" when score ≥ threshold), from (0, 0) to (1, 1)."""
    y, s = _labelled(member_scores, nonmember_scores)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return fpr, tpr


def tpr_at_fpr(member_scores, nonmember_scores, max_fpr: float) -> float:
    """The largest TPR among thresholds whose FPR is ≤ ``max_fpr`` (never the first point past it)."""
    fpr, tpr = roc_points(member_scores, nonmember_scores)
    return float(tpr[fpr <= max_fpr].max())


def auc_ci(
    member_scores, nonmember_scores, *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the AUC, resampling members and non-members separately."""
    m, n = np.asarray(member_scores, float), np.asarray(nonmember_scores, float)
    if n_boot == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    aucs = np.empty(n_boot)
    for start, b in boot_batches(n_boot, len(m) + len(n)):
        aucs[start : start + b] = auc_rows(
            m[rng.integers(0, len(m), (b, len(m)))], n[rng.integers(0, len(n), (b, len(n)))]
        )
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(aucs, [alpha, 1 - alpha])
    return float(lo), float(hi)


def boot_batches(n_boot: int, width: int) -> list[tuple[int, int]]:
    """``(start, size)`` of bootstrap replicate batches, each holding at most ~2M scores (bounded memory)."""
    step = max(1, 2_000_000 // max(width, 1))
    return [(start, min(step, n_boot - start)) for start in range(0, n_boot, step)]


def auc_rows(members: np.ndarray, nonmembers: np.ndarray) -> np.ndarray:
    """The AUC of each row: ``members`` is ``(B, m)``, ``nonmembers`` ``(B, n)`` -> ``(B,)`` (Mann–Whitney,
    ties half)."""
    m, n = members.shape[1], nonmembers.shape[1]
    ranks = rankdata(np.concatenate([members, nonmembers], axis=1), axis=1)[:, :m].sum(axis=1)
    return (ranks - m * (m + 1) / 2) / (m * n)


def min_nonmembers(fpr: float) -> int:
    """The fewest non-members that can resolve an FPR budget: one false positive must be at most ``fpr``."""
    return math.ceil(1 / fpr - 1e-9)


def _max_false_positives(n: int, max_fpr: float) -> int:
    """k = max{c ≤ n : c/n ≤ max_fpr}, computed as :func:`tpr_at_fpr` compares (c/n in floating point)."""
    k = int(np.floor(max_fpr * n))
    while k < n and (k + 1) / n <= max_fpr:
        k += 1
    while k > 0 and k / n > max_fpr:
        k -= 1
    return k


def tpr_rows(members: np.ndarray, nonmembers: np.ndarray, max_fpr: float) -> np.ndarray:
    """:func:`tpr_at_fpr` of each row (``(B, m)`` and ``(B, n)`` -> ``(B,)``), without a loop over rows.

    At most k = max{c : c/n ≤ max_fpr} non-members may score at or above the threshold, so the best threshold
    lies just above the (k+1)-th largest non-member score y: the TPR is the share of members scoring above y
    (all of them when k = n)."""
    n = nonmembers.shape[1]
    k = _max_false_positives(n, max_fpr)
    if k >= n:
        return np.ones(len(members))
    y = -np.partition(-nonmembers, k, axis=1)[:, k]  # the (k+1)-th largest per row
    return (members > y[:, None]).mean(axis=1)


@dataclass(frozen=True)
class TPRAtFPR:
    """The TPR at an FPR budget with what is behind it: a Clopper–Pearson CI over the members, the FPR the
    chosen threshold actually reaches, the counts of true and false positives, and, when the budget cannot
    be resolved by the non-members, NaN everywhere with the reason in ``note``."""

    fpr: float
    tpr: float
    ci_low: float
    ci_high: float
    fpr_reached: float
    tp: int | None
    fp: int | None
    note: str | None = None


def tpr_detail(member_scores, nonmember_scores, max_fpr: float, *, confidence: float = 0.95) -> TPRAtFPR:
    """:func:`tpr_at_fpr` with its CI, reached FPR and counts; not estimable below ``1 / max_fpr`` non-members."""
    m, n = np.asarray(member_scores, float), np.asarray(nonmember_scores, float)
    needed = min_nonmembers(max_fpr)
    if len(n) < needed:
        nan = float("nan")
        return TPRAtFPR(max_fpr, nan, nan, nan, nan, None, None, f"not estimable: needs ≥ {needed} non-members")
    k = _max_false_positives(len(n), max_fpr)
    if k >= len(n):
        tp, fp = len(m), len(n)
    else:
        y = -np.partition(-n, k)[k]
        tp, fp = int((m > y).sum()), int((n > y).sum())
    low, high = clopper_pearson(tp, len(m), confidence)
    return TPRAtFPR(max_fpr, tp / len(m), low, high, fp / len(n), tp, fp)


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper–Pearson) interval of a binomial share k/n."""
    from scipy.stats import beta

    alpha = 1 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def evaluate(
    member_scores,
    nonmember_scores,
    *,
    fprs: tuple[float, ...] | list[float] = (0.001, 0.01, 0.05),
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """AUC with bootstrap CI and TPR at each FPR budget, as a dict: ``auc``, ``auc_ci_low``, ``auc_ci_high``,
    ``tpr@fpr=0.01`` … (NaN where the non-members cannot resolve the budget), ``tpr`` (FPR -> :class:`TPRAtFPR`),
    ``n_members``, ``n_nonmembers`` and ``n_nan`` (non-finite scores, dropped from their own set)."""
    m, n = np.asarray(member_scores, float), np.asarray(nonmember_scores, float)
    n_nan = int((~np.isfinite(m)).sum() + (~np.isfinite(n)).sum())
    m, n = m[np.isfinite(m)], n[np.isfinite(n)]
    out: dict[str, Any] = {"n_members": len(m), "n_nonmembers": len(n), "n_nan": n_nan}
    if not len(m) or not len(n):
        return out | {"auc": float("nan")}
    out["auc"] = roc_auc(m, n)
    out["auc_ci_low"], out["auc_ci_high"] = auc_ci(m, n, n_boot=n_boot, confidence=confidence, seed=seed)
    out["tpr"] = {f: tpr_detail(m, n, f, confidence=confidence) for f in fprs}
    for f in fprs:
        out[tpr_key(f)] = out["tpr"][f].tpr
    return out


@dataclass(frozen=True)
class LossGap:
    """Memorization as an effect size, in nats per token.

    Per text, the *drop* is L_before(x) − L_after(x): how much fine-tuning lowered its mean token NLL. The
    **gap** is the members' mean drop minus the non-members' mean drop (what the model learned about the
    members beyond what it learned about the domain); the non-members' own mean drop is that domain learning
    (generalization). ``exp(gap)`` is the ratio of the geometric-mean perplexity ratios (members over
    non-members). CIs are percentile bootstraps resampling members and non-members separately."""

    gap: float
    gap_ci: tuple[float, float]
    member_drop: float
    member_ci: tuple[float, float]
    nonmember_drop: float
    nonmember_ci: tuple[float, float]
    n_members: int
    n_nonmembers: int
    n_nan: int

    @property
    def ppl_ratio(self) -> float:
        return math.exp(self.gap) if math.isfinite(self.gap) else float("nan")


def loss_gap(before, after, n_members: int, *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> LossGap:
    """The :class:`LossGap` from per-text mean NLLs before and after fine-tuning (1-D, same texts in the same
    order, the first ``n_members`` members). Texts with a non-finite NLL in either are dropped and counted;
    without a finite member or non-member everything is NaN, with a warning."""
    import warnings

    b, a = np.asarray(before, float), np.asarray(after, float)
    if b.shape != a.shape or b.ndim != 1 or not 0 <= n_members <= len(b):
        raise ValueError(f"need two 1-D NLL arrays of the same texts and 0 ≤ n_members ≤ N, got {b.shape}, {a.shape}")
    drop = b - a
    ok = np.isfinite(drop)
    dm, dn = drop[:n_members][ok[:n_members]], drop[n_members:][ok[n_members:]]
    n_nan = int((~ok).sum())
    nan2 = (float("nan"), float("nan"))
    if not len(dm) or not len(dn):
        warnings.warn("loss_gap: no member or no non-member has a finite loss drop; returning NaN", stacklevel=2)
        return LossGap(float("nan"), nan2, float("nan"), nan2, float("nan"), nan2, len(dm), len(dn), n_nan)
    rng = np.random.default_rng(seed)
    reps = np.empty((2, n_boot))
    for start, size in boot_batches(n_boot, len(dm) + len(dn)):
        reps[0, start : start + size] = dm[rng.integers(0, len(dm), (size, len(dm)))].mean(axis=1)
        reps[1, start : start + size] = dn[rng.integers(0, len(dn), (size, len(dn)))].mean(axis=1)
    alpha = (1 - confidence) / 2

    def ci(values: np.ndarray) -> tuple[float, float]:
        if not n_boot:
            return nan2
        lo, hi = np.quantile(values, [alpha, 1 - alpha])
        return float(lo), float(hi)

    mm, mn = float(dm.mean()), float(dn.mean())
    return LossGap(mm - mn, ci(reps[0] - reps[1]), mm, ci(reps[0]), mn, ci(reps[1]), len(dm), len(dn), n_nan)


def tpr_key(fpr: float) -> str:
    """The key of the TPR at ``fpr`` in :func:`evaluate`'s output (``tpr@fpr=0.01``)."""
    return f"tpr@fpr={fpr:g}"


def linear_fit(x, y) -> tuple[float, float, float]:
    """Least-squares line through the finite pairs of ``x`` and ``y`` (1-D, same length): ``(slope, intercept,
    r2)`` with r2 = 1 − SS_res / SS_tot. All NaN, with a warning, below 3 pairs or when ``x`` or ``y`` is
    constant."""
    import warnings

    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        warnings.warn("linear_fit: fewer than 3 finite pairs or a constant variable; returning NaN", stacklevel=2)
        return float("nan"), float("nan"), float("nan")
    slope, intercept = np.polyfit(x, y, 1)
    r2 = 1 - ((y - (slope * x + intercept)) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    return float(slope), float(intercept), float(r2)


MIN_CORRELATION_PAIRS = 10  # fewer finite pairs: a rank correlation is "not estimable"


@dataclass(frozen=True)
class RankCorrelation:
    """Spearman's ρ with a CI (Fisher z, Bonett–Wright standard error); NaN with ``note`` when not estimable."""

    rho: float
    ci_low: float
    ci_high: float
    n: int
    note: str | None = None


def rank_correlation(x, y, *, confidence: float = 0.95) -> RankCorrelation:
    """Spearman's rank correlation of paired ``x``, ``y`` (1-D, same length; pairs with a non-finite value are
    dropped) with a ``confidence`` interval: z = atanh(ρ) ± z_{1−α/2} · sqrt((1 + ρ²/2) / (n − 3)) (Bonett &
    Wright 2000). Warns and returns NaN with the reason for fewer than :data:`MIN_CORRELATION_PAIRS` pairs or a
    constant variable."""
    import warnings

    from scipy.stats import norm, spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("rank_correlation needs two 1-D arrays of the same length")
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    why = None
    if n < MIN_CORRELATION_PAIRS:
        why = f"not estimable: {n} finite pairs (need {MIN_CORRELATION_PAIRS})"
    elif np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        why = "not estimable: one of the two scores is constant"
    if why is not None:
        warnings.warn(f"rank_correlation: {why}; returning NaN", stacklevel=2)
        return RankCorrelation(math.nan, math.nan, math.nan, n, why)
    rho = float(spearmanr(x[ok], y[ok]).statistic)
    if abs(rho) == 1:
        return RankCorrelation(rho, rho, rho, n)
    half = float(norm.ppf(0.5 + confidence / 2)) * math.sqrt((1 + rho**2 / 2) / (n - 3))
    z = math.atanh(rho)
    return RankCorrelation(rho, math.tanh(z - half), math.tanh(z + half), n)
