import random

import pytest
from helpers import phee_texts

from memlens.attacks.blind import beats_blind, blind_baseline
from memlens.errors import MemlensError

KEYS = {"auc", "auc_ci_low", "auc_ci_high", "folds", "repeats", "n_members", "n_nonmembers", "n_clusters"}


def support_tickets(n: int, seed: int = 0) -> list[str]:
    """Templated customer-support tickets: a different domain and style from PHEE's case reports."""
    rng = random.Random(seed)
    products = ["wireless router", "coffee maker", "laptop charger", "smart watch", "vacuum cleaner", "desk lamp"]
    problems = ["arrived damaged", "stopped working after a week", "will not turn on", "is missing a part"]
    asks = ["send a replacement", "refund my order", "tell me how to reset it", "escalate this to a manager"]
    return [
        f"Hi, my {rng.choice(products)} (order #{rng.randint(10000, 99999)}) {rng.choice(problems)}. "
        f"Could you please {rng.choice(asks)}? Thanks, {rng.choice(['Ann', 'Bo', 'Carla', 'Dev', 'Eli'])}"
        for _ in range(n)
    ]


def test_random_split_of_one_source_is_at_chance():
    texts = phee_texts("train", 600)
    random.Random(0).shuffle(texts)
    result = blind_baseline(texts[:300], texts[300:], n_boot=500)
    assert set(result) == KEYS
    assert (result["folds"], result["n_members"], result["n_nonmembers"]) == (5, 300, 300)
    assert abs(result["auc"] - 0.5) < 0.1
    assert result["auc_ci_low"] < 0.5 < result["auc_ci_high"]
    assert not beats_blind(0.5, result) and beats_blind(result["auc_ci_high"] + 0.01, result)


def test_two_sources_are_told_apart():
    result = blind_baseline(phee_texts("dev", 150), support_tickets(150), folds=3, n_boot=200)
    assert result["auc"] > 0.9 and result["auc_ci_low"] > 0.8
    assert not beats_blind(0.8, result)
    # which set is called "members" only flips the score direction
    assert blind_baseline(support_tickets(150), phee_texts("dev", 150), folds=3, n_boot=0)["auc"] > 0.9


def test_beats_blind_needs_the_attack_interval_above_the_blind_interval():
    blind = {"auc": 0.55, "auc_ci_low": 0.5, "auc_ci_high": 0.6}
    assert beats_blind(0.61, blind)  # the attack's CI lower bound
    assert not beats_blind(0.6, blind) and not beats_blind(0.58, blind)
    assert beats_blind(None, blind) is None and beats_blind(float("nan"), blind) is None  # no CI: not decided
    assert not beats_blind(0.9, blind | {"auc_ci_high": float("nan")})


def test_repeated_records_do_not_leak_across_folds():
    """Members and non-members from one source, each record repeated three times (as repeated records are in
    real data): folds that split copies let the classifier recognise them; grouped folds stay at chance."""
    texts = phee_texts("train", 240)
    random.Random(1).shuffle(texts)
    members, nonmembers = [t for t in texts[:120] for _ in range(3)], [t for t in texts[120:] for _ in range(3)]
    result = blind_baseline(members, nonmembers, n_boot=300, repeats=2)
    assert result["n_clusters"] <= 240 and result["n_members"] == 360
    assert abs(result["auc"] - 0.5) < 0.1 and result["auc_ci_low"] < 0.5 < result["auc_ci_high"], result


def test_repeated_cross_validation_averages_the_splits():
    texts = phee_texts("train", 200)
    random.Random(2).shuffle(texts)
    single = [blind_baseline(texts[:100], texts[100:], seed=s, repeats=1, n_boot=0)["auc"] for s in range(3)]
    both = blind_baseline(texts[:100], texts[100:], seed=0, repeats=3, n_boot=400)
    assert both["auc"] == pytest.approx(sum(single) / 3) and both["repeats"] == 3
    assert both["auc_ci_low"] < min(single) <= max(single) < both["auc_ci_high"]


def test_too_few_texts_is_a_user_error():
    with pytest.raises(MemlensError, match=r"at least `folds` texts per set \(folds=5, repeats=5, members=4, non-"):
        blind_baseline(phee_texts("dev", 4), phee_texts("test", 10))
    with pytest.raises(MemlensError, match="folds ≥ 2"):
        blind_baseline(phee_texts("dev", 10), phee_texts("test", 10), folds=1)


def test_the_same_split_is_fitted_once_per_process(monkeypatch):
    import memlens.attacks.blind as blind

    texts = phee_texts("train", 40)
    calls = []
    real = blind.cross_val_predict
    monkeypatch.setattr(blind, "cross_val_predict", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = blind_baseline(texts[:20], texts[20:], folds=2, repeats=2, n_boot=50, seed=11)
    again = blind_baseline(texts[:20], texts[20:], folds=2, repeats=2, n_boot=50, seed=11)
    assert first == again and len(calls) == 2  # two repeats, fitted once
    blind_baseline(texts[:20], texts[20:], folds=2, repeats=2, n_boot=50, seed=12)
    assert len(calls) == 4  # other settings: fitted again
