"""The golden run: a tiny run touching every kind of result row (all attacks, blind baseline, extraction with
greedy and sampled decoding, canaries), whose results.json from before a refactor is kept in
``tests/data/golden-results.json``; ``test_golden.py`` checks that today's code gives the same numbers.

Regenerate only when numbers are meant to change: ``python tests/golden.py`` (and say why in the commit).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "data" / "golden-results.json"


def golden_config(tiny_dir: Path, out: Path) -> dict:
    from helpers import tiny_config

    return tiny_config(
        tiny_dir,
        out,
        name="golden",
        training={"epochs": 2, "eval_every": 1},
        attacks={
            "names": ["loss", "reference", "zlib", "lowercase", "min_k", "min_k_plus", "recall"],
            "k": [0.2, 0.5],
            "recall_shots": 2,
        },
        extraction={"enabled": True, "n_texts": 6, "prefix": 0.5, "temperatures": [0.7], "num_samples": 2},
        canaries={"enabled": True, "n": 1, "repetitions": [1, 3], "n_candidates": 40},
    )


def run_golden(tiny_dir: Path, out: Path) -> dict:
    from memlens.config import parse_config
    from memlens.experiments import run

    return run(parse_config(golden_config(tiny_dir, out)))


if __name__ == "__main__":
    import tempfile

    sys.path.insert(0, str(HERE))
    from helpers import build_tiny

    with tempfile.TemporaryDirectory() as d:
        results = run_golden(build_tiny(Path(d) / "tiny"), Path(d) / "out")
        text = (Path(d) / "out" / "results.json").read_text()
    GOLDEN.write_text(text)
    print(f"{GOLDEN}: {len(json.loads(text)['records'])} records")
