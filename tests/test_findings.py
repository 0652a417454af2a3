"""A preset's findings are paired tests: synthetic per-text scores with known answers (no model needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from memlens.experiments.findings import SHARE, Scores, Trial, evaluate_findings, family_sizes, findings_frame
from memlens.metrics import auc_ci, roc_auc
from memlens.report.findings import disagreements

M = N = 150


def frame(drop: np.ndarray, base: np.ndarray) -> pd.DataFrame:
    """scores.csv of a trial whose fine-tuning lowered each text's loss by ``drop`` (reference = base model);
    the first half of the texts are members."""
    half = len(drop) // 2
    ids = [f"t{i}" for i in range(len(drop))]
    member = [1] * half + [0] * (len(drop) - half)
    parts = []
    for epoch, nll in ((0, base), (1, base - drop)):
        ref = np.zeros(len(drop)) if epoch == 0 else drop
        for attack, score in (("nll", nll), ("loss", -nll), ("reference", ref)):
            parts.append(pd.DataFrame({"id": ids, "member": member, "epoch": epoch, "attack": attack, "score": score}))
    return pd.concat(parts, ignore_index=True)


def lora(i: int, target: str, rank: int = 4) -> Trial:
    config = {"model": {"name": "m"}, "tuning": {"method": "lora", "targets": [target], "rank": rank}}
    return Trial(i, f"{target} r={rank}", config, 1)


def savine_scores(strength: dict[str, float], seed: int = 0, noise: float = 0.15, per_set: int = M) -> Scores:
    """Every trial's loss drop = a shared per-text part (the texts' own ease) + the target's member effect
    + a little trial noise: the trials are strongly paired, as trials on the same texts are."""
    rng = np.random.default_rng(seed)
    truth = np.r_[np.ones(per_set), np.zeros(per_set)]
    shared = rng.normal(size=2 * per_set)
    base = rng.normal(3, 0.3, 2 * per_set)
    trials, frames = [], {}
    for i, (target, s) in enumerate(strength.items(), start=1):
        drop = 0.3 + 0.1 * (shared + s * truth + noise * rng.normal(size=2 * per_set))
        trials.append(lora(i, target))
        frames[i] = frame(drop, base)
    return Scores(trials, frames)


def test_a_paired_difference_holds_where_the_trials_intervals_overlap():
    scores = savine_scores({"q": 0.5, "k": 0.5, "v": 0.7, "o": 0.7})
    aucs = {t.targets[0]: scores.row(t.id, 1, "auc", "reference") for t in scores.trials}
    ci = {k: auc_ci(v[:M], v[M:], n_boot=500) for k, v in aucs.items()}
    point = {k: roc_auc(v[:M], v[M:]) for k, v in aucs.items()}
    assert min(ci["v"][0], ci["o"][0]) < max(point["q"], point["k"])  # the old rule: "inconclusive (CIs overlap)"
    f1 = evaluate_findings("savine2025", scores)[0]
    t = f1.tests["auc"][0]
    assert t.difference.diff == pytest.approx((point["v"] + point["o"] - point["q"] - point["k"]) / 2)
    assert t.difference.ci_low > 0 and f1.verdict("auc") == "holds"
    assert (t.difference.a, t.difference.b) == pytest.approx(
        ((point["v"] + point["o"]) / 2, (point["q"] + point["k"]) / 2)
    )
    assert f1.verdict("gap") == "holds" and "p_Holm" in f1.measured("auc")


def test_the_reverse_is_called_reversed():
    f1 = evaluate_findings("savine2025", savine_scores({"q": 0.8, "k": 0.8, "v": 0.5, "o": 0.5}))[0]
    assert f1.verdict("auc") == "reversed" and f1.tests["auc"][0].difference.ci_high < 0


def test_without_an_effect_verdicts_are_false_about_five_percent_of_the_time(monkeypatch):
    import memlens.experiments.findings as findings

    monkeypatch.setattr(findings, "N_BOOT", 500)
    runs = [
        evaluate_findings("savine2025", savine_scores(dict.fromkeys("qkvo", 0.6), seed=s, noise=0.3))[0]
        for s in range(30)
    ]
    for measure in ("auc", "gap"):
        false = sum(f.verdict(measure) != "inconclusive" for f in runs)
        assert false <= 5, (measure, false)  # Binomial(30, 0.05): P(≥ 6) ≈ 0.003


def test_holm_counts_the_family_and_adjusts_upward():
    findings = evaluate_findings("savine2025", savine_scores({"q": 0.5, "k": 0.5, "v": 0.7, "o": 0.7}))
    assert family_sizes(findings) == {"auc": 1, "gap": 1}  # (3) needs two ranks, (2) an extraction
    assert findings[1].verdict("auc") == "not measured"
    assert findings[2].verdict("auc") == "not measured"
    t = findings[0].tests["auc"][0]
    assert t.p_holm == pytest.approx(t.difference.p_value)  # a family of one: no adjustment


def test_rank_slope_is_the_least_squares_slope_of_the_aucs():
    rng = np.random.default_rng(2)
    truth = np.r_[np.ones(M), np.zeros(N)]
    shared, base = rng.normal(size=M + N), rng.normal(3, 0.3, M + N)
    trials, frames = [], {}
    for i, (target, rank) in enumerate([(t, r) for t in "qv" for r in (1, 2, 4)], start=1):
        trials.append(lora(i, target, rank))
        frames[i] = frame(0.3 + 0.1 * (shared + 0.2 * np.log2(rank) * truth + 0.2 * rng.normal(size=M + N)), base)
    scores = Scores(trials, frames)
    f3 = evaluate_findings("savine2025", scores)[2]
    aucs = [roc_auc(v[:M], v[M:]) for v in (scores.row(t.id, 1, "auc", "reference") for t in trials)]
    slope = np.polyfit([np.log2(t.rank) for t in trials], aucs, 1)[0]
    assert f3.tests["auc"][0].difference.diff == pytest.approx(slope) and f3.verdict("auc") == "holds"
    assert family_sizes(evaluate_findings("savine2025", scores)) == {"auc": 2, "gap": 2}


def test_auc_and_gap_disagree_and_the_findings_say_so():
    """Q,K: small, consistent member drops (high AUC, small gap); V,O: large, uneven drops (larger gap, lower
    AUC) — the pattern memlens measured on the savine2025 tiny preset."""
    rng = np.random.default_rng(4)
    truth = np.r_[np.ones(M), np.zeros(N)]
    base = rng.normal(3, 0.3, M + N)
    trials, frames = [], {}
    for i, target in enumerate("qkvo", start=1):
        if target in "qk":
            drop = 0.05 + 0.05 * truth + 0.03 * rng.normal(size=M + N)
        else:
            drop = 0.40 + 0.20 * truth + 0.60 * rng.normal(size=M + N)
        trials.append(lora(i, target))
        frames[i] = frame(drop, base)
    findings = evaluate_findings("savine2025", Scores(trials, frames))
    assert findings[0].verdict("auc") == "reversed" and findings[0].verdict("gap") == "holds"
    assert disagreements(findings) == [
        "(1): the two measures disagree — AUC: reversed, loss gap: holds. AUC measures how well the per-text loss "
        "drops separate members from non-members; the gap, how much more the members' loss fell on average."
    ]


def test_texts_that_differ_between_trials_are_not_compared():
    scores = savine_scores({"q": 0.5, "k": 0.5, "v": 0.7, "o": 0.7})
    frames = {t.id: scores._frames[t.id] for t in scores.trials}
    frames[4] = frames[4][frames[4]["id"] != "t0"]
    assert evaluate_findings("savine2025", Scores(scores.trials, frames))[0].verdict("auc") == "not measured"


def test_trials_that_differ_only_in_seed_are_one_configuration_and_seed_variation_widens_the_interval():
    """V,O beat Q,K on seeds 0 and 2 but lose on seed 1: one seed alone says "holds"; the three seeds together,
    resampled as well as the texts, cannot tell."""
    rng = np.random.default_rng(6)
    truth = np.r_[np.ones(M), np.zeros(N)]
    shared, base = rng.normal(size=M + N), rng.normal(3, 0.3, M + N)
    trials, frames = [], {}
    for seed, (vo, qk) in enumerate([(0.9, 0.5), (0.5, 0.9), (0.9, 0.5)]):
        for target in "qkvo":
            t = lora(len(trials) + 1, target)
            config = t.config | {"training": {"seed": seed}}
            trials.append(Trial(t.id, f"targets={target} seed={seed}", config, 1))
            s = vo if target in "vo" else qk
            frames[t.id] = frame(0.3 + 0.1 * (shared + s * truth + 0.15 * rng.normal(size=M + N)), base)
    scores = Scores(trials, frames)
    assert [c.seeds for c in scores.configs] == [3, 3, 3, 3]
    assert [c.label for c in scores.configs] == ["targets=q", "targets=k", "targets=v", "targets=o"]
    together = evaluate_findings("savine2025", scores)[0]
    seed0 = [t for t in trials if t.config["training"]["seed"] == 0]
    alone = evaluate_findings("savine2025", Scores(seed0, {t.id: frames[t.id] for t in seed0}))[0]
    assert alone.verdict("auc") == "holds" and together.verdict("auc") == "inconclusive"
    a, b = (f.tests["auc"][0].difference for f in (alone, together))
    assert b.ci_high - b.ci_low > 2 * (a.ci_high - a.ci_low)


def with_shares(scores: Scores, coupling: float, seed: int = 0) -> Scores:
    """``scores`` plus each member's greedy share of n-gram at epoch 1: ``coupling`` × (its fine-tuned loss,
    centred) + noise, for the first 100 members (the rest were not extracted)."""
    rng = np.random.default_rng(seed + 100)  # not savine_scores' stream
    frames = {}
    for t in scores.trials:
        f = scores._frames[t.id]
        nll = f[(f["attack"] == "nll") & (f["epoch"] == 1) & (f["member"] == 1)].iloc[:100]
        share = np.clip(0.4 + coupling * (nll["score"] - nll["score"].mean()) + rng.normal(0, 0.05, len(nll)), 0, 1)
        extra = nll.assign(attack=SHARE, score=share.to_numpy())
        frames[t.id] = pd.concat([f, extra], ignore_index=True)
    return Scores(scores.trials, frames)


@pytest.mark.parametrize(("coupling", "expected"), [(-0.3, "holds"), (0.0, "inconclusive")])
def test_perplexity_finding_regresses_the_extraction_share_with_bootstrap_intervals(coupling, expected):
    strength = {"q": 0.5, "k": 0.5, "v": 0.7, "o": 0.7}
    findings = evaluate_findings("savine2025", with_shares(savine_scores(strength), coupling))
    f = findings[1]
    assert f.verdict("auc") == expected and f.verdict("gap") == "not measured"
    slope, r2 = f.tests["auc"]
    assert slope.direction == -1 and slope.difference.ci_low < slope.difference.diff < slope.difference.ci_high
    assert r2.direction == 1 and r2.what.startswith("R² vs fine-tuned − R² vs base")
    assert "100 extracted members" in f.described
    assert not [d for d in disagreements(findings) if d.startswith("(2)")]  # no gap test of (2): nothing to compare
    assert family_sizes(findings)["auc"] == 3  # (1) and (2)'s two tests, Holm-adjusted together


def test_the_matrix_finding_is_also_tested_on_the_extraction_share():
    """Study B's prefix-generation measure: members' mean share of n-gram minus non-members', per trial; V,O
    trials regurgitate more here, so (1) holds on the share too, in a family of its own."""
    rng = np.random.default_rng(5)
    scores = savine_scores({"q": 0.5, "k": 0.5, "v": 0.7, "o": 0.7})
    frames = {}
    for t in scores.trials:
        f = scores._frames[t.id]
        texts = f[(f["attack"] == "nll") & (f["epoch"] == 1)].iloc[::2]  # half the texts were extracted
        boost = 0.1 * (t.targets[0] in "vo") * texts["member"].to_numpy()
        share = np.clip(0.3 + boost + rng.normal(0, 0.05, len(texts)), 0, 1)
        frames[t.id] = pd.concat([f, texts.assign(attack=SHARE, score=share)], ignore_index=True)
    findings = evaluate_findings("savine2025", Scores(scores.trials, frames))
    assert family_sizes(findings) == {"auc": 3, "gap": 1, "share": 1}  # auc: (1) and (2)'s two
    (check,) = findings[0].tests["share"]
    assert findings[0].verdict("share") == "holds" and check.difference.diff == pytest.approx(0.1, abs=0.02)
    # the same findings as tidy rows (FOLDER-findings.csv): one per tested difference, or a verdict-only row
    rows = findings_frame(findings, Scores(scores.trials, frames)).set_index(["finding", "measure", "metric"])
    assert list(rows.index.get_level_values("finding").unique()) == ["(1)", "(2)", "(3)"]
    share = rows.loc[("(1)", "share", "share")]
    assert share["diff"] == check.difference.diff and share["a"] - share["b"] == pytest.approx(share["diff"])
    assert share["ci_low"] < share["diff"] < share["ci_high"] and share["p_holm"] >= share["p_value"]
    assert (share["verdict"], share["check_verdict"], share["direction"], share["seeds"]) == ("holds", "holds", 1, 1)
    assert share["members"] == share["nonmembers"] == M
    regression = rows.loc[("(2)", "auc")]  # (2)'s slope and R² difference fill the AUC column
    assert sorted(regression.index) == ["r2", "slope"] and regression.loc["slope", "direction"] == -1
    assert regression["a"].isna().all()  # no two sides
    untested = rows.loc["(3)"].reset_index()  # one rank only: (3) not measured, a row per measure
    assert untested["measure"].tolist() == ["auc", "gap", "share"] and untested["metric"].isna().all()
    assert (untested["verdict"] == "not measured").all() and untested[["what", "diff", "seeds"]].isna().all().all()
    gap = rows.loc[("(2)", "gap")].reset_index()
    assert gap["verdict"].tolist() == ["not measured"] and gap["direction"].isna().all()


def test_the_per_rank_means_come_from_the_matrices_swept_over_ranks():
    """savine2025 small: Q, K, V, O at rank 4 and V also at 1, 16, 64 — rank 4's mean must be V's alone, not
    pulled by the matrices that have no rank series."""
    rng = np.random.default_rng(3)
    truth = np.r_[np.ones(M), np.zeros(N)]
    shared, base = rng.normal(size=M + N), rng.normal(3, 0.3, M + N)
    design = [("q", 4, 2.0), ("k", 4, 2.0), ("o", 4, 2.0), ("v", 4, 0.0), ("v", 1, 0.0), ("v", 16, 0.0)]
    trials, frames = [], {}
    for i, (target, rank, effect) in enumerate(design, start=1):
        trials.append(lora(i, target, rank))
        frames[i] = frame(0.3 + 0.1 * (shared + effect * truth + 0.2 * rng.normal(size=M + N)), base)
    scores = Scores(trials, frames)
    f3 = evaluate_findings("savine2025", scores)[2]
    auc = {t.rank: roc_auc(v[:M], v[M:]) for t in trials[3:] for v in [scores.row(t.id, 1, "auc", "reference")]}
    assert f3.described == "mean AUC (v) " + ", ".join(f"r={r}: {auc[r]:.3f}" for r in (1, 4, 16))
