"""A preset's published findings tested on memlens's paired per-text scores.

Every trial of a preset scores the same members and non-members, so a finding is a *contrast* of trial
statistics on paired data: a difference of group means (W_V,W_O vs W_Q,W_K), a slope (AUC per doubling of the
rank) or a difference of differences (growth over epochs), each with a paired-bootstrap CI and p-value
(:func:`memlens.comparison.replicates`, :func:`memlens.comparison.contrast`).

Each finding is tested on two measures: the study's (the AUC of its attack) and the loss gap (how much more
fine-tuning lowered the members' loss than the non-members', nats/token). The tests of one measure form a
family, Holm-corrected: a finding **holds** when its difference in the published direction has an adjusted
p below 0.05, is **reversed** when it is significant the other way, and is **inconclusive** otherwise. A
finding whose design cannot isolate the claim reads **confounded** and is not counted in the family.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from memlens.comparison import Difference, contrast, group_weights, holm, replicates, slope_weights
from memlens.config import configuration_key
from memlens.experiments.outputs import extraction_label

if TYPE_CHECKING:
    import pandas as pd

N_BOOT = 2000  # enough to resolve Holm-adjusted p-values of a handful of comparisons (smallest p: 2 / 2001)
ALPHA = 0.05
MEASURES = ("auc", "gap")  # every finding, every preset
SHARE_MEASURE = "share"  # savine2025 also: members' greedy share of n-gram minus non-members' (extraction)
ALL_MEASURES = (*MEASURES, SHARE_MEASURE)
STUDY_ATTACK = {"savine2025": "reference", "hou2025": "loss"}
PROMPT_BASED = ("prefix", "prompt", "ptuning")


@dataclass(frozen=True)
class Trial:
    """A finished trial: id, display label, stored config, and its last evaluated epoch."""

    id: int
    label: str
    config: dict
    last: int

    @property
    def method(self) -> str:
        return self.config["tuning"]["method"]

    @property
    def targets(self) -> list[str]:
        return list(self.config["tuning"].get("targets") or [])

    @property
    def model(self) -> str:
        return self.config["model"]["name"]

    @property
    def rank(self) -> int:
        return int(self.config["tuning"]["rank"])

    @property
    def parameter_based(self) -> bool:
        return self.method not in PROMPT_BASED


@dataclass(frozen=True)
class Config:
    """A configuration: the finished trials that differ only in their training seed (one or more)."""

    trials: tuple[Trial, ...]

    @property
    def first(self) -> Trial:
        return self.trials[0]

    @property
    def label(self) -> str:
        return re.sub(r"\s*\bseed=\d+\b", "", self.first.label).strip() or self.first.label

    @property
    def last(self) -> int:
        return min(t.last for t in self.trials)

    @property
    def seeds(self) -> int:
        return len(self.trials)

    # the same for every seed: read from the first trial
    id = property(lambda self: self.first.id)
    method = property(lambda self: self.first.method)
    targets = property(lambda self: self.first.targets)
    model = property(lambda self: self.first.model)
    rank = property(lambda self: self.first.rank)
    parameter_based = property(lambda self: self.first.parameter_based)


def configurations(trials: list[Trial]) -> list[Config]:
    """Trials grouped by their config without ``training.seed`` (and outputs), in order of first appearance."""
    groups: dict[str, list[Trial]] = {}
    for t in trials:
        groups.setdefault(configuration_key(t.config), []).append(t)
    return [Config(tuple(g)) for g in groups.values()]


class Scores:
    """The per-text scores of a store's finished trials, aligned on the texts they share (members first)."""

    def __init__(self, trials: list[Trial], frames: dict[int, pd.DataFrame]) -> None:
        self.trials = trials
        self.configs = configurations(trials)
        self._frames = frames
        self._series = {
            t.id: {key: g.set_index(["id", "member"])["score"] for key, g in frames[t.id].groupby(["attack", "epoch"])}
            for t in trials
        }
        texts = [set(frames[t.id][["id", "member"]].itertuples(index=False, name=None)) for t in trials]
        common = set.intersection(*texts) if texts else set()
        self.same_texts = all(x == common for x in texts)
        self.index = sorted(common, key=lambda k: (-int(k[1]), str(k[0])))  # members first
        self.n_members = sum(int(k[1]) for k in self.index)
        self.n_nonmembers = len(self.index) - self.n_members

    def row(self, trial: int, epoch: int, measure: str, attack: str) -> np.ndarray:
        """``(N,)``: the attack's scores (``auc``) or the loss drop since epoch 0 (``gap``) of every text."""
        s = self._series[trial]
        if measure == "gap":
            values = s["nll", 0] - s["nll", epoch]
        else:
            values = s[SHARE if measure == SHARE_MEASURE else attack, epoch]
        return values.reindex(self.index).to_numpy(float)

    def has(self, trial: int, epoch: int, attack: str) -> bool:
        return (attack, epoch) in self._series[trial] and ("nll", 0) in self._series[trial]


@dataclass
class Check:
    """One tested contrast of one measure, in the direction the study published (``direction`` +1: ``diff > 0``)."""

    measure: str
    what: str
    difference: Difference
    direction: int = 1
    p_holm: float = float("nan")
    seeds: int = 1  # the fewest training seeds of a configuration in the contrast

    @property
    def verdict(self) -> str:
        d = self.difference
        if not (self.p_holm < ALPHA and all(math.isfinite(v) for v in (d.diff, d.ci_low, d.ci_high))):
            return "inconclusive"
        return "holds" if d.diff * self.direction > 0 else "reversed"

    def text(self) -> str:
        d = self.difference
        unit = " nats/token" if self.measure == "gap" else ""
        p = "" if math.isnan(self.p_holm) else f", p_Holm {self.p_holm:.3g}"
        return f"{self.what}: {d.diff:+.3f}{unit} [{d.ci_low:+.3f}, {d.ci_high:+.3f}]{p}"


@dataclass
class Finding:
    """A published claim beside memlens's tests of it on each measure; ``fixed`` overrides the verdict
    (``not measured``, ``confounded``) and keeps the finding out of the Holm family."""

    key: str  # the finding's number as the study gives it, e.g. "(1)"
    claim: str
    published: str
    tests: dict[str, list[Check]] = field(default_factory=dict)
    described: str = ""  # what the tests do not show: per-group values, fits
    fixed: str | None = None
    note: str = ""

    @property
    def title(self) -> str:
        """Number and claim, e.g. ``(5) LoRA placement: attention < MLP < both``."""
        return f"{self.key} {self.claim}"

    def verdict(self, measure: str) -> str:
        if self.fixed:
            return self.fixed
        verdicts = {t.verdict for t in self.tests.get(measure, [])}
        if not verdicts:
            return "not measured"
        if verdicts == {"holds"}:
            return "holds"
        if verdicts == {"reversed"}:
            return "reversed"
        return "does not hold" if "reversed" in verdicts else "inconclusive"

    def measured(self, measure: str) -> str:
        parts = [t.text() for t in self.tests.get(measure, [])]
        if measure == "auc" and self.described:
            parts.insert(0, self.described)
        return "; ".join(parts) or "—"


def load_scores(store) -> Scores:
    """Every finished trial of ``store`` with its ``scores.csv`` (a trial without one is left out), each
    repeated text counted once, as in the trial's own metrics."""
    import pandas as pd

    from memlens.experiments.runner import counted_scores

    trials_df, results = store.trials(), store.results()
    done = trials_df[trials_df["status"] == "done"]
    epochs = results[results["epoch"].notna()].groupby("trial")["epoch"].max()
    trials, frames = [], {}
    for t in done.itertuples():
        path = store.trial_dir(int(t.id)) / "scores.csv"
        if not path.is_file() or t.id not in epochs:
            continue
        frames[int(t.id)] = counted_scores(pd.read_csv(path, dtype={"id": str, "attack": str}), path.parent)
        trials.append(Trial(int(t.id), str(t.label), t.config, int(epochs[t.id])))
    return Scores(trials, frames)


Term = tuple[int, int, float]  # (trial id, epoch, coefficient)
Unit = list[list[Term]]  # one configuration: per seed, a linear combination of (trial, epoch) statistics


def _at_last(c: Config) -> Unit:
    return [[(t.id, c.last, 1.0)] for t in c.trials]


def _contrast(
    scores: Scores, units: list[Unit], weights, measure: str, attack: str, what: str, direction: int = 1, ab=None
) -> Check:
    """A :class:`Check` of ``Σ_u w_u · mean over seeds of unit u``, paired over the texts.

    Each replicate resamples the texts once for every trial and, within each unit of several seeds, the seeds
    (with replacement), so the interval covers both text sampling and training randomness."""
    keys = sorted({(t, e) for unit in units for seed in unit for t, e, _ in seed})
    pos = {k: i for i, k in enumerate(keys)}
    rows = np.stack([scores.row(t, e, measure, attack) for t, e in keys])
    statistic = "auc" if measure == "auc" else "gap"  # gap and share: members' mean minus non-members'
    point, reps, _ = replicates(rows, scores.n_members, statistic=statistic, n_boot=N_BOOT, seed=0)
    rng = np.random.default_rng(1)
    unit_point, unit_reps = np.empty(len(units)), np.empty((len(units), reps.shape[1]))
    for u, unit in enumerate(units):
        seed_point = np.array([sum(c * point[pos[t, e]] for t, e, c in seed) for seed in unit])  # (S,)
        seed_reps = np.stack([sum(c * reps[pos[t, e]] for t, e, c in seed) for seed in unit])  # (S, B)
        unit_point[u] = seed_point.mean()
        draw = rng.integers(0, len(unit), (reps.shape[1], len(unit)))  # seeds resampled per replicate
        unit_reps[u] = seed_reps[draw, np.arange(reps.shape[1])[:, None]].mean(axis=1)
    a, b = (float(v) for v in ab(unit_point)) if ab else (float("nan"), float("nan"))
    difference = contrast(unit_point, unit_reps, weights, metric=measure, a=a, b=b)
    return Check(measure, what, difference, direction, seeds=min(len(unit) for unit in units))


def _groups(scores: Scores, high: list[Config], low: list[Config], attack: str, names: tuple[str, str]) -> dict:
    """mean(high) − mean(low) at each configuration's last epoch, for both measures."""
    units = [_at_last(c) for c in high + low]
    w = group_weights(len(units), list(range(len(high))), list(range(len(high), len(units))))
    h = len(high)

    def ab(point: np.ndarray) -> tuple[float, float]:
        return float(point[:h].mean()), float(point[h:].mean())

    what = f"{names[0]} − {names[1]}"
    return {m: [_contrast(scores, units, w, m, attack, what, ab=ab)] for m in _measures(scores, units)}


def _measures(scores: Scores, units: list[Unit]) -> tuple[str, ...]:
    """:data:`MEASURES`, plus the extraction share where every trial and epoch of ``units`` has it."""
    cells = {(t, e) for unit in units for seed in unit for t, e, _ in seed}
    m = scores.n_members

    def extracted(t: int, e: int) -> bool:  # some member and some non-member have a share
        row = scores.row(t, e, SHARE_MEASURE, "") if scores.has(t, e, SHARE) else np.array([np.nan])
        return bool(np.isfinite(row[:m]).any() and np.isfinite(row[m:]).any())

    return ALL_MEASURES if all(extracted(t, e) for t, e in cells) else MEASURES


def _group_finding(
    f: Finding, scores: Scores, groups: tuple[list[Config], list[Config]], attack: str, names: tuple[str, str]
) -> Finding:
    """``f`` tested as mean(high group) − mean(low group), or "not measured" without both groups."""
    high, low = groups
    if high and low and scores.same_texts:
        f.tests = _groups(scores, high, low, attack, names)
    else:
        f.fixed = "not measured"
    return f


def _usable(scores: Scores, attack: str) -> list[Config]:
    return [c for c in scores.configs if c.last > 0 and all(scores.has(t.id, c.last, attack) for t in c.trials)]


def savine_findings(scores: Scores) -> list[Finding]:
    """Study B's findings (1)-(3) on the reference attack's AUC and on the loss gap."""
    attack = STUDY_ATTACK["savine2025"]
    lora = [t for t in _usable(scores, attack) if t.method == "lora"]
    one = {x: [t for t in lora if t.targets == [x]] for x in "qkvo"}
    ranks = [{t.rank for t in ts} for ts in one.values() if ts]
    shared = set.intersection(*ranks) if ranks else set()  # (1) compares the matrices at equal ranks
    one = {x: [t for t in ts if t.rank in shared] for x, ts in one.items()}
    f1 = _group_finding(
        Finding(
            "(1)",
            "W_V and W_O memorize more than W_Q and W_K at equal rank",
            "rank 4: W_V .83, W_O .80 vs W_Q .72, W_K .71 (reference AUC)",
        ),
        scores,
        (one["v"] + one["o"], one["q"] + one["k"]),
        attack,
        ("mean V,O", "mean Q,K"),
    )
    f3 = Finding(
        "(3)",
        "higher rank → more memorization, with diminishing returns",
        "AUC .909 at r=1 → .945 at r=128, plateau near r=50",
        note="With three ranks only the rise is tested, not the plateau (the study swept ranks 1 to 512).",
    )
    ranks = sorted({t.rank for t in lora})
    if len(ranks) >= 2 and scores.same_texts:
        units = [_at_last(c) for c in lora]
        w = slope_weights([math.log2(c.rank) for c in lora], groups=[",".join(c.targets) for c in lora])
        what = "slope per doubling of the rank (within matrices)"
        f3.tests = {m: [_contrast(scores, units, w, m, attack, what)] for m in _measures(scores, units)}
        # the mean AUC per rank within the matrices swept over several ranks (others would shift one rank's mean)
        swept = [c for c in lora if len({x.rank for x in lora if x.targets == c.targets}) > 1]
        per_rank = {r: np.mean([_stat(scores, c, "auc", attack) for c in swept if c.rank == r]) for r in ranks
                    if any(c.rank == r for c in swept)}  # fmt: skip
        names = sorted({",".join(c.targets) for c in swept})
        f3.described = f"mean AUC ({'; '.join(names)}) " + ", ".join(f"r={r}: {a:.3f}" for r, a in per_rank.items())
    else:
        f3.fixed = "not measured"
    return [f1, _perplexity_finding(scores, lora, attack), f3]


def _stat(scores: Scores, c: Config, measure: str, attack: str) -> float:
    """A configuration's AUC or loss gap at its last epoch (point estimate, mean over seeds)."""
    rows = np.stack([scores.row(t.id, c.last, measure, attack) for t in c.trials])
    point, _, _ = replicates(rows, scores.n_members, statistic=measure, n_boot=0)
    return float(point.mean())


SHARE = extraction_label("greedy", "ngram_share")  # Study B's prefix-generation measure, per text
MIN_EXTRACTED = 20  # members with an extraction score needed to fit (2)


def _perplexity_finding(scores: Scores, lora: list[Config], attack: str) -> Finding:
    """(2) on a measure that does not contain the perplexities: each extracted member's greedy share of n-gram
    (Study B's prefix-generation memorization) against its fine-tuned and its base log-perplexity, in the
    trial with the highest AUC. Tested: the slope against the fine-tuned log-PPL (published: negative) and
    R²(fine-tuned) − R²(base) (published: positive), each with a bootstrap over the texts."""
    f = Finding(
        "(2)",
        "lower fine-tuned perplexity goes with more memorization; base perplexity does not",
        "R² = 0.135 (negative slope) vs fine-tuned PPL; R² = 0.004 vs base PPL",
        note=(
            "(2) is tested on the greedy share of n-gram of each extracted member, not on an attack score: the "
            "reference score L_base − L_ft and the loss gap contain the perplexities they would be regressed on, "
            "so a slope would appear by construction. The loss-gap column has no test of (2)."
        ),
    )
    best = max(lora, key=lambda c: _stat(scores, c, "auc", attack)).first if lora else None
    m = scores.n_members
    if best is None or not all(scores.has(best.id, e, a) for e, a in ((best.last, SHARE), (best.last, "nll"))):
        f.fixed = "not measured"
        f.note = "(2) needs extraction in the trials (the per-text share of n-gram in scores.csv)."
        return f
    share = scores.row(best.id, best.last, "auc", SHARE)[:m]
    tuned = scores.row(best.id, best.last, "auc", "nll")[:m]
    base = scores.row(best.id, 0, "auc", "nll")[:m]
    ok = np.isfinite(share) & np.isfinite(tuned) & np.isfinite(base)
    if ok.sum() < MIN_EXTRACTED or np.ptp(share[ok]) == 0:
        f.fixed = "not measured"
        f.note = f"(2) needs at least {MIN_EXTRACTED} extracted members with varying shares; {int(ok.sum())} here."
        return f
    y, xs = share[ok], np.stack([tuned[ok], base[ok]])  # (n,), (2, n)
    rng = np.random.default_rng(0)
    draw = np.concatenate([np.arange(len(y))[None], rng.integers(0, len(y), (N_BOOT, len(y)))])  # row 0: the data
    slope, r2 = _fits(xs[:, draw], y[draw])  # (2, 1 + B) each
    f.tests["auc"] = [
        Check("auc", "slope of the share per nat of fine-tuned log-PPL", _boot(slope[:1], [1.0], "slope"), -1),
        Check("auc", "R² vs fine-tuned − R² vs base log-PPL", _boot(r2, [1.0, -1.0], "r2"), 1),
    ]
    f.described = (
        f"{best.label}, {len(y)} extracted members: R² = {r2[0, 0]:.3f} (slope {slope[0, 0]:+.3f}) vs fine-tuned "
        f"log-PPL; R² = {r2[1, 0]:.3f} (slope {slope[1, 0]:+.3f}) vs base"
    )
    return f


def _fits(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope and R² of ``y`` (R, n) on each of ``x`` (K, R, n), per row: two (K, R) arrays."""
    xc, yc = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    sxy, sxx, syy = (xc * yc).sum(-1), (xc * xc).sum(-1), (yc * yc).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sxy / sxx, sxy**2 / (sxx * syy)


def _boot(values: np.ndarray, weights: list[float], metric: str) -> Difference:
    """:func:`contrast` of statistics whose column 0 is the point estimate and the rest bootstrap replicates."""
    return contrast(values[:, 0], values[:, 1:], weights, metric=metric, method="bootstrap over texts")


def hou_findings(scores: Scores) -> list[Finding]:
    """Study A's findings (1), (2), (5) and (3) on the LOSS attack's AUC and on the loss gap."""
    from memlens.experiments.presets import SIZE_MODEL

    attack = STUDY_ATTACK["hou2025"]
    usable = _usable(scores, attack)
    main = Counter(t.model for t in usable).most_common(1)[0][0] if usable else None
    larger = [t for t in usable if t.model != main]
    trials = [t for t in usable if t.model == main]
    param = [t for t in trials if t.parameter_based]
    prompt = [t for t in trials if not t.parameter_based]
    paired = scores.same_texts
    f1 = _group_finding(
        Finding(
            "(1)",
            "parameter-based methods memorize more than prompt-based ones",
            "LLaMA2-7B, Wikitext LOSS AUC: FT head .889, LoRA .787 vs prefix .484, prompt .478, P-tuning .487",
        ),
        scores,
        (param, prompt),
        attack,
        ("mean parameter-based", "mean prompt-based"),
    )
    f2 = Finding(
        "(2)",
        "parameter-based memorization grows over epochs; prompt-based stays flat",
        "Figures 2–3 of the study",
        note="(2) is tested as the difference of the two groups' mean change from epoch 1 to the last epoch.",
    )
    grow = [c for c in param if c.last >= 2 and all(scores.has(t.id, 1, attack) for t in c.trials)]
    flat = [c for c in prompt if c.last >= 2 and all(scores.has(t.id, 1, attack) for t in c.trials)]
    if grow and flat and paired:
        units = [[[(t.id, c.last, 1.0), (t.id, 1, -1.0)] for t in c.trials] for c in grow + flat]
        w = group_weights(len(units), list(range(len(grow))), list(range(len(grow), len(units))))
        what = "growth parameter-based − growth prompt-based"
        f2.tests = {m: [_contrast(scores, units, w, m, attack, what)] for m in MEASURES}
    else:
        f2.fixed = "not measured"
    place = {c.targets[0]: c for c in trials if c.method == "lora" and len(c.targets) == 1}
    f5 = Finding("(5)", "LoRA placement: attention < MLP < both", "Wikitext LOSS: .552 < .579 < .616")
    if {"attn", "mlp", "all"} <= set(place) and paired:
        steps = (("mlp", "attn"), ("all", "mlp"))
        f5.tests = {
            m: [
                _contrast(
                    scores, [_at_last(place[h]), _at_last(place[lo])], [1, -1], m, attack, f"{h} − {lo}", ab=tuple
                )
                for h, lo in steps
            ]
            for m in MEASURES
        }
    else:
        f5.fixed = "not measured"
    f3 = Finding("(3)", "larger models memorize more (parameter-based)", "GPT-2 117M → LLaMA2-7B")
    if larger and "all" in place and paired:
        big, small = larger[0], place["all"]
        what = f"{big.label} − {small.label}"
        f3.tests = {
            m: [_contrast(scores, [_at_last(big), _at_last(small)], [1, -1], m, attack, what, ab=tuple)]
            for m in MEASURES
        }
        f3.fixed = "confounded"
        f3.note = (
            f"(3) compares two different pre-trained models ({big.model} and {small.model}), not two sizes of one "
            "family: size is not the only difference (for the preset: Gemma-3-270M base with a 262k-token vocabulary "
            "vs SmolLM2-135M-Instruct), and loss gaps in nats per token of different tokenizers are not on one scale."
        )
    else:
        f3.fixed = "not measured"
        f3.described = f"needs the {SIZE_MODEL} trial (see `memlens models list`)"
    return [f1, f2, f5, f3]


FINDINGS = {"savine2025": savine_findings, "hou2025": hou_findings}


def evaluate_findings(name: str, scores: Scores) -> list[Finding]:
    """The preset's findings with Holm-adjusted p-values, one family per measure (``fixed`` findings apart:
    their tests keep their unadjusted p-values)."""
    findings = FINDINGS[name](scores)
    for m in ALL_MEASURES:
        family = [t for f in findings if not f.fixed for t in f.tests.get(m, [])]
        adjusted = holm([t.difference.p_value if t.difference.p_value is not None else 1.0 for t in family])
        for t, p in zip(family, adjusted, strict=True):
            t.p_holm = p
    for f in findings:
        if f.fixed:
            for tests in f.tests.values():
                tests[:] = [replace(t, p_holm=float("nan")) for t in tests]
    return findings


FINDING_COLUMNS = [  # FOLDER-findings.csv: one row per tested difference (or per untested verdict)
    "finding", "claim", "measure", "verdict", "what", "metric", "direction", "a", "b", "diff", "ci_low",
    "ci_high", "p_value", "p_holm", "check_verdict", "members", "nonmembers", "seeds",
]  # fmt: skip


def findings_frame(findings: list[Finding], scores: Scores) -> pd.DataFrame:
    """The findings as a tidy table (:data:`FINDING_COLUMNS`): per finding and measure (the column it fills in
    findings.md), one row per tested difference — its ``metric`` (``auc``, ``gap``, ``share``; ``slope`` and
    ``r2`` for Study B's (2), a regression on the extraction share shown in the AUC column), point estimate,
    95% CI (NaN: not estimable), raw and Holm-adjusted p-value, the check's verdict beside the finding's (a
    ``confounded`` finding's checks read ``confounded`` too) and ``seeds``, the fewest training seeds of a
    configuration it compares — or one row with the verdict alone where nothing was tested (``not
    measured``). ``direction`` is the published sign (+1: ``diff > 0`` expected); ``a`` and ``b`` the two
    sides of a two-sided contrast (NaN for a slope or a difference of growths). Measures: those of
    :func:`family_sizes` (the extraction share only where it was measured)."""
    import pandas as pd

    rows = []
    for f in findings:
        for m in family_sizes(findings):
            common = {"finding": f.key, "claim": f.title, "measure": m, "verdict": f.verdict(m),
                      "members": scores.n_members, "nonmembers": scores.n_nonmembers}  # fmt: skip
            rows += [
                common
                | {"what": c.what, "metric": c.difference.metric, "direction": c.direction, "p_holm": c.p_holm}
                | {k: getattr(c.difference, k) for k in ("a", "b", "diff", "ci_low", "ci_high", "p_value")}
                | {"check_verdict": f.fixed or c.verdict, "seeds": c.seeds}
                for c in f.tests.get(m, [])
            ] or [common]
    return pd.DataFrame(rows).reindex(columns=FINDING_COLUMNS).astype({"direction": "Int64", "seeds": "Int64"})


def family_sizes(findings: list[Finding]) -> dict[str, int]:
    sizes = {m: sum(len(f.tests.get(m, [])) for f in findings if not f.fixed) for m in ALL_MEASURES}
    return {m: n for m, n in sizes.items() if m in MEASURES or n}


@dataclass(frozen=True)
class BaselineComparison:
    """Every configuration against a baseline configuration: ``rows`` of (config, {measure: Check or None})."""

    baseline: Config
    rows: list[tuple[Config, dict[str, Check | None]]]


def against_baseline(scores: Scores, attack: str) -> BaselineComparison | None:
    """Every configuration against the first (the baseline), each at its last epoch, on the attack's AUC and
    on the loss gap: paired differences ``config − baseline`` (seeds averaged and resampled) with Holm over the
    comparisons of each measure. A measure a configuration lacks (no fine-tuned epoch, no such attack) is
    ``None``; ``None`` overall when there are fewer than two configurations or they scored different texts."""
    if len(scores.configs) < 2 or not scores.same_texts:
        return None
    base = scores.configs[0]
    rows: list[tuple[Config, dict[str, Check | None]]] = []
    for c in scores.configs[1:]:
        checks: dict[str, Check | None] = {}
        for m in MEASURES:
            need = attack if m == "auc" else "nll"
            ok = all(x.last > 0 and all(scores.has(t.id, x.last, need) for t in x.trials) for x in (c, base))
            units = [_at_last(c), _at_last(base)]
            checks[m] = _contrast(scores, units, [1, -1], m, attack, "config − baseline", ab=tuple) if ok else None
        rows.append((c, checks))
    for m in MEASURES:
        family = [x for _, checks in rows if (x := checks[m]) is not None]
        adjusted = holm([x.difference.p_value if x.difference.p_value is not None else 1.0 for x in family])
        for x, p in zip(family, adjusted, strict=True):
            x.p_holm = p
    return BaselineComparison(base, rows)
