"""Exposure of canaries (Carlini et al. 2019, "The Secret Sharer") and a per-repetition canary report.

exposure = log2 |S| − log2 rank, where S is the canary kind's secret space and rank (1 = best) orders every
secret in S by the model's log-likelihood of the full canary text carrying it. The prefix is the same for all
candidates, so this ranks by the secret and the text after it; tokenisation differences are handled exactly.

S is too large to score, so the rank is estimated from ``M`` candidate secrets drawn uniformly (with
replacement) from S without the true one (:func:`estimate_exposure`). With ``k`` of them more likely than the
true secret:

- ``k ≥ MIN_BEATEN``: the empirical rank 1 + (|S| − 1) · k / M, unbiased and resolved to within ~1/√k;
- otherwise (the secret is among the top ~|S|·MIN_BEATEN/M, where counting cannot tell ranks apart): the rank
  is read from a skew-normal distribution fitted to the candidates' log-likelihoods, rank ≈ 1 + (|S| − 1) ·
  P(candidate log-likelihood > the secret's) — Carlini et al.'s extrapolation (§4.3), which does not
  saturate at the sampling ceiling log2 |S| as counting does when k = 0.

Exposure lies in [0, log2 |S|]. Canaries with k = 0 are "at the sampling ceiling" and reported as a share.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from memlens.errors import MemlensError
from memlens.extraction.canaries import KINDS, Canary, CanarySet
from memlens.extraction.generate import GREEDY, Decoding, generate_suffixes
from memlens.extraction.metrics import exact_match
from memlens.scoring import score_ids
from memlens.tokens import encode, ensure_pad_token, with_start

MAX_TOKENS = 1024  # canaries are one short sentence; nothing is cut
MIN_BEATEN = 10  # sampled candidates above the secret needed to trust the counted rank


def estimate_exposure(
    secret: np.ndarray, candidates: np.ndarray, space: int | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exposure (bits) of each canary and whether it is at the sampling ceiling (no candidate beats it).

    ``secret`` is ``(C,)``: each canary's log-likelihood with its true secret; ``candidates`` ``(C, M)``: the
    log-likelihoods with ``M`` secrets drawn uniformly from the rest of a space of ``space`` secrets."""
    from scipy.stats import skewnorm

    secret, candidates = np.asarray(secret, float), np.asarray(candidates, float)
    space = np.broadcast_to(np.asarray(space, float), secret.shape)
    if candidates.ndim != 2 or candidates.shape[0] != secret.shape[0] or candidates.shape[1] < 1:
        raise ValueError(
            f"need (C,) secret and (C, M) candidate log-likelihoods, got {secret.shape}, {candidates.shape}"
        )
    beaten = (candidates > secret[:, None]).sum(axis=1)
    share = beaten / candidates.shape[1]  # P(a random other secret is more likely), counted
    for i in np.flatnonzero(beaten < MIN_BEATEN):
        x = candidates[i]
        if np.ptp(x) == 0:
            continue  # nothing to fit: keep the count
        a, loc, scale = skewnorm.fit(x)
        share[i] = float(skewnorm.sf(secret[i], a, loc, scale))
    rank = 1 + (space - 1) * share
    return np.log2(space) - np.log2(np.clip(rank, 1, space)), beaten == 0


def secret_spans(tokenizer, canaries: Sequence[Canary]) -> list[tuple[list[int], int, int]]:
    """Per canary ``(ids, start, end)``: its token ids (as :func:`memlens.tokens.encode` gives them) and the token
    range ``ids[start:end]`` overlapping the secret's characters (a space merged into the secret's first token
    belongs to the secret). Needs a fast tokenizer (character offsets)."""
    if not getattr(tokenizer, "is_fast", False):
        raise MemlensError("canaries need a fast tokenizer (one that reports character offsets)")
    enc = tokenizer([c.text for c in canaries], add_special_tokens=True, return_offsets_mapping=True)
    spans = []
    for c, ids, offsets in zip(canaries, with_start(tokenizer, enc["input_ids"]), enc["offset_mapping"], strict=True):
        lo, hi = len(c.prefix), len(c.prefix) + len(c.secret)
        o = np.asarray(offsets).reshape(-1, 2)
        inside = np.flatnonzero((o[:, 1] > lo) & (o[:, 0] < hi) & (o[:, 1] > o[:, 0]))
        shift = len(ids) - len(o)  # the start token memlens puts before the tokenizer's ids
        spans.append((ids, int(inside[0]) + shift, int(inside[-1]) + 1 + shift))
    return spans


def exposures(
    model,
    tokenizer,
    canaries: Sequence[Canary],
    *,
    n_candidates: int = 1000,
    seed: int = 0,
    batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Estimated exposure (bits) of each canary, and whether it is at the sampling ceiling; all candidate
    texts are scored in one batched pass."""
    if n_candidates < 1:
        raise MemlensError("exposure needs n_candidates ≥ 1")
    rng = np.random.default_rng(seed)
    texts = []
    for c in canaries:
        others = rng.integers(0, KINDS[c.kind].space - 1, n_candidates)
        others += others >= c.secret_index  # uniform over the secrets other than the true one
        texts += [c.text, *(c.with_secret(KINDS[c.kind].secret(int(i))) for i in others)]
    ids = encode(tokenizer, texts, MAX_TOKENS).ids
    stats = score_ids(model, ids, ensure_pad_token(tokenizer), batch_size=batch_size, desc="exposure")
    loglik = np.where(stats.mask, stats.logprob, 0.0).sum(axis=1).reshape(len(canaries), n_candidates + 1)
    space = np.array([KINDS[c.kind].space for c in canaries])
    return estimate_exposure(loglik[:, 0], loglik[:, 1:], space)


def exposure(model, tokenizer, canary: Canary, *, n_candidates: int = 1000, seed: int = 0) -> float:
    """Estimated exposure (bits) of one canary (see the module docstring)."""
    return float(exposures(model, tokenizer, [canary], n_candidates=n_candidates, seed=seed)[0][0])


def canary_report(
    model,
    tokenizer,
    canary_set: CanarySet,
    *,
    decoding: Decoding = GREEDY,
    n_candidates: int = 1000,
    seed: int = 0,
    batch_size: int = 32,
    n_boot: int = 1000,
) -> list[dict]:
    """One row per repetition count (``repetitions = 0``: the controls first):

    - ``auc`` [``auc_ci_low``, ``auc_ci_high``]: LOSS attack (score −mean NLL of the canary text) separating the
      canaries repeated that often from the controls (NaN for the control row);
    - ``extraction_rate``: share whose secret tokens are generated exactly from the template prefix (any of the
      ``decoding.num_samples`` samples);
    - ``mean_exposure`` (bits), ``max_exposure`` = log2 |S|, and ``at_ceiling``: the share of canaries no sampled
      candidate beat (their exposure is extrapolated, see the module docstring).
    """
    from memlens.metrics import evaluate  # scikit-learn: loaded only when needed

    everyone = [*canary_set.canaries, *canary_set.controls]
    spans = secret_spans(tokenizer, everyone)
    ids = [s[0] for s in spans]
    loss_score = -score_ids(model, ids, ensure_pad_token(tokenizer), batch_size=batch_size, desc="canary loss").nll()
    gens = generate_suffixes(
        model,
        tokenizer,
        [i[:a] for i, a, _ in spans],
        [b - a for _, a, b in spans],
        decoding=decoding,
        batch_size=batch_size,
        seed=seed,
    )
    extracted = np.array([any(exact_match(g, i[a:b]) for g in gs) for gs, (i, a, b) in zip(gens, spans, strict=True)])
    expo, ceiling_hit = exposures(
        model, tokenizer, everyone, n_candidates=n_candidates, seed=seed, batch_size=batch_size
    )
    reps = np.array([c.repetitions for c in everyone])
    control = reps == 0
    ceiling = float(np.log2(KINDS[canary_set.kind].space))

    def row(r: int, group: np.ndarray, auc: dict) -> dict:
        extraction = {
            "extraction_rate": float(extracted[group].mean()),
            "mean_exposure": float(expo[group].mean()),
            "at_ceiling": float(ceiling_hit[group].mean()),
        }
        return {"repetitions": r, "n": int(group.sum()), **auc, **extraction, "max_exposure": ceiling}

    nan = {"auc": float("nan"), "auc_ci_low": float("nan"), "auc_ci_high": float("nan")}
    rows = [row(0, control, nan)]
    for r in sorted(set(reps[~control].tolist())):
        group = reps == r
        ev = evaluate(loss_score[group], loss_score[control], n_boot=n_boot, seed=seed)
        rows.append(row(r, group, {k: ev[k] for k in nan}))
    return rows
