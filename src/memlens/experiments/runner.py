"""One run, end to end: data → pre-trained scores → fine-tune → fine-tuned scores → attacks → results.

The pre-trained model is scored once, before fine-tuning. Those statistics are both the "before" attack
results and, by default, the reference model of the Reference attack, so no second copy of the model is ever
held (a different reference model, when configured, is scored before fine-tuning and released).
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
    """Run ``cfg``; return the results (the content of ``results.json``) and, if ``write``, save them.

    Everything is written into a hidden staging folder beside the output folder and moved into place only
    when the run has finished, so an interrupted run leaves no half-written results.
    """
    out_dir = cfg.output_dir()
    if write:
        check_output_dir(out_dir, cfg.output.overwrite)
    staging = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    try:
        results = _run(cfg, staging if write else None)
        if write:
            publish(staging, out_dir)
            results["output_dir"] = str(out_dir)
        return results
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _run(cfg: RunConfig, staging: Path | None) -> dict:
    t_start = time.perf_counter()
    timings: dict[str, float] = {"load": 0.0, "score_pretrained": 0.0, "train": 0.0, "score_finetuned": 0.0}
    t = time.perf_counter()
    splits = load_splits(cfg.data)  # data errors surface before the heavy imports
    import torch

    from memlens.models import load_model
    from memlens.tuning import DEFAULT_LR, METHODS, apply_method, train

    lm = load_model(cfg.model.name, device=cfg.model.device, dtype=cfg.model.dtype)
    model, tok = lm.model, lm.tokenizer
    texts = [x.text for x in splits.members + splits.nonmembers]
    n_mem = len(splits.members)
    inputs = encode_inputs(cfg, tok, texts, [x.text for x in splits.validation])
    timings["load"] = _since(t)
    progress.info(
        f"{n_mem} members, {len(splits.nonmembers)} non-members, {len(splits.validation)} validation; "
        f"model {lm.info['spec']} ({lm.info['parameters'] / 1e6:.1f}M parameters) on {lm.info['device']}"
    )
    t = time.perf_counter()
    audit, blind = split_checks(cfg, splits)
    timings["split_checks"] = _since(t)

    t = time.perf_counter()
    base = score_stage(model, inputs, cfg, lm.info["identity"], "pre-trained")
    reference, reference_info = base["target"], None
    if cfg.attacks.reference_model and "reference" in cfg.attacks.names:
        reference, reference_info = reference_model_stats(cfg, texts)
    scores = {0: stage_scores(cfg, base, reference if reference_info else None, texts)}
    records = stage_records(cfg, scores[0], base["validation"].perplexity(), 0, n_mem)
    timings["score_pretrained"] = _since(t)

    torch.manual_seed(cfg.training.seed)
    model, tuning_info = apply_method(model, cfg.tuning)
    tuning_info["prompt_based"] = METHODS[cfg.tuning.method].prompt_based
    lr = cfg.training.lr or DEFAULT_LR[cfg.tuning.method]
    eval_epochs = evaluation_epochs(cfg)

    def on_epoch_end(epoch: int) -> None:
        if epoch not in eval_epochs:
            return
        t0 = time.perf_counter()
        stats = score_stage(model, inputs, cfg, lm.info["identity"], f"epoch {epoch}")
        scores[epoch] = stage_scores(cfg, stats, reference, texts)
        records.extend(stage_records(cfg, scores[epoch], stats["validation"].perplexity(), epoch, n_mem))
        if staging is not None and cfg.training.save_checkpoints:
            save_trainable(model, staging / "checkpoints" / f"epoch-{epoch}")
        timings["score_finetuned"] += _since(t0)

    canary_set, train_ids = None, inputs["target"].ids[:n_mem]
    if cfg.canaries.enabled:
        from memlens.extraction import insert, make_canaries
        from memlens.tokens import encode

        c = cfg.canaries
        canary_set = make_canaries(c.n, seed=c.seed, kind=c.kind, repetitions=tuple(c.repetitions))
        planted = insert(splits.members, canary_set, seed=c.seed)
        train_ids = encode(tok, [x.text for x in planted], cfg.data.max_tokens).ids
    t = time.perf_counter()
    train_info = train(model, train_ids, inputs["pad_id"], cfg.training, lr=lr, on_epoch_end=on_epoch_end)
    timings["train"] = round(_since(t) - timings["score_finetuned"], 2)
    t = time.perf_counter()
    records += blind_records(records, blind)
    timings["attacks"] = _since(t)
    t = time.perf_counter()
    extraction = extraction_records(cfg, model, tok, splits, canary_set)
    records += extraction.pop("records")
    timings["extraction"] = _since(t)
    timings["total"] = _since(t_start)

    results = {
        "memlens_version": __version__,
        "name": cfg.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": lm.info,
        "reference_model": reference_info,
        "data": splits.info
        | {
            "truncated": inputs["target"].n_truncated + inputs["validation"].n_truncated,
            "max_tokens": cfg.data.max_tokens,
            "scored_tokens": int(base["target"].lengths.sum() + base["validation"].lengths.sum()),
        },
        "split_audit": audit,
        "extraction": extraction,
        "tuning": tuning_info,
        "training": train_info,
        "records": records,
        "timings": timings,
        "environment": environment(),
    }
    if staging is not None:
        ids = [x.id for x in splits.members + splits.nonmembers]
        write_outputs(staging, cfg, results, ids, n_mem, scores, model if cfg.output.save_adapter else None)
    return results


def extraction_records(cfg: RunConfig, model, tok, splits, canary_set) -> dict:
    """Extraction on members vs non-members (greedy and each temperature) and the canary report, as tidy rows
    (attack = decoding or ``canary xN``, metric = ``extraction_*`` / ``canary_*``) plus summaries."""
    from dataclasses import replace

    out: dict = {"records": []}
    epoch, e = cfg.training.epochs, cfg.extraction
    if e.enabled:
        from memlens.extraction import GREEDY, Decoding, extract

        rng = np.random.default_rng(cfg.data.seed)
        pick = {n: [x.text for x in _subset(getattr(splits, n), e.n_texts, rng)] for n in ("members", "nonmembers")}
        sampling = Decoding("sample", top_p=e.top_p, top_k=e.top_k, num_samples=e.num_samples)
        decodings = ([("greedy", GREEDY)] if e.greedy else []) + [
            (f"T={t:g}", replace(sampling, temperature=t)) for t in e.temperatures
        ]
        summaries = {}
        for label, dec in decodings:
            for name, texts in pick.items():
                res = extract(
                    model,
                    tok,
                    texts,
                    prefix=e.prefix if e.prefix < 1 else int(e.prefix),
                    decoding=dec,
                    max_tokens=cfg.data.max_tokens,
                    select=e.select,
                    batch_size=e.batch_size,
                    seed=cfg.training.seed,
                )
                summaries[f"{label}/{name}"] = res.summary
                out["records"] += [
                    {"epoch": epoch, "attack": f"extraction {label}", "metric": f"extraction_{m}_{name}", "value": v}
                    for m, v in res.summary.items()
                    if isinstance(v, float) and m != "seconds"
                ]
        out["summaries"] = summaries
    if canary_set is not None:
        from memlens.extraction import canary_report

        rows = canary_report(
            model,
            tok,
            canary_set,
            n_candidates=cfg.canaries.n_candidates,
            seed=cfg.canaries.seed,
            n_boot=cfg.attacks.bootstrap,
        )
        for r in rows:
            who = f"canary x{r['repetitions']}" if r["repetitions"] else "canary controls"
            out["records"] += [
                {
                    "epoch": epoch,
                    "attack": who,
                    "metric": "canary_auc",
                    "value": r["auc"],
                    "ci_low": r["auc_ci_low"],
                    "ci_high": r["auc_ci_high"],
                },
                {"epoch": epoch, "attack": who, "metric": "canary_extraction_rate", "value": r["extraction_rate"]},
                {"epoch": epoch, "attack": who, "metric": "canary_exposure", "value": r["mean_exposure"]},
            ]
        out["canaries"] = rows
    return out


def _subset(texts: list, n: int, rng: np.random.Generator) -> list:
    return texts if n >= len(texts) else [texts[i] for i in np.sort(rng.choice(len(texts), n, replace=False))]


def _since(t0: float) -> float:
    return round(time.perf_counter() - t0, 2)


def evaluation_epochs(cfg: RunConfig) -> set[int]:
    """Epochs after which memorization is measured (epoch 0, the pre-trained model, is always measured)."""
    e = cfg.training.epochs
    every = set(range(cfg.training.eval_every, e + 1, cfg.training.eval_every)) if cfg.training.eval_every else set()
    return (every | {x for x in cfg.training.eval_at if x <= e} | {e}) - {0}


def split_checks(cfg: RunConfig, splits) -> tuple[dict, dict | None]:
    """The split audit (duplicates within and across sets) and the model-free blind baseline."""
    from memlens.attacks.blind import blind_baseline
    from memlens.data.audit import find_duplicates

    sets = {"members": splits.members, "nonmembers": splits.nonmembers, "validation": splits.validation}
    audit = find_duplicates(sets).to_dict()
    blind = None
    if cfg.attacks.blind:
        try:
            blind = blind_baseline(
                [x.text for x in splits.members],
                [x.text for x in splits.nonmembers],
                n_boot=cfg.attacks.bootstrap,
                confidence=cfg.attacks.confidence,
                seed=cfg.attacks.seed,
            )
        except MemlensError as err:  # too few texts to cross-validate: say so, do not stop the run
            progress.info(f"blind baseline skipped: {err}")
    return audit, blind


def blind_records(records: list[dict], blind: dict | None) -> list[dict]:
    """The blind baseline's AUC row, and a ``beats_blind`` flag on every attack AUC row."""
    from memlens.attacks.blind import beats_blind

    if blind is None:
        return []
    for r in records:
        if r["metric"] == "auc" and r["attack"]:
            r["beats_blind"] = beats_blind(r["value"], blind)
    row = {
        "epoch": None,
        "attack": "blind",
        "metric": "auc",
        "value": blind["auc"],
        "ci_low": blind["auc_ci_low"],
        "ci_high": blind["auc_ci_high"],
        "n_members": blind["n_members"],
        "n_nonmembers": blind["n_nonmembers"],
    }
    return [row]


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


def reference_model_stats(cfg: RunConfig, texts: list[str]) -> tuple[TokenStats, dict]:
    """Statistics of ``texts`` under ``cfg.attacks.reference_model`` (its own tokenizer), and its info; the
    model is released before fine-tuning starts."""
    from memlens.models import load_model
    from memlens.scoring import score_cached
    from memlens.tokens import encode, ensure_pad_token

    ref = load_model(cfg.attacks.reference_model, device=cfg.model.device, dtype=cfg.model.dtype)
    stats, _ = score_cached(
        ref.model,
        encode(ref.tokenizer, texts, cfg.data.max_tokens).ids,
        ensure_pad_token(ref.tokenizer),
        identity=ref.info["identity"],
        batch_size=cfg.scoring.batch_size,
        use_cache=cfg.scoring.cache,
        desc="scoring, reference model",
    )
    return stats, ref.info


def stage_records(cfg: RunConfig, scores: dict, val_ppl: float, epoch: int, n_members: int) -> list[dict]:
    """Tidy rows (epoch, attack, metric, value[, ci]) from one stage's per-text scores, plus validation PPL."""
    rows: list[dict] = [{"epoch": epoch, "attack": None, "metric": "val_ppl", "value": val_ppl}]
    for label, values in scores.items():
        if label == "nll":
            continue
        m = evaluate(
            values[:n_members],
            values[n_members:],
            fprs=cfg.attacks.fpr,
            n_boot=cfg.attacks.bootstrap,
            confidence=cfg.attacks.confidence,
            seed=cfg.attacks.seed,
        )
        base = {"epoch": epoch, "attack": label}
        auc = {k: m.get(k) for k in ("n_members", "n_nonmembers", "n_nan")}
        rows.append(
            base
            | {"metric": "auc", "value": m["auc"], "ci_low": m.get("auc_ci_low"), "ci_high": m.get("auc_ci_high")}
            | auc
        )
        rows += [base | {"metric": k, "value": v} for k, v in m.items() if k.startswith("tpr@")]
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


def stage_scores(cfg: RunConfig, stats: dict[str, TokenStats], reference: TokenStats | None, texts) -> dict:
    """Per-text scores of every attack that can run at this stage (label -> array)."""
    inputs = AttackInputs(
        target=stats["target"],
        reference=reference,
        texts=texts,
        lowercase=stats.get("lowercase"),
        recall=stats.get("recall"),
    )
    out = {}
    for label, name, k in attack_labels(cfg.attacks.names, cfg.attacks.k):
        if all(getattr(inputs, n) is not None for n in ATTACKS[name].needs):
            out[label] = run_attack(name, inputs, k)
    out["nll"] = stats["target"].nll()
    return out


def save_trainable(model, folder: Path) -> None:
    """Save what trains: a peft adapter (with its config), else the trainable tensors as safetensors."""
    if hasattr(model, "peft_config"):
        model.save_pretrained(folder, safe_serialization=True)
        return
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(tensors, folder / "trainable.safetensors")


def write_outputs(
    staging: Path, cfg: RunConfig, results: dict, ids: list[str], n_members: int, scores: dict, model=None
) -> None:
    """``results.json``, ``config.toml``, per-text ``scores.csv`` (ids, never text) and the model if asked."""
    import csv

    staging.mkdir(parents=True, exist_ok=True)
    (staging / "results.json").write_text(json.dumps(_finite(results), indent=2) + "\n")
    (staging / "config.toml").write_text(cfg.to_toml())
    with (staging / "scores.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "member", "epoch", "attack", "score"])
        for epoch, per_attack in scores.items():
            for label, values in per_attack.items():
                w.writerows((ids[i], int(i < n_members), epoch, label, f"{v:.7g}") for i, v in enumerate(values))
    if model is not None:
        save_trainable(model, staging / "model")


def publish(staging: Path, out_dir: Path) -> None:
    """Move the finished staging folder into place (replacing an old output folder only now)."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)


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
