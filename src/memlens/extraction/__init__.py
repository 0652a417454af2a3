"""Extraction: can the fine-tuned model reproduce its training texts and planted secrets?

- :mod:`~memlens.extraction.metrics`: exact match, token accuracy, longest common n-gram and its share of the
  suffix, ROUGE-L, BLEU;
- :mod:`~memlens.extraction.generate`: split texts into prefix and suffix, generate suffixes in batches, score them;
- :mod:`~memlens.extraction.canaries`: synthetic records inserted a chosen number of times;
- :mod:`~memlens.extraction.exposure`: canary exposure and a per-repetition report.
"""

from memlens.extraction.canaries import Canary, CanarySet, insert, make_canaries
from memlens.extraction.exposure import canary_report, exposure, exposures, secret_spans
from memlens.extraction.generate import (
    GREEDY,
    Decoding,
    ExtractionResult,
    extract,
    generate_suffixes,
    split_prefix,
    temperature_sweep,
)
from memlens.extraction.metrics import (
    METRICS,
    aggregate,
    bleu,
    exact_match,
    longest_common_ngram,
    ngram_share,
    rouge_l,
    score_pair,
    token_accuracy,
)

__all__ = [
    "GREEDY",
    "METRICS",
    "Canary",
    "CanarySet",
    "Decoding",
    "ExtractionResult",
    "aggregate",
    "bleu",
    "canary_report",
    "exact_match",
    "exposure",
    "exposures",
    "extract",
    "generate_suffixes",
    "insert",
    "longest_common_ngram",
    "make_canaries",
    "ngram_share",
    "rouge_l",
    "score_pair",
    "secret_spans",
    "split_prefix",
    "temperature_sweep",
    "token_accuracy",
]
