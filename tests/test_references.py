"""RMIA and LiRA with reference models memlens trains: the arithmetic against direct computations, the
population bookkeeping (no reference trains on a scored text), and the attacks end to end on a tiny model."""

import json

import numpy as np
import pytest
from helpers import assert_one_line_error, invoke, phee_texts, tiny_config, write_config, write_jsonl
from scipy.stats import norm

from memlens.attacks.references import (
    OFFLINE_A,
    lira_scores,
    logit_probability,
    probability,
    rmia_scores,
    tune_offline_a,
)
from memlens.config import parse_config
from memlens.data import load_splits
from memlens.data.audit import normalize
from memlens.experiments.references import plan_population


def readable_rmia(px, refs_x, pz, refs_z, a, gamma):
    """RMIA as the paper writes it: for each x, the share of z with LR(x, z) > γ."""
    out = []
    for i in range(len(px)):
        pr_x = 0.5 * ((1 + a) * np.mean(refs_x[:, i]) + (1 - a))
        wins = 0
        for j in range(len(pz)):
            pr_z = 0.5 * ((1 + a) * np.mean(refs_z[:, j]) + (1 - a))
            wins += (px[i] / pr_x) / (pz[j] / pr_z) > gamma
        out.append(wins / len(pz))
    return np.array(out)


@pytest.mark.parametrize(("a", "gamma"), [(0.3, 1.0), (0.0, 2.0), (1.0, 0.5)])
def test_rmia_is_the_share_of_population_samples_each_text_beats(a, gamma):
    rng = np.random.default_rng(0)
    px, refs_x = rng.uniform(0.05, 0.6, 30), rng.uniform(0.05, 0.6, (3, 30))
    pz, refs_z = rng.uniform(0.05, 0.6, 40), rng.uniform(0.05, 0.6, (3, 40))
    got = rmia_scores(px, refs_x, pz, refs_z, a=a, gamma=gamma)
    np.testing.assert_allclose(got, readable_rmia(px, refs_x, pz, refs_z, a, gamma))
    px[4] = np.nan
    assert np.isnan(rmia_scores(px, refs_x, pz, refs_z, a=a, gamma=gamma)[4])
    with pytest.raises(ValueError, match="0 <= a <= 1"):
        rmia_scores(px, refs_x, pz, refs_z, a=1.5)


def test_rmia_by_hand():
    """Two texts, one reference, a = 1 (Pr = the reference's p): ratios 0.5/0.25 = 2 and 0.2/0.4 = 0.5
    against z's ratios 1, 1.5, 3 — the first beats two of three, the second none."""
    got = rmia_scores(
        np.array([0.5, 0.2]), np.array([[0.25, 0.4]]), np.array([0.3, 0.3, 0.6]), np.array([[0.3, 0.2, 0.2]]), a=1
    )
    np.testing.assert_allclose(got, [2 / 3, 0])


def test_lira_is_a_one_sided_gaussian_statistic_against_the_out_references():
    rng = np.random.default_rng(1)
    target, refs = rng.normal(0, 1, 20), rng.normal(0, 1, (4, 20))
    per = lira_scores(target, refs, per_example=True)
    for i in range(20):
        mu, sd = refs[:, i].mean(), refs[:, i].std(ddof=1)
        assert per[i] == pytest.approx((target[i] - mu) / sd)
        assert norm.cdf(per[i]) == pytest.approx(norm.cdf(target[i], mu, sd))  # 1 − the one-sided p-value
    shared = lira_scores(target, refs)
    dev = refs - refs.mean(axis=0)
    sd = np.sqrt((dev**2).sum() / (dev.size - 20))  # pooled: (K − 1) degrees of freedom per text
    np.testing.assert_allclose(shared, (target - refs.mean(axis=0)) / sd)
    one = lira_scores(target, refs[:1])  # one reference: no spread to measure, the ranking of φ − μ
    np.testing.assert_allclose(one, target - refs[0])
    with pytest.raises(ValueError, match="at least 2"):
        lira_scores(target, refs[:1], per_example=True)


def test_signals_are_geometric_mean_token_probabilities():
    nll = np.array([0.1, 1.0, 3.0])
    np.testing.assert_allclose(probability(nll), np.exp(-nll))
    p = np.exp(-nll)
    np.testing.assert_allclose(logit_probability(nll), np.log(p / (1 - p)))


def test_tuning_a_keeps_the_best_auc_and_the_smallest_a_on_ties():
    rng = np.random.default_rng(2)
    # the pseudo-target's members are likelier under it than its population-wide average predicts
    pin, pout, pz = rng.uniform(0.3, 0.6, 50), rng.uniform(0.1, 0.4, 50), rng.uniform(0.1, 0.4, 80)
    refs_in, refs_out, refs_z = rng.uniform(0.1, 0.6, (1, 50)), rng.uniform(0.1, 0.4, (1, 50)), pz[None] * 0.9
    a, curve = tune_offline_a(pin, pout, refs_in, refs_out, pz, refs_z)
    assert [c[0] for c in curve] == pytest.approx([i / 10 for i in range(11)])
    best = max(c[1] for c in curve)
    assert a == min(c[0] for c in curve if round(c[1], 12) == round(best, 12))


def test_one_reference_model_uses_the_default_a(tiny_dir, tmp_path):
    from memlens.attacks.references import ReferenceSignals
    from memlens.experiments.references import offline_a

    cfg = parse_config(tiny_config(tiny_dir, tmp_path, attacks={"names": ["rmia"], "reference_models": 1}), "t")
    one = ReferenceSignals(np.ones((1, 4)), np.ones((1, 5)))
    assert offline_a(cfg, one, np.ones((1, 0)), 0)[:2] == (
        OFFLINE_A,
        "default",
    )


def test_no_reference_model_trains_on_a_scored_text_or_a_population_sample(tiny_dir, tmp_path):
    members = phee_texts("train", 30)
    population = write_jsonl(tmp_path / "pop.jsonl", phee_texts("dev", 400) + members[:2] + [" ", members[0]])
    cfg = parse_config(
        tiny_config(
            tiny_dir,
            tmp_path / "out",
            attacks={"names": ["rmia"], "reference_models": 3, "population": str(population), "population_size": 50},
        ),
        "t",
    )
    splits = load_splits(cfg.data)
    plan = plan_population(cfg, splits, n_train=24)
    scored = {normalize(t.text) for t in splits.members + splits.nonmembers}
    seen = [{normalize(t.text) for t in texts} for texts in plan.train]
    z = {normalize(t.text) for t in plan.z}
    assert len(plan.z) == 50 and all(len(t) == 24 for t in plan.train) and len(plan.train) == 3
    assert not (z | set().union(*seen)) & scored  # never a scored member or non-member
    assert not z & set().union(*seen)  # no model trains on z
    tune_in = {normalize(t.text) for t in plan.tune_in}
    tune_out = {normalize(t.text) for t in plan.tune_out}
    assert tune_in and len(plan.tune_in) == len(plan.tune_out)
    assert tune_in <= seen[0] and not tune_in & (seen[1] | seen[2])
    assert not tune_out & set().union(*seen, z)
    distinct = {normalize(t) for t in phee_texts("dev", 400) + members[:2]} - scored
    assert plan.pool_size == len(distinct)  # blank, repeated and scored texts are all dropped
    fewer = plan_population(cfg.model_copy(update={"attacks": cfg.attacks.model_copy(update={"reference_models": 2})}),
                            splits, n_train=24)  # fmt: skip
    assert fewer.train == plan.train[:2] and fewer.tune_in == plan.tune_in and fewer.z == plan.z  # cache reuse


def test_the_cost_estimate_counts_the_reference_models(tiny_dir, tmp_path):
    from memlens.experiments.sweep import estimate_seconds

    plain = parse_config(tiny_config(tiny_dir, tmp_path), "t")
    two = parse_config(tiny_config(tiny_dir, tmp_path, attacks={"names": ["lira"], "reference_models": 2}), "t")
    four = parse_config(tiny_config(tiny_dir, tmp_path, attacks={"names": ["lira"], "reference_models": 4}), "t")
    costs = [estimate_seconds(c, 1e8) for c in (plain, two, four)]
    assert 0 < costs[2] - costs[1] <= costs[1] - costs[0]  # two more references; the first two also add z's pass


def _run(tiny_dir, tmp_path, name, **attacks):
    cfg = tiny_config(
        tiny_dir,
        tmp_path / name,
        data={"n_members": 48, "n_nonmembers": 48},
        training={"epochs": 3},
        attacks={"names": ["loss", "rmia", "lira"], "reference_models": 2, "fpr": [0.1]} | attacks,
    )
    result = invoke("run", write_config(tmp_path / f"{name}.toml", cfg))
    assert result.exit_code == 0, result.output
    return result, json.loads((tmp_path / name / "results.json").read_text())


def test_rmia_and_lira_beat_loss_on_an_overfit_tiny_model_and_references_are_cached(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MEMLENS_CACHE", str(tmp_path / "cache"))
    result, res = _run(tiny_dir, tmp_path, "a")
    final = {(r["attack"], r["metric"]): r for r in res["records"] if r["kind"] == "mia" and r["epoch"] == 3}
    for attack in ("rmia", "lira"):
        assert final[(attack, "auc")]["value"] > final[("loss", "auc")]["value"] + 0.05, attack
        assert final[(attack, "tpr")]["value"] > final[("loss", "tpr")]["value"], attack
        assert final[(attack, "auc")]["ci_low"] <= final[(attack, "auc")]["value"] <= final[(attack, "auc")]["ci_high"]
    info = res["reference_models"]
    assert info["k"] == 2 and info["texts_per_model"] == 48 and info["cached"] == [False, False]
    assert info["rmia_a_from"] == "tuned" and len(info["rmia_a_curve"]) == 11 and info["tune_texts"] > 10
    assert "rmia" in result.stdout and "lira" in result.stdout
    assert "reference models: 2 fine-tuned like the target on 48 population texts each" in result.stdout
    again, res2 = _run(tiny_dir, tmp_path, "b")  # same recipe and data: nothing retrained, same numbers
    assert res2["reference_models"]["cached"] == [True, True]
    assert "read from the cache" in again.stderr and "2 of 2 from the cache" in again.stdout
    same = {(r["attack"], r["metric"]): r["value"] for r in res2["records"] if r["kind"] == "mia" and r["epoch"] == 3}
    assert all(same[key] == pytest.approx(r["value"]) for key, r in final.items())
    _, res3 = _run(tiny_dir, tmp_path, "c", rmia_a=0.5)
    assert res3["reference_models"]["rmia_a"] == 0.5 and res3["reference_models"]["rmia_a_from"] == "set"


def test_bad_reference_model_settings_are_one_clear_line(tiny_dir, tmp_path):
    def bad(pattern, command="run", **attacks):
        cfg = tiny_config(tiny_dir, tmp_path / "out", attacks=attacks)
        assert_one_line_error(invoke(command, write_config(tmp_path / "c.toml", cfg)), pattern)
        assert not (tmp_path / "out").exists()

    bad(r"\['rmia'\] need reference models: set attacks.reference_models", names=["loss", "rmia"])
    bad("reference_models trains models only rmia and lira use", names=["loss"], reference_models=2)
    missing = str(tmp_path / "nope.jsonl")
    bad("attacks.population .* neither validation, pool nor an existing file", names=["lira"], reference_models=1,
        population=missing)  # fmt: skip
    small = str(write_jsonl(tmp_path / "small.jsonl", phee_texts("dev", 12)))
    bad("holds 12 texts that are not scored: too few", names=["lira"], reference_models=1, population=small)
    bad("audit of a fine-tune made elsewhere", "audit", names=["lira"], reference_models=1)


def test_a_reference_is_keyed_by_how_it_trains_not_by_when_the_target_is_measured(tiny_dir, tmp_path):
    from memlens.experiments.references import recipe_key
    from memlens.tokens import Encoded

    base = tiny_config(tiny_dir, tmp_path, attacks={"names": ["lira"], "reference_models": 1})
    enc = Encoded([[0, 5, 6], [0, 7]], [False, False])

    def key(**training):
        cfg = parse_config(base | {"training": base["training"] | training}, "t")
        return recipe_key(cfg, "fingerprint", 0, enc, [[0, 1, 2]], None)

    assert key() == key(eval_every=3, eval_at=[1], save_checkpoints=True)  # evaluation only: same reference
    assert key() != key(lr=1e-4) and key() != key(epochs=2)  # another recipe: another reference
