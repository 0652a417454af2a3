"""Full fine-tuning: every weight trains."""

from __future__ import annotations

from memlens.config import TuningConfig


def apply(model, cfg: TuningConfig):
    """Make every parameter trainable (tied input/output embeddings stay tied)."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model, {}
