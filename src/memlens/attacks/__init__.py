"""Step 4 of the pipeline: membership-inference attacks, registered in one place.

An attack is a pure function of cached per-token statistics (:class:`~memlens.scoring.TokenStats`) that
returns one score per text. Convention: a HIGHER score means "more likely a member".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from memlens.errors import MemlensError
from memlens.scoring.stats import TokenStats


@dataclass(frozen=True)
class AttackInputs:
    """What an attack may read: the target model's statistics, a reference model's, the raw texts."""

    target: TokenStats
    reference: TokenStats | None = None
    texts: Sequence[str] | None = None


@dataclass(frozen=True)
class Attack:
    name: str
    fn: Callable[[AttackInputs], np.ndarray]
    needs: frozenset[str]
    description: str


ATTACKS: dict[str, Attack] = {}


def register(name: str, *, needs: Sequence[str] = (), description: str = ""):
    """Decorator adding ``fn(inputs) -> scores`` to :data:`ATTACKS` under ``name``."""

    def add(fn: Callable[[AttackInputs], np.ndarray]) -> Callable[[AttackInputs], np.ndarray]:
        if name in ATTACKS:
            raise ValueError(f"attack {name!r} registered twice")
        ATTACKS[name] = Attack(name, fn, frozenset(needs), description or (fn.__doc__ or "").strip())
        return fn

    return add


def run_attack(name: str, inputs: AttackInputs) -> np.ndarray:
    """Scores of attack ``name`` (one per text; higher = member)."""
    if name not in ATTACKS:
        raise MemlensError(f"unknown attack {name!r}; available: {', '.join(sorted(ATTACKS))}")
    attack = ATTACKS[name]
    missing = [k for k in attack.needs if getattr(inputs, k) is None]
    if missing:
        raise MemlensError(f"attack {name!r} needs {', '.join(missing)}")
    return np.asarray(attack.fn(inputs), dtype=np.float64)


from memlens.attacks import likelihood  # noqa: E402,F401  (registers the attacks)

__all__ = ["ATTACKS", "Attack", "AttackInputs", "register", "run_attack"]
