"""A model-free "blind" baseline: can the texts alone tell members from non-members?

A text classifier (TF-IDF of character 2–4-grams within word boundaries, case kept, plus lowercased word uni- and
bigrams; logistic regression) is cross-validated on member-vs-non-member labels. Its out-of-fold AUC near 0.5 means
the split is clean; well above 0.5 means members and non-members differ in distribution, and any attack's AUC is
inflated by that shift. An attack is only credible when its CI lies above the blind baseline's (:func:`beats_blind`).

- Folds keep exact and near-duplicate texts together (the split audit's clusters; ``StratifiedGroupKFold``):
  otherwise a repeated record sits in the training and the held-out fold, the classifier "recognises" it, and the
  baseline is inflated.
- Cross-validation is repeated with ``repeats`` different fold splits; the AUC is their mean, and the CI's bootstrap
  draws a split as well as the texts in each replicate, so it covers the refit variance, not only text sampling.

Not a registered attack: it reads no model statistics. Features are fitted inside each fold (no leakage). The
result is kept per texts and settings for the process, so the trials of a sweep, which share their split, fit it
once.
"""

from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import FeatureUnion, make_pipeline

from memlens.data.audit import duplicate_clusters
from memlens.errors import MemlensError
from memlens.metrics import auc_rows, boot_batches, roc_auc

_fitted: dict[str, dict] = {}  # one fit per texts and settings in a process: a sweep's trials share their split


def blind_baseline(
    member_texts: list[str],
    nonmember_texts: list[str],
    *,
    folds: int = 5,
    repeats: int = 5,
    seed: int = 0,
    n_boot: int = 1000,
    confidence: float = 0.95,
) -> dict:
    """Out-of-fold AUC of the text classifier (score = P(member), higher = member), averaged over ``repeats``
    fold splits, with a bootstrap CI over texts and splits.

    Returns ``{"auc", "auc_ci_low", "auc_ci_high", "folds", "repeats", "n_members", "n_nonmembers",
    "n_clusters"}``; folds are stratified, grouped by duplicate cluster and shuffled with ``seed + r`` for
    repeat ``r``; ``seed`` also seeds the bootstrap.
    """
    import hashlib
    import json

    key = hashlib.sha256(
        json.dumps([member_texts, nonmember_texts, folds, repeats, seed, n_boot, confidence]).encode()
    ).hexdigest()
    if key in _fitted:
        return dict(_fitted[key])
    n_m, n_n = len(member_texts), len(nonmember_texts)
    if folds < 2 or repeats < 1 or min(n_m, n_n) < folds:
        raise MemlensError(
            f"blind baseline needs folds ≥ 2, repeats ≥ 1 and at least `folds` texts per set "
            f"(folds={folds}, repeats={repeats}, members={n_m}, non-members={n_n})"
        )
    texts = [*member_texts, *nonmember_texts]
    labels = np.r_[np.ones(n_m, int), np.zeros(n_n, int)]
    groups = duplicate_clusters(texts)
    if len(np.unique(groups[:n_m])) < folds or len(np.unique(groups[n_m:])) < folds:
        raise MemlensError(f"blind baseline: fewer than {folds} distinct texts per set once duplicates are grouped")
    model = make_pipeline(
        FeatureUnion(
            [
                ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), lowercase=False)),
                ("words", TfidfVectorizer(analyzer="word", ngram_range=(1, 2))),
            ]
        ),
        LogisticRegression(C=1.0, max_iter=1000, solver="liblinear"),  # single-threaded: lbfgs's BLAS threads cost 3×
    )
    scores = np.stack(  # (repeats, N): out-of-fold P(member) of each split
        [
            cross_val_predict(
                model,
                texts,
                labels,
                groups=groups,
                cv=StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed + r),
                method="predict_proba",
            )[:, 1]
            for r in range(repeats)
        ]
    )
    low, high = _split_and_text_ci(scores, n_m, n_boot=n_boot, confidence=confidence, seed=seed)
    _fitted[key] = {
        "auc": float(np.mean([roc_auc(s[:n_m], s[n_m:]) for s in scores])),
        "auc_ci_low": low,
        "auc_ci_high": high,
        "folds": folds,
        "repeats": repeats,
        "n_members": n_m,
        "n_nonmembers": n_n,
        "n_clusters": len(np.unique(groups)),
    }
    return dict(_fitted[key])


def _split_and_text_ci(
    scores: np.ndarray, n_members: int, *, n_boot: int, confidence: float, seed: int
) -> tuple[float, float]:
    """Percentile CI of the AUC when each replicate draws one of the splits (rows of ``scores``) and resamples
    members and non-members."""
    if not n_boot:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    m, n = n_members, scores.shape[1] - n_members
    aucs = np.empty(n_boot)
    for start, size in boot_batches(n_boot, scores.shape[1]):
        split = rng.integers(0, len(scores), size)[:, None]
        im, inn = rng.integers(0, m, (size, m)), m + rng.integers(0, n, (size, n))
        aucs[start : start + size] = auc_rows(scores[split, im], scores[split, inn])
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(aucs, [alpha, 1 - alpha])
    return float(lo), float(hi)


def beats_blind(attack_ci_low: float | None, blind: dict) -> bool | None:
    """True when the attack's CI lower bound is above the blind baseline's CI upper bound: the two intervals do
    not touch. None when the attack has no CI (nothing to decide); False when the blind bound is NaN."""
    if attack_ci_low is None or attack_ci_low != attack_ci_low:
        return None
    return bool(attack_ci_low > blind["auc_ci_high"])
