"""Which audit canaries a fine-tune learns from one copy: every kind of ``privacy.audit_canaries`` side by side.

    python benchmarks/audit_canaries.py [--config examples/audited-lora.toml] [--m 300] [--kinds ...]

One fine-tune with the config's recipe (default: the demo's LoRA, 4 epochs, no DP) on its members plus, for
every kind, ``m`` audit canaries of which about half are trained on (each kind its own seeded draw). Per kind:
the AUC (95% bootstrap CI) of the loss drop, trained canaries against the others, and the one-run audit's ε
lower bound (δ of the config, 95% confidence) with its ceiling at that ``m``. A kind whose canaries a model
learns from one copy separates them (AUC near 1) and can prove a large ε; a kind it barely learns cannot.
"""

from __future__ import annotations

import argparse

import numpy as np
from common import ROOT

KINDS = ("records", "words", "pool", "sentences")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "examples" / "audited-lora.toml"))
    ap.add_argument("--m", type=int, default=300, help="audit canaries of each kind")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    args = ap.parse_args()

    import torch

    from memlens.config import load_config
    from memlens.data.splits import audit_candidates, load_splits
    from memlens.extraction.epsilon import audit_canaries, one_run_audit
    from memlens.metrics import auc_ci, roc_auc
    from memlens.models import load_model, model_placement
    from memlens.scoring import score_texts
    from memlens.tokens import encode
    from memlens.tuning import DEFAULT_LR, apply_method, train

    cfg = load_config(args.config)
    splits = load_splits(cfg.data)
    seed = cfg.training.seed
    canaries = {
        kind: audit_canaries(args.m, seed=seed + i, kind=kind, texts=audit_candidates(kind, cfg.data, splits))
        for i, kind in enumerate(args.kinds)
    }
    audit = [t.text for texts, _ in canaries.values() for t in texts]
    trained = np.concatenate([flags for _, flags in canaries.values()])  # (kinds · m,) bool
    lm = load_model(cfg.model.name, **model_placement(cfg))
    model, tok, n = lm.model, lm.tokenizer, cfg.data.max_tokens
    before = score_texts(model, tok, audit, max_tokens=n, desc="audit canaries, pre-trained").nll()
    torch.manual_seed(seed)
    model, _ = apply_method(model, cfg.tuning)
    texts = [t.text for t in splits.members] + [t for t, k in zip(audit, trained, strict=True) if k]
    texts = [texts[i] for i in np.random.default_rng(seed).permutation(len(texts))]
    report = train(
        model,
        encode(tok, texts, n).ids,
        tok.pad_token_id,
        cfg.training,
        lr=cfg.training.lr or DEFAULT_LR[cfg.tuning.method],
    )
    drop = before - score_texts(model, tok, audit, max_tokens=n, desc="audit canaries, fine-tuned").nll()
    delta = cfg.privacy.delta if cfg.privacy is not None else 1e-5
    print(
        f"{cfg.model.name}, {cfg.tuning.method}, {cfg.training.epochs} epochs on {len(splits.members)} members + "
        f"{int(trained.sum())} trained audit canaries ({report['train_seconds']:.0f} s); {args.m} canaries a kind"
    )
    print(f"{'kind':10s} {'trained':>7s} {'AUC of the loss drop [95% CI]':>30s} {'ε ≥ (95%)':>10s} {'ceiling':>8s}")
    for i, kind in enumerate(canaries):
        rows = slice(i * args.m, (i + 1) * args.m)
        d, k = drop[rows], trained[rows]
        lo, hi = auc_ci(d[k], d[~k], seed=0)
        found = one_run_audit(d, k, delta=delta)
        print(
            f"{kind:10s} {int(k.sum()):7d} {roc_auc(d[k], d[~k]):12.3f} [{lo:.3f}, {hi:.3f}]"
            f" {found['epsilon_lower_bound']:10.2f} {found['ceiling']:8.2f}"
        )


if __name__ == "__main__":
    main()
