"""Resume an interrupted fine-tune from its last finished epoch.

A run (``memlens run``, a sweep's trial on the local backend) into a results folder ``OUT`` keeps, beside it
in ``.OUT.resume/epoch-N/``, what it had after each finished epoch: the training state
(:class:`memlens.tuning.train.TrainState`: trainable weights, AdamW's moments, the schedule and every RNG)
and what the epochs measured so far (per-text scores and records). Run again with the same config on the
same data and model (a killed sweep's trial is, automatically), it loads that, skips the finished epochs
and ends with the same numbers as a run that never stopped, bit for bit where training is deterministic (on
CPU). The folder is deleted once the results are published; a state saved for another config, data, model,
memlens or torch version is deleted, not used.

Written atomically (a folder per epoch, renamed into place; the older one removed after), as safetensors
and JSON: no pickle. It holds weights fine-tuned on the members and their per-text scores, never text.
Not with DP-SGD (its accountant and noise are not resumable), ``save_checkpoints`` (the earlier epochs'
checkpoints are not kept here), ``output.resume = false``, an output folder named with ``{time}``, nor for
DynamicCut's and distillation's fine-tunes. A trial on Ray keeps its state in a working folder of its node
(:func:`memlens.experiments.distributed.run_trial`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memlens import __version__, progress
from memlens.config import RunConfig
from memlens.experiments.outputs import finite, library_versions
from memlens.files import atomic_path, describe_os_error, remove, remove_stale
from memlens.records import Record, from_dict
from memlens.tuning.train import TrainState

_EPOCH = re.compile(r"^epoch-(\d+)$")
META, TRAINING, SCORES = "state.json", "training.safetensors", "scores.safetensors"
_OWNED: set[Path] = set()  # state folders this process wrote or resumed from (see :func:`kept`, :func:`drop`)


def resumable(cfg: RunConfig) -> bool:
    """Whether ``cfg``'s fine-tune keeps its state after each epoch (see the module's docstring): not with
    DP-SGD, ``save_checkpoints``, ``output.resume = false`` or a ``{time}`` folder (a rerun writes elsewhere)."""
    dp = cfg.privacy is not None and cfg.privacy.dp
    return cfg.output.resume and not dp and not cfg.training.save_checkpoints and "{time}" not in str(cfg.output.dir)


def fingerprint(cfg: RunConfig, model_identity: str, ids: Sequence[str], tokens: Sequence[Sequence[int]]) -> str:
    """What a saved state must match to be used: the config, the pre-trained weights (``model_identity``: their
    identity, device and dtype), the scored texts' ids and every token trained on or scored (so changed data or
    a changed model is never mixed in)."""
    h = hashlib.sha256(json.dumps([cfg.identity(), model_identity, list(ids)]).encode())
    for seq in tokens:
        h.update(np.asarray(seq, dtype=np.int64).tobytes() + b"|")
    return h.hexdigest()[:32]


def kept() -> list[Path]:
    """The state folders this process wrote or resumed from that still hold a state (an interrupted run's, to
    go on from)."""
    return sorted(p for p in _OWNED if p.is_dir() and _epochs(p))


def drop(folder: Path) -> None:
    """Delete ``folder`` if this process wrote or resumed from it (a failed run's own state; one it never used,
    e.g. when it failed before reaching it, is left for the next try)."""
    if folder in _OWNED:
        remove(folder)
        _OWNED.discard(folder)


@dataclass
class Saved:
    """A fine-tune's state after ``train.epoch`` epochs: training, per-text ``scores`` (epoch -> label ->
    (N,) array, as :class:`memlens.experiments.runner.Measured` holds them), ``records`` and ``subsets``."""

    train: TrainState
    scores: dict[int, dict[str, np.ndarray]]
    records: list[Record]
    subsets: list[Record]


def save(folder: Path, key: str, saved: Saved) -> None:
    """Write ``saved`` durably into ``folder/epoch-N`` (files synced, then the folder renamed into place), then
    remove the older epochs' states. ``key``: its :func:`fingerprint`. A failure to write is a warning: the run
    goes on, only its resumability is lost."""
    from safetensors import SafetensorError
    from safetensors.numpy import save_file as save_numpy
    from safetensors.torch import save_file as save_torch

    epoch = saved.train.epoch
    keys: list[list] = []
    arrays: dict[str, np.ndarray] = {}
    for e, by_label in sorted(saved.scores.items()):
        for label, arr in by_label.items():
            keys.append([e, label])
            arrays[f"s{len(arrays)}"] = np.ascontiguousarray(arr)
    try:
        meta = json.dumps(
            finite(  # numpy scalars (a count, a flag) as JSON numbers, as results.json has them
                {
                    "key": key,
                    "versions": _versions(),
                    "epoch": epoch,
                    "training": saved.train.meta,
                    "scores": keys,
                    "records": [r.to_dict() for r in saved.records],
                    "subsets": [r.to_dict() for r in saved.subsets],
                }
            )
        )
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / f"epoch-{epoch}") as tmp:
            tmp.mkdir()
            save_torch({k: v.contiguous() for k, v in saved.train.tensors.items()}, tmp / TRAINING)
            save_numpy(arrays, tmp / SCORES)
            (tmp / META).write_text(meta, encoding="utf-8")
            for f in (TRAINING, SCORES, META, ""):
                _fsync(tmp / f)
        _fsync(folder)
        _OWNED.add(folder)
        for old in _epochs(folder):
            if old[0] != epoch:
                remove(old[1])
    except (OSError, SafetensorError, TypeError, ValueError) as err:
        why = describe_os_error(err) if isinstance(err, OSError) else str(err)
        progress.warn(f"could not save the state after epoch {epoch} in {folder} ({why}): the run goes on")


def load(folder: Path, key: str, model) -> Saved | None:
    """The last state saved in ``folder`` with this ``key`` (:func:`fingerprint`) that fits ``model``'s
    trainable weights (:func:`memlens.tuning.train.check_state`), or ``None``: none saved, or one that cannot be
    used (another config, data, model, device or library version; unreadable; not fitting), which is then
    deleted with a line saying why."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file as load_numpy
    from safetensors.torch import load_file as load_torch

    from memlens.tuning.train import check_state

    if not folder.is_dir():
        return None
    try:
        remove_stale(folder)  # an epoch's state whose writer was killed mid-write
        found = _epochs(folder)
        if not found:
            remove(folder)
            return None
        epoch, path = found[-1]
        meta = json.loads((path / META).read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("state.json is not an object")
        if meta.get("key") != key or meta.get("versions") != _versions():
            why = "another config, data or model" if meta.get("key") != key else "another memlens or torch version"
            progress.info(f"{folder} holds the state of {why}: starting from epoch 0")
            remove(folder)
            return None
        tensors = load_torch(path / TRAINING)
        arrays = load_numpy(path / SCORES)
        scores: dict[int, dict[str, np.ndarray]] = {}
        for i, (e, label) in enumerate(meta["scores"]):
            scores.setdefault(int(e), {})[label] = arrays[f"s{i}"]
        saved = Saved(
            TrainState(epoch, tensors, meta["training"]),
            scores,
            [from_dict(r) for r in meta["records"]],
            [from_dict(r) for r in meta["subsets"]],
        )
        check_state(saved.train, model)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
        why = describe_os_error(err) if isinstance(err, OSError) else str(err)
        progress.warn(f"the state saved in {folder} cannot be used ({why}): starting from epoch 0")
        remove(folder)
        return None
    progress.info(f"resuming after epoch {epoch} (state saved in {folder})")
    _OWNED.add(folder)
    return saved


def _epochs(folder: Path) -> list[tuple[int, Path]]:
    """The finished epochs' state folders in ``folder``, oldest first."""
    found = [(int(m[1]), p) for p in folder.iterdir() if (m := _EPOCH.match(p.name)) and p.is_dir()]
    return sorted(found)


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _versions() -> dict[str, str]:
    """The versions whose change could change a resumed run's numbers."""
    return {"memlens": __version__} | library_versions()
