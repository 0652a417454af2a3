"""The report's tables as plain data (headers, rows of cells), rendered by the page template (HTML, escaped) or
as Markdown (:meth:`Table.md`)."""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from memlens.report.data import is_missing, picker, show, value_of

if TYPE_CHECKING:
    import pandas as pd

    from memlens.experiments.findings import BaselineComparison

EXTRACTION_SKIP = {"prefix", "tokens_per_second"}  # settings and speed, not memorization
EXTRACTION_COLUMNS = {
    "exact_match_rate": "exact match",
    "longest_common_ngram": "longest common n-gram",
    "ngram_share": "n-gram share",
    "rouge_l": "ROUGE-L",
    "bleu": "BLEU",
}
CANARY_COLUMNS = {
    "canary_auc": "AUC vs controls [95% CI]",
    "canary_extraction_rate": "secrets extracted",
    "canary_exposure": "exposure (bits)",
    "canary_at_ceiling": "at sampling ceiling (extrapolated)",
}


GAP_NOTE = (
    "Loss gap: how much more fine-tuning lowered the members' mean token loss than the non-members' (nats/token; "
    "memorization as an effect size). The non-members' own drop is what it learned about the domain. AUC is "
    "scale-free and can rank trials differently (docs/methods.md)."
)


@dataclass(frozen=True)
class Cell:
    """A table cell; ``cls`` is a CSS class (``num`` right-aligns, ``warn`` / ``ok`` flag the verdict)."""

    text: str
    cls: str = ""

    def md(self) -> str:
        return md_text(self.text)


@dataclass(frozen=True)
class Table:
    """Headers and rows of cells, and footnotes; the page template renders it as HTML, :meth:`md` as Markdown."""

    headers: list[str]
    rows: list[list[Cell]]
    notes: tuple[str, ...] = ()

    def md(self) -> str:
        first = self.rows[0] if self.rows else [Cell("")] * len(self.headers)
        align = ["---:" if c.cls == "num" else "---" for c in first]
        lines = ["| " + " | ".join(md_text(h) for h in self.headers) + " |", "| " + " | ".join(align) + " |"]
        lines += ["| " + " | ".join(c.md() for c in row) + " |" for row in self.rows]
        lines += [f"\n{md_text(n)}" for n in self.notes]
        return "\n".join(lines)


def trials_table(trials: pd.DataFrame) -> Table:
    """Every trial: label, method, key parameters, trainable parameters and share, status, time."""
    rows = []
    for t in trials.itertuples():
        tuning, training = t.info.get("tuning", {}), t.info.get("training", {})
        lr = training.get("lr") or t.config["training"].get("lr")
        share = tuning.get("trainable_share")
        rows.append(
            [
                Cell(str(t.id), "num"),
                Cell(t.label, "label"),
                Cell(str(t.method)),
                Cell(" ".join(f"{k}={show(v)}" for k, v in t.params.items() if v is not None) or "—"),
                Cell(str(t.config["training"].get("epochs")), "num"),
                Cell("default" if lr is None else f"{lr:g}", "num"),
                Cell(_int(tuning.get("trainable_parameters")), "num"),
                Cell("—" if share is None else f"{100 * share:.2f}%", "num"),
                Cell(str(t.status), {"done": "ok", "failed": "warn"}.get(t.status, "")),
                Cell("—" if is_missing(t.seconds) else f"{t.seconds:.0f} s", "num"),
            ]
        )
    headers = ["#", "trial", "method", "settings", "epochs", "lr", "trainable", "share", "status", "time"]
    return Table(headers, rows)


EPSILON_NOTE = (
    "ε spent: what the DP-SGD accountant reports at the run's δ (— without DP); audited ≥: the one-run audit's "
    "lower bound from the audit canaries (— without them). A bound above the spent ε would be a bug."
)


def headline_table(final: pd.DataFrame, attack: str) -> Table:
    """The headline attack per trial at its final epoch, beside chance, the blind baseline and epoch 0."""
    rows = [
        [
            Cell(r["label"], "label"),
            Cell(str(r["epoch"]), "num"),
            Cell(_auc(r["auc"], r["ci_low"], r["ci_high"]), "num"),
            _tpr_cell(r["tpr"], r["tpr_note"]),
            Cell(_auc(r["auc0"]), "num"),
            Cell(_auc(r["blind"], r["blind_low"], r["blind_high"]), "num"),
            _verdict(r["beats_blind"]),
            Cell(_auc(r["gap"], r["gap_low"], r["gap_high"]), "num"),
            Cell(_auc(r["nonmember_drop"], r["nonmember_low"], r["nonmember_high"]), "num"),
            Cell(f"{_f(r['val_ppl0'], 2)} → {_f(r['val_ppl'], 2)}", "num"),
        ]
        for r in final.to_dict("records")
    ]
    headers = [
        "trial",
        "epoch",
        f"{attack} AUC [95% CI]",
        "TPR @ 1% FPR",
        "AUC pre-trained",
        "blind AUC [95% CI]",
        "beats blind?",
        "loss gap, nats/token [95% CI]",
        "non-members' loss drop [95% CI]",
        "val PPL pre → post",
    ]
    notes = (*_tpr_notes(r["tpr_note"] for r in final.to_dict("records")), GAP_NOTE)
    if {"epsilon", "epsilon_audit"} <= set(final) and final[["epsilon", "epsilon_audit"]].notna().any().any():
        headers.append("ε spent (DP) / audited ≥")
        for row, r in zip(rows, final.to_dict("records"), strict=True):
            row.append(Cell(f"{_f(r['epsilon'], 2)} / {_f(r['epsilon_audit'], 2)}", "num"))
        notes = (*notes, EPSILON_NOTE)
    return Table(headers, rows, notes)


def _tpr_cell(value: float | None, note: str | None, lo: float | None = None, hi: float | None = None) -> Cell:
    """A TPR (with its CI where given), or "— *" where it is not estimable (the footnote says why)."""
    if isinstance(note, str) and note:
        return Cell("— *", "num")
    if is_missing(lo) or is_missing(hi) or is_missing(value):
        return Cell(_pct(value), "num")
    return Cell(f"{_pct(value)} [{_pct(lo)}, {_pct(hi)}]", "num")


def _tpr_notes(notes) -> tuple[str, ...]:
    """Footnotes for TPRs that are not estimable: ``notes`` holds notes, or ``(fpr, note)`` pairs (default 1%)."""
    pairs = {n if isinstance(n, tuple) else (0.01, n) for n in notes}
    return tuple(f"* TPR @ {100 * f:g}% FPR {n}" for f, n in sorted(p for p in pairs if isinstance(p[1], str) and p[1]))


def comparison_table(comparisons: BaselineComparison | None, attack: str) -> Table | None:
    """Each trial against the first (the baseline), paired over the same texts: ΔAUC and Δ loss gap with 95%
    CIs, Holm-adjusted p-values and verdicts (None when there is nothing to compare)."""
    if not comparisons:
        return None
    rows = []
    for trial, checks in comparisons.rows:
        cells = [Cell(trial.label, "label")]
        for m in ("auc", "gap"):
            c = checks.get(m)
            if c is None:
                cells += [Cell("—", "num"), Cell("—", "num"), Cell("—")]
                continue
            d = c.difference
            cells += [
                Cell(f"{d.diff:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}]", "num"),
                Cell(f"{c.p_holm:.3g}", "num"),
                _difference_verdict(c.verdict, d.diff),
            ]
        rows.append(cells)
    headers = [
        "trial",
        f"Δ {attack} AUC [95% CI]",
        "p (Holm)",
        "AUC verdict",
        "Δ loss gap, nats/token [95% CI]",
        "p (Holm)",
        "gap verdict",
    ]
    note = (
        f"Differences are trial − {comparisons.baseline.label} (the baseline), each at its "
        "final epoch, from a paired bootstrap over the same members and non-members; p-values Holm-adjusted over "
        "this table's comparisons of each measure; a verdict needs p < 0.05."
    )
    return Table(headers, rows, (note,))


def _difference_verdict(verdict: str, diff: float) -> Cell:
    if verdict == "inconclusive":
        return Cell("no difference shown")
    return Cell("higher" if diff > 0 else "lower", "warn" if diff > 0 else "ok")


ATTACK_COST = {  # what an attack needs beyond the one cached scoring pass (the registry's ``needs``)
    "reference": "the pre-trained pass (or one of reference_model)",
    "texts": "",
    "lowercase": "a lower-cased pass",
    "recall": "a prefixed pass",
    "token_ids": "",
    "token_frequency": "a tokenised frequency corpus",
    "references": "reference models fine-tuned (results.json: reference_models)",
    "population": "a population-samples pass",
    "neighbours": "a pass over each text's neighbours (attacks.neighbours copies)",
}


def attack_cost(name: str) -> str:
    """What attack ``name`` costs beyond the scoring pass, from the registry."""
    from memlens.attacks import ATTACKS

    extra = [ATTACK_COST[n] for n in sorted(ATTACKS[name].needs) if ATTACK_COST.get(n)] if name in ATTACKS else []
    return "scoring pass" + "".join(f" + {e}" for e in extra)


def attack_table(results: pd.DataFrame, trial: int, epoch: int, attacks: list[str]) -> Table:
    """Every attack of one trial at its final epoch, low false-positive rates first: TPR at 0.1% and 1% FPR
    (95% CIs), AUC, its pre-trained AUC, the paired and blind-baseline verdicts, and what it costs. ★ marks the
    strongest: the highest estimable TPR at 1% FPR, then the highest AUC."""
    pick = picker(results[results["trial"] == trial])
    found = []
    for a in attacks:
        auc = pick(epoch, a, "auc")
        if auc is not None:
            found.append((a, auc, pick(epoch, a, "tpr", 0.001) or {}, pick(epoch, a, "tpr", 0.01) or {}))
    strength = {a: _strength(tpr, auc) for a, auc, _, tpr in found}
    best = max(strength, key=lambda a: strength[a]) if found else None
    rows = [
        [
            Cell(f"{a} ★" if a == best else a, "ok" if a == best else ""),
            _tpr_cell(value_of(low, "value"), low.get("note"), value_of(low, "ci_low"), value_of(low, "ci_high")),
            _tpr_cell(value_of(tpr, "value"), tpr.get("note"), value_of(tpr, "ci_low"), value_of(tpr, "ci_high")),
            Cell(_auc(value_of(auc, "value"), value_of(auc, "ci_low"), value_of(auc, "ci_high")), "num"),
            Cell(_auc(value_of(pick(0, a, "auc"), "value")), "num"),
            _verdict(value_of(auc, "beats_pretrained")),
            _verdict(value_of(auc, "beats_blind")),
            Cell(attack_cost(str(auc.get("attack_name") or a))),
        ]
        for a, auc, low, tpr in found
    ]
    notes = _tpr_notes([(f, (pick(epoch, a, "tpr", f) or {}).get("note")) for a in attacks for f in (0.001, 0.01)])
    headers = [
        "attack",
        "TPR @ 0.1% FPR [95% CI]",
        "TPR @ 1% FPR [95% CI]",
        f"AUC epoch {epoch} [95% CI]",
        "AUC pre-trained",
        "beats pre-trained? (paired)",
        "beats blind?",
        "cost",
    ]
    if best is not None:
        notes += ("★ strongest attack here: the highest TPR at 1% FPR (where estimable), then the highest AUC.",)
    return Table(headers, rows, notes)


def _strength(tpr: dict, auc: dict) -> tuple[float, float]:
    value, a = value_of(tpr, "value"), value_of(auc, "value")
    noted = isinstance(tpr.get("note"), str) and bool(tpr.get("note"))
    return (
        -1.0 if noted or value is None or is_missing(value) else float(value),
        -1.0 if a is None or is_missing(a) else float(a),
    )


def extraction_tables(results: pd.DataFrame) -> list[tuple[str, Table]]:
    """The final epoch's extraction (members / non-members per decoding) and canary tables, where measured."""
    tables = []
    ext = results[(results["kind"] == "extraction") & ~results["metric"].isin(EXTRACTION_SKIP)]
    if not ext.empty:
        names = list(dict.fromkeys(ext["metric"]))
        rows = []
        for (label, decoding), g in ext.groupby(["label", "decoding"], sort=False):
            value = {(r["metric"], r["subset"]): r["value"] for r in g.to_dict("records")}
            cells = [
                Cell(f"{_f(value.get((n, 'members')))} / {_f(value.get((n, 'nonmembers')))}", "num") for n in names
            ]
            rows.append([Cell(label, "label"), Cell(decoding), *cells])
        headers = ["trial", "decoding", *(EXTRACTION_COLUMNS.get(n, n.replace("_", " ")) for n in names)]
        tables.append(("Extraction: members / non-members", Table(headers, rows)))
    can = results[results["kind"] == "canary"]
    if not can.empty:
        metrics = list(dict.fromkeys(can["metric"]))
        rows = []
        for (label, attack), g in can.groupby(["label", "attack"], sort=False):
            pick = {r["metric"]: r for r in g.to_dict("records")}
            cells = [
                Cell(_auc(*(value_of(pick.get(m), k) for k in ("value", "ci_low", "ci_high"))), "num") for m in metrics
            ]
            rows.append([Cell(label, "label"), Cell(attack), *cells])
        headers = ["trial", "canaries", *(CANARY_COLUMNS.get(m, m) for m in metrics)]
        tables.append(("Canaries", Table(headers, rows)))
    return tables


def trial_line(r: dict) -> str:
    blind = _auc(r["blind"], r["blind_low"], r["blind_high"])
    gap = _auc(r["gap"], r["gap_low"], r["gap_high"])
    drop = _auc(r["nonmember_drop"], r["nonmember_low"], r["nonmember_high"])
    ppl = f"{_f(r['val_ppl0'], 2)} → {_f(r['val_ppl'], 2)}"
    return (
        f"blind baseline AUC {blind} · loss gap {gap} nats/token (non-members' loss drop {drop}) "
        f"· validation perplexity {ppl}"
    )


def first_and_last(error: str | None) -> str:
    """A one-line digest of an error message (a traceback's first and last lines)."""
    lines = [x for x in str(error or "no error message").strip().splitlines() if x.strip()]
    return lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1].strip()}"


def _verdict(beats: float | None) -> Cell:
    if is_missing(beats):
        return Cell("—")
    return Cell("yes", "ok") if beats else Cell("NO ⚠", "warn")


def _f(v: float | None, digits: int = 3) -> str:
    return "—" if v is None or is_missing(v) or not math.isfinite(v) else f"{v:.{digits}f}"


def _auc(v: float | None, lo: float | None = None, hi: float | None = None) -> str:
    if is_missing(lo) or is_missing(hi) or is_missing(v):
        return _f(v)
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def _pct(v: float | None) -> str:
    return "—" if v is None or is_missing(v) else f"{100 * v:.1f}%"


def _int(v: float | None) -> str:
    return "—" if v is None or is_missing(v) else f"{int(v):,}"


def md_text(text: str) -> str:
    """Text for a Markdown table or paragraph: HTML-escaped, Markdown punctuation and newlines neutralised."""
    text = html.escape(" ".join(str(text).split()), quote=False)
    return re.sub(r"([\\`*_\[\]|])", r"\\\1", text)
