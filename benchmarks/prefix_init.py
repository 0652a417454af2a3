"""Prefix tuning from random prefixes vs from a text: the damage at the start, and after training.

    python benchmarks/prefix_init.py [--n 48] [--train] [--lrs 1e-2,3e-3,1e-3] [--data phee]

Prints the validation perplexity of ``--n`` PHEE validation texts for the pre-trained model, with peft's random
prefixes and with ``prefix_init = "text"`` (the model's own keys and values over ``prompt_init_text``), before any
training. With ``--train``, also fine-tunes hou2025 ``small``'s prefix trial (250 members, 4 epochs, each
evaluated) once per initialisation and learning rate into a temporary results store, and prints each trial's
validation perplexity and loss AUC per epoch. On a CPU each trial takes 10–20 minutes; on one H100, under a
minute.
"""

from __future__ import annotations

import math
import tempfile

from common import parser


def at_init(model_name: str, data_dir: str, n: int, batch_size: int, max_tokens: int) -> None:
    """Validation perplexity of ``n`` texts: the pre-trained model, then with each kind of fresh prefixes."""
    import torch

    from memlens.config import TuningConfig
    from memlens.data import read_phee
    from memlens.models import load_model
    from memlens.scoring import score_ids
    from memlens.tokens import encode
    from memlens.tuning import apply_method

    for init in (None, "random", "text"):
        torch.manual_seed(0)
        lm = load_model(model_name)
        ids = encode(lm.tokenizer, [t.text for t in read_phee(data_dir, "dev")[:n]], max_tokens).ids
        model = lm.model
        if init is not None:
            model, _ = apply_method(model, TuningConfig(method="prefix", prefix_init=init), lm.tokenizer)
        stats = score_ids(model.eval(), ids, lm.tokenizer.pad_token_id, batch_size=batch_size)
        label = "pre-trained model" if init is None else f"prefix_init = {init!r}, before training"
        print(f"{label}: validation perplexity {stats.perplexity():,.1f} ({n} texts)")


def trained(model_name: str, data: str, lrs: list[float]) -> None:
    """hou2025 small's prefix trial per initialisation and learning rate; val PPL and loss AUC per epoch."""
    from memlens.experiments.presets import preset_spec
    from memlens.experiments.store import Store
    from memlens.experiments.sweep import expand, run_sweep

    spec = preset_spec("hou2025", "small", None, data)
    prefix = next(t for t in expand(spec).trials if t.label.startswith("prefix"))
    base = prefix.config.model_dump(mode="json", exclude_none=True)
    base.pop("output")
    base.pop("name")
    base["model"]["name"] = model_name
    sweep = expand({"name": "prefix-init", "base": base, "grid": {"tuning.prefix_init": ["random", "text"], "lr": lrs}})
    with tempfile.TemporaryDirectory() as folder:
        run_sweep(sweep, folder)
        df = Store(folder, create=False).results()
    for label, g in df.groupby("label", sort=False):
        ppl = g[g["metric"] == "val_ppl"].sort_values("epoch")["value"]
        auc = g[(g["metric"] == "auc") & (g["attack"] == "loss")].sort_values("epoch")["value"]
        print(
            f"{label}: validation perplexity by epoch {' → '.join(f'{v:,.1f}' for v in ppl)}; "
            f"loss AUC {' → '.join(f'{v:.3f}' for v in auc if not math.isnan(v))}"
        )


def main() -> None:
    ap = parser(__doc__, n=48, batch_size=16)
    ap.add_argument("--train", action="store_true", help="also fine-tune, once per initialisation and lr")
    ap.add_argument("--lrs", default="1e-2,3e-3,1e-3", help="learning rates of the --train trials")
    ap.add_argument("--data", default="phee", choices=["phee", "sotu"], help="the --train trials' dataset")
    args = ap.parse_args()
    at_init(args.model, args.data_dir, args.n, args.batch_size, args.max_tokens)
    if args.train:
        trained(args.model, args.data, [float(x) for x in args.lrs.split(",")])


if __name__ == "__main__":
    main()
