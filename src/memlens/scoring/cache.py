"""On-disk cache of :class:`TokenStats`, so a model is never scored twice on the same texts.

The key combines a fingerprint of the weights (the model's identity plus a sample of every parameter, so a
changed adapter or fine-tuned weight gives a new key), the exact token ids scored (covering the tokenizer,
truncation and the texts), any prefix, whether adapters were disabled, dtype/device, and
:data:`SCORING_VERSION`, bumped whenever a change to the scoring code could change the statistics computed.
Files are ``.npz`` (no pickles) written atomically under ``$MEMLENS_CACHE/scores``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from memlens import progress
from memlens.files import atomic_path, cache_dir, describe_os_error, remove_stale
from memlens.scoring.stats import TokenStats

SCORING_VERSION = 3  # bump when scoring could compute different statistics for the same weights and ids
SAMPLE = 1024  # values hashed per parameter tensor, evenly strided, plus its exact float64 sum


def weights_fingerprint(model, identity: str = "") -> str:
    """A short hash that changes when any parameter changes (name, shape, strided sample and sum of each)."""
    import torch

    h = hashlib.sha256(identity.encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // SAMPLE)
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype}:{flat.double().sum().item():.17g}".encode())
            h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:24]


def cache_key(
    fingerprint: str,
    ids: Sequence[Sequence[int]],
    *,
    prefix: Sequence[int] = (),
    starts: Sequence[int] | None = None,
    extra: str = "",
) -> str:
    h = hashlib.sha256(f"v{SCORING_VERSION}|{fingerprint}|{extra}|{len(ids)}|".encode())
    h.update(np.asarray(list(prefix), dtype=np.int64).tobytes())
    if starts is not None and any(k != 1 for k in starts):  # the default (score from token 1) keeps old keys
        h.update(b"starts" + np.asarray(list(starts), dtype=np.int64).tobytes())
    for s in ids:
        h.update(np.asarray(s, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:32]


def scores_dir() -> Path:
    return cache_dir() / "scores"


def load(key: str) -> TokenStats | None:
    """The cached statistics, or ``None``; a damaged entry (empty, truncated, not an npz) is deleted with a
    warning so that it is recomputed, never trusted."""
    path = scores_dir() / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        return TokenStats.load(path)
    except Exception as err:  # BadZipFile, EOFError, ValueError, KeyError, OSError ...: any unreadable entry
        progress.info(f"warning: score cache entry {path.name} is damaged ({type(err).__name__}); recomputing it")
        path.unlink(missing_ok=True)
        return None


def store(key: str, stats: TokenStats) -> None:
    """Write an entry atomically (a reader never sees a part of one)."""
    global _swept, _unusable
    folder = scores_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not _swept:  # once per process: temp files of writers that were killed
            remove_stale(folder)
            _swept = True
        with atomic_path(folder / f"{key}.npz") as tmp:
            stats.save(tmp)
    except OSError as err:  # the cache only saves time: go on without it, and say so once
        if not _unusable:
            progress.warn(f"score cache {folder} cannot be written ({describe_os_error(err)}); scoring without it")
            _unusable = True


_swept = _unusable = False
