"""Compare two finished trials of a results store, attack by attack, on their paired per-text scores.

Both trials must have scored the same members and non-members (same ids): that is what makes the comparison
paired. For each attack both trials have at the chosen epoch: AUC_a − AUC_b with DeLong's CI and p-value (Holm-
adjusted over the attacks compared) and a paired-bootstrap CI, and TPR_a − TPR_b at each FPR with a paired-
bootstrap CI. Verdicts: ``a > b`` or ``a < b`` when the Holm-adjusted p-value is below 1 − confidence (the
family: the attacks compared), else ``no difference shown``.

Beside the attacks, the loss gap (memorization as an effect size: how much more fine-tuning lowered the
members' loss than the non-members', nats/token) of a and b and its paired difference, from the per-text
losses at epoch 0 and at the epoch compared; its verdict follows its 95% CI.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from memlens.comparison import Difference, contrast, delong, holm, paired_difference, replicates
from memlens.errors import MemlensError
from memlens.experiments.outputs import EXTRACTION


@dataclass(frozen=True)
class AttackComparison:
    """One attack's differences between trial a and trial b."""

    attack: str
    epoch: int
    n_members: int
    n_nonmembers: int
    auc_delong: Difference
    auc_bootstrap: Difference
    tpr: list[Difference]
    p_holm: float

    alpha: float = 0.05

    @property
    def verdict(self) -> str:
        """``a > b`` / ``a < b`` when the Holm-adjusted DeLong p-value is below ``alpha``, else no verdict."""
        if not self.p_holm < self.alpha:
            return "no difference shown"
        return "a > b" if self.auc_delong.diff > 0 else "a < b"


@dataclass(frozen=True)
class TrialComparison:
    """Trial (or run) ``a`` against ``b``, per attack."""

    a: str  # "trial 3 (head seed=0)" or "run runs/demo-lora"
    b: str
    rows: list[AttackComparison]
    gap: Difference | None = None  # loss gap a − b (nats/token); None where a trial lacks epoch-0 losses

    @property
    def gap_verdict(self) -> str:
        if self.gap is None:
            return "not measured"
        return {"holds": "a > b", "reversed": "a < b"}.get(self.gap.verdict(+1), "no difference shown")


def _trial(trials, ref: str) -> tuple[int, str]:
    """A finished trial by id (``3``) or label."""
    done = trials[trials["status"] == "done"]
    hit = done[done["id"].astype(str) == ref] if ref.isdigit() else done[done["label"] == ref]
    if hit.empty:
        names = ", ".join(f"{i} ({lab})" for i, lab in zip(done["id"], done["label"], strict=True)) or "none"
        raise MemlensError(f"no finished trial {ref!r} in the store; finished: {names}")
    if len(hit) > 1:
        raise MemlensError(f"{ref!r} names {len(hit)} trials; use a trial id: {', '.join(map(str, hit['id']))}")
    return int(hit["id"].iloc[0]), str(hit["label"].iloc[0])


def _scores(path: Path):
    import pandas as pd

    if not path.is_file():
        raise MemlensError(f"{path} is missing: a paired comparison needs each trial's per-text scores")
    try:
        table = pd.read_csv(path, dtype={"id": str, "attack": str})
    except (ValueError, OSError) as err:  # empty or malformed (pandas' errors are ValueErrors)
        raise MemlensError(f"{path} cannot be read as per-text scores: {str(err).splitlines()[0]}") from None
    missing = {"id", "member", "epoch", "attack", "score"} - set(table.columns)
    if missing:
        raise MemlensError(f"{path} is not a memlens scores.csv: no column(s) {', '.join(sorted(missing))}")
    from memlens.experiments.runner import counted_scores

    return counted_scores(table, path.parent)  # each repeated text once, as in the run's own metrics


def compare(
    a: str | Path,
    b: str | Path,
    *,
    store: str | Path | None = None,
    epoch: int | None = None,
    fprs: tuple[float, ...] | list[float] = (0.01,),
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> TrialComparison:
    """Compare ``a`` with ``b`` at ``epoch`` (default: the last epoch both evaluated): two trials (ids or
    labels) of the results store in the folder ``store``, or, without ``store``, two run folders (``memlens
    run`` outputs, each with its ``scores.csv``; e.g. a mitigated run against a plain one)."""
    sa, sb, names = _trial_scores(store, str(a), str(b)) if store is not None else _run_scores(Path(a), Path(b))
    return _compare(sa, sb, names, epoch=epoch, fprs=fprs, n_boot=n_boot, confidence=confidence, seed=seed)


def _trial_scores(store_dir: str | Path, a: str, b: str):
    from memlens.experiments.store import Store

    store = Store(store_dir, create=False)
    try:
        trials = store.trials()
        ta, tb = _trial(trials, a), _trial(trials, b)
        sa, sb = (_scores(store.trial_dir(t[0]) / "scores.csv") for t in (ta, tb))
    finally:
        store.close()
    if ta[0] == tb[0]:
        raise MemlensError(f"trial {ta[0]} compared with itself")
    return sa, sb, (f"trial {ta[0]} ({ta[1]})", f"trial {tb[0]} ({tb[1]})")


def _run_scores(a: Path, b: Path):
    for d in (a, b):
        if not d.is_dir():
            raise MemlensError(f"{d} is not a run folder (give --dir to compare trials of a results store)")
    if a.resolve() == b.resolve():
        raise MemlensError(f"run {a} compared with itself")
    return _scores(a / "scores.csv"), _scores(b / "scores.csv"), (f"run {a}", f"run {b}")


def _compare(
    sa, sb, names: tuple[str, str], *, epoch: int | None, fprs, n_boot: int, confidence: float, seed: int
) -> TrialComparison:
    """The comparison of two per-text score tables (scores.csv) that must hold the same texts."""
    common = sorted(set(sa["epoch"]) & set(sb["epoch"]))
    if epoch is None:
        epoch = int(common[-1]) if common else -1
    if epoch not in common:
        raise MemlensError(f"the two share no scores at epoch {epoch}; both have epochs {common}")
    texts_a = sa.loc[sa["epoch"] == epoch, ["id", "member"]].drop_duplicates()
    texts_b = sb.loc[sb["epoch"] == epoch, ["id", "member"]].drop_duplicates()
    if len(texts_a) != len(texts_b) or set(map(tuple, texts_a.to_numpy())) != set(map(tuple, texts_b.to_numpy())):
        raise MemlensError(
            f"{names[0]} and {names[1]} scored different texts; a paired comparison needs the same members and "
            "non-members (same data settings, and attacks.distinct alike: it counts repeated texts once)"
        )
    attacks = [
        x
        for x in dict.fromkeys(sa.loc[sa["epoch"] == epoch, "attack"])
        if x != "nll" and not x.startswith(EXTRACTION) and x in set(sb.loc[sb["epoch"] == epoch, "attack"])
    ]
    if not attacks:
        raise MemlensError(f"the two share no attack at epoch {epoch}")
    rows = []
    for attack in attacks:
        pa, pb = _per_text(sa, attack, epoch), _per_text(sb, attack, epoch)
        index = sorted(pa.index, key=lambda k: (-int(k[1]), k[0]))  # members first
        va, vb = pa.reindex(index).to_numpy(float), pb.reindex(index).to_numpy(float)
        n_members = sum(int(k[1]) for k in index)
        try:
            auc_d = delong(va, vb, n_members, confidence=confidence)
            boot = paired_difference(va, vb, n_members, fprs=fprs, n_boot=n_boot, confidence=confidence, seed=seed)
        except ValueError as err:  # e.g. no text with a finite score under both trials
            raise MemlensError(f"attack {attack!r}: {err}") from None
        ok = np.isfinite(va) & np.isfinite(vb)
        rows.append(
            AttackComparison(
                attack,
                epoch,
                int(ok[:n_members].sum()),
                int(ok[n_members:].sum()),
                auc_d,
                boot[0],
                boot[1:],
                float("nan"),
                1 - confidence,
            )
        )
    gap = _gap_difference(sa, sb, epoch, n_boot=n_boot, confidence=confidence, seed=seed) if epoch > 0 else None
    adjusted = holm([r.auc_delong.p_value if r.auc_delong.p_value is not None else 1.0 for r in rows])
    rows = [replace(r, p_holm=p) for r, p in zip(rows, adjusted, strict=True)]
    return TrialComparison(*names, rows, gap)


def _per_text(scores, attack: str, epoch: int):
    return scores[(scores["epoch"] == epoch) & (scores["attack"] == attack)].set_index(["id", "member"])["score"]


def _gap_difference(sa, sb, epoch: int, *, n_boot: int, confidence: float, seed: int) -> Difference | None:
    """gap_a − gap_b on the same texts, each gap from the per-text loss drop between epoch 0 and ``epoch``."""
    drops = [_per_text(s, "nll", 0) - _per_text(s, "nll", epoch) for s in (sa, sb)]
    if any(d.empty for d in drops):
        return None
    index = sorted(drops[0].index, key=lambda k: (-int(k[1]), k[0]))  # members first
    rows = np.stack([d.reindex(index).to_numpy(float) for d in drops])
    point, reps, _ = replicates(rows, sum(int(k[1]) for k in index), statistic="gap", n_boot=n_boot, seed=seed)
    return contrast(point, reps, [1, -1], metric="gap", a=float(point[0]), b=float(point[1]), confidence=confidence)
