"""Training throughput of memlens vs the peers' best settings: ``transformers.Trainer`` (default random batches,
and ``group_by_length=True``) and TRL's ``SFTTrainer`` with padding-free packing.

    python benchmarks/training.py [--n 192] [--batch-size 16] [--methods lora full] [--trainers ...]

Same model (SmolLM2-135M unless --model), same PHEE texts, learning rate, schedule (linear, no warm-up), seed
and one epoch each, about the same tokens per step (TRL's packed rows hold batch-size × the mean text length).
memlens runs twice: length-grouped padded batches (its default) and packed rows (``training.packing``).
Prints per trainer: wall time, real (non-padding) tokens per second, the padded share of the batch slots, the
mean token loss of the training texts after the epoch (scored the same way for every trainer, so a speed-up is
not bought with another computation), and the share of the machine's matmul peak (measured in the same run)
reached: (2 × forward FLOPs for adapters, 3 × for full fine-tuning) × real tokens ÷ time ÷ peak, forward FLOPs
= 2 × parameters per token.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np
from common import matmul_peak, parser, sync

TRAINERS = ("Trainer", "Trainer grouped", "TRL packed", "memlens", "memlens packed")


def padded_share(batches: list[list[int]]) -> float:
    real = sum(sum(b) for b in batches)
    slots = sum(max(b) * len(b) for b in batches)
    return 1 - real / slots


def _common_args(out: str, lr: float, seed: int) -> dict:
    return {
        "output_dir": out,
        "num_train_epochs": 1,
        "learning_rate": lr,
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "seed": seed,
        "logging_strategy": "no",
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": not _cuda(),
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }


def run_trainer(model, tok, ids, batch_size: int, lr: float, seed: int, *, grouped: bool) -> tuple[float, float]:
    """Seconds for one epoch with Trainer + DataCollatorForLanguageModeling (random batches, or length-grouped
    ones), and the padded share of the batches its sampler builds."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    data = [{"input_ids": s} for s in ids]
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            per_device_train_batch_size=batch_size,
            train_sampling_strategy="group_by_length" if grouped else "random",
            **_common_args(out, lr, seed),
        )
        collator = DataCollatorForLanguageModeling(tok, mlm=False)
        trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collator)
        lengths = [[int(m.sum()) for m in b["attention_mask"]] for b in trainer.get_train_dataloader()]
        t = time.perf_counter()
        trainer.train()
        return time.perf_counter() - t, padded_share(lengths)


def run_trl(model, tok, ids, batch_size: int, lr: float, seed: int) -> tuple[float, float]:
    """Seconds for one epoch with TRL's SFTTrainer, packing (best-fit decreasing) and padding-free batches: one
    row per step of batch_size × the mean text length tokens, position ids restarting at every text."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    row = round(float(np.mean([len(s) for s in ids])) * batch_size)
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            per_device_train_batch_size=1,
            packing=True,
            packing_strategy="bfd",
            padding_free=True,
            max_length=max(row, max(len(s) for s in ids)),
            bf16=_cuda(),  # SFTConfig defaults to bf16, ~150x slower than fp32 on this CPU; fp32 as the others
            gradient_checkpointing=False,  # SFTConfig's default is on; the others recompute nothing
            **_common_args(out, lr, seed),
        )
        data = Dataset.from_list([{"input_ids": s} for s in ids])
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
        t = time.perf_counter()
        trainer.train()
        return time.perf_counter() - t, 0.0  # padding-free: no padded slot


def shape_ceiling(model, rows: int, *, full: bool, device: str, dtype, peak: float) -> float:
    """The share of the matmul peak that the model's linear layers alone reach at a training step's shapes:
    ``rows`` = tokens a step, each layer's forward matmul, its input-gradient matmul and (``full``) its
    weight-gradient matmul, nothing else (no attention, softmax, norms or optimizer). A trainer's FLOP share
    cannot exceed it: the work it counts is these matmuls."""
    import torch

    shapes = [tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    w = [torch.randn(o, i, device=device, dtype=dtype) for o, i in shapes]
    x = {i: torch.randn(rows, i, device=device, dtype=dtype) for _, i in shapes}
    gy = {o: torch.randn(rows, o, device=device, dtype=dtype) for o, _ in shapes}
    flops = sum(2 * rows * o * i for o, i in shapes) * (3 if full else 2)
    best = float("inf")
    for _ in range(3):
        sync(device)
        t = time.perf_counter()
        for wt, (o, i) in zip(w, shapes, strict=True):
            x[i] @ wt.T  # forward
            gy[o] @ wt  # gradient of the input
            if full:
                gy[o].T @ x[i]  # gradient of the weight
        sync(device)
        best = min(best, time.perf_counter() - t)
    return flops / best / peak


def time_split(prof) -> str:
    """The profiled epoch's self time: matrix products (mm, addmm, bmm) against the rest, and their call count."""
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    mm = [e for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm")]
    share = sum(e.self_cpu_time_total for e in mm) / total
    calls = sum(e.count for e in mm)
    return f"profile: {100 * share:.0f}% of the time in matrix products ({calls} calls), {100 * (1 - share):.0f}% else"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main() -> None:
    ap = parser(__doc__, n=192, batch_size=16)
    ap.add_argument("--methods", nargs="+", default=["lora", "full"])
    ap.add_argument("--trainers", nargs="+", default=list(TRAINERS), choices=TRAINERS)
    ap.add_argument("--profile", action="store_true", help="also print where memlens's epoch spends its time")
    args = ap.parse_args()

    import torch

    from memlens import progress
    from memlens.config import TrainingConfig, TuningConfig
    from memlens.data import read_phee
    from memlens.models import load_model
    from memlens.scoring import score_ids
    from memlens.tokens import encode
    from memlens.tuning import apply_method, train

    progress.set_enabled(False)
    texts = [t.text for t in read_phee(args.data_dir, "train")[: args.n]]
    device, dtype = ("cuda", torch.bfloat16) if _cuda() else ("cpu", torch.float32)
    peaks = [matmul_peak(device, dtype)]
    print(
        f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{'CUDA ' + torch.cuda.get_device_name(0) if _cuda() else 'CPU'}; model {args.model}; "
        f"{len(texts)} PHEE texts, batch {args.batch_size}, 1 epoch; matmul peak {peaks[0] / 1e9:,.0f} GFLOP/s"
    )
    rows = []
    for method in args.methods:
        tuning = TuningConfig(method=method, rank=8, alpha=16, targets=["q", "v"], dropout=0.0)
        lr = 1e-3 if method == "lora" else 3e-5
        lm = load_model(args.model)
        step = round(
            args.batch_size * float(np.mean([len(s) for s in encode(lm.tokenizer, texts, args.max_tokens).ids]))
        )
        ceiling = shape_ceiling(lm.model, step, full=method == "full", device=device, dtype=dtype, peak=peaks[-1])
        print(
            f"  {method:5s} ceiling: the linear layers' matmuls alone at {step} tokens a step reach "
            f"{100 * ceiling:4.1f}% of the peak"
        )
        del lm
        for who in args.trainers:
            lm = load_model(args.model)
            torch.manual_seed(0)
            model, info = apply_method(lm.model, tuning)
            tok = lm.tokenizer
            ids = encode(tok, texts, args.max_tokens).ids
            real = sum(len(s) - 1 for s in ids)  # predicted tokens
            if who.startswith("Trainer"):
                seconds, pad = run_trainer(model, tok, ids, args.batch_size, lr, 0, grouped=who.endswith("grouped"))
            elif who == "TRL packed":
                seconds, pad = run_trl(model, tok, ids, args.batch_size, lr, 0)
            else:
                t = time.perf_counter()
                cfg = TrainingConfig(
                    epochs=1,
                    batch_size=args.batch_size,
                    lr=lr,
                    warmup_ratio=0.0,
                    seed=0,
                    packing=who.endswith("packed"),
                )
                if args.profile:
                    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                        rep = train(model, ids, tok.pad_token_id, cfg, lr=lr)
                else:
                    rep = train(model, ids, tok.pad_token_id, cfg, lr=lr)
                seconds, pad = time.perf_counter() - t, rep["padding_fraction"]
                if args.profile:
                    print(f"  {method:5s} " + time_split(prof))
            model.eval()
            loss = float(np.nanmean(score_ids(model, ids, tok.pad_token_id, batch_size=32).nll()))
            peaks.append(matmul_peak(device, dtype))
            flops = (3 if method == "full" else 2) * 2 * info["total_parameters"] * real / seconds
            share = flops / max(peaks[-2:])
            rows.append((method, who, seconds, real / seconds))
            print(
                f"  {method:5s} {who:15s}: {seconds:6.1f} s, {real / seconds:7.1f} tokens/s, "
                f"padding {100 * pad:4.1f}%, loss after 1 epoch {loss:.4f}, "
                f"{flops / 1e9:5.1f} GFLOP/s = {100 * share:4.1f}% of the peak"
            )
            del model, lm
        rate = {who: r for m, who, _, r in rows if m == method}
        for mine in [w for w in rate if w.startswith("memlens")]:
            others = [f"{mine} / {w}: {rate[mine] / r:.2f}x" for w, r in rate.items() if not w.startswith("memlens")]
            print("  " + ", ".join(others))
    assert np.isfinite([r[3] for r in rows]).all()


if __name__ == "__main__":
    sys.exit(main())
