"""findings.md: a preset's findings (:mod:`memlens.experiments.findings`) as Markdown — each published claim beside
memlens's paired tests on the study's measure and on the loss gap, the verdicts, where the two measures
disagree, and every trial's numbers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from memlens.experiments.findings import (
    ALPHA,
    N_BOOT,
    STUDY_ATTACK,
    Finding,
    Scores,
    evaluate_findings,
    family_sizes,
    findings_frame,
    load_scores,
)
from memlens.files import write_text
from memlens.report.summary import diverged_notes
from memlens.report.tables import md_text

if TYPE_CHECKING:
    import pandas as pd


def findings_markdown(name: str, store, command: str, *, evaluated: tuple[Scores, list[Finding]] | None = None) -> str:
    """The Markdown summary of a preset: each published finding beside memlens's paired tests on the study's
    measure and on the loss gap, the verdicts, where the two measures disagree, and every trial's numbers.
    ``evaluated``: the store's scores and evaluated findings, when the caller has them already."""
    if evaluated is None:
        scores = load_scores(store)
        evaluated = scores, evaluate_findings(name, scores)
    scores, findings = evaluated
    attack = STUDY_ATTACK[name]
    k = family_sizes(findings)
    share = "share" in k  # savine2025 with extraction: Study B's prefix-generation measure as a third column
    lines = [
        f"# {name}: published findings vs memlens",
        "",
        f"Command: `{command}`",
        "",
        *_interim(store),
        f"Data: {_dataset(scores)}.",
        "",
        f"| finding | published | {attack} AUC (the study's measure): measured here | verdict | "
        "loss gap: measured here | verdict |" + (" extraction share: measured here | verdict |" if share else ""),
        "|---|---|---|---|---|---|" + ("---|---|" if share else ""),
    ]
    for f in findings:
        cells = [md_text(c) for c in (f.title, f.published)]
        for m in ("auc", "gap", *(["share"] if share else [])):
            cells += [md_text(f.measured(m)), f"**{f.verdict(m)}**"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Every number is a difference between trials on the same {scores.n_members} members and "
        f"{scores.n_nonmembers} non-members: a paired bootstrap ({N_BOOT:,} replicates resample the texts once "
        f"for all trials{_seed_words(scores)}) gives its 95% CI and p-value. A finding **holds** when its "
        f"difference in the published direction has a Holm-adjusted p below {ALPHA} (over the "
        f"{_count(k['auc'], 'AUC comparison')} of this preset; the {_count(k['gap'], 'loss-gap comparison')} "
        f"{'are a family of their own' if k['gap'] != 1 else 'is a family of its own'}), is **reversed** when "
        "significant the other way, and is **inconclusive** otherwise. The loss gap is how much more fine-tuning "
        "lowered the members' mean token loss than the non-members' (nats/token; docs/methods.md)."
        + (
            f" The extraction share is Study B's prefix-generation measure: the extracted members' mean greedy share "
            f"of n-gram minus the non-members' ({_count(k['share'], 'comparison')}, a third family)."
            if share
            else ""
        ),
    ]
    notes = [f.note for f in findings if f.note] + disagreements(findings)
    notes += diverged_notes(store.results(), store.trials())
    lines += [""] + [f"- {md_text(n)}" for n in notes] if notes else []
    lines += power_section(findings, scores)
    lines += ["", *trial_table(store, attack)]
    lines += measured_section(store)
    return "\n".join(lines) + "\n"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def measured_section(store) -> list[str]:
    """Markdown: how the finished trials were measured, read from the store — their number and seeds, the time
    they took and when, the device and dtype, threads and CPUs, and the software versions (each as the set of
    values the trials had, "not recorded" among them where a trial lacks it, so a store filled by several
    machines or versions says so)."""
    import datetime

    trials = store.trials()
    done = trials[trials["status"] == "done"]
    if done.empty:
        return []

    def values(get, none: str = "not recorded") -> str:
        """Every value ``get(info)`` has among the trials (Markdown-escaped); ``none`` where it is None."""
        found = set()
        for info in done["info"]:
            try:
                v = get(info)
            except (KeyError, TypeError):  # this trial's info lacks it
                found.add("not recorded")
            else:
                found.add(none if v is None else md_text(v))
        return " / ".join(sorted(found))

    def when(t: float) -> str:
        return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M")

    def duration(minutes: float) -> str:
        if minutes >= 60:
            return f"{minutes / 60:.1f} h"
        return f"{minutes:.1f} min" if minutes >= 1 else f"{minutes * 60:.0f} s"

    seeds = sorted({int((c.get("training") or {}).get("seed", 0)) for c in done["config"]})
    minutes = done["seconds"].astype(float).dropna() / 60
    started, finished = done["started"].astype(float).dropna(), done["finished"].astype(float).dropna()
    resumed = sum(bool(((i or {}).get("training") or {}).get("resumed_after_epoch")) for i in done["info"])
    if len(minutes):
        which = "their own times" if len(minutes) == len(done) else f"the times of the {len(minutes)} that recorded one"
        took = (
            f"{which} add up to {duration(minutes.sum())} ({duration(minutes.min())} to {duration(minutes.max())} a "
            "trial, pauses of the process included"
        )
        if resumed:
            took += f"; {resumed} went on after an interruption: their times and dates count the last attempt"
        copied = [(i or {}).get("copied_from", {}).get("sweep") for i in done["info"]]
        if any(copied):
            sources = ", ".join(repr(n) for n in sorted({c for c in copied if c}))
            took += (
                f"; {sum(map(bool, copied))} copied from a run of the same configs in this folder (sweep {sources}): "
                "their times and dates are that run's"
            )
        took += ")"
    else:
        took = "their times were not recorded"
    if len(started) and len(finished):
        took += f", from {when(started.min())} to {when(finished.max())} UTC"
    env = lambda key: lambda i: i["environment"][key]  # noqa: E731
    device = lambda i: f"{i['model']['device']} {i['model']['dtype']}"  # noqa: E731
    return [
        "",
        "How it was measured (read from the results store):",
        "",
        f"- trials: {len(done)} finished, training seeds {', '.join(map(str, seeds))}; {took};",
        f"- device: {values(device)}; torch threads: "
        f"{values(env('torch_threads'))}; CPUs: {values(env('cpus'))}; GPU: {values(env('cuda'), 'none')};",
        f"- software: memlens {values(env('memlens'))}, torch {values(env('torch'))}, transformers "
        f"{values(env('transformers'))}, peft {values(env('peft'))}; platform {values(env('platform'))}.",
    ]


DATASETS = {
    "phee": "PHEE (pharmacovigilance sentences; the studies' own datasets cannot be fetched here)",
    "sotu": "SOTU (sentences of US State of the Union addresses since 1946, shipped with memlens)",
}


def _dataset(scores: Scores) -> str:
    sources = sorted({t.config.get("data", {}).get("source", "phee") for t in scores.trials})
    return ", ".join(DATASETS.get(s, f"the files of data.source = {s!r}") for s in sources) or "no finished trial"


def _interim(store) -> list[str]:
    """A warning paragraph while some of the store's trials are not finished (none when all are done)."""
    counts = store.counts()
    total, done, failed = sum(counts.values()), counts.get("done", 0), counts.get("failed", 0)
    lines = []
    if done + failed < total:
        rest = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()) if status != "done")
        lines.append(
            f"**Interim: {done} of {total} trials finished** ({rest}). A finding whose trials are not all finished "
            "reads from the seeds and configurations that are, and every number may change when the run completes."
        )
    elif failed:
        lines.append(
            f"{failed} of {total} trials failed (the report lists their errors); the findings that need them "
            "read from the trials that finished, or not measured."
        )
    return [*lines, ""] if lines else []


def _seed_words(scores: Scores) -> str:
    seeds = sorted({c.seeds for c in scores.configs})
    if not seeds:
        return ""
    if seeds == [1]:
        return "; one training seed per configuration, so the intervals do not cover training randomness"
    count = f"{seeds[0]} seeds" if len(seeds) == 1 else f"{', '.join(map(str, seeds[:-1]))} or {seeds[-1]} seeds"
    return f", and the training seeds of each configuration ({count})"


def power_section(findings: list[Finding], scores: Scores) -> list[str]:
    """Markdown: what this run can resolve — each tested difference's 95% CI half-width, the smallest
    difference it resolves with 80% power, and (AUC) the texts per set that would resolve 0.03."""
    from memlens.experiments.power import power_table

    size = (scores.n_members, scores.n_nonmembers)
    rows = [r for m in ("auc", "gap") for r in power_table(findings, size, size, measure=m)] if min(size) else []
    if not rows:
        return []
    lines = [
        "",
        f"What this run can resolve, at {size[0]} members and {size[1]} non-members: each difference's 95% CI "
        "half-width, the smallest difference it finds with 80% power (two-sided test at 0.05, before Holm; "
        "2.80 standard errors; Holm's adjustment asks for somewhat more) and, for an AUC difference, the texts "
        "per set (members = non-members) that would resolve 0.03 with 80% power — projected as 1/members + "
        "1/non-members; with several seeds the spread between seeds does not shrink with more texts, so a number "
        "above the texts used here is a lower bound. A real effect smaller than the resolvable one reads "
        "inconclusive more than one time in five.",
        "",
        "| finding | difference | measured | ± (95% CI) | resolvable with 80% power | texts per set for 0.03 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        unit = "" if r.measure == "auc" else " nats/token"
        needed = f"{r.needed:,}" if r.needed is not None and r.measure == "auc" else "—"
        if r.needed is not None and r.needed <= min(size) and r.measure == "auc":  # below this run's own size the
            needed = f"≤ {min(size):,} (resolved here)"  # 1/m + 1/n projection says nothing more
        detectable = f"{r.detectable:.3f}" if r.half_width > 0 else "—"  # a CI of zero width: saturated, no SE
        cells = [r.finding, f"{r.what} ({'AUC' if r.measure == 'auc' else 'loss gap'})", f"{r.diff:+.3f}{unit}",
                 f"{r.half_width:.3f}", detectable, needed]  # fmt: skip
        lines.append("| " + " | ".join(md_text(c) for c in cells) + " |")
    return lines


def disagreements(findings: list[Finding]) -> list[str]:
    """One sentence per finding tested on both measures whose verdicts differ."""
    out = []
    for f in findings:
        va, vg = f.verdict("auc"), f.verdict("gap")
        if not f.fixed and va != vg and "not measured" not in (va, vg):
            out.append(
                f"{f.key}: the two measures disagree — AUC: {va}, loss gap: {vg}. AUC measures how "
                "well the per-text loss drops separate members from non-members; the gap, how much more the members' "
                "loss fell on average."
            )
    return out


def trial_table(store, attack: str) -> list[str]:
    """Markdown rows: every finished trial's AUC of ``attack``, loss gap and non-members' drop at its last epoch."""
    df = store.results()
    df = df[df["epoch"].notna()]
    lines = [
        "At each trial's last epoch (95% bootstrap CIs):",
        "",
        f"| trial | {attack} AUC | loss gap, nats/token | non-members' loss drop | val PPL pre → post |",
        "|---|---|---|---|---|",
    ]
    for label, g in sorted(df.groupby("label"), key=lambda x: str(x[0])):
        last = int(g["epoch"].max())
        ppl = f"{_cell(g, 0, 'utility', 'val_ppl', digits=2)} → {_cell(g, last, 'utility', 'val_ppl', digits=2)}"
        row = [
            label,
            _cell(g, last, "mia", "auc", attack, ci=True),
            _cell(g, last, "effect", "loss_gap", ci=True),
            _cell(g, last, "effect", "nonmember_drop", ci=True),
            ppl,
        ]
        lines.append("| " + " | ".join(md_text(c) for c in row) + " |")
    return lines


def _cell(
    g: pd.DataFrame, epoch: int, kind: str, metric: str, attack: str | None = None, *, ci: bool = False, digits: int = 3
) -> str:
    """One record of a trial's rows as ``value [low, high]`` (or ``value``); ``—`` where it is missing."""
    r = g[(g["epoch"] == epoch) & (g["kind"] == kind) & (g["metric"] == metric)]
    if attack is not None:
        r = r[r["attack"] == attack]
    if r.empty or r["value"].isna().all():
        return "—"
    v = r.iloc[0]
    if ci and v["ci_low"] is not None and v["ci_low"] == v["ci_low"]:
        return f"{v['value']:.{digits}f} [{v['ci_low']:.{digits}f}, {v['ci_high']:.{digits}f}]"
    return f"{v['value']:.{digits}f}"


TRIAL_COLUMNS = [  # trials.csv: the privacy–utility frontier's numbers, one row per finished trial
    "trial", "label", "method", "targets", "rank", "trainable", "epoch", "auc", "ci_low", "ci_high", "auc0",
    "gap", "gap_low", "gap_high", "nonmember_drop", "val_ppl0", "val_ppl",
]  # fmt: skip


def write_findings(name: str, folder: Path, command: str, *, sweep: str | None = None) -> Path:
    """``findings.md`` in ``folder``, beside ``FOLDER-findings.csv`` (every tested difference with its CI,
    p-values and verdict: :func:`~memlens.experiments.findings.findings_frame`), ``FOLDER-trials.csv`` (each
    trial's AUC of the study's attack, loss gap, trainable parameters and validation perplexity) and
    ``FOLDER-frontier.svg`` (the privacy–utility frontier), named after the folder so that they can be
    published together. ``sweep``: the trials of that sweep only (default: every trial of the store); a sweep
    other than the first the store registered (e.g. a ``--set`` what-if run in the design's folder) writes
    ``findings-SWEEP.md`` and ``SWEEP-findings.csv`` …, so that the folder's own findings stay."""
    from memlens.experiments.store import Store, SweepView
    from memlens.report.data import load_report_data
    from memlens.report.plots import privacy_utility_frontier

    store = Store(folder, create=False)
    try:  # the findings first: the files below describe the same finished trials, even while a run goes on
        view = SweepView(store, sweep) if sweep is not None else store
        scores = load_scores(view)
        findings = evaluate_findings(name, scores)
        md = findings_markdown(name, view, command, evaluated=(scores, findings))
        first = store.db.execute("SELECT name FROM sweeps ORDER BY created, name LIMIT 1").fetchone()
    finally:
        store.close()
    own = sweep is None or first is None or first[0] == sweep  # the folder's own run
    stem = Path(folder).resolve().name if own else str(sweep)
    extra = [f"{stem}-findings.csv", f"{stem}-trials.csv"]
    write_text(folder / extra[0], findings_frame(findings, scores).to_csv(index=False))
    attack = STUDY_ATTACK[name]
    final = load_report_data(folder, attack=attack).final
    final = final[final["trial"].isin([t.id for t in scores.trials])]
    if sweep is not None:  # the trials' own labels, not the report's "sweep · label" of a folder with several
        final = final.assign(label=final["trial"].map({t.id: t.label for t in scores.trials}))
    write_text(folder / extra[1], final.reindex(columns=TRIAL_COLUMNS).to_csv(index=False))
    svg = privacy_utility_frontier(final, attack=attack)
    if svg is not None:
        extra.append(f"{stem}-frontier.svg")
        write_text(folder / extra[2], svg)
    parts = ["Every tested difference", "every trial's numbers", "the privacy–utility frontier"][: len(extra)]
    links = ", ".join(f"[{f}]({f})" for f in extra)
    what = ", ".join(parts[:-1]) + " and " + parts[-1]
    return write_text(folder / ("findings.md" if own else f"findings-{sweep}.md"), md + f"\n{what}: {links}.\n")
