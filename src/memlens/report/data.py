"""The data a report is drawn from: the store's trials and tidy records, each finished trial's final-epoch
headline numbers, and the per-text scores the figures need."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from memlens.errors import MemlensError

if TYPE_CHECKING:
    import pandas as pd

    from memlens.experiments.findings import BaselineComparison

HISTOGRAM_FALLBACK = "loss"  # an attack with a pre-trained (epoch 0) score for every text
METHOD_PARAMS = {
    "lora": ("targets", "rank", "alpha", "layers"),
    "ia3": ("targets", "layers"),
    "prefix": ("virtual_tokens",),
    "prompt": ("virtual_tokens",),
    "ptuning": ("virtual_tokens",),
}
TUNING_AXES = {p for params in METHOD_PARAMS.values() for p in params}
OWN_COLUMNS = {"method", "epochs", "lr"}  # axes the trial table shows in their own column


@dataclass
class ReportData:
    """What a report is drawn from. ``label`` everywhere is each trial's unique display name."""

    store_dir: Path
    attack: str
    trials: pd.DataFrame  # every trial, with label, params, varying
    results: pd.DataFrame  # the tidy rows of finished trials
    final: pd.DataFrame  # one row per finished trial: the headline attack and val PPL at its final epoch
    scores: pd.DataFrame  # rows of scores.csv needed by the figures (epoch 0 and the final epoch)
    students: pd.DataFrame  # one row per distilled student: trial, label, objective, final AUC (CI), val PPL
    attacks: list[str]  # every membership-inference attack (rows with an AUC), in order
    comparisons: BaselineComparison | None  # each trial against the first, paired


def load_report_data(store_dir: str | Path, attack: str = "reference") -> ReportData:
    """Read the store; refuse one without a finished trial or without ``attack``."""
    from memlens.experiments.store import Store

    store = Store(store_dir, create=False)
    try:
        trials, results, student_rows = store.trials(), store.results(), store.results(role="student")
        trial_dirs = {int(i): store.trial_dir(int(i)) for i in trials["id"]}
    finally:
        store.close()
    done = trials[trials["status"] == "done"]
    if done.empty:
        counts = status_counts(trials) or "no trials"
        raise MemlensError(f"no finished trial in the results store {store.folder} ({counts}); nothing to report")
    trials = _describe_trials(trials)
    results = _tidy(results, trials)
    aucs = results[(results["kind"] == "mia") & (results["metric"] == "auc")]
    attacks = list(dict.fromkeys(aucs["attack"].dropna()))
    if attack not in attacks:
        raise MemlensError(f"attack {attack!r} is not in the results store; it has {', '.join(attacks) or 'none'}")
    final = _final_table(trials[trials["status"] == "done"], results, attack)
    wanted = {attack, HISTOGRAM_FALLBACK, "reference", "nll"}
    scores = _load_scores(final, trial_dirs, wanted)
    comparisons = _comparisons(trials, final, scores, attack)
    students = _student_table(_tidy(student_rows, trials), attack)
    return ReportData(Path(store_dir), attack, trials, results, final, scores, students, attacks, comparisons)


def _student_table(rows: pd.DataFrame, attack: str) -> pd.DataFrame:
    """One row per (trial, objective) of the distilled students: ``attack``'s AUC (CI) and the validation
    perplexity after the student's last epoch."""
    import pandas as pd

    out = []
    for (trial, label, objective), g in rows.groupby(["trial", "label", "objective"], sort=True):
        pick = picker(g)
        last = int(g["epoch"].max())
        auc = pick(last, attack, "auc")
        out.append(
            {"trial": trial, "label": label, "objective": objective}
            | {k: value_of(auc, k) for k in ("value", "ci_low", "ci_high")}
            | {"val_ppl": value_of(pick(last, None, "val_ppl"), "value")}
        )
    columns = ["trial", "label", "objective", "auc", "ci_low", "ci_high", "val_ppl"]
    return pd.DataFrame(out).rename(columns={"value": "auc"}) if out else pd.DataFrame(columns=columns)


def _comparisons(
    trials: pd.DataFrame, final: pd.DataFrame, scores: pd.DataFrame, attack: str
) -> BaselineComparison | None:
    """Each finished trial with per-text scores against the first such trial (see ``against_baseline``)."""
    from memlens.experiments.findings import Scores, Trial, against_baseline

    configs = dict(zip(trials["id"], trials["config"], strict=True))
    have = set(scores["label"])
    rows = [(int(r.trial), r.label, int(r.epoch)) for r in final.sort_values("trial").itertuples() if r.label in have]
    frames = {i: scores[scores["label"] == label] for i, label, _ in rows}
    paired = Scores([Trial(i, label, configs[i], last) for i, label, last in rows], frames)
    return against_baseline(paired, attack)


def _describe_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Add a unique display ``label``, the method, the method's parameters and the sweep's varying axes."""
    from memlens.experiments.sweep import AXES

    trials = trials.rename(columns={"label": "sweep_label"})
    several = trials["sweep"].nunique() > 1
    names = [f"{s} · {lab}" if several else lab for s, lab in zip(trials["sweep"], trials["sweep_label"], strict=True)]
    repeated = {n for n in names if names.count(n) > 1}
    trials["label"] = [f"{n} (#{i})" if n in repeated else n for n, i in zip(names, trials["id"], strict=True)]
    values = {axis: [_lookup(cfg, key) for cfg in trials["config"]] for axis, key in AXES.items()}
    varying = [a for a, vals in values.items() if len({json.dumps(v, sort_keys=True) for v in vals}) > 1]
    trials["method"] = values["method"]
    trials["varying"] = [{a: values[a][i] for a in varying} for i in range(len(trials))]
    trials["params"] = [
        {p: cfg["tuning"].get(p) for p in METHOD_PARAMS.get(cfg["tuning"]["method"], ())}
        | {a: v for a, v in var.items() if a not in OWN_COLUMNS | TUNING_AXES}
        for cfg, var in zip(trials["config"], trials["varying"], strict=True)
    ]
    return trials


def _lookup(cfg: dict, dotted: str):
    section, field = dotted.split(".", 1)
    return cfg.get(section, {}).get(field)


def _tidy(results: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Results of finished trials with display labels and nullable integer epochs."""
    done = set(trials.loc[trials["status"] == "done", "id"])
    results = results[results["trial"].isin(done)].copy()
    results["label"] = results["trial"].map(dict(zip(trials["id"], trials["label"], strict=True)))
    results["epoch"] = results["epoch"].astype("Int64")
    return results


def _final_table(done: pd.DataFrame, results: pd.DataFrame, attack: str) -> pd.DataFrame:
    """One row per finished trial: final-epoch AUC (CI), TPR@1%FPR, epoch-0 AUC, blind AUC, loss gap (CI) and
    the non-members' loss drop, val PPL."""
    import pandas as pd

    rows = []
    for t in done.itertuples():
        res = results[results["trial"] == t.id]
        last = res.loc[res["metric"] == "auc", "epoch"].max()
        last = 0 if pd.isna(last) else int(last)
        pick = picker(res)
        auc, auc0, blind = pick(last, attack, "auc"), pick(0, attack, "auc"), pick(None, "blind", "auc")
        info, tuning = t.info.get("tuning", {}), t.config["tuning"]
        targets = show(tuning.get("targets") or "default")
        rows.append(
            {
                "trial": t.id,
                "label": t.label,
                "method": t.method,
                "epoch": last,
                "auc": value_of(auc, "value"),
                "ci_low": value_of(auc, "ci_low"),
                "ci_high": value_of(auc, "ci_high"),
                "beats_blind": value_of(auc, "beats_blind"),
                "tpr": value_of(pick(last, attack, "tpr", 0.01), "value"),
                "tpr_note": (pick(last, attack, "tpr", 0.01) or {}).get("note"),
                "auc0": value_of(auc0, "value"),
                "blind": value_of(blind, "value"),
                "blind_low": value_of(blind, "ci_low"),
                "blind_high": value_of(blind, "ci_high"),
                "gap": value_of(pick(last, None, "loss_gap"), "value"),
                "gap_low": value_of(pick(last, None, "loss_gap"), "ci_low"),
                "gap_high": value_of(pick(last, None, "loss_gap"), "ci_high"),
                "nonmember_drop": value_of(pick(last, None, "nonmember_drop"), "value"),
                "nonmember_low": value_of(pick(last, None, "nonmember_drop"), "ci_low"),
                "nonmember_high": value_of(pick(last, None, "nonmember_drop"), "ci_high"),
                "val_ppl0": value_of(pick(0, None, "val_ppl"), "value"),
                "val_ppl": value_of(pick(last, None, "val_ppl"), "value"),
                "rank": tuning.get("rank") if t.method == "lora" else None,
                "targets": targets if t.method in ("lora", "ia3") else None,
                "block": _single_block(t.method, tuning.get("layers")),
                "group": " ".join(f"{k}={show(v)}" for k, v in t.varying.items() if k not in ("rank", "seed"))
                or "all trials",
                "trainable": info.get("trainable_parameters"),
                "share": info.get("trainable_share"),
                "epsilon": value_of(pick(None, "accountant", "epsilon"), "value"),  # DP-SGD's spent budget
                "epsilon_audit": value_of(pick(None, "one-run audit", "epsilon_lower_bound"), "value"),
            }
        )
    return pd.DataFrame(rows)


def _single_block(method: str, layers) -> int | None:
    """The one block a LoRA/IA³ trial adapts (``layers = [i]``), else None."""
    ok = method in ("lora", "ia3") and isinstance(layers, list) and len(layers) == 1
    return int(layers[0]) if ok else None


def picker(res: pd.DataFrame):
    """``pick(epoch, attack, metric, fpr=None)`` -> that row as a dict, or None (None matches missing values)."""
    index = {}
    for r in res.to_dict("records"):
        key = tuple(None if is_missing(r[c]) else r[c] for c in ("epoch", "attack", "metric", "fpr"))
        index[(None if key[0] is None else int(key[0]), *key[1:])] = r
    return lambda epoch, attack, metric, fpr=None: index.get((epoch, attack, metric, fpr))


def is_missing(v) -> bool:
    import pandas as pd

    return v is None or bool(pd.isna(v))


def value_of(row: dict | None, key: str) -> float | None:
    return None if row is None or is_missing(row.get(key)) else float(row[key])


def _load_scores(final: pd.DataFrame, trial_dirs: dict[int, Path], attacks: set[str]) -> pd.DataFrame:
    """The wanted attacks' rows of each finished trial's ``scores.csv`` at epoch 0 and its final epoch."""
    import pandas as pd

    parts = []
    for t in final.itertuples():
        path = trial_dirs[t.trial] / "scores.csv"
        if not path.is_file():
            continue
        s = pd.read_csv(path, dtype={"id": str, "attack": str})
        s = s[s["attack"].isin(attacks) & s["epoch"].isin({0, t.epoch})]
        parts.append(s.assign(label=t.label))
    columns = ["id", "member", "epoch", "attack", "score", "label"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def show(v) -> str:
    return "+".join(map(str, v)) if isinstance(v, list) else f"{v:g}" if isinstance(v, float) else str(v)


def status_counts(trials: pd.DataFrame) -> str:
    counts = trials["status"].value_counts()
    return ", ".join(f"{n} {s}" for s, n in counts.items())
