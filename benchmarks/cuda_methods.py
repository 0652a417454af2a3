"""Every fine-tuning method and attack family of memlens, end to end on one device: a sweep of 12 short trials.

    python benchmarks/cuda_methods.py [--device cuda] [--model PATH] [--dir FOLDER]

Meant for a GPU (device ``cuda``, bf16 by default): full, head, LoRA, IA3, prefix, prompt, P-tuning, LoRA with
gradient checkpointing, DP-SGD (LoRA with audit canaries; full), RMIA/LiRA with two reference models, full
fine-tuning with repeated canaries; extraction on. The model defaults to a 2-layer Llama built here from the test
suite's recipe (seconds per trial); ``--model smollm2-135m`` runs the real one. Prints each trial's status, seconds,
training tokens/s, device and dtype, the loss AUC and any error. ``--device cpu`` checks the script itself.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT

VARIANTS = [{"label": m, "method": m} for m in ("full", "head", "lora", "ia3", "prefix", "prompt", "ptuning")] + [
    {"label": "lora-ckpt", "method": "lora", "training.gradient_checkpointing": True},
    {"label": "lora-dp-audit", "method": "lora", "privacy.dp": True, "privacy.epsilon": 8.0, "privacy.audit": 40},
    {"label": "full-dp", "method": "full", "privacy.dp": True, "privacy.epsilon": 8.0},  # bf16 weights, fp32 masters
    {"label": "lora-lira", "method": "lora", "attacks.names": ["loss", "rmia", "lira"], "attacks.reference_models": 2},
    {
        "label": "full-canaries",
        "method": "full",
        "canaries.enabled": True,
        "canaries.n": 2,
        "canaries.repetitions": [1, 4],
        "canaries.n_candidates": 50,
    },
]


def spec(model: str, device: str) -> dict:
    base = {
        "model": {"name": model, "device": device},
        "data": {"source": "phee", "n_members": 48, "n_nonmembers": 48, "n_validation": 16, "max_tokens": 48},
        "tuning": {"method": "lora"},
        "training": {"epochs": 2, "lr": 3e-3, "batch_size": 8, "eval_every": 1},
        "attacks": {"names": ["loss", "reference", "zlib", "lowercase", "min_k", "min_k_plus"], "bootstrap": 200},
        "extraction": {"enabled": True, "n_texts": 16},
    }
    return {"name": f"methods-{device}", "base": base, "variants": VARIANTS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--model", help="model name or folder (default: a 2-layer test model built here)")
    ap.add_argument("--dir", type=Path, help="results store folder (default: a temporary one)")
    args = ap.parse_args()

    from memlens import progress
    from memlens.experiments.store import Store
    from memlens.experiments.sweep import expand, run_sweep

    work = Path(tempfile.mkdtemp(prefix="memlens-methods-"))
    model = args.model
    if model is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from helpers import build_tiny

        model = str(build_tiny(work / "tiny"))
    folder = args.dir or work / "store"
    t = time.perf_counter()
    with progress.quiet():
        counts = run_sweep(expand(spec(model, args.device), "benchmarks/cuda_methods.py"), folder)
    print(f"{', '.join(f'{v} {k}' for k, v in sorted(counts.items()))} in {time.perf_counter() - t:.0f} s")
    store = Store(folder, create=False)
    try:
        trials, results = store.trials(), store.results()
    finally:
        store.close()
    auc = results[(results["metric"] == "auc") & (results["attack"] == "loss")].sort_values("epoch")
    for r in trials.itertuples():
        line = f"{r.label:15s} {r.status:7s} {r.seconds or 0:6.1f} s"
        if r.info:
            tr, m = r.info["training"], r.info["model"]
            line += f"  {tr['tokens_per_second']:8.0f} train tokens/s  {m['device']} {m['dtype']}"
            line += f"  master weights {tr.get('master_weights') or '-'}"
        last = auc[auc["trial"] == r.id]
        if not last.empty:
            line += f"  loss AUC {last['value'].iloc[-1]:.3f}"
        print(line)
        if isinstance(r.error, str):
            print("   error:", r.error.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
