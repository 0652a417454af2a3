"""Result rows: one typed record per measured number, the same in ``results.json``, the results store, exports,
the report and the presets. Every fact about a number is a field of its own; nothing is parsed back out of a
name (the one exception, :func:`from_legacy`, reads files written before schema 2).

A record is tidy: ``(epoch, kind, attack, metric, ...) -> value [ci_low, ci_high]``.

``kind`` says what was measured:
- ``"mia"``: a membership-inference attack on the member/non-member sets (``metric`` ``auc`` or ``tpr``);
- ``"blind"``: the model-free blind baseline (``metric`` ``auc``, no epoch);
- ``"utility"``: the model's validation perplexity (``metric`` ``val_ppl``);
- ``"extraction"``: prefix-prompted extraction (``metric`` ``exact_match_rate``, ``ngram_share`` ...,
  per ``subset`` members / non-members and ``decoding``);
- ``"effect"``: memorization as an effect size, from each text's loss drop L_before − L_after (nats/token):
  ``metric`` ``loss_gap`` (members' mean drop minus non-members'), ``member_drop`` and ``nonmember_drop``
  (the latter is what fine-tuning taught about the domain), per fine-tuned epoch;
- ``"canary"``: planted canaries (``metric`` ``canary_auc``, ``canary_extraction_rate``, ``canary_exposure``,
  per ``repetitions``; 0 for the never-inserted controls);
- ``"privacy"``: differential privacy (``metric`` ``epsilon``: what the DP-SGD accountant spent;
  ``epsilon_lower_bound``: what the one-run audit of the audit canaries proves at least, also its ``ci_low``).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

SCHEMA_VERSION = 2  # 1: facts in attack/metric names (before 0.2); 2: one field per fact

Kind = Literal["mia", "blind", "utility", "effect", "extraction", "canary", "privacy"]


@dataclass(frozen=True)
class Record:
    """One measured number and everything that identifies it (``None``: does not apply).

    ``attack`` is the row's display label, unique within an epoch and kind (``min_k@0.2``, ``extraction
    greedy``, ``canary x4``); the facts it shows are also fields: ``attack_name`` (the registered attack,
    e.g. ``min_k``), ``k``, ``decoding``, ``repetitions``. ``tpr`` rows carry the budget ``fpr``, the FPR
    the threshold reaches (``fpr_reached``), the true/false positive counts ``tp``/``fp`` and a Clopper–Pearson
    CI. A fine-tuned ``auc`` row says whether its CI lies above the blind baseline's (``beats_blind``) and whether
    it beats the same attack on the pre-trained model on a paired test (``beats_pretrained``); a number that
    cannot be measured (e.g. a budget below one non-member) is ``None`` with the reason in ``note``. ``role`` is
    the model measured: ``target`` (the fine-tuned model; a distillation's teacher) or ``student`` (a model
    distilled from it, with its ``objective``), each attacked on the target's members and non-members. Scores are
    higher = more likely a member; an AUC above 0.5 means the attack tells members from non-members.
    """

    metric: str
    value: float | None
    epoch: int | None = None
    kind: Kind = "mia"
    attack: str | None = None
    attack_name: str | None = None
    k: float | None = None
    fpr: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    subset: str | None = None  # "members" or "nonmembers"
    decoding: str | None = None
    temperature: float | None = None
    repetitions: int | None = None
    role: str = "target"  # "target" or "student"
    objective: str | None = None  # a student's distillation objective (forward_kl, reverse_kl, mixed, sequence)
    seed: int | None = None
    n_members: int | None = None
    n_nonmembers: int | None = None
    n_nan: int | None = None
    beats_blind: bool | None = None
    beats_pretrained: bool | None = None
    fpr_reached: float | None = None
    tp: int | None = None
    fp: int | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN becomes None)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


FIELDS = [f.name for f in fields(Record)]
OUTCOMES = {  # what a record measured; the other fields say what it is (its identity, unique within a run)
    "value", "ci_low", "ci_high", "n_members", "n_nonmembers", "n_nan", "beats_blind", "beats_pretrained",
    "fpr_reached", "tp", "fp", "note",
}  # fmt: skip
IDENTITY = [name for name in FIELDS if name not in OUTCOMES]
TIMINGS = {"tokens_per_second"}  # metrics that measure the machine's speed, not the model: never reproducible
BOOL_FIELDS = {"beats_blind", "beats_pretrained"}
INT_FIELDS = {"epoch", "repetitions", "seed", "n_members", "n_nonmembers", "n_nan", "tp", "fp"} | BOOL_FIELDS
REAL_FIELDS = {"value", "k", "fpr", "ci_low", "ci_high", "temperature", "fpr_reached"}
SQL_TYPES = {name: "INTEGER" if name in INT_FIELDS else "REAL" if name in REAL_FIELDS else "TEXT" for name in FIELDS}


def from_dict(row: dict[str, Any]) -> Record:
    """A record from ``results.json`` or a store row, of either schema (unknown keys are ignored)."""
    if "kind" not in row or row.get("kind") is None:
        return from_legacy(row)
    known = {k: _plain(v) for k, v in row.items() if k in FIELDS}
    for name in INT_FIELDS:
        if known.get(name) is not None:
            known[name] = bool(known[name]) if name in BOOL_FIELDS else int(known[name])
    return Record(**known)


def _plain(v: Any) -> Any:
    """numpy/pandas scalars as Python ones; NaN and pandas' missing values as None."""
    if v is None:
        return None
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    import pandas as pd

    return None if v is pd.NA or v is pd.NaT else v


_LEGACY_EXTRACTION = re.compile(r"^extraction_(?P<metric>.+)_(?P<subset>members|nonmembers)$")


def from_legacy(row: dict[str, Any]) -> Record:
    """A schema-1 row (facts in names: ``min_k@0.2``, ``tpr@fpr=0.01``, ``extraction_bleu_members``,
    ``canary x4``) as a record. Used only to read files written before schema 2."""
    attack, metric = _plain(row.get("attack")), str(row["metric"])
    common = {
        k: _plain(row.get(k))
        for k in ("value", "ci_low", "ci_high", "n_members", "n_nonmembers", "n_nan", "beats_blind")
    }
    if common["beats_blind"] is not None:
        common["beats_blind"] = bool(common["beats_blind"])
    epoch = _plain(row.get("epoch"))
    epoch = None if epoch is None else int(epoch)
    base: dict[str, Any] = {"epoch": epoch, "attack": attack, **common}
    if metric == "val_ppl":
        return Record(metric=metric, kind="utility", **base)
    if attack == "blind":
        return Record(metric=metric, kind="blind", attack_name="blind", **base)
    if m := _LEGACY_EXTRACTION.match(metric):
        decoding = str(attack).removeprefix("extraction ")
        temperature = float(decoding[2:]) if decoding.startswith("T=") else None
        return Record(
            metric=m["metric"],
            kind="extraction",
            attack_name="extraction",
            subset=m["subset"],
            decoding=decoding,
            temperature=temperature,
            **base,
        )
    if metric.startswith("canary_"):
        reps = 0 if attack == "canary controls" else int(str(attack).removeprefix("canary x"))
        return Record(metric=metric, kind="canary", attack_name="canary", repetitions=reps, **base)
    name, _, k = str(attack).partition("@")
    fpr = float(metric.removeprefix("tpr@fpr=")) if metric.startswith("tpr@fpr=") else None
    return Record(
        metric="tpr" if fpr is not None else metric,
        kind="mia",
        attack_name=name,
        k=float(k) if k else None,
        fpr=fpr,
        **base,
    )
