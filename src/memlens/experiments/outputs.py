"""A run's results folder: checked before any work, written in a staging folder, moved into place at the end.

The rules that keep a user's files safe:
- the folder is checked (writable, empty, or memlens's own) before the model is loaded, so a run never
  fails at the end on something it could have seen at the start;
- everything is written into a hidden staging folder beside it and moved into place only when the run has
  finished; a failed or interrupted run removes its staging folder and any parent folders it created;
- ``overwrite`` replaces only a folder memlens wrote (it holds :data:`MARKER`, or a memlens
  ``results.json``) and nothing else: a folder holding any file memlens does not write is refused.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memlens import __version__
from memlens.errors import MemlensError
from memlens.files import describe_os_error, remove, remove_stale, temp_path

MARKER = ".memlens-run"
WRITTEN = {MARKER, "results.json", "config.toml", "scores.csv", "model", "checkpoints"}


def foreign_entries(folder: Path) -> list[str] | None:
    """Names in ``folder`` that memlens did not write; ``None`` when the folder is not a memlens run folder."""
    names = sorted(p.name for p in folder.iterdir())
    if MARKER not in names and not _memlens_results(folder / "results.json"):
        return None
    return [n for n in names if n not in WRITTEN]


def _memlens_results(path: Path) -> bool:
    try:
        return "memlens_version" in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def check_output_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse an output path memlens must not write: a file, or a non-empty folder that is not memlens's own
    (or is, without ``overwrite``)."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise MemlensError(f"output path {out_dir} exists and is not a folder")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    foreign = foreign_entries(out_dir)
    if foreign is None:
        raise MemlensError(
            f"output folder {out_dir} is not empty and was not written by memlens; --overwrite never replaces "
            "such a folder: choose another --out"
        )
    if foreign:
        shown = ", ".join(repr(n) for n in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise MemlensError(
            f"output folder {out_dir} holds {len(foreign)} file(s) memlens did not write ({shown}); "
            "--overwrite would delete them: move them away or choose another --out"
        )
    if not overwrite:
        raise MemlensError(f"output folder {out_dir} holds an earlier run (choose another --out or pass --overwrite)")


@dataclass
class Output:
    """The staging folder of a run in progress and what it created; :meth:`publish` or :meth:`discard`."""

    target: Path
    staging: Path
    created: list[Path] = field(default_factory=list)

    @classmethod
    def open(cls, out_dir: Path, overwrite: bool) -> Output:
        """Check ``out_dir`` and create its staging folder (and missing parents) now, before any work."""
        out_dir = Path(os.path.abspath(out_dir))
        check_output_dir(out_dir, overwrite)
        missing = [p for p in [*reversed(out_dir.parents)] if not p.exists()]
        out = cls(out_dir, temp_path(out_dir))
        try:
            for p in missing:
                p.mkdir()
                out.created.append(p)
            remove_stale(out_dir.parent, {out_dir.name, out_dir.name + ".old"})  # left by killed runs
            out.staging.mkdir()
            probe = out.staging / MARKER
            probe.write_text(json.dumps({"memlens_version": __version__}) + "\n")
        except OSError as err:
            out.discard()
            raise MemlensError(f"cannot write results to {out_dir}: {describe_os_error(err)}") from None
        return out

    def publish(self) -> Path:
        """Move the finished staging folder into place, replacing an earlier run of memlens's only now."""
        old = None
        if self.target.exists():
            old = temp_path(self.target.with_name(self.target.name + ".old"))
            os.replace(self.target, old)
        os.replace(self.staging, self.target)
        if old is not None:
            remove(old)
        return self.target

    def discard(self) -> None:
        """Remove the staging folder and the parent folders this run created (if still empty)."""
        remove(self.staging)
        for p in reversed(self.created):
            try:
                p.rmdir()
            except OSError:
                break


def save_trainable(model, folder: Path) -> None:
    """Save what trains: a peft adapter (with its config), else the trainable tensors as safetensors."""
    if hasattr(model, "peft_config"):
        model.save_pretrained(folder, safe_serialization=True)
        return
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(tensors, folder / "trainable.safetensors")


def write_outputs(
    staging: Path, config_toml: str, results: dict, ids: list[str], n_members: int, scores: dict, model=None
) -> None:
    """``results.json``, ``config.toml``, per-text ``scores.csv`` (ids, never text) and the model if asked."""
    import csv

    staging.mkdir(parents=True, exist_ok=True)
    (staging / "results.json").write_text(json.dumps(finite(results), indent=2) + "\n")
    (staging / "config.toml").write_text(config_toml)
    with (staging / "scores.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "member", "epoch", "attack", "score"])
        for epoch, per_attack in scores.items():
            for label, values in per_attack.items():
                w.writerows((ids[i], int(i < n_members), epoch, label, f"{v:.7g}") for i, v in enumerate(values))
    if model is not None:
        save_trainable(model, staging / "model")


def environment() -> dict:
    """Versions and hardware a result was measured with."""
    import peft
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def finite(obj):
    """JSON has no NaN: write it as null."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    if isinstance(obj, np.generic):
        return finite(obj.item())
    return obj
