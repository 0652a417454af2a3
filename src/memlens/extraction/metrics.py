"""How much of a true suffix a generation reproduces.

Token metrics compare token-id lists: ``gen`` (the generation) against ``ref`` (the true suffix, non-empty).
Text metrics compare the decoded strings. Every metric is in [0, 1] except ``longest_common_ngram`` (tokens);
higher = more memorized.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np

TOKEN_METRICS = ("exact_match", "token_accuracy", "longest_common_ngram", "ngram_share")
TEXT_METRICS = ("rouge_l", "bleu")
METRICS = TOKEN_METRICS + TEXT_METRICS


def _check_ref(ref: Sequence[int]) -> None:
    if not len(ref):
        raise ValueError("the reference suffix is empty")


def exact_match(gen: Sequence[int], ref: Sequence[int]) -> bool:
    """True when the first ``len(ref)`` generated tokens are exactly ``ref``."""
    return list(gen[: len(ref)]) == list(ref)


def token_accuracy(gen: Sequence[int], ref: Sequence[int]) -> float:
    """Share of positions ``i < len(ref)`` with ``gen[i] == ref[i]``; positions ``gen`` lacks count as wrong."""
    _check_ref(ref)
    n = min(len(gen), len(ref))
    return float(np.count_nonzero(np.asarray(gen[:n]) == np.asarray(ref[:n])) / len(ref))


def longest_common_ngram(gen: Sequence[int], ref: Sequence[int]) -> int:
    """Length of the longest contiguous token run that occurs in both ``gen`` and ``ref``.

    The match matrix ``gen[i] == ref[j]`` is sheared so that each diagonal becomes a row; the longest run of
    matches in any row is the answer (a vectorised O(n·m) form of the usual dynamic programme).
    """
    a, b = np.asarray(gen), np.asarray(ref)
    n, m = len(a), len(b)
    if not n or not m:
        return 0
    i = np.arange(n)[None, :]
    j = i + np.arange(-(n - 1), m)[:, None]  # diagonal d holds cells (i, i + d - n + 1)
    inside = (j >= 0) & (j < m)
    runs = inside & (a[i] == b[j.clip(0, m - 1)])
    count = runs.cumsum(axis=1)
    # a run's length = matches so far minus matches counted before its last reset (a non-match)
    return int((count - np.maximum.accumulate(np.where(runs, 0, count), axis=1)).max())


def ngram_share(gen: Sequence[int], ref: Sequence[int]) -> float:
    """Study B's "share of n-gram": ``longest_common_ngram(gen, ref) / len(ref)``."""
    _check_ref(ref)
    return longest_common_ngram(gen, ref) / len(ref)


@cache
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"])


def rouge_l(gen_text: str, ref_text: str) -> float:
    """ROUGE-L F-measure (``rouge-score``; its tokenizer lower-cases and keeps alphanumeric words)."""
    return float(_rouge().score(ref_text, gen_text)["rougeL"].fmeasure)


def bleu(gen_text: str, ref_text: str) -> float:
    """Sentence BLEU (``sacrebleu``, default exponential smoothing and effective order), scaled to 0..1."""
    import sacrebleu

    return min(1.0, sacrebleu.sentence_bleu(gen_text, [ref_text]).score / 100)  # no float rounding past 1


def score_pair(gen_ids: Sequence[int], ref_ids: Sequence[int], gen_text: str, ref_text: str) -> dict[str, float]:
    """Every metric of one generation against its true suffix (keys: :data:`METRICS`)."""
    lcn = longest_common_ngram(gen_ids, ref_ids)
    return {
        "exact_match": float(exact_match(gen_ids, ref_ids)),
        "token_accuracy": token_accuracy(gen_ids, ref_ids),
        "longest_common_ngram": float(lcn),
        "ngram_share": lcn / len(ref_ids),
        "rouge_l": rouge_l(gen_text, ref_text),
        "bleu": bleu(gen_text, ref_text),
    }


def aggregate(rows: Sequence[dict]) -> dict[str, float]:
    """``n``, ``exact_match_rate`` (share of exact matches) and the mean of every other metric over ``rows``."""
    out: dict[str, float] = {"n": len(rows)}
    for key in METRICS:
        value = float(np.mean([r[key] for r in rows])) if rows else float("nan")
        out["exact_match_rate" if key == "exact_match" else key] = value
    return out
