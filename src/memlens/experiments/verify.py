"""Re-derive a stored trial: rerun it from the config the store kept, with the score cache off, and compare
every per-text score and every measured value with what the store holds.

A reviewer's check that a published row is reproducible: fixed seeds make a trial deterministic on one
machine and thread count; another thread count or another torch build changes the order of floating-point sums,
so the scores may move in their last digits (:attr:`Verification.max_score_diff` says by how much).

Real numbers differ by ``|a − b| / max(1, |a|, |b|)``: absolutely up to size 1 (AUCs, TPRs), relatively above
(per-text losses of several nats, perplexities); counts and verdicts (true positives, texts, ``beats_blind``)
differ by their absolute difference, so one text more is a difference of 1. Relative paths in the stored config
(a data folder, a local model) are read from the current folder: verify from the folder the sweep ran in.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from memlens.errors import MemlensError

KEY = ["id", "member", "epoch", "attack"]  # a per-text score in scores.csv
COUNTS = {"tp", "fp", "n_members", "n_nonmembers", "n_nan", "beats_blind", "beats_pretrained"}
NUMBERS = (  # a record's outcomes compared as numbers (booleans as 0/1); its note is not compared
    "value", "ci_low", "ci_high", "fpr_reached", "tp", "fp", "n_members", "n_nonmembers", "n_nan", "beats_blind",
    "beats_pretrained",
)  # fmt: skip


@dataclass(frozen=True)
class Verification:
    """One trial rerun and compared with the store.

    ``n_scores``: per-text scores present in both runs (``scores.csv``); ``max_score_diff``: the largest
    difference among them (see the module docstring); ``unmatched``:
    scores found in only one of the runs (another data folder, another code version). ``n_values`` and
    ``max_value_diff``: the same over every record's numbers (AUC, TPR, gaps, perplexities ... their CI
    bounds, counts and verdicts against the baselines) of the fine-tuned model and any distilled student.
    Speed records (:data:`memlens.records.TIMINGS`) are left out. ``worst``: the record and number that
    differ most, e.g. ``3 mia loss auc: value 0.61 stored, 0.62 now`` (None when none differs).
    ``reproduced``: every score and value present in both and within ``tolerance``.
    """

    trial: int
    label: str
    tolerance: float
    seconds_stored: float | None
    seconds: float
    n_scores: int
    max_score_diff: float
    unmatched: int
    n_values: int
    max_value_diff: float
    unmatched_values: int
    worst: str | None
    stored_environment: dict
    environment: dict

    @property
    def reproduced(self) -> bool:
        return (
            self.n_scores > 0
            and self.unmatched == 0
            and self.unmatched_values == 0
            and self.max_score_diff <= self.tolerance
            and self.max_value_diff <= self.tolerance
        )


def _find_trial(trials, trial: int | str):
    """The store's row for a trial id or label."""
    by_id = trials[trials["id"] == int(trial)] if str(trial).isdigit() else trials.iloc[:0]
    rows = by_id if not by_id.empty else trials[trials["label"] == str(trial)]
    if len(rows) > 1:
        ids = ", ".join(str(i) for i in rows["id"])
        raise MemlensError(f"{len(rows)} trials are labelled {trial!r} (ids {ids}; several sweeps): name one by its id")
    if rows.empty:
        known = ", ".join(f"{i} ({lab})" for i, lab in list(zip(trials["id"], trials["label"], strict=True))[:8])
        raise MemlensError(f"no trial {trial!r} in this store; trials: {known or 'none'}")
    row = rows.iloc[0]
    if row["status"] != "done":
        raise MemlensError(f"trial {row['id']} ({row['label']}) is {row['status']}, not finished: nothing to verify")
    return row


def _max_diff(a, b, *, exact: bool = False) -> float:
    """Largest ``|a − b| / max(1, |a|, |b|)`` (``exact``: ``|a − b|``, for counts) over paired numbers; equal
    numbers (infinities included) and NaN beside NaN (both undefined) count as no difference, a number beside
    NaN as an infinite one."""
    import numpy as np

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    with np.errstate(invalid="ignore"):
        d = np.abs(a - b) / (1.0 if exact else np.maximum(1.0, np.maximum(np.abs(a), np.abs(b))))
    d[(a == b) | (np.isnan(a) & np.isnan(b))] = 0.0
    d[np.isnan(d)] = math.inf
    return float(d.max()) if d.size else 0.0


def compare_scores(stored: Path, rerun: Path) -> tuple[int, float, int]:
    """Compare two ``scores.csv`` files: (scores in both, largest |Δ|, scores in only one)."""
    import pandas as pd

    a, b = (pd.read_csv(p, dtype={"id": str}) for p in (stored, rerun))
    both = a.merge(b, on=KEY, how="outer", suffixes=("_a", "_b"), indicator=True)
    paired = both[both["_merge"] == "both"]
    return len(paired), _max_diff(paired["score_a"], paired["score_b"]), int((both["_merge"] != "both").sum())


def compare_records(stored: list[dict], rerun: list[dict]) -> tuple[int, float, int, str | None]:
    """Compare two runs' records, matched on their identity (:data:`memlens.records.IDENTITY`; a field added by a
    later memlens reads as its default), speed records left out: (numbers in both, largest |Δ| among them,
    records in only one, the record and number that differ most or None)."""
    from memlens.records import IDENTITY, TIMINGS, from_dict

    def keyed(records: list[dict]) -> dict[tuple, dict]:
        parsed = [from_dict(r).to_dict() for r in records]
        return {tuple(r[f] for f in IDENTITY): r for r in parsed if r["metric"] not in TIMINGS}

    a, b = keyed(stored), keyed(rerun)
    n, diff, worst = 0, 0.0, None
    for k in (k for k in a if k in b):
        for f in NUMBERS:
            x, y = a[k][f], b[k][f]
            if x is None and y is None:
                continue
            d = _max_diff([math.nan if x is None else x], [math.nan if y is None else y], exact=f in COUNTS)
            n += 1
            if d > diff:
                r = a[k]
                what = " ".join(str(r[g]) for g in ("epoch", "kind", "attack", "metric") if r[g] is not None)
                diff, worst = d, f"{what}: {f} {x} stored, {y} now"
    return n, diff, len(a.keys() ^ b.keys()), worst


def verify_trial(folder: str | Path, trial: int | str, *, tolerance: float = 1e-4) -> Verification:
    """Rerun ``trial`` (its id or label) of the results store in ``folder`` from its stored config, with the
    score cache off and nothing saved but the scores, in a temporary folder; compare with the store.

    The data are read as for the original run: a config naming ``data.dir`` reads that folder, PHEE otherwise
    reads ``MEMLENS_DATA_DIR`` or the copy inside memlens — set it as the original run had it.
    """
    from memlens.config import parse_config, with_overrides
    from memlens.experiments import run
    from memlens.experiments.store import Store
    from memlens.experiments.store import stored as store_rows

    if not (tolerance >= 0):
        raise MemlensError(f"tolerance must be a number >= 0, got {tolerance}")
    store = Store(folder, create=False)
    try:
        row = _find_trial(store.trials(), trial)
        stored_dir = store.trial_dir(int(row["id"]))
    finally:
        store.close()
    stored_scores, stored_results = stored_dir / "scores.csv", stored_dir / "results.json"
    for path in (stored_scores, stored_results):
        if not path.is_file():
            raise MemlensError(f"trial {row['id']} ({row['label']}) has no {path.name} in {stored_dir}")
    cfg = parse_config(row["config"], f"the stored config of trial {row['id']}")
    with tempfile.TemporaryDirectory(prefix="memlens-verify-") as tmp:
        out = Path(tmp) / "run"
        cfg = with_overrides(
            cfg,
            {
                "scoring.cache": False,
                "output.dir": str(out),
                "output.overwrite": True,
                "output.save_adapter": False,
                "training.save_checkpoints": False,
            },
        )
        t0 = time.perf_counter()
        results = run(cfg)
        seconds = time.perf_counter() - t0
        n_scores, score_diff, unmatched = compare_scores(stored_scores, out / "scores.csv")
    stored = json.loads(stored_results.read_text())
    rows = [store_rows(r)[0] for r in (stored, results)]  # the target's records and any distilled student's
    n_values, value_diff, unmatched_values, worst = compare_records(*rows)
    return Verification(
        trial=int(row["id"]),
        label=str(row["label"]),
        tolerance=tolerance,
        seconds_stored=None if row["seconds"] != row["seconds"] else float(row["seconds"]),
        seconds=seconds,
        n_scores=n_scores,
        max_score_diff=score_diff,
        unmatched=unmatched,
        n_values=n_values,
        max_value_diff=value_diff,
        unmatched_values=unmatched_values,
        worst=worst,
        stored_environment=stored.get("environment") or {},
        environment=results.get("environment") or {},
    )
