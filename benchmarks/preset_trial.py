"""One trial of a paper preset, timed stage by stage, and what the whole design would cost on this device.

    python benchmarks/preset_trial.py savine2025 --scale full [--trial 0] [--device cuda] [--dtype auto]

Runs trial N (0 = the first) of ``memlens reproduce PRESET --scale SCALE`` exactly as the preset builds it, with
the model's ``device`` and ``dtype`` as given (``auto``: bf16 on CUDA, fp32 on CPU), into a temporary folder.
Prints the trial's wall time, its stages (``timings`` in its results.json), training tokens/s, the loss AUC, and
the projection for the whole design: the trial's measured seconds over memlens's estimate for it, times
the estimates of every trial of the design (what ``reproduce --dry-run --pilot`` does with a finished pilot),
for one seed and for ``--seeds``. One trial stands for all: methods and models differ, so read it as a rough cost.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", choices=["savine2025", "hou2025"])
    ap.add_argument("--scale", default="full", choices=["tiny", "small", "full"])
    ap.add_argument("--trial", type=int, default=0, help="which trial of the design (0 = the first)")
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--data", default="phee", choices=["phee", "sotu"])
    ap.add_argument("--seeds", type=int, default=3, help="seeds the projection counts (each trial once per seed)")
    args = ap.parse_args()

    from memlens.config import with_overrides
    from memlens.experiments import run
    from memlens.experiments.presets import preset_spec
    from memlens.experiments.sweep import approx_parameters, estimate_seconds, expand

    spec = preset_spec(args.preset, args.scale, None, args.data)
    spec["base"]["model"] |= {"device": args.device, "dtype": args.dtype}
    sweep = expand(spec, "benchmarks/preset_trial.py")
    if not 0 <= args.trial < len(sweep.trials):
        raise SystemExit(f"--trial must be 0 … {len(sweep.trials) - 1} for {spec['name']}")
    trial = sweep.trials[args.trial]
    out = Path(tempfile.mkdtemp(prefix="memlens-preset-trial-")) / "trial"
    cfg = with_overrides(trial.config, {"output.dir": str(out), "output.resume": False})
    print(f"{spec['name']} trial {args.trial} of {len(sweep.trials)}: {trial.label} {json.dumps(trial.overrides)}")
    t0 = time.perf_counter()
    results = run(cfg)
    seconds = time.perf_counter() - t0

    model, training = results["model"], results["training"]
    print(f"wall {seconds:.1f} s on {model['device']} in {model['dtype']}")
    print("stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in results["timings"].items()))
    print(f"training: {training['tokens_per_second']:,.0f} tokens/s over {training['train_seconds']:.1f} s")
    auc = [r for r in results["records"] if (r["kind"], r["attack"], r["metric"]) == ("mia", "loss", "auc")]
    if auc:
        last = max(auc, key=lambda r: r["epoch"] or 0)
        ci = "" if last["ci_low"] is None else f" [{last['ci_low']:.3f}, {last['ci_high']:.3f}]"
        print(f"loss AUC after epoch {last['epoch']}: {last['value']:.3f}{ci}")

    def estimate(c) -> float | None:
        params = approx_parameters(c.model.name)
        return estimate_seconds(c, params) if params else None

    own = estimate(cfg)
    rest = [e for t in sweep.trials if (e := estimate(t.config)) is not None]
    if own and rest:
        ratio = seconds / own
        one_seed = ratio * sum(rest) * len(sweep.trials) / len(rest)
        print(
            f"measured / estimate for this trial: {ratio:.2f}; the design's {len(sweep.trials)} trials: "
            f"~{one_seed / 60:.0f} min for one seed, ~{one_seed * args.seeds / 3600:.1f} h for {args.seeds} seeds"
        )
    else:
        print("no estimate for this design here (unknown model or data size): no projection")


if __name__ == "__main__":
    main()
