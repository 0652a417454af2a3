"""Reference models for RMIA and LiRA: what each costs on this machine, and how the attacks grow with K.

    python benchmarks/references.py [--config examples/rmia-lira-lora.toml] [--k 1,2,4,8] [--epochs N]

Runs the config once with the largest K (the target's fine-tune and every reference model: each reference is a
fine-tune with the target's recipe on population texts, then one scoring pass), then recomputes RMIA and LiRA
with the first K references for every K asked, from the cache (no model is retrained: a reference's data do not
depend on K). Prints each reference's cost, and per K the AUC and the TPR at 1% and 0.1% FPR (95% CIs) of
RMIA and LiRA beside LOSS and Reference on the same target, and RMIA's tuned a.
"""

from __future__ import annotations

import argparse
import os
import time

from common import ROOT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "examples" / "rmia-lira-lora.toml"))
    ap.add_argument("--k", default="1,2,4,8", help="numbers of reference models, comma-separated")
    ap.add_argument("--epochs", type=int, help="override the config's training.epochs (target and references)")
    args = ap.parse_args()
    ks = sorted({int(k) for k in args.k.split(",")})

    import torch

    from memlens import progress
    from memlens.attacks import AttackInputs, run_attack
    from memlens.comparison import delong
    from memlens.config import load_config
    from memlens.data import load_splits
    from memlens.experiments.references import plan_population, reference_signals
    from memlens.experiments.runner import distinct_rows, encode_inputs, measure
    from memlens.metrics import evaluate
    from memlens.models import load_model
    from memlens.scoring import score_cached

    base = load_config(args.config)
    if args.epochs:
        base = base.model_copy(update={"training": base.training.model_copy(update={"epochs": args.epochs})})

    def with_k(k: int):
        return base.model_copy(update={"attacks": base.attacks.model_copy(update={"reference_models": k})})

    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    t0 = time.perf_counter()
    measured = measure(with_k(ks[-1]), None, keep_model=True)  # the target and every reference (or the cache)
    info = measured.results["reference_models"]
    print(f"one run with K = {ks[-1]}: {time.perf_counter() - t0:.0f} s")
    print(f"  target fine-tune: {measured.results['timings']['train']:.0f} s")
    for k, (s, hit) in enumerate(zip(info["seconds"], info["cached"], strict=True)):
        print(f"  reference model {k + 1}: {s:.0f} s{' (from the cache)' if hit else ' (fine-tune + scoring)'}")

    progress.set_enabled(False)
    cfg = with_k(ks[-1])
    splits = load_splits(cfg.data)
    pre = load_model(cfg.model.name, device=cfg.model.device, dtype=cfg.model.dtype)
    target, tok = measured.model, measured.tokenizer
    inputs = encode_inputs(cfg, tok, splits.members + splits.nonmembers, splits.validation)
    n_mem = len(splits.members)
    keep = distinct_rows([x.text for x in splits.members + splits.nonmembers], n_mem)  # as the run counts them
    n_eval = int(keep[:n_mem].sum())

    def stats(model, enc, identity):  # the scoring cache's entry of the run above: no forward pass
        return score_cached(model, enc.ids, inputs.pad_id, starts=enc.starts, identity=identity)[0]

    ident = pre.info["identity"]
    final = stats(target, inputs.target, ident)
    pretrained = stats(pre.model, inputs.target, ident)
    print("\nK  attack     AUC [95% CI]            TPR@1% FPR [95% CI]       TPR@0.1%  ΔAUC vs loss (paired)    RMIA a")
    for k in ks:
        ck = with_k(k)
        plan = plan_population(ck, splits, n_mem)
        signals, z, got = reference_signals(ck, plan, pre.model, tok, ident, inputs.target, inputs.pad_id)
        assert all(got["cached"]), "every reference should come from the run above"
        attack_in = AttackInputs(final, reference=pretrained, references=signals, population=stats(target, z, ident))
        loss = run_attack("loss", attack_in)[keep]
        for name in ("loss", "reference", "rmia", "lira"):
            s = run_attack(name, attack_in)[keep]
            d = delong(s, loss, n_eval) if name != "loss" else None
            paired = f"{d.diff:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}]" if d else "—"
            m = evaluate(s[:n_eval], s[n_eval:], fprs=[0.01, 0.001], n_boot=1000, seed=0)
            t1, t01 = m["tpr"][0.01], m["tpr"][0.001]
            low = "n/e" if t01.note else f"{100 * t01.tpr:.1f}%"
            print(
                f"{k:<2} {name:<10} {m['auc']:.3f} [{m['auc_ci_low']:.3f}, {m['auc_ci_high']:.3f}]   "
                f"{100 * t1.tpr:5.1f}% [{100 * t1.ci_low:.1f}, {100 * t1.ci_high:.1f}]      {low:<8}  {paired:<24} "
                f"{got['rmia_a'] if name == 'rmia' else ''}"
            )
    n_non = int(keep[n_mem:].sum())
    print(f"\n{n_eval} distinct members, {n_non} distinct non-members (TPR at 0.1% FPR needs ≥ 1000: n/e)")


if __name__ == "__main__":
    main()
