"""Does memorization survive distillation? (after Zhang et al., "Membership and Memorization in LLM Knowledge
Distillation"). The fine-tuned model is the teacher; a student learns from it on a transfer set that holds none
of the teacher's members, and is then attacked on the teacher's members and non-members exactly as the teacher.

1. the teacher: the run's own fine-tune, measured as :func:`memlens.experiments.runner.run` measures it;
2. the transfer set (``[distillation] transfer``): unused texts of the members' split, the validation set, a
   file (any text equal to a member is dropped, and counted), or the teacher's own samples;
3. one student per objective, each from the same starting weights (:mod:`memlens.tuning.distill`), then every
   attack, the loss gap and extraction on the teacher's texts; its Reference attack uses the teacher's
   reference (the pre-trained model), so teacher and student are attacked alike;
4. the control (``control = true``): the same student trained on the same transfer texts with the plain LM
   loss and no teacher. Transfer texts drawn from the members' distribution raise the members' AUC by
   themselves when the members' and non-members' splits differ (PHEE's train and test do, a little): what a
   student inherits *from the teacher* is its AUC minus the control's;
5. paired ΔAUC student − teacher and student − control on the same texts (DeLong), and how membership and
   memorization agree: the rank correlation, over the members, of each attack's score with the extraction
   score.

``results.json``'s ``distillation`` holds the transfer set's counts (never text), each student's training and
comparisons, and the students' records (``role = "student"``, their ``objective``).
"""

from __future__ import annotations

import gc
from dataclasses import replace
from pathlib import Path

import numpy as np

from memlens import progress
from memlens.config import LOGIT_OBJECTIVES, RunConfig
from memlens.data import load_splits
from memlens.data.sources import Text, read_texts
from memlens.data.splits import Splits, overlap, sample, unused_texts
from memlens.errors import MemlensError
from memlens.experiments.runner import (
    Measured,
    effect_records,
    encode_inputs,
    extraction_records,
    flag_blind,
    frequency_corpus,
    kept_rows,
    measure,
    score_stage,
    stage_records,
    stage_scores,
    versus,
)
from memlens.records import Record
from memlens.tokens import encode_records, scored_texts, start_id

STUDENT_LR = 1e-4  # every student parameter is trained


def distilled(cfg: RunConfig, staging: Path | None) -> dict:
    """Fine-tune the teacher, distil each objective's student and measure it; returns the teacher's results
    with ``distillation`` filled in."""
    d = cfg.distillation
    assert d is not None and d.enabled
    splits = load_splits(cfg.data)
    transfer, transfer_info = transfer_texts(cfg, splits)  # a bad transfer source fails before any training
    teacher = measure(cfg, staging, keep_model=True)
    assert teacher.ids == [x.id for x in splits.members + splits.nonmembers]
    if transfer is None:  # the teacher's own samples
        transfer = teacher_samples(cfg, teacher, splits)
    info: dict = {
        "student": d.student,
        "transfer": transfer_info | {"texts": len(transfer)},
        "teacher_agreement": agreement(cfg, teacher),
        "students": [],
        "records": [],
    }
    runs = [*(["control"] if d.control and transfer_info["source"] != "generations" else []), *d.objectives]
    control = None
    for k, objective in enumerate(runs, 1):
        what = "the no-teacher control (LM loss on the transfer texts)" if objective == "control" else objective
        progress.info(f"distillation {k}/{len(runs)}: {what}, student {d.student}")
        texts = transfer
        if objective == "sequence" and transfer_info["source"] != "generations":
            texts = teacher_continuations(cfg, teacher, transfer)
        student, summary, records = distil_one(cfg, teacher, splits, texts, objective)
        summary["comparisons"] = versus(student, teacher, "teacher", cfg)
        if control is not None:
            summary["comparisons"] += versus(student, control, "no-teacher control", cfg)
        summary["agreement"] = agreement(cfg, student)
        if objective == "control":
            control, info["control"] = student, summary
        else:
            info["students"].append(summary)
        info["records"] += [r.to_dict() for r in records]
        del student
        gc.collect()
    teacher.results["distillation"] = info
    teacher.model = teacher.model if cfg.output.save_adapter else None
    return teacher.saved(cfg, staging)


def transfer_texts(cfg: RunConfig, splits: Splits) -> tuple[list[Text] | None, dict]:
    """The student's training texts (``None`` for ``generations``, made by the teacher later) and their counts.
    No text equal to a member (after whitespace normalisation) is ever returned."""
    d = cfg.distillation
    assert d is not None
    source = d.transfer
    if source == "generations":
        return None, {"source": source, "note": "the teacher's samples from the start token"}
    if source == "pool":
        texts = unused_texts(cfg.data, splits)
    elif source == "validation":
        texts = list(splits.validation)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise MemlensError(
                f"distillation.transfer {source!r} is neither pool, validation, generations nor an existing file"
            )
        texts = read_texts(path, cfg.data.text_field or "text")
        source = str(path)
    members = {y for _, y in overlap(splits.members, texts)}
    kept = [t for t in texts if t.id not in members and t.text.strip()]
    if not kept:
        raise MemlensError(f"distillation.transfer {source!r} holds no text that is not a member")
    picked = sample(kept, d.n_transfer, np.random.default_rng([cfg.data.seed, 0xD15]))
    return picked, {"source": source, "available": len(kept), "members_dropped": len(texts) - len(kept)}


def teacher_samples(cfg: RunConfig, teacher: Measured, splits: Splits) -> list[Text]:
    """``n_transfer`` texts the teacher samples (temperature 1) from its start token alone, as long as the
    validation texts (cycled): its own distribution, members' echoes included."""
    d = cfg.distillation
    assert d is not None
    tok = teacher.tokenizer
    start = start_id(tok)
    prompt = [start] if start is not None else list(tok("", add_special_tokens=True)["input_ids"])
    if not prompt:
        raise MemlensError("the teacher's tokenizer has no start token to sample from")
    lengths = [len(ids) for ids in encode_records(tok, splits.validation, cfg.data.max_tokens).ids]
    n = d.n_transfer or len(lengths)
    sizes = [max(1, lengths[i % len(lengths)] - len(prompt)) for i in range(n)]
    return _sampled_texts(cfg, teacher, [prompt] * n, sizes, "gen")


def teacher_continuations(cfg: RunConfig, teacher: Measured, texts: list[Text]) -> list[Text]:
    """Sequence-level KD's texts: the teacher's continuation (temperature 1) of each transfer text's first
    ``prompt_tokens`` tokens, as long as the text itself (texts too short to continue keep no prompt)."""
    d = cfg.distillation
    assert d is not None
    ids = encode_records(teacher.tokenizer, texts, cfg.data.max_tokens).ids
    usable = [s for s in ids if len(s) > d.prompt_tokens + 1]
    if not usable:
        raise MemlensError(f"no transfer text is longer than prompt_tokens = {d.prompt_tokens} tokens")
    prompts = [list(s[: d.prompt_tokens + 1]) for s in usable]  # the start token and the first prompt_tokens
    return _sampled_texts(cfg, teacher, prompts, [len(s) - d.prompt_tokens - 1 for s in usable], "seq")


def _sampled_texts(cfg: RunConfig, teacher: Measured, prompts, sizes, tag: str) -> list[Text]:
    from memlens.extraction import Decoding
    from memlens.extraction.generate import generate_suffixes

    tok = teacher.tokenizer
    new = generate_suffixes(
        teacher.model,
        tok,
        prompts,
        sizes,
        decoding=Decoding("sample"),
        batch_size=cfg.extraction.batch_size,
        seed=cfg.training.seed,
        desc="teacher generations",
    )
    texts = [tok.decode(p + s[0], skip_special_tokens=True).strip() for p, s in zip(prompts, new, strict=True)]
    return [Text(f"{tag}{i}", t) for i, t in enumerate(texts) if t]


def make_student(cfg: RunConfig):
    """The student as loaded (:class:`memlens.models.LoadedModel`), every parameter trainable."""
    from memlens.models import load_model
    from memlens.tuning.distill import half_depth

    d = cfg.distillation
    assert d is not None
    name = cfg.model.name if d.student in ("same", "half") else d.student
    lm = load_model(name, device=cfg.model.device, dtype=cfg.model.dtype)
    if d.student == "half":
        half_depth(lm.model)
    for p in lm.model.parameters():
        p.requires_grad_(True)
    return lm


def distil_one(
    cfg: RunConfig, teacher: Measured, splits: Splits, transfer: list[Text], objective: str
) -> tuple[Measured, dict, list[Record]]:
    """Train one student with ``objective`` on ``transfer`` and attack it on the teacher's texts: its measured
    scores (as a :class:`Measured`), a summary and its records (``role = "student"``)."""
    from memlens.tuning import train
    from memlens.tuning.distill import check_shared_vocabulary, kd_objective

    d = cfg.distillation
    assert d is not None
    lm = make_student(cfg)
    student, tok = lm.model, lm.tokenizer
    loss_fn = None
    if objective in LOGIT_OBJECTIVES:
        check_shared_vocabulary(teacher.tokenizer, tok, teacher.model, student, objective)
        loss_fn = kd_objective(teacher.model, objective=objective, temperature=d.temperature, alpha=d.alpha)
    corpus = splits.members + splits.nonmembers
    inputs = encode_inputs(cfg, tok, corpus, splits.validation, corpus=frequency_corpus(cfg, splits))
    scored = scored_texts(tok, [x.text for x in corpus], inputs.target)
    identity = lm.info["identity"]  # the weights' fingerprint tells students apart; "same" before KD: a cache hit
    label = f"student ({objective})"
    stats = score_stage(student, inputs, cfg, identity, f"{label}, before")
    before = stage_scores(cfg, stats, teacher.reference, scored, inputs)
    encoded = encode_records(tok, transfer, cfg.data.max_tokens)
    t = cfg.training
    training = t.model_copy(update={"epochs": d.epochs or t.epochs, "batch_size": d.batch_size or t.batch_size})
    trained = train(
        student, encoded.ids, inputs.pad_id, training, lr=d.lr or STUDENT_LR, starts=encoded.first, loss_fn=loss_fn
    )
    epoch = training.epochs
    stats = score_stage(student, inputs, cfg, identity, label)
    after = stage_scores(cfg, stats, teacher.reference, scored, inputs)
    keep, n_mem = teacher.keep, teacher.n_members
    n_eval = int(keep[:n_mem].sum())
    records = stage_records(
        cfg, kept_rows(after, keep), stats["validation"].perplexity(), epoch, n_eval, pretrained=kept_rows(before, keep)
    )
    records += effect_records(cfg, before["nll"][keep], after["nll"][keep], epoch, n_eval)
    extraction = extraction_records(cfg, student, tok, splits, None, epoch=epoch)
    records = flag_blind(records, _blind(teacher)) + extraction["records"]
    records = [replace(r, role="student", objective=objective) for r in records]
    after.update(extraction["per_text"])
    measured = Measured({}, {0: before, epoch: after}, teacher.ids, n_mem, keep)
    summary = {
        "objective": objective,
        "model": lm.info["spec"],
        "parameters": sum(p.numel() for p in student.parameters()),
        "epochs": trained["epochs"],
        "train_seconds": trained["train_seconds"],
        "train_tokens": trained["train_tokens"],
    }
    return measured, summary, records


def _blind(teacher: Measured) -> dict | None:
    row = next((r for r in teacher.results["records"] if r["kind"] == "blind"), None)
    return None if row is None else {"auc_ci_high": row["ci_high"]}


def agreement(cfg: RunConfig, m: Measured) -> list[dict]:
    """Membership vs memorization over the members: Spearman's ρ (with CI) of each attack's score after the last
    epoch against each extraction score (empty without extraction)."""
    import warnings

    from memlens.metrics import rank_correlation

    last = m.scores[max(m.scores)]
    members = m.keep[: m.n_members]
    out = []
    for e in [k for k in last if k.startswith("extraction")]:
        for label in [k for k in last if k != "nll" and not k.startswith("extraction")]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "not estimable" is reported in the row's note
                r = rank_correlation(
                    last[label][: m.n_members][members],
                    last[e][: m.n_members][members],
                    confidence=cfg.attacks.confidence,
                )
            out.append(
                {"attack": label, "extraction": e, "rho": r.rho, "ci_low": r.ci_low, "ci_high": r.ci_high}
                | {"n": r.n, "note": r.note}
            )
    return out
