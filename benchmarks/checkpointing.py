"""Memory and time of gradient checkpointing (``training.gradient_checkpointing``) in memlens's training loop.

    python benchmarks/checkpointing.py [--n 64] [--batch-size 16] [--max-tokens 128] [--methods full lora]

Each (method, checkpointing) pair runs in a fresh process: load the model, apply the method, train one epoch
on the same PHEE texts. Prints the wall time of the epoch, the process's resident memory before training and
at its peak (``ru_maxrss``), and their difference — what training added: gradients, optimizer state and the
activations kept for the backward pass (what checkpointing cuts) — plus the loss of the epoch, which must
agree between the two.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from common import parser


def one(args) -> dict:
    """Run in the child: one epoch, measured."""
    import torch

    from memlens.config import DataConfig, TrainingConfig, TuningConfig
    from memlens.data.splits import load_splits
    from memlens.models import load_model
    from memlens.tokens import encode
    from memlens.tuning import apply_method, train

    splits = load_splits(DataConfig(dir=args.data_dir, n_members=args.n, n_nonmembers=0, n_validation=0))
    lm = load_model(args.model, device="cpu", dtype="float32")
    torch.manual_seed(0)
    model, _ = apply_method(lm.model, TuningConfig(method=args.method, dropout=0.0))
    enc = encode(lm.tokenizer, [t.text for t in splits.members], args.max_tokens)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cfg = TrainingConfig(epochs=1, batch_size=args.batch_size, seed=0, gradient_checkpointing=args.checkpointing)
    t = time.perf_counter()
    report = train(model, enc.ids, lm.tokenizer.pad_token_id, cfg, lr=1e-4 if args.method == "full" else 1e-3)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loss = report["epochs"][0]["train_loss"]
    return {"seconds": seconds, "before_mb": before / 1024, "peak_mb": peak / 1024, "loss": loss}


def main() -> None:
    ap = parser(__doc__, n=64, batch_size=16)
    ap.add_argument("--methods", nargs="+", default=["full", "lora"])
    ap.add_argument("--method", help=argparse.SUPPRESS)  # set in the child process
    ap.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.method:  # the child
        print(json.dumps(one(args)))
        return
    print(f"{args.model}, {args.n} texts, batch {args.batch_size}, ≤ {args.max_tokens} tokens, one epoch, CPU fp32")
    print(
        f"{'method':6s} {'checkpointing':>13s} {'epoch s':>8s} {'RSS before':>11s} {'peak':>8s} {'added':>8s} "
        f"{'loss':>7s}"
    )
    for method in args.methods:
        for ckpt in (False, True):
            cmd = [sys.executable, __file__, "--method", method, "--model", args.model, "--data-dir", args.data_dir]
            cmd += ["--n", str(args.n), "--batch-size", str(args.batch_size), "--max-tokens", str(args.max_tokens)]
            out = subprocess.run(
                cmd + (["--checkpointing"] if ckpt else []),
                capture_output=True,
                text=True,
                env=os.environ | {"MEMLENS_QUIET": "1"},
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            added = r["peak_mb"] - r["before_mb"]
            print(
                f"{method:6s} {ckpt!s:>13s} {r['seconds']:8.1f} {r['before_mb']:8.0f} MB {r['peak_mb']:5.0f} MB "
                f"{added:5.0f} MB {r['loss']:7.4f}"
            )


if __name__ == "__main__":
    main()
