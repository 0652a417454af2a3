"""What the benchmark scripts share: their common command-line options."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parser(doc: str, *, n: int, batch_size: int) -> argparse.ArgumentParser:
    """Options every benchmark takes: model, data folder, number of texts, batch size, max tokens."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data-dir", default=os.environ.get("MEMLENS_DATA_DIR", str(ROOT.parent / "shared/data/phee")))
    ap.add_argument("--n", type=int, default=n, help="PHEE texts used")
    ap.add_argument("--batch-size", type=int, default=batch_size)
    ap.add_argument("--max-tokens", type=int, default=128)
    return ap


def matmul_peak(device: str, dtype) -> float:
    """Best of several large square matmuls, in FLOP/s."""
    import torch

    n = 4096 if device == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for _ in range(3):
        reps = 20 if device == "cuda" else 4
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t))
    return best


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
