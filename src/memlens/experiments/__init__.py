"""Running configured experiments end to end."""

from memlens.experiments.runner import run

__all__ = ["run"]
