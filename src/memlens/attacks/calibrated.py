"""Attacks that calibrate token probabilities by how common each token is (definitions: docs/methods.md)."""

from __future__ import annotations

import numpy as np

from memlens.attacks import AttackInputs, register

DC_PDD_BOUND = 0.01  # a: the cap on each token's score (the paper's default), so no single token dominates


def first_occurrences(ids: np.ndarray) -> np.ndarray:
    """``(N, W)`` bool: the first position of each distinct token id in its row (``ids`` < 0: padding, never
    marked). Vectorised: one ``np.unique`` over (row, id) keys, no loop over rows or tokens."""
    n, w = ids.shape
    inside = ids >= 0
    width = int(ids.max(initial=0)) + 1
    key = np.where(inside, np.arange(n, dtype=np.int64)[:, None] * width + ids, -1).ravel()
    _, first = np.unique(key, return_index=True)  # row-major: the earliest position of each key
    mark = np.zeros(n * w, dtype=bool)
    mark[first] = True
    return mark.reshape(n, w) & inside


def frequencies(ids: list[list[int]], vocab_size: int) -> np.ndarray:
    """``(vocab_size,)`` Laplace-smoothed token frequencies (count + 1) / (total + V) of a reference corpus's
    token ids (each sequence's first, start token left out)."""
    flat = np.concatenate([np.asarray(s[1:], dtype=np.int64) for s in ids] or [np.zeros(0, np.int64)])
    counts = np.bincount(flat, minlength=vocab_size).astype(np.float64)
    return (counts + 1) / (counts.sum() + vocab_size)


@register(
    "dc_pdd",
    needs=["token_ids", "token_frequency"],
    description="DC-PDD (Zhang et al. 2024): mean over each distinct token's first occurrence of "
    "min(p_i · −log f_i, 0.01); f = the token's frequency in a reference corpus",
)
def dc_pdd(inputs: AttackInputs) -> np.ndarray:
    t, ids, f = inputs.target, inputs.need("token_ids"), inputs.need("token_frequency")  # ids: (N, W), f: (V,)
    inside = ids >= 0
    p = np.exp(np.where(inside, t.logprob, -np.inf))  # (N, W) the model's probability of each actual token
    alpha = np.minimum(p * -np.log(f[np.where(inside, ids, 0)]), DC_PDD_BOUND)
    first = first_occurrences(ids)
    count = first.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(first, alpha, 0.0).sum(axis=1) / count, np.nan)
