"""Audit a model fine-tuned elsewhere: no training, the same measurements as ``memlens run``.

The audited model is ``model.name`` — a full fine-tuned checkpoint (local folder, safetensors only, or a hub
id) — or that model with the peft adapter ``model.adapter`` loaded on it. Its "before" is:

- with an adapter: the same model with the adapter disabled (exactly the base it was trained from), which
  gives every attack's pre-fine-tuning AUC (epoch 0), the Reference attack's reference, the paired
  pre-trained control and the loss gap;
- otherwise ``attacks.reference_model`` when given (the Reference attack's R; a loss gap only where it
  tokenises every text as the audited model does, so that nats per token are on one scale);
- otherwise nothing: the Reference attack is skipped, and no loss gap.

Records use ``epoch = 0`` for the base model and ``epoch = 1`` for the audited one, so tables, reports and
comparisons read them as a one-epoch run. Split audit, blind baseline, distinct texts and extraction are as in
``memlens run``; canaries need training and are refused.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from memlens import progress
from memlens.config import RunConfig
from memlens.data import load_splits
from memlens.errors import MemlensError
from memlens.experiments.outputs import environment, write_outputs
from memlens.experiments.runner import (
    Stopwatch,
    data_info,
    distinct_rows,
    effect_records,
    encode_inputs,
    extraction_records,
    frequency_corpus,
    kept_rows,
    published,
    reference_model_stats,
    results_head,
    score_stage,
    split_checks,
    stage_records,
    stage_scores,
    with_blind,
)
from memlens.tokens import scored_texts

AUDITED = 1  # the epoch the audited model's records carry (0: its base)


def audit(cfg: RunConfig, *, write: bool = True) -> dict:
    """Audit ``cfg.model`` (and ``cfg.model.adapter``) on ``cfg.data``; return and, if ``write``, save the
    results (the same ``results.json``, ``scores.csv`` and ``config.toml`` as a run)."""
    if cfg.canaries.enabled:
        raise MemlensError("canaries are planted during training: an audit cannot have them (canaries.enabled)")
    return published(cfg, _audit, write=write)


def load_adapter(model, folder: Path, model_name: str):
    """``model`` with the peft adapter in ``folder`` (safetensors only), for inference; one clear error when
    the folder is not an adapter or the adapter does not fit the model."""
    if not (folder / "adapter_config.json").is_file():
        raise MemlensError(f"{folder} is not a peft adapter folder (no adapter_config.json)")
    if not (folder / "adapter_model.safetensors").is_file():
        raise MemlensError(f"{folder}: no adapter_model.safetensors (memlens loads safetensors only, never pickles)")
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        first = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise MemlensError(f"the adapter in {folder} does not fit model {model_name!r}: {first}") from None


def _audit(cfg: RunConfig, staging: Path | None) -> dict:
    from memlens.attacks import run_only

    if run_only(cfg.attacks.names):
        raise MemlensError(
            f"attack(s) {run_only(cfg.attacks.names)} need a fine-tune memlens runs itself (reference models trained "
            "with its recipe, its trainable parameters), which an audit of a fine-tune made elsewhere does not "
            "have: use memlens run, or other attacks here"
        )
    t_start = time.perf_counter()
    clock = Stopwatch(["load", "score_base", "score_audited"])
    with clock("load"):
        splits = load_splits(cfg.data)
        from memlens.models import load_model, model_placement

        lm = load_model(cfg.model.name, **model_placement(cfg))
        model, tok = lm.model, lm.tokenizer
        adapter = cfg.model.adapter
        if adapter is not None:
            model = load_adapter(model, adapter, cfg.model.name)
        corpus = splits.members + splits.nonmembers
        texts = [x.text for x in corpus]  # what is scored (a chat record's reply)
        n_mem = len(splits.members)
        inputs = encode_inputs(cfg, tok, corpus, splits.validation, corpus=frequency_corpus(cfg, splits))
        scored = scored_texts(tok, texts, inputs.target)
    progress.info(
        f"auditing {lm.info['spec']}{f' + adapter {adapter}' if adapter else ''}: {n_mem} members, "
        f"{len(splits.nonmembers)} non-members, {len(splits.validation)} validation"
    )
    with clock("split_checks"):
        split_audit, blind = split_checks(cfg, splits)
    identity = lm.info["identity"] + (f"|adapter={adapter}" if adapter else "")
    keep = distinct_rows(texts, n_mem) if cfg.attacks.distinct else np.ones(len(texts), bool)
    n_eval = int(keep[:n_mem].sum())
    scores, records = {}, []
    base, reference, reference_info = None, None, None
    with clock("score_base"):
        if adapter is not None:
            base = score_stage(model, inputs, cfg, identity, "base model", disable_adapters=True)
            reference = base["target"]
        if cfg.attacks.reference_model:
            reference, reference_info = reference_model_stats(cfg, corpus)
        if base is not None:
            scores[0] = stage_scores(cfg, base, reference if reference_info else None, scored, inputs)
            records += stage_records(cfg, kept_rows(scores[0], keep), base["validation"].perplexity(), 0, n_eval)
    with clock("score_audited"):
        after = score_stage(model, inputs, cfg, identity, "audited model")
        scores[AUDITED] = stage_scores(cfg, after, reference, scored, inputs)
        before = kept_rows(scores[0], keep) if base is not None else None
        now = kept_rows(scores[AUDITED], keep)
        records += stage_records(cfg, now, after["validation"].perplexity(), AUDITED, n_eval, pretrained=before)
    before_nll = _before_nll(base, reference, reference_info, after)
    if before_nll is not None:
        records += effect_records(cfg, before_nll[keep], now["nll"], AUDITED, n_eval)
    records = with_blind(records, blind)
    with clock("extraction"):
        extraction = extraction_records(cfg, model, tok, splits, None, epoch=AUDITED)
        records += extraction.pop("records")
        scores[AUDITED].update(extraction.pop("per_text"))
    clock.add("total", time.perf_counter() - t_start)
    notes = []
    if reference is None:
        notes.append("no base model or reference_model: the Reference attack and the loss gap are not measured")
    elif before_nll is None:
        notes.append("the reference model tokenises differently: no loss gap (nats per token on two scales)")
    tag = f".{getattr(model, 'active_adapter', 'default')}."  # peft names the adapter's tensors …lora_A.default.weight
    trainable = sum(p.numel() for n, p in model.named_parameters() if adapter is not None and tag in n)
    total = sum(p.numel() for p in model.parameters())
    results = results_head(cfg, lm.info, reference_info) | {
        "audit": {"adapter": str(adapter) if adapter else None, "epochs": "0 = the base model, 1 = the audited model"}
        | {"notes": notes},
        "data": data_info(cfg, splits, inputs, after, keep),
        "split_audit": split_audit,
        "extraction": extraction,
        "tuning": {
            "method": "audit",
            "adapter": str(adapter) if adapter else None,
            "trainable_parameters": trainable,
            "total_parameters": total,
            "trainable_share": trainable / total if total else 0.0,
        },
        "training": {"epochs": [{"epoch": AUDITED}]},
        "records": [r.to_dict() for r in records],
        "timings": dict(clock),
        "environment": environment(),
    }
    if staging is not None:
        ids = [x.id for x in splits.members + splits.nonmembers]
        write_outputs(staging, cfg.to_toml(), results, ids, n_mem, scores)
    return results


def _before_nll(base, reference, reference_info, after) -> np.ndarray | None:
    """Each text's loss before fine-tuning: the base model's, or a reference model's where it scored every text
    on as many tokens as the audited model (the same tokenisation, as far as lengths tell)."""
    if base is not None:
        return base["target"].nll()
    if reference_info is not None and np.array_equal(reference.lengths, after["target"].lengths):
        return reference.nll()
    return None
