"""A run's results folder: checked before any work, written in a staging folder, moved into place at the end.

The rules that keep a user's files safe:
- the folder is checked (writable, empty, or memlens's own) before the model is loaded, so a run never
  fails at the end on something it could have seen at the start;
- everything is written into a hidden staging folder beside it and moved into place only when the run has
  finished; a failed or interrupted run removes its staging folder and any parent folders it created
  (an interrupted fine-tune keeps its state, :mod:`memlens.experiments.resume`, and the folders holding it);
- ``overwrite`` replaces only a folder memlens wrote (it holds :data:`MARKER`, or a memlens
  ``results.json``) and nothing else: a folder holding any file memlens does not write is refused.
"""

from __future__ import annotations

import json
import os
import platform
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memlens import __version__, progress
from memlens.errors import MemlensError
from memlens.files import describe_os_error, lock, remove, remove_stale, temp_path

MARKER = ".memlens-run"
EXTRACTION = "extraction"  # scores.csv rows whose attack starts with this word hold per-text extraction scores


def extraction_label(decoding: str, metric: str) -> str:
    """The ``attack`` column of a text's extraction score in ``scores.csv``, e.g. ``extraction greedy ngram_share``."""
    return f"{EXTRACTION} {decoding} {metric}"


WRITTEN = {MARKER, "results.json", "config.toml", "scores.csv", "model", "checkpoints", "report"}


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
    try:
        _check_output_dir(out_dir, overwrite)
    except OSError as err:  # e.g. a name too long for the file system
        raise MemlensError(f"cannot write results to {out_dir}: {describe_os_error(err)}") from None


def _check_output_dir(out_dir: Path, overwrite: bool) -> None:
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
    """A run's output in progress: its staging folder, the parents it created and the lock that keeps a second
    run from writing to the same folder. End with :meth:`publish` or :meth:`discard`."""

    target: Path
    staging: Path
    overwrite: bool = False
    created: list[Path] = field(default_factory=list)
    _lock: ExitStack = field(default_factory=ExitStack)

    @classmethod
    def open(cls, out_dir: Path, overwrite: bool) -> Output:
        """Check ``out_dir``, lock it and create its staging folder (and missing parents) now, before any work."""
        out_dir = Path(os.path.abspath(out_dir))
        out = cls(out_dir, temp_path(out_dir), overwrite)
        try:
            for p in [p for p in reversed(out_dir.parents) if not p.exists()]:
                p.mkdir()
                out.created.append(p)
            busy = f"another memlens run is writing to {out_dir}; wait for it or choose another --out"
            out._lock.enter_context(lock(out_dir.with_name(f".{out_dir.name}.lock"), wait=False, busy=busy))
            _recover(out_dir)
            check_output_dir(out_dir, overwrite)
            out.staging.mkdir()
            (out.staging / MARKER).write_text(json.dumps({"memlens_version": __version__}) + "\n")
        except BaseException as err:
            out.discard()
            if isinstance(err, OSError):
                raise MemlensError(f"cannot write results to {out_dir}: {describe_os_error(err)}") from None
            raise
        return out

    def publish(self) -> Path:
        """Move the finished staging folder into place, replacing an earlier run of memlens's only now.

        The folder is checked again first: if a file appeared in it during the run (or a folder appeared
        where there was none, without ``overwrite``), nothing is replaced and the results go to a new
        folder beside it, with a warning. Finished results are never lost."""
        try:
            try:
                check_output_dir(self.target, self.overwrite)
            except MemlensError as why:
                return self._keep_aside(f"{why}")
            old = None
            if self.target.exists():
                old = temp_path(self.target.with_name(self.target.name + ".old"))
                os.replace(self.target, old)
            try:
                os.replace(self.staging, self.target)
            except OSError as err:
                if old is not None:
                    os.replace(old, self.target)
                return self._keep_aside(f"cannot replace {self.target}: {describe_os_error(err)}")
            if old is not None:
                remove(old)
            return self.target
        finally:
            self._lock.close()

    def _keep_aside(self, why: str) -> Path:
        """Move the finished results to a new folder beside the target and say so."""
        from datetime import datetime

        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        aside = self.target.with_name(f"{self.target.name}-{stamp}")
        n = 1
        while aside.exists():
            n += 1
            aside = self.target.with_name(f"{self.target.name}-{stamp}-{n}")
        try:
            os.replace(self.staging, aside)
        except OSError as err:
            raise MemlensError(
                f"{why}; and the results could not be moved beside it ({describe_os_error(err)}): they are in "
                f"{self.staging}"
            ) from None
        progress.warn(f"{why}; results written to {aside} instead")
        return aside

    def discard(self) -> None:
        """Remove the staging folder and the parent folders this run created (if still empty); unlock."""
        with suppress(OSError):
            remove(self.staging)
        self._lock.close()
        for p in reversed(self.created):
            try:
                p.rmdir()
            except OSError:
                break


def resume_folder(staging: Path) -> Path:
    """Where a run writing into ``staging`` (:attr:`Output.staging`, ``.NAME.tmpPID``) keeps its state after
    each epoch, so that the same run started again resumes: ``.NAME.resume`` beside its results folder."""
    return staging.with_name(staging.name.rsplit(".tmp", 1)[0] + ".resume")


def _recover(out_dir: Path) -> None:
    """Clean up after killed runs: remove their staging folders; an earlier run moved aside by a run killed
    while publishing is put back if nothing replaced it, and removed otherwise."""
    remove_stale(out_dir.parent, {out_dir.name})
    for old in remove_stale(out_dir.parent, {out_dir.name + ".old"}, delete=False):
        if out_dir.exists():
            remove(old)
        else:
            os.replace(old, out_dir)


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
    try:
        _write_outputs(staging, config_toml, results, ids, n_members, scores, model)
    except OSError as err:
        raise MemlensError(
            f"the run finished but its results could not be saved in {staging.parent}: {describe_os_error(err)} "
            "(its scores are cached, so a rerun after freeing space is faster)"
        ) from None


def _write_outputs(staging: Path, config_toml: str, results: dict, ids: list, n_members: int, scores: dict, model):
    import csv

    staging.mkdir(parents=True, exist_ok=True)
    (staging / "results.json").write_text(json.dumps(finite(results), indent=2) + "\n")
    (staging / "config.toml").write_text(config_toml)
    with (staging / "scores.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "member", "epoch", "attack", "score"])
        for epoch, per_attack in scores.items():
            for label, values in per_attack.items():
                rows = ((ids[i], int(i < n_members), epoch, label, f"{v:.7g}") for i, v in enumerate(values))
                w.writerows(r for r in rows if not (label.startswith(EXTRACTION) and r[-1] == "nan"))
    if model is not None:
        save_trainable(model, staging / "model")


def library_versions() -> dict[str, str]:
    """The torch, transformers and peft versions: the libraries whose change can change a run's numbers."""
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def environment() -> dict:
    """Versions and hardware a result was measured with."""
    import torch

    from memlens.scoring.engine import packing_verdicts

    return {
        "memlens": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        **library_versions(),
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packed_scoring": packing_verdicts(),  # the scoring path: packed rows or padded, per architecture/dtype
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
