"""Training throughput of memlens vs a plain ``transformers.Trainer`` + ``peft`` loop.

    python benchmarks/training.py [--n 192] [--batch-size 16] [--methods lora full]

Same model (SmolLM2-135M unless --model), same PHEE texts, same batch size, learning rate, seed and one
epoch each. Prints real (non-padding) tokens per second, wall time and the share of padded slots in the
batches each one built. memlens groups texts of similar length; Trainer's default collator pads each random
batch to its longest text.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np
from common import parser


def padded_share(batches: list[list[int]]) -> float:
    real = sum(sum(b) for b in batches)
    slots = sum(max(b) * len(b) for b in batches)
    return 1 - real / slots


def run_trainer(model, tok, ids: list[list[int]], batch_size: int, lr: float, seed: int) -> tuple[float, float]:
    """Seconds for one epoch with Trainer + DataCollatorForLanguageModeling, and the padded share."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    data = [{"input_ids": s} for s in ids]
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=batch_size,
            num_train_epochs=1,
            learning_rate=lr,
            lr_scheduler_type="linear",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            seed=seed,
            logging_strategy="no",
            save_strategy="no",
            report_to=[],
            use_cpu=not _cuda(),
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        collator = DataCollatorForLanguageModeling(tok, mlm=False)
        trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collator)
        lengths = [[int(m.sum()) for m in b["attention_mask"]] for b in trainer.get_train_dataloader()]
        t = time.perf_counter()
        trainer.train()
        return time.perf_counter() - t, padded_share(lengths)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main() -> None:
    ap = parser(__doc__, n=192, batch_size=16)
    ap.add_argument("--methods", nargs="+", default=["lora", "full"])
    args = ap.parse_args()

    import torch

    from memlens import progress
    from memlens.config import TrainingConfig, TuningConfig
    from memlens.data import read_phee
    from memlens.models import load_model
    from memlens.tokens import encode
    from memlens.tuning import apply_method, train

    progress.set_enabled(False)
    texts = [t.text for t in read_phee(args.data_dir, "train")[: args.n]]
    print(
        f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{'CUDA ' + torch.cuda.get_device_name(0) if _cuda() else 'CPU'}; model {args.model}; "
        f"{len(texts)} PHEE texts, batch {args.batch_size}, 1 epoch"
    )
    for method in args.methods:
        tuning = TuningConfig(method=method, rank=8, alpha=16, targets=["q", "v"], dropout=0.05)
        lr = 1e-3 if method == "lora" else 3e-5
        results = {}
        for who in ("Trainer", "memlens"):
            lm = load_model(args.model)
            torch.manual_seed(0)
            model, info = apply_method(lm.model, tuning)
            ids = encode(lm.tokenizer, texts, args.max_tokens).ids
            real = sum(len(s) for s in ids)
            if who == "Trainer":
                seconds, pad = run_trainer(model, lm.tokenizer, ids, args.batch_size, lr, 0)
            else:
                t = time.perf_counter()
                rep = train(
                    model, ids, lm.tokenizer.pad_token_id, TrainingConfig(epochs=1, batch_size=args.batch_size), lr=lr
                )
                seconds, pad = time.perf_counter() - t, rep["padding_fraction"]
            results[who] = real / seconds
            print(
                f"  {method:5s} {who:8s}: {seconds:6.1f} s, {real / seconds:7.1f} tokens/s, "
                f"padding {100 * pad:4.1f}%, trainable {info['trainable_parameters']:,}"
            )
            del model, lm
        print(f"  {method:5s} memlens / Trainer: {results['memlens'] / results['Trainer']:.2f}x")
    assert np.isfinite(list(results.values())).all()


if __name__ == "__main__":
    sys.exit(main())
