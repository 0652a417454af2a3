"""memlens: measure how much a fine-tuned language model memorizes of its fine-tuning data.

The Python API mirrors the CLI::

    import memlens
    cfg = memlens.builtin_config("demo")      # or memlens.load_config("run.toml")
    results = memlens.run(cfg)                # dict, also written to runs/<name>/results.json

Heavy modules (torch, transformers) load only when a function that needs them is called.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    "run": "memlens.experiments",
    "audit": "memlens.experiments.audit",
    "RunConfig": "memlens.config",
    "load_config": "memlens.config",
    "builtin_config": "memlens.config",
    "with_overrides": "memlens.config",
    "PrivacyConfig": "memlens.config",
    "DistillationConfig": "memlens.config",
    "kd_loss": "memlens.tuning.distill",
    "rank_correlation": "memlens.metrics",
    "load_model": "memlens.models",
    "load_splits": "memlens.data",
    "score_texts": "memlens.scoring",
    "TokenStats": "memlens.scoring",
    "ATTACKS": "memlens.attacks",
    "AttackInputs": "memlens.attacks",
    "run_attack": "memlens.attacks",
    "evaluate": "memlens.metrics",
    "Record": "memlens.records",
    "apply_method": "memlens.tuning",
    "train": "memlens.tuning",
    "one_run_audit": "memlens.extraction.epsilon",
    "MemlensError": "memlens.errors",
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'memlens' has no attribute {name!r}")
