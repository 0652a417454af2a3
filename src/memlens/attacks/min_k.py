"""Min-K% and Min-K%++: attacks on the least likely tokens of a text (definitions: docs/methods.md)."""

from __future__ import annotations

import numpy as np

from memlens.attacks import AttackInputs, register

# A next-token distribution with (almost) all mass on one token has σ ≈ 0 and ℓ ≈ μ ≈ 0: z = 0/0. ℓ − μ is
# computed in float32 (rounding ~1e-7), so below this floor z would be rounding noise blown up; a token the
# model did not expect still gets a large negative z.
SIGMA_FLOOR = 1e-3


def mean_of_lowest(values: np.ndarray, lengths: np.ndarray, k: float) -> np.ndarray:
    """Per row, the mean of the ``max(1, floor(k·n))`` smallest of the first ``n = lengths[i]`` values.

    ``values`` is ``(N, T)`` with anything (NaN) beyond each row's length; rows with ``n = 0`` give NaN.
    Vectorised: one sort and one cumulative sum, no loop over rows or tokens.
    """
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    inside = np.arange(values.shape[1])[None, :] < lengths[:, None]
    ordered = np.sort(np.where(inside, values, np.inf), axis=1)
    count = np.maximum(1, np.floor(k * lengths).astype(np.int64))
    csum = np.cumsum(np.where(np.isfinite(ordered), ordered, 0.0), axis=1, dtype=np.float64)
    rows = np.arange(len(lengths))
    out = csum[rows, np.minimum(count, values.shape[1]) - 1] / count if values.shape[1] else np.zeros(len(lengths))
    return np.where(lengths > 0, out, np.nan)


@register("min_k", takes_k=True, description="Min-K% (Shi et al. 2024): mean of the k% lowest token log-probs ℓ_i")
def min_k(inputs: AttackInputs, k: float) -> np.ndarray:
    return mean_of_lowest(inputs.target.logprob, inputs.target.lengths, k)


@register(
    "min_k_plus",
    takes_k=True,
    description="Min-K%++ (Zhang et al. 2024): mean of the k% lowest z_i = (ℓ_i − μ_i) / σ_i",
)
def min_k_plus(inputs: AttackInputs, k: float) -> np.ndarray:
    t = inputs.target
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (t.logprob - t.mu) / np.maximum(t.sigma, SIGMA_FLOOR)
    return mean_of_lowest(z, t.lengths, k)
