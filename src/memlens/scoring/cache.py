"""On-disk cache of :class:`TokenStats`, so a model is never scored twice on the same texts.

The key combines a fingerprint of the weights (the model's identity plus a sample of every parameter, so a
changed adapter or fine-tuned weight gives a new key), the exact token ids scored (covering the tokenizer,
truncation and the texts), any prefix, whether adapters were disabled, and dtype/device.
Files are ``.npz`` (no pickles) written atomically under ``$MEMLENS_CACHE/scores``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from memlens.scoring.stats import TokenStats

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


def cache_key(fingerprint: str, ids: Sequence[Sequence[int]], *, prefix: Sequence[int] = (), extra: str = "") -> str:
    h = hashlib.sha256(f"{fingerprint}|{extra}|{len(ids)}|".encode())
    h.update(np.asarray(list(prefix), dtype=np.int64).tobytes())
    for s in ids:
        h.update(np.asarray(s, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:32]


def scores_dir() -> Path:
    from memlens.models.loading import cache_dir

    return cache_dir() / "scores"


def load(key: str) -> TokenStats | None:
    path = scores_dir() / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        return TokenStats.load(path)
    except (OSError, ValueError, KeyError):  # a damaged entry is recomputed, never trusted
        return None


def store(key: str, stats: TokenStats) -> None:
    folder = scores_dir()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.{os.getpid()}.npz"
    stats.save(tmp)
    os.replace(tmp, folder / f"{key}.npz")
