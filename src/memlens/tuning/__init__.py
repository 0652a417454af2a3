"""Step 2b of the pipeline: fine-tuning methods (through ``peft``/``transformers``) and the training loop.

A method is ``apply(model, TuningConfig) -> (model, params)``, registered in :data:`METHODS` with its
default learning rate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from memlens.config import TuningConfig
from memlens.tuning import full, lora


@dataclass(frozen=True)
class Method:
    name: str
    apply: Callable
    default_lr: float
    description: str


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("lora", lora.apply, 1e-3, "LoRA adapters on chosen linear layers (peft)"),
        Method("full", full.apply, 3e-5, "all weights"),
    ]
}
DEFAULT_LR = {name: m.default_lr for name, m in METHODS.items()}


def apply_method(model, cfg: TuningConfig):
    """Prepare ``model`` for fine-tuning with ``cfg.method``; return ``(model, info)``.

    ``info`` records the method, its parameters and the honest trainable-parameter count and share.
    """
    model, params = METHODS[cfg.method].apply(model, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return model, {
        "method": cfg.method,
        "params": params,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_share": trainable / total,
    }


from memlens.tuning.train import train  # noqa: E402

__all__ = ["DEFAULT_LR", "METHODS", "Method", "apply_method", "train"]
