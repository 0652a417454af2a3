"""Running configured experiments end to end."""

from __future__ import annotations

from memlens.config import RunConfig


def run(cfg: RunConfig, *, write: bool = True) -> dict:
    """Run ``cfg`` and return its results (see :func:`memlens.experiments.runner.run`): one fine-tune, or with
    ``[mitigation] method = "dynamiccut"`` the three of :mod:`memlens.experiments.mitigation`, or with
    ``[distillation]`` the teacher and its students (:mod:`memlens.experiments.distillation`)."""
    from memlens.experiments.runner import published

    if cfg.distillation is not None and cfg.distillation.enabled:
        from memlens.experiments.distillation import distilled

        return published(cfg, distilled, write=write)
    if cfg.mitigation is not None and cfg.mitigation.method == "dynamiccut":
        from memlens.experiments.mitigation import dynamic_cut

        return published(cfg, dynamic_cut, write=write)
    from memlens.experiments.runner import run as run_once

    return run_once(cfg, write=write)


__all__ = ["run"]
