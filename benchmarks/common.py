"""What the benchmark scripts share: their common command-line options."""

from __future__ import annotations

import argparse
import os
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
