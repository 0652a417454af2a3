"""A neighbourhood (perturbation) attack that needs no mask model (definitions: docs/methods.md).

Mattern et al. (2023) compare a text's loss with the losses of *neighbours*: the same text with a few words
replaced by a masked language model's suggestions. memlens makes neighbours without a second model: in each
neighbour, ``SWAP_SHARE`` of the words (at least one) are replaced by words drawn at random from the validation
texts' vocabulary (never scored texts). Such neighbours are less fluent than a mask model's, so the attack is
a cheaper and weaker variant; its cost is one scoring pass over ``attacks.neighbours`` copies of the texts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from memlens.attacks import AttackInputs, register

SWAP_SHARE = 0.1  # share of a text's words replaced in each neighbour (at least one)
NEIGHBOURS = 8  # neighbours per text unless attacks.neighbours says otherwise


def vocabulary(texts: Sequence[str]) -> list[str]:
    """The distinct whitespace-separated words of ``texts``, sorted (a seeded draw from it is reproducible)."""
    return sorted({w for t in texts for w in t.split()})


def neighbours(text: str, words: Sequence[str], m: int, rng: np.random.Generator) -> list[str]:
    """``m`` neighbours of ``text``: each replaces ``max(1, round(SWAP_SHARE · n))`` of its n words (distinct
    positions) by different words from ``words``, and joins them with single spaces. A text without words, or a
    vocabulary with no other word, gives copies of the text (the attack then scores it 0)."""
    tokens = text.split()
    n = len(tokens)
    if n == 0 or len(words) < 2:
        return [text] * m
    k = max(1, round(SWAP_SHARE * n))
    out = []
    for _ in range(m):
        new = list(tokens)
        for pos in rng.choice(n, k, replace=False):
            word = words[int(rng.integers(len(words)))]
            while word == new[pos]:
                word = words[int(rng.integers(len(words)))]
            new[pos] = word
        out.append(" ".join(new))
    return out


@register(
    "neighbour",
    needs=["neighbours"],
    description="Neighbourhood attack (Mattern et al. 2023), mask-model-free: mean L(x̃, M) over neighbours x̃ "
    "(random word swaps from the validation vocabulary) − L(x, M)",
)
def neighbour(inputs: AttackInputs) -> np.ndarray:
    stats = inputs.need("neighbours")  # (N·m) texts: text i's neighbours are rows i·m … i·m + m − 1
    n = len(inputs.target)
    around = stats.nll().reshape(n, len(stats) // n)  # (N, m)
    with np.errstate(invalid="ignore"):
        return np.nanmean(around, axis=1) - inputs.target.nll()
