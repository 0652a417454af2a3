"""One-run privacy auditing (Steinke, Nasr & Jagielski 2023): an empirical lower bound on ε from audit canaries.

``m`` audit canaries are made; each is trained on with probability ½, independently. After training each gets a
score, its loss drop (pre-trained minus fine-tuned mean NLL per token; higher = more likely trained on). A
guessing rule calls the k₊ highest-scored canaries trained-on and the k₋ lowest not. Were training (ε, δ)-DP,
the number v of right guesses among r = k₊ + k₋ would exceed a Binomial(r, e^ε / (1 + e^ε)) tail by at most a
term in 2mδ (the paper's theorem, as :func:`p_value`). The largest ε that the observed v rejects at confidence
1 − β is the bound. A fixed grid of rules (:data:`RULES`) is tried with β split among them (Bonferroni), so the
bound holds for the best rule. A bound of 0 says the audit found no evidence of leakage, not that there is none;
with few canaries it cannot be large (its ceiling is listed beside it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from memlens.data import Text
from memlens.errors import MemlensError

TEMPLATE = "Record of {name}: aged {secret}."  # the patient canaries' secrets under a template of its own
RULES = ((0.05, 0.0), (0.1, 0.0), (0.25, 0.0), (0.5, 0.0), (0.05, 0.05), (0.1, 0.1), (0.25, 0.25), (0.5, 0.5))
# (k₊ / m, k₋ / m): guess the top k₊ trained-on, the bottom k₋ not
MIN_CANARIES = 20  # every rule guesses at least one canary


AUDIT_WORDS = 8  # words per ``words`` canary


def audit_canaries(
    m: int, *, seed: int, kind: str = "records", texts: Sequence[str] = ()
) -> tuple[list[Text], np.ndarray]:
    """``m`` distinct audit texts (ids ``audit-0`` …) and whether each is trained on, (m,) bool with P = ½.

    ``kind``: ``records`` (templated patient records, :data:`TEMPLATE`), ``words`` (:data:`AUDIT_WORDS` random
    words of the vocabulary of ``texts``) or ``sentences`` / ``pool`` (``m`` of ``texts`` themselves, drawn
    without replacement; the caller passes candidates that are no text of the run)."""
    if m < MIN_CANARIES:
        raise MemlensError(f"privacy.audit must be at least {MIN_CANARIES} canaries (got {m})")
    rng = np.random.default_rng([seed, 0xA0D1])
    if kind == "records":
        return _records(m, rng)
    if kind == "words":
        vocab = sorted({w for t in texts for w in re.findall(r"[a-z]{3,12}", t.lower())})
        if len(vocab) < 10 * AUDIT_WORDS:
            raise MemlensError(f"the audit's vocabulary has {len(vocab)} words; words canaries need more")
        drawn: dict[str, None] = {}
        while len(drawn) < m:  # distinct texts (a repeat is vanishingly rare, but would be one canary twice)
            words = [vocab[i] for i in rng.choice(len(vocab), AUDIT_WORDS, replace=False)]
            drawn[" ".join(words).capitalize() + "."] = None
        chosen = list(drawn)
    else:
        distinct = list(dict.fromkeys(t for t in texts if t.strip()))
        if len(distinct) < m:
            raise MemlensError(
                f"privacy.audit = {m} but only {len(distinct)} {kind} texts are left for audit canaries "
                "(none may be a text of the run); lower privacy.audit"
            )
        chosen = [distinct[i] for i in rng.choice(len(distinct), m, replace=False)]
    return [Text(f"audit-{k}", t) for k, t in enumerate(chosen)], rng.random(m) < 0.5


def _records(m: int, rng: np.random.Generator) -> tuple[list[Text], np.ndarray]:
    from memlens.extraction.canaries import FIRST, KINDS, LAST

    space = KINDS["patient"].space
    if m > space:
        raise MemlensError(f"privacy.audit must be between {MIN_CANARIES} and {space} canaries (got {m})")
    names = rng.integers(len(FIRST) * len(LAST), size=m)
    secrets = rng.choice(space, m, replace=False)
    texts = [
        Text(f"audit-{k}", TEMPLATE.format(name=f"{FIRST[n // len(LAST)]} {LAST[n % len(LAST)]}", secret=secret))
        for k, (n, secret) in enumerate(zip(names, map(KINDS["patient"].secret, secrets.tolist()), strict=True))
    ]
    return texts, rng.random(m) < 0.5


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[≥ ``v`` of ``r`` guesses right] under (ε, δ)-DP with ``m`` canaries: the binomial tail plus the δ term."""
    from scipy.special import expit
    from scipy.stats import binom

    q = float(expit(epsilon))  # the accuracy of ε-DP randomised response
    tail = float(binom.sf(v - 1, r, q))
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    below = binom.pmf(np.arange(v - 1, -1, -1), r, q)  # P[B = v-1], P[B = v-2], …, P[B = 0]
    alpha = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))  # max over i of P[v-i ≤ B < v] / i
    return min(tail + 2 * m * delta * alpha, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, *, delta: float, beta: float) -> float:
    """The largest ε that ``v`` right guesses of ``r`` reject at level ``beta`` (0 if none; :func:`p_value`
    grows with ε, so bisection finds it to 1e-6)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 ≤ v ≤ r ≤ m, got v={v}, r={r}, m={m}")
    if p_value(m, r, v, 0.0, delta) > beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) <= beta:
        lo, hi = hi, 2 * hi
        if hi > 1e3:
            return float("inf")
    while hi - lo > 1e-6:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if p_value(m, r, v, mid, delta) <= beta else (lo, mid)
    return lo


def one_run_audit(scores: np.ndarray, trained: np.ndarray, *, delta: float, confidence: float = 0.95) -> dict:
    """The ε lower bound from audit canaries' ``scores`` (m,) (higher = more likely trained on) and the truth
    ``trained`` (m,) bool: the best of :data:`RULES` at ``confidence`` (Bonferroni over the rules), with its
    counts, and the ``ceiling``: the largest bound any rule could have given (every guess right)."""
    scores, trained = np.asarray(scores, dtype=np.float64), np.asarray(trained, dtype=bool)
    m = len(scores)
    if len(trained) != m or not np.isfinite(scores).all():
        raise MemlensError("the one-run audit needs one finite score per audit canary")
    if m < MIN_CANARIES:
        raise MemlensError(f"the one-run audit needs at least {MIN_CANARIES} audit canaries (got {m})")
    beta = (1 - confidence) / len(RULES)
    order = np.argsort(-scores, kind="stable")
    best: dict = {}
    ceiling = 0.0
    for f_in, f_out in RULES:
        k_in, k_out = int(f_in * m), int(f_out * m)
        v = int(trained[order[:k_in]].sum() + (~trained[order[m - k_out :]]).sum())  # m - 0: none guessed out
        eps = epsilon_lower_bound(m, k_in + k_out, v, delta=delta, beta=beta)
        ceiling = max(ceiling, epsilon_lower_bound(m, k_in + k_out, k_in + k_out, delta=delta, beta=beta))
        if not best or eps > best["epsilon_lower_bound"]:
            best = {"epsilon_lower_bound": eps, "guessed_in": k_in, "guessed_out": k_out, "correct": v}
    head = {"canaries": m, "trained": int(trained.sum()), "delta": delta, "confidence": confidence, "rules": len(RULES)}
    return head | best | {"ceiling": ceiling}
