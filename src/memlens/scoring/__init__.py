"""Step 3 of the pipeline: per-token statistics from one batched forward pass."""

from memlens.scoring.engine import score_cached, score_ids, score_texts
from memlens.scoring.stats import TokenStats

__all__ = ["TokenStats", "score_cached", "score_ids", "score_texts"]
