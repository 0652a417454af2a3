"""One run, end to end: data → pre-trained scores → fine-tune → fine-tuned scores → attacks → results.

The pre-trained model is scored once, before fine-tuning. Those statistics are both the "before" attack
results and the reference model of the Reference attack, so no second copy of the model is ever held.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from memlens import __version__, progress
from memlens.attacks import ATTACKS, AttackInputs, attack_labels, run_attack
from memlens.config import RunConfig
from memlens.data import load_splits
from memlens.errors import MemlensError
from memlens.metrics import evaluate
from memlens.scoring.stats import TokenStats


def run(cfg: RunConfig, *, write: bool = True) -> dict:
    """Run ``cfg``; return the results (the content of ``results.json``) and, if ``write``, save them."""
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out_dir = cfg.output_dir()
    if write:
        check_output_dir(out_dir, cfg.output.overwrite)

    def lap(key: str, t0: float) -> float:
        timings[key] = round(time.perf_counter() - t0, 2)
        return time.perf_counter()

    t = time.perf_counter()
    splits = load_splits(cfg.data)  # data errors surface before the heavy imports
    import torch

    from memlens.models import load_model
    from memlens.tuning import DEFAULT_LR, apply_method, train

    lm = load_model(cfg.model.name, device=cfg.model.device, dtype=cfg.model.dtype)
    model, tok = lm.model, lm.tokenizer
    texts = [x.text for x in splits.members + splits.nonmembers]
    n_mem = len(splits.members)
    inputs = encode_inputs(cfg, tok, texts, [x.text for x in splits.validation])
    t = lap("load", t)
    progress.info(
        f"{n_mem} members, {len(splits.nonmembers)} non-members, {len(splits.validation)} validation; "
        f"model {lm.info['spec']} ({lm.info['parameters'] / 1e6:.1f}M parameters) on {lm.info['device']}"
    )

    base = score_stage(model, inputs, cfg, lm.info["identity"], "pre-trained")
    t = lap("score_pretrained", t)

    torch.manual_seed(cfg.training.seed)
    model, tuning_info = apply_method(model, cfg.tuning)
    lr = cfg.training.lr or DEFAULT_LR[cfg.tuning.method]
    train_info = train(model, inputs["target"].ids[:n_mem], inputs["pad_id"], cfg.training, lr=lr)
    t = lap("train", t)

    tuned = score_stage(model, inputs, cfg, lm.info["identity"], "fine-tuned")
    t = lap("score_finetuned", t)

    records = stage_records(cfg, base, 0, reference=None, texts=texts, n_members=n_mem)
    records += stage_records(cfg, tuned, cfg.training.epochs, reference=base["target"], texts=texts, n_members=n_mem)
    t = lap("attacks", t)
    timings["total"] = round(time.perf_counter() - t_start, 2)

    results = {
        "memlens_version": __version__,
        "name": cfg.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": lm.info,
        "data": splits.info
        | {
            "truncated": inputs["target"].n_truncated + inputs["validation"].n_truncated,
            "max_tokens": cfg.data.max_tokens,
            "scored_tokens": int(base["target"].lengths.sum() + base["validation"].lengths.sum()),
        },
        "tuning": tuning_info,
        "training": train_info,
        "records": records,
        "timings": timings,
        "environment": environment(),
    }
    if write:
        save_run(out_dir, cfg, results, model if cfg.output.save_adapter else None)
        results["output_dir"] = str(out_dir)
    return results


def passes_needed(cfg: RunConfig) -> set[str]:
    """The extra scoring passes the configured attacks need (``lowercase``, ``recall``)."""
    return {n for a in cfg.attacks.names for n in ATTACKS[a].needs} & {"lowercase", "recall"}


def encode_inputs(cfg: RunConfig, tok, texts: list[str], validation: list[str]) -> dict:
    """Token ids of every pass: the texts, the validation set and, where needed, lower-cased texts and the
    ReCaLL prefix (the first ``recall_shots`` validation texts: non-members that are never scored as such)."""
    from memlens.tokens import encode

    out = {
        "pad_id": int(tok.pad_token_id),
        "target": encode(tok, texts, cfg.data.max_tokens),
        "validation": encode(tok, validation, cfg.data.max_tokens),
    }
    needed = passes_needed(cfg)
    if "lowercase" in needed:
        out["lowercase"] = encode(tok, [t.lower() for t in texts], cfg.data.max_tokens)
    if "recall" in needed:
        prefix = " ".join(validation[: cfg.attacks.recall_shots]) + " "
        out["recall_prefix"] = tok(prefix)["input_ids"]
    return out


def score_stage(model, inputs: dict, cfg: RunConfig, identity: str, label: str) -> dict[str, TokenStats]:
    """Every pass the attacks need, under ``model`` as it is now (cached on disk)."""
    from memlens.scoring import score_cached

    def score(ids, what: str, **kw) -> TokenStats:
        return score_cached(
            model,
            ids,
            inputs["pad_id"],
            identity=identity,
            batch_size=cfg.scoring.batch_size,
            use_cache=cfg.scoring.cache,
            desc=f"{what}, {label}",
            **kw,
        )[0]

    out = {
        "target": score(inputs["target"].ids, "scoring"),
        "validation": score(inputs["validation"].ids, "validation"),
    }
    if "lowercase" in inputs:
        out["lowercase"] = score(inputs["lowercase"].ids, "lower-cased")
    if "recall_prefix" in inputs:
        out["recall"] = score(inputs["target"].ids, "ReCaLL-prefixed", prefix=inputs["recall_prefix"])
    return out


def stage_records(
    cfg: RunConfig,
    stats: dict[str, TokenStats],
    epoch: int,
    *,
    reference: TokenStats | None,
    texts: list[str],
    n_members: int,
) -> list[dict]:
    """Tidy rows (epoch, attack, metric, value[, ci]) for every configured attack that can run, plus the
    validation perplexity."""
    inputs = AttackInputs(
        target=stats["target"],
        reference=reference,
        texts=texts,
        lowercase=stats.get("lowercase"),
        recall=stats.get("recall"),
    )
    rows: list[dict] = [
        {"epoch": epoch, "attack": None, "metric": "val_ppl", "value": stats["validation"].perplexity()}
    ]
    for label, name, k in attack_labels(cfg.attacks.names, cfg.attacks.k):
        if any(getattr(inputs, n) is None for n in ATTACKS[name].needs):
            continue  # e.g. Reference on the pre-trained model: it would compare the model with itself
        scores = run_attack(name, inputs, k)
        m = evaluate(
            scores[:n_members],
            scores[n_members:],
            fprs=cfg.attacks.fpr,
            n_boot=cfg.attacks.bootstrap,
            confidence=cfg.attacks.confidence,
            seed=cfg.attacks.seed,
        )
        base = {"epoch": epoch, "attack": label}
        rows.append(
            base
            | {
                "metric": "auc",
                "value": m["auc"],
                "ci_low": m.get("auc_ci_low"),
                "ci_high": m.get("auc_ci_high"),
                "n_members": m["n_members"],
                "n_nonmembers": m["n_nonmembers"],
                "n_nan": m["n_nan"],
            }
        )
        rows += [base | {"metric": k_, "value": v} for k_, v in m.items() if k_.startswith("tpr@")]
    return rows


def check_output_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise MemlensError(f"output path {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise MemlensError(f"output directory {out_dir} is not empty (choose another --out or pass --overwrite)")
    parent = out_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise MemlensError(f"cannot write to {parent}")


def save_run(out_dir: Path, cfg: RunConfig, results: dict, adapter_model=None) -> None:
    """Write ``results.json``, ``config.toml`` (and the adapter) into a temporary folder, then swap it in."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (tmp / "results.json").write_text(json.dumps(_finite(results), indent=2) + "\n")
        (tmp / "config.toml").write_text(cfg.to_toml())
        if adapter_model is not None:
            adapter_model.save_pretrained(tmp / "model", safe_serialization=True)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def environment() -> dict:
    import peft
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _finite(obj):
    """JSON has no NaN: write it as null."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        return _finite(obj.item())
    return obj
