"""Benchmark of extraction generation: tokens/s of greedy and of sampling (N samples per prefix).

    python benchmarks/generation.py [--n 32] [--batch-size 16] [--samples 4] [--max-tokens 128]

Splits ``--n`` PHEE training sentences at their token midpoint and generates every suffix with the pre-trained
model (default SmolLM2-135M), batched and left-padded, through :func:`memlens.extraction.extract`. Prints per
decoding: generated tokens, seconds of generation, tokens/s and the extraction metrics (the pre-trained model
has never been fine-tuned on these texts, so they should be low); then the same greedy run one prompt at a time
on the first ``--single-n`` texts, for the batching speed-up.
"""

from __future__ import annotations

import os
import sys

from common import parser


def main() -> None:
    ap = parser(__doc__, n=32, batch_size=16)
    ap.add_argument("--samples", type=int, default=4, help="samples per prefix when sampling")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--single-n", type=int, default=8, help="texts for the one-at-a-time baseline (0 = skip)")
    args = ap.parse_args()

    import torch

    from memlens import progress
    from memlens.data import read_phee
    from memlens.extraction import GREEDY, Decoding, extract
    from memlens.models import load_model

    progress.set_enabled(False)
    lm = load_model(args.model)
    device = lm.info["device"]
    print(
        f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"device {device} ({torch.cuda.get_device_name(0) if device == 'cuda' else 'CPU'}), dtype {lm.model.dtype}"
    )
    texts = [t.text for t in read_phee(args.data_dir, "train")[: args.n]]
    extract(lm.model, lm.tokenizer, texts[:2], max_tokens=args.max_tokens)  # warm-up

    def report(label: str, decoding: Decoding, sample: list[str], batch_size: int) -> float:
        kw = {"decoding": decoding, "max_tokens": args.max_tokens, "batch_size": batch_size}
        s = extract(lm.model, lm.tokenizer, sample, **kw).summary
        print(
            f"{label:<34} {s['generated_tokens']:>6,} tokens in {s['seconds']:6.1f} s = {s['tokens_per_second']:7.1f} "
            f"tokens/s | exact {s['exact_match_rate']:.2f}, n-gram share {s['ngram_share']:.3f}, "
            f"ROUGE-L {s['rouge_l']:.3f}, BLEU {s['bleu']:.3f}"
        )
        return s["tokens_per_second"]

    print(f"{len(texts)} PHEE train texts split at the midpoint, batch size {args.batch_size} sequences")
    report("greedy", GREEDY, texts, args.batch_size)
    sampling = Decoding("sample", temperature=args.temperature, num_samples=args.samples)
    report(f"sampling T={args.temperature:g}, N={args.samples} (best of N)", sampling, texts, args.batch_size)
    if args.single_n:
        sample = texts[: args.single_n]
        batched = report(f"greedy, {len(sample)} texts, batched", GREEDY, sample, args.batch_size)
        single = report(f"greedy, {len(sample)} texts, one at a time", GREEDY, sample, 1)
        print(f"batching speed-up on {len(sample)} texts: {batched / single:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
