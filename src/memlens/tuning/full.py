"""Parameter-based methods without adapters: full fine-tuning and head-only fine-tuning."""

from __future__ import annotations

from memlens.config import TuningConfig
from memlens.errors import MemlensError


def apply(model, cfg: TuningConfig, tokenizer=None):
    """Make every parameter trainable (tied input/output embeddings stay tied)."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model, {}


def apply_head(model, cfg: TuningConfig, tokenizer=None):
    """Train only the output layer. A head tied to the input embeddings is untied first: it becomes a fresh
    trainable copy, and the embeddings stay frozen (``params["untied"]`` says so)."""
    import torch

    head = model.get_output_embeddings()
    if head is None:
        raise MemlensError(f"{type(model).__name__} has no output layer to fine-tune")
    for p in model.parameters():
        p.requires_grad_(False)
    untied = head.weight is model.get_input_embeddings().weight
    if untied:
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
        model.config.tie_word_embeddings = False
        text_cfg = model.config.get_text_config()
        text_cfg.tie_word_embeddings = False
    for p in head.parameters():
        p.requires_grad_(True)
    return model, {"untied": untied}
