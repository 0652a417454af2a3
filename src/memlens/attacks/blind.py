"""A model-free "blind" baseline: can the texts alone tell members from non-members?

A text classifier (TF-IDF of character 2–4-grams within word boundaries, case kept, plus lowercased word uni- and
bigrams; logistic regression) is cross-validated on member-vs-non-member labels. Its out-of-fold AUC near 0.5 means
the split is clean; well above 0.5 means members and non-members differ in distribution, and any attack's AUC is
inflated by that shift. An attack is only credible above the blind baseline's CI (:func:`beats_blind`).

Not a registered attack: it reads no model statistics. Features are fitted inside each fold (no leakage).
"""

from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import FeatureUnion, make_pipeline

from memlens.errors import MemlensError
from memlens.metrics import auc_ci, roc_auc


def blind_baseline(
    member_texts: list[str],
    nonmember_texts: list[str],
    *,
    folds: int = 5,
    seed: int = 0,
    n_boot: int = 1000,
    confidence: float = 0.95,
) -> dict:
    """Out-of-fold AUC of the text classifier (score = P(member), higher = member) with its bootstrap CI.

    Returns ``{"auc", "auc_ci_low", "auc_ci_high", "folds", "n_members", "n_nonmembers"}``; folds are stratified and
    shuffled with ``seed``, which also seeds the bootstrap.
    """
    n_m, n_n = len(member_texts), len(nonmember_texts)
    if folds < 2 or min(n_m, n_n) < folds:
        raise MemlensError(
            f"blind baseline needs folds ≥ 2 and at least `folds` texts per set "
            f"(folds={folds}, members={n_m}, non-members={n_n})"
        )
    texts = [*member_texts, *nonmember_texts]
    labels = np.r_[np.ones(n_m, int), np.zeros(n_n, int)]
    model = make_pipeline(
        FeatureUnion(
            [
                ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), lowercase=False)),
                ("words", TfidfVectorizer(analyzer="word", ngram_range=(1, 2))),
            ]
        ),
        LogisticRegression(C=1.0, max_iter=1000, solver="liblinear"),  # single-threaded: lbfgs's BLAS threads cost 3×
    )
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(model, texts, labels, cv=cv, method="predict_proba")[:, 1]
    members, nonmembers = scores[:n_m], scores[n_m:]
    low, high = auc_ci(members, nonmembers, n_boot=n_boot, confidence=confidence, seed=seed)
    return {
        "auc": roc_auc(members, nonmembers),
        "auc_ci_low": low,
        "auc_ci_high": high,
        "folds": folds,
        "n_members": n_m,
        "n_nonmembers": n_n,
    }


def beats_blind(attack_auc: float, blind: dict) -> bool:
    """True when ``attack_auc`` is above the blind baseline's upper CI bound (False if that bound is NaN)."""
    return bool(attack_auc > blind["auc_ci_high"])
