"""What resuming an interrupted fine-tune costs, and whether it ends where an uninterrupted one does.

    python benchmarks/resume.py [--n 48] [--epochs 2] [--methods lora full]

For each method, three ``memlens run`` processes on the same config (score cache off): one uninterrupted;
one sent Ctrl-C (SIGINT) as soon as its state after epoch 1 is on disk; the same command again, which goes
on from there. Prints the wall time of each, the size of the saved state, the largest relative difference
between the resumed run's per-text scores (``scores.csv``, 7 significant digits) and the uninterrupted one's
(as ``memlens results verify`` measures it), and whether every record (value, CI, counts, flags; speeds left
out) of ``results.json`` is equal.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w
from common import parser


def config(args, method: str, out: Path) -> dict:
    return {
        "name": out.name,
        "model": {"name": args.model, "device": "cpu", "dtype": "float32"},
        "data": {
            "dir": args.data_dir,
            "n_members": args.n,
            "n_nonmembers": args.n,
            "n_validation": 16,
            "max_tokens": args.max_tokens,
        },
        "tuning": {"method": method},
        "training": {"epochs": args.epochs, "batch_size": args.batch_size},
        "scoring": {"cache": False},
        "attacks": {"bootstrap": 200},
        "output": {"dir": str(out)},
    }


def memlens_run(cfg_path: Path, *, stop_at: Path | None = None) -> tuple[float, int]:
    """Run ``memlens run``; with ``stop_at``, send SIGINT once that folder exists. Returns (seconds, exit code)."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "memlens", "run", str(cfg_path), "--quiet"]
    log = cfg_path.with_suffix(".log")
    with log.open("w") as err:
        # Ctrl-C's default action in the child even when this script runs in the background (`cmd &`), where
        # SIGINT is ignored and Python, inheriting that, would never raise KeyboardInterrupt
        default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=default_sigint)
        while stop_at is not None and proc.poll() is None and not stop_at.is_dir():
            time.sleep(0.2)
        if stop_at is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait()
    if proc.returncode not in (0, 130):
        sys.exit(f"memlens run failed:\n{log.read_text()}")
    return time.perf_counter() - t0, proc.returncode


def compare(a: Path, b: Path) -> tuple[float, bool]:
    """(largest relative Δ between two runs' per-text scores, as `memlens results verify` measures it, inf where
    a score is in one run only; whether all their records but speeds are equal)."""
    from memlens.experiments.verify import compare_records, compare_scores

    _, d_scores, unpaired = compare_scores(a / "scores.csv", b / "scores.csv")
    records = (json.loads((p / "results.json").read_text())["records"] for p in (a, b))
    _, d_records, unmatched, _ = compare_records(*records)
    return (float("inf") if unpaired else d_scores), d_records == 0 and unmatched == 0


def main() -> None:
    ap = parser(__doc__, n=48, batch_size=16)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=["lora", "full"])
    args = ap.parse_args()
    row = "{:<6} {:>8} {:>7} {:>9} {:>8} {:>14} {:>13}"
    print(row.format("method", "whole s", "cut s", "resumed s", "state MB", "max Δ scores", "records equal"))
    for method in args.methods:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            paths = {}
            for name in ("whole", "cut"):
                paths[name] = root / f"{name}.toml"
                paths[name].write_text(tomli_w.dumps(config(args, method, root / name)))
            whole, _ = memlens_run(paths["whole"])
            state = root / ".cut.resume"
            cut, code = memlens_run(paths["cut"], stop_at=state / "epoch-1")
            if code != 130:
                log = paths["cut"].with_suffix(".log").read_text()[-2000:]
                sys.exit(f"the run finished before it could be interrupted (more --n or --epochs?):\n{log}")
            size = sum(f.stat().st_size for f in state.rglob("*") if f.is_file()) / 1e6
            resumed, _ = memlens_run(paths["cut"])
            d_scores, equal = compare(root / "whole", root / "cut")
            numbers = [f"{x:.1f}" for x in (whole, cut, resumed, size)] + [f"{d_scores:.3g}", "yes" if equal else "NO"]
            print(row.format(method, *numbers), flush=True)


if __name__ == "__main__":
    main()
