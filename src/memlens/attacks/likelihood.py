"""Attacks on the likelihood of the text (definitions: docs/research.md)."""

from __future__ import annotations

import numpy as np

from memlens.attacks import AttackInputs, register


@register("loss", description="LOSS (Yeom et al. 2018): −L(x, M), the negative mean token NLL")
def loss(inputs: AttackInputs) -> np.ndarray:
    return -inputs.target.nll()


@register(
    "reference",
    needs=["reference"],
    description="Reference (Carlini et al. 2021): L(x, R) − L(x, M), R = the pre-trained model",
)
def reference(inputs: AttackInputs) -> np.ndarray:
    return inputs.reference.nll() - inputs.target.nll()
