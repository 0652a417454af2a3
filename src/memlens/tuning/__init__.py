"""Step 2b of the pipeline: fine-tuning methods (through ``peft``/``transformers``) and the training loop.

A method is ``apply(model, TuningConfig, tokenizer) -> (model, params)`` (the model's tokenizer, for a method
that initialises from a text), registered in :data:`METHODS` with its default learning rate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from memlens.config import TuningConfig
from memlens.tuning import full, lora, prompt


@dataclass(frozen=True)
class Method:
    name: str
    apply: Callable
    default_lr: float
    description: str
    prompt_based: bool = False


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("full", full.apply, 3e-5, "all weights"),
        Method("head", full.apply_head, 1e-4, "only the output layer (untied from the embeddings if tied)"),
        Method("lora", lora.apply, 1e-3, "LoRA adapters on chosen linear layers"),
        Method("ia3", lora.apply_ia3, 3e-3, "IA³ rescaling vectors"),
        Method("prefix", prompt.apply_prefix, 1e-2, "prefix tuning: key/value prefixes in every layer", True),
        Method("prompt", prompt.apply_prompt, 3e-2, "prompt tuning: a soft prompt before the input", True),
        Method("ptuning", prompt.apply_ptuning, 1e-2, "P-tuning: soft prompts from a small encoder", True),
    ]
}
DEFAULT_LR = {name: m.default_lr for name, m in METHODS.items()}


def check_method(model, cfg: TuningConfig) -> None:
    """Refuse, before any work, targets or layers ``model`` does not have (the model is not changed)."""
    if cfg.method in ("lora", "ia3"):
        lora.resolve_targets(model, cfg.targets or lora.DEFAULT_TARGETS[cfg.method])
        lora.resolve_layers(model, cfg.layers)


def apply_method(model, cfg: TuningConfig, tokenizer=None):
    """Prepare ``model`` for fine-tuning with ``cfg.method``; return ``(model, info)``. ``tokenizer``: the
    model's, needed by ``prefix_init = "text"``.

    ``info`` records the method, its parameters and the honest trainable-parameter count and share.
    """
    model, params = METHODS[cfg.method].apply(model, cfg, tokenizer)
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

__all__ = ["DEFAULT_LR", "METHODS", "Method", "apply_method", "check_method", "train"]
