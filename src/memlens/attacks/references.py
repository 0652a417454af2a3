"""Attacks calibrated per text by reference models that memlens trains on population data: RMIA and LiRA
(offline: no reference model trains on a scored text; definitions: docs/methods.md).

A model's signal for a text is its geometric-mean token probability ``p(x) = exp(−L(x))``, ``L`` the mean
token NLL (a whole-sequence probability underflows and would let one token decide). Every function here is
a pure function of those per-text statistics; the models are trained by :mod:`memlens.experiments.references`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from memlens.attacks import AttackInputs, register

OFFLINE_A = 0.3  # RMIA's offline a when it cannot be tuned (one reference model): ML Privacy Meter's default
A_GRID = tuple(round(0.1 * i, 1) for i in range(11))  # the a values tried when tuning (0, 0.1, ..., 1)
LIRA_PER_EXAMPLE = 64  # fewer references than this: one variance for all texts (Carlini et al. 2022, fig. 7)


@dataclass(frozen=True)
class ReferenceSignals:
    """What ``K`` reference models say about the scored texts and the population samples.

    - ``nll``: ``(K, N)`` each scored text's mean token NLL under each reference model (same order as the
      target's texts);
    - ``population``: ``(K, Z)`` the same for RMIA's population samples ``z`` (no model trained on them);
    - ``offline_a``: RMIA's offline scaling, Pr(x) ≈ ((1 + a)·mean_k p_k(x) + 1 − a) / 2;
    - ``gamma``: RMIA's threshold on the pairwise likelihood ratio.
    """

    nll: np.ndarray
    population: np.ndarray
    offline_a: float = OFFLINE_A
    gamma: float = 1.0


def probability(nll: np.ndarray) -> np.ndarray:
    """The geometric-mean token probability exp(−L) of each text (any shape)."""
    return np.exp(-np.asarray(nll, dtype=np.float64))


def rmia_scores(
    target_x: np.ndarray,
    refs_x: np.ndarray,
    target_z: np.ndarray,
    refs_z: np.ndarray,
    *,
    a: float = OFFLINE_A,
    gamma: float = 1.0,
) -> np.ndarray:
    """Offline RMIA (Zarifzadeh et al. 2024): for each text x, the share of population samples z whose
    pairwise likelihood ratio [p(x|θ) / Pr(x)] / [p(z|θ) / Pr(z)] exceeds ``gamma``.

    ``target_x`` (N,) and ``refs_x`` (K, N): probabilities of the scored texts under the target and each
    reference; ``target_z`` (Z,), ``refs_z`` (K, Z): the same for z. Pr(·) = ((1 + a)·mean over references +
    1 − a) / 2 (the offline approximation of averaging IN and OUT models). Returns (N,) in [0, 1]; higher =
    member; NaN where the target's probability of x is NaN. Sorted once: O((N + Z) log Z), no N×Z matrix.
    """
    if not 0 <= a <= 1 or gamma <= 0:
        raise ValueError(f"RMIA needs 0 <= a <= 1 and gamma > 0 (got a={a}, gamma={gamma})")
    ratio_x = target_x / ((1 + a) / 2 * refs_x.mean(axis=0) + (1 - a) / 2)  # (N,)
    ratio_z = target_z / ((1 + a) / 2 * refs_z.mean(axis=0) + (1 - a) / 2)  # (Z,)
    ratio_z = np.sort(ratio_z[np.isfinite(ratio_z)])
    if not len(ratio_z):
        return np.full(len(ratio_x), np.nan)
    # ratio_x / ratio_z > gamma  <=>  ratio_z < ratio_x / gamma  (all ratios > 0)
    beaten = np.searchsorted(ratio_z, ratio_x / gamma, side="left") / len(ratio_z)
    return np.where(np.isfinite(ratio_x), beaten, np.nan)


def logit_probability(nll: np.ndarray) -> np.ndarray:
    """LiRA's logit scaling of the geometric-mean token probability: log p − log(1 − p), p = exp(−L)."""
    nll = np.asarray(nll, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return -nll - np.log(-np.expm1(-nll))


def lira_scores(target_x: np.ndarray, refs_x: np.ndarray, *, per_example: bool = False) -> np.ndarray:
    """Offline LiRA (Carlini et al. 2022): the one-sided statistic (φ(x) − μ_out(x)) / σ_out, φ the target's
    logit-scaled signal (N,), μ_out the mean over the OUT references' (K, N). ``per_example``: σ_out per text
    (needs K ≥ 2; Carlini et al. find it worse than one shared σ below ~64 references); otherwise one σ_out
    pooled over every text's deviations, which leaves the ranking that of φ − μ_out (and 1 when K = 1: no
    spread to measure). Higher = member."""
    mu = refs_x.mean(axis=0)
    k = refs_x.shape[0]
    if per_example:
        if k < 2:
            raise ValueError("a per-text variance needs at least 2 reference models")
        sd = refs_x.std(axis=0, ddof=1)
    else:
        dev = refs_x - mu
        spread = np.sqrt(np.nanmean(dev**2) * k / (k - 1)) if k > 1 else 1.0
        sd = np.full(len(mu), spread if spread > 0 else 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (target_x - mu) / np.where(sd > 0, sd, np.nan)


def tune_offline_a(
    pseudo_in: np.ndarray,
    pseudo_out: np.ndarray,
    refs_in: np.ndarray,
    refs_out: np.ndarray,
    pseudo_z: np.ndarray,
    refs_z: np.ndarray,
    *,
    gamma: float = 1.0,
    grid: Sequence[float] = A_GRID,
) -> tuple[float, list[tuple[float, float]]]:
    """RMIA's offline ``a`` as the paper sets it: attack one reference model (the pseudo-target) with the
    others, on texts it trained on (``pseudo_in``) and texts no model trained on (``pseudo_out``), and keep the
    ``a`` of ``grid`` with the highest AUC (the smallest on ties). Probabilities: ``pseudo_*`` (n,) under the
    pseudo-target, ``refs_*`` (K−1, n) under the other references. Returns ``(a, [(a, auc), ...])``."""
    from memlens.metrics import roc_auc

    target_x = np.concatenate([pseudo_in, pseudo_out])
    refs_x = np.concatenate([refs_in, refs_out], axis=1)
    curve = []
    for a in grid:
        s = rmia_scores(target_x, refs_x, pseudo_z, refs_z, a=a, gamma=gamma)
        curve.append((float(a), roc_auc(s[: len(pseudo_in)], s[len(pseudo_in) :])))
    best = max(curve, key=lambda c: (round(c[1], 12), -c[0]))  # float noise is no tie-breaker
    return best[0], curve


@register(
    "rmia",
    needs=["references", "population"],
    description="RMIA (Zarifzadeh et al. 2024), offline: share of population texts z that x beats on "
    "[p(x|M)/Pr(x)] / [p(z|M)/Pr(z)] > γ, Pr from reference models memlens trains (attacks.reference_models)",
)
def rmia(inputs: AttackInputs) -> np.ndarray:
    r: ReferenceSignals = inputs.need("references")
    return rmia_scores(
        probability(inputs.target.nll()),
        probability(r.nll),
        probability(inputs.need("population").nll()),
        probability(r.population),
        a=r.offline_a,
        gamma=r.gamma,
    )


@register(
    "lira",
    needs=["references"],
    description="LiRA (Carlini et al. 2022), offline: (φ(x) − μ_out(x)) / σ_out, φ = logit of exp(−L), OUT "
    "statistics from reference models memlens trains (attacks.reference_models)",
)
def lira(inputs: AttackInputs) -> np.ndarray:
    r: ReferenceSignals = inputs.need("references")
    per_example = r.nll.shape[0] >= LIRA_PER_EXAMPLE
    return lira_scores(logit_probability(inputs.target.nll()), logit_probability(r.nll), per_example=per_example)
