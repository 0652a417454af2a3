"""Step 4 of the pipeline: membership-inference attacks, registered in one place.

An attack is a pure function of cached per-token statistics (:class:`~memlens.scoring.TokenStats`) that
returns one score per text. Convention: a HIGHER score means "more likely a member".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from memlens.errors import MemlensError
from memlens.scoring.stats import TokenStats

if TYPE_CHECKING:
    from memlens.attacks.references import ReferenceSignals


@dataclass(frozen=True)
class AttackInputs:
    """What an attack may read, all for the same texts in the same order.

    - ``target``: the attacked model's statistics of the texts;
    - ``reference``: a reference model's statistics of the same texts (by default the pre-trained model's);
    - ``texts``: the scored texts (zlib): each text as far as its tokens were kept;
    - ``lowercase``: the target model's statistics of the lower-cased texts;
    - ``recall``: the target model's statistics of the texts after a non-member prefix (ReCaLL);
    - ``token_ids``: ``(N, W)`` the id of each scored token, aligned with ``target``'s columns (−1 beyond a
      text's length);
    - ``token_frequency``: ``(V,)`` each token's smoothed frequency in a reference corpus (DC-PDD);
    - ``references``: what the reference models memlens trained say about the texts (RMIA, LiRA);
    - ``population``: the target model's statistics of RMIA's population samples (no model trained on them);
    - ``neighbours``: the target model's statistics of each text's ``m`` neighbours, text by text (``N·m`` rows);
    - ``gradient_norms``: ``(N,)`` each text's loss-gradient norm over the trainable parameters.
    """

    target: TokenStats
    reference: TokenStats | None = None
    texts: Sequence[str] | None = None
    lowercase: TokenStats | None = None
    recall: TokenStats | None = None
    token_ids: np.ndarray | None = None
    token_frequency: np.ndarray | None = None
    references: ReferenceSignals | None = None
    population: TokenStats | None = None
    neighbours: TokenStats | None = None
    gradient_norms: np.ndarray | None = None

    def need(self, name: str) -> Any:
        """The input ``name``; an attack registered with ``needs=[name]`` is only called when it is set."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"this attack needs AttackInputs.{name}")
        return value


@dataclass(frozen=True)
class Attack:
    """A registered attack. ``takes_k``: it has a fraction parameter ``k`` (Min-K% family)."""

    name: str
    fn: Callable[..., np.ndarray]
    needs: frozenset[str]
    description: str
    takes_k: bool = False


ATTACKS: dict[str, Attack] = {}


def register(name: str, *, needs: Sequence[str] = (), description: str = "", takes_k: bool = False):
    """Decorator adding ``fn(inputs[, k]) -> scores`` to :data:`ATTACKS` under ``name``."""

    def add(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        if name in ATTACKS:
            raise ValueError(f"attack {name!r} registered twice")
        ATTACKS[name] = Attack(name, fn, frozenset(needs), description or (fn.__doc__ or "").strip(), takes_k)
        return fn

    return add


RUN_ONLY = {  # inputs only a fine-tune memlens runs itself has
    "references": "reference models trained with the run's own recipe",
    "gradient_norms": "the trainable parameters of a fine-tune memlens runs",
}


def run_only(names: Sequence[str]) -> list[str]:
    """The attacks among ``names`` that need what only ``memlens run`` has (:data:`RUN_ONLY`)."""
    return [n for n in names if n in ATTACKS and ATTACKS[n].needs & RUN_ONLY.keys()]


def run_attack(name: str, inputs: AttackInputs, k: float | None = None) -> np.ndarray:
    """Scores of attack ``name`` (one per text; higher = member); ``k`` for the Min-K% family."""
    if name not in ATTACKS:
        raise MemlensError(f"unknown attack {name!r}; available: {', '.join(sorted(ATTACKS))}")
    attack = ATTACKS[name]
    missing = [n for n in sorted(attack.needs) if getattr(inputs, n) is None]
    if missing:
        raise MemlensError(f"attack {name!r} needs {', '.join(missing)}")
    if attack.takes_k != (k is not None):
        raise MemlensError(f"attack {name!r} {'needs' if attack.takes_k else 'takes no'} parameter k")
    scores = attack.fn(inputs, k) if attack.takes_k else attack.fn(inputs)
    return np.asarray(scores, dtype=np.float64)


def attack_labels(names: Sequence[str], ks: Sequence[float]) -> list[tuple[str, str, float | None]]:
    """``(label, name, k)`` for every configured attack; Min-K% family expands to one label per k."""
    out: list[tuple[str, str, float | None]] = []
    for n in names:
        if ATTACKS[n].takes_k:
            out += [(f"{n}@{k:g}", n, k) for k in ks]
        else:
            out.append((n, n, None))
    return out


from memlens.attacks import calibrated, likelihood, min_k, neighbours, references  # noqa: E402,F401  (registers the attacks)

__all__ = ["ATTACKS", "RUN_ONLY", "Attack", "AttackInputs", "attack_labels", "register", "run_attack", "run_only"]
