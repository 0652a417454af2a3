"""Running configured experiments end to end."""

from __future__ import annotations

from memlens.config import RunConfig


def run(cfg: RunConfig, *, write: bool = True) -> dict:
    """Run ``cfg`` and return its results (see :func:`memlens.experiments.runner.run`): one fine-tune, or with
    ``[mitigation] method = "dynamiccut"`` the three of :mod:`memlens.experiments.mitigation`."""
    if cfg.mitigation is not None and cfg.mitigation.method == "dynamiccut":
        from memlens.experiments.mitigation import dynamic_cut
        from memlens.experiments.runner import published

        return published(cfg, dynamic_cut, write=write)
    from memlens.experiments.runner import run as run_once

    return run_once(cfg, write=write)


__all__ = ["run"]
