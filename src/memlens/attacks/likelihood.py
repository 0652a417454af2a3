"""Attacks on the likelihood of the text (definitions: docs/methods.md)."""

from __future__ import annotations

import zlib

import numpy as np

from memlens.attacks import AttackInputs, register


@register("loss", description="LOSS (Yeom et al. 2018): −L(x, M), the negative mean token NLL")
def loss(inputs: AttackInputs) -> np.ndarray:
    return -inputs.target.nll()


@register(
    "reference",
    needs=["reference"],
    description="Reference (Carlini et al. 2021): L(x, R) − L(x, M), R = the pre-trained or a given model",
)
def reference(inputs: AttackInputs) -> np.ndarray:
    return inputs.need("reference").nll() - inputs.target.nll()


@register("zlib", needs=["texts"], description="Zlib (Carlini et al. 2021): −L(x, M) / len(zlib(x)) in bytes")
def zlib_ratio(inputs: AttackInputs) -> np.ndarray:
    sizes = np.array([len(zlib.compress(t.encode("utf-8"))) for t in inputs.need("texts")], dtype=np.float64)
    return -inputs.target.nll() / sizes


@register(
    "lowercase",
    needs=["lowercase"],
    description="Lowercase (Carlini et al. 2021): L(lower(x), M) − L(x, M)",
)
def lowercase(inputs: AttackInputs) -> np.ndarray:
    return inputs.need("lowercase").nll() - inputs.target.nll()


@register(
    "recall",
    needs=["recall"],
    description="ReCaLL (Xie et al. 2024): L(x | P, M) / L(x, M), P = a non-member prefix from the validation set",
)
def recall(inputs: AttackInputs) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return inputs.need("recall").nll() / inputs.target.nll()


@register(
    "gradient_norm",
    needs=["gradient_norms"],
    description="Gradient norm: −‖∇θ L(x, M)‖₂ over the fine-tuned (trainable) parameters; members sit where the "
    "loss is flat. Fine-tuned stages of memlens run only (one backward pass per batch)",
)
def gradient_norm(inputs: AttackInputs) -> np.ndarray:
    return -np.asarray(inputs.need("gradient_norms"), dtype=np.float64)
