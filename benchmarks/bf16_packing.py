"""Half-precision scoring: how far apart packed and padded log-probabilities are, next to bf16's own noise.

    python benchmarks/bf16_packing.py [--n 32] [--batch-size 16] [--device cpu]

Scores ``--n`` PHEE training sentences with the pre-trained model (default SmolLM2-135M) four ways — float32
padded; bfloat16 padded at ``--batch-size``, packed, and padded one text per pass — and prints, for each pair,
the largest and the mean |Δ| of the per-token log-probabilities and of each text's mean. Packed texts that saw
each other would differ from padded far beyond the padded passes' spread over batch sizes; rounding does not.
bf16 on a CPU is slow (~1.5 min a pass for 32 texts here).
"""

from __future__ import annotations

import os
import sys
import time

from common import parser


def main() -> None:
    ap = parser(__doc__, n=32, batch_size=16)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    os.environ.setdefault("MEMLENS_DATA_DIR", args.data_dir)
    import numpy as np

    import memlens
    from memlens.data.sources import read_phee
    from memlens.scoring.engine import score_ids

    texts = [t.text for t in read_phee(args.data_dir, "train")[: args.n]]
    runs = {  # name -> (dtype, score_ids options)
        "float32 padded": ("float32", {"pack": False, "batch_size": args.batch_size}),
        "bfloat16 padded": ("bfloat16", {"pack": False, "batch_size": args.batch_size}),
        "bfloat16 packed": ("bfloat16", {"pack": True, "batch_size": args.batch_size, "_check": False}),
        "bfloat16 padded, one text a pass": ("bfloat16", {"pack": False, "batch_size": 1}),
    }
    logprob = {}  # name -> (N, T) per-token log-probabilities, NaN past each text
    loaded = {}
    for name, (dtype, options) in runs.items():
        if dtype not in loaded:
            loaded = {dtype: memlens.load_model(args.model, device=args.device, dtype=dtype)}
        lm = loaded[dtype]
        tok = lm.tokenizer
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        ids = [[start, *tok(t, add_special_tokens=False)["input_ids"][: args.max_tokens]] for t in texts]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        t0 = time.perf_counter()
        logprob[name] = np.asarray(score_ids(lm.model, ids, pad, **options).logprob, dtype=float)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    names = list(logprob)
    print(f"{args.model}, {len(texts)} PHEE texts, device {args.device}: |Δ log-prob| in nats")
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            token = np.abs(logprob[a] - logprob[b])
            text = np.abs(np.nanmean(logprob[a], axis=1) - np.nanmean(logprob[b], axis=1))
            print(
                f"{a:>32s} vs {b:<32s} per token: max {np.nanmax(token):.4f}, mean {np.nanmean(token):.4f}; "
                f"per text's mean: max {text.max():.4f}, mean {text.mean():.4f}"
            )


if __name__ == "__main__":
    main()
