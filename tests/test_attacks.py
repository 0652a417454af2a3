"""Every attack against a direct, readable computation from the definitions in docs/methods.md."""

import json
import math
import zlib
from collections import Counter

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, invoke, phee_texts, tiny_config, write_config

from memlens.attacks import ATTACKS, AttackInputs, attack_labels, run_attack
from memlens.attacks.calibrated import first_occurrences, frequencies
from memlens.attacks.min_k import SIGMA_FLOOR, mean_of_lowest
from memlens.attacks.neighbours import SWAP_SHARE, neighbours, vocabulary
from memlens.errors import MemlensError
from memlens.scoring import score_cached, score_ids, score_texts
from memlens.tokens import encode

TEXTS = [*phee_texts("test", 7), "Rash.", "Severe HEPATOTOXICITY after Valproate in a 3-year-old."]


def token_logprobs(model, ids, prefix=()):
    """ℓ_i, μ_i, σ_i of one sequence, scored alone, for tokens 1..n-1; a prefix (ReCaLL's, with its own start
    token) takes the place of the sequence's start token."""
    x = torch.tensor([[*prefix, *ids[1:]]] if prefix else [ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=x).logits[0].double(), -1)
    rows = []
    for pos in range(max(len(prefix), 1), x.shape[1]):
        dist = logp[pos - 1]
        mu = float((dist.exp() * dist).sum())
        sd = float((dist.exp() * (dist - mu) ** 2).sum().sqrt())
        rows.append((float(dist[x[0, pos]]), mu, sd))
    return rows


def readable_min_k(values, k):
    vals = sorted(values)
    n = max(1, int(k * len(vals)))
    return sum(vals[:n]) / n


@pytest.fixture()
def inputs(tiny):
    tok, model = tiny.tokenizer, tiny.model
    ids = encode(tok, TEXTS, 64).ids
    prefix = encode(tok, ["A prefix of non-member text. "], 64).ids[0]
    target = score_ids(model, ids, tok.pad_token_id, batch_size=4)
    ref = score_ids(model, ids[::-1], tok.pad_token_id).take(np.arange(len(ids))[::-1])  # any other stats will do
    lower = score_texts(model, tok, [t.lower() for t in TEXTS], max_tokens=64)
    recall = score_ids(model, ids, tok.pad_token_id, prefix=prefix)
    token_ids = np.full((len(ids), max(map(len, ids)) - 1), -1)
    for i, seq in enumerate(ids):
        token_ids[i, : len(seq) - 1] = seq[1:]
    frequency = frequencies(encode(tok, phee_texts("dev", 40), 64).ids, len(tok))
    near = score_texts(model, tok, [t for text in TEXTS for t in neighbours_of(text)], max_tokens=64)
    inp = AttackInputs(target, ref, TEXTS, lower, recall, token_ids, frequency, neighbours=near)
    return tiny, ids, prefix, inp


def neighbours_of(text):
    """Three fixed neighbours of ``text``."""
    words = vocabulary(phee_texts("dev", 20))
    return neighbours(text, words, 3, np.random.default_rng(len(text)))


def readable_frequency(corpus_ids, vocab_size):
    counts = Counter(t for seq in corpus_ids for t in seq[1:])
    total = sum(counts.values())
    return {t: (counts[t] + 1) / (total + vocab_size) for t in range(vocab_size)}


def readable_dc_pdd(seq, logprobs, freq, bound=0.01):
    """Each distinct token once (its first occurrence): min(p · −log f, bound), averaged."""
    seen, vals = set(), []
    for token, lp in zip(seq[1:], logprobs, strict=True):
        if token not in seen:
            seen.add(token)
            vals.append(min(math.exp(lp) * -math.log(freq[token]), bound))
    return sum(vals) / len(vals)


def test_every_attack_matches_its_definition(inputs):
    tiny, ids, prefix, inp = inputs
    model, tok = tiny.model, tiny.tokenizer
    lower_ids = encode(tok, [t.lower() for t in TEXTS], 64).ids
    freq = readable_frequency(encode(tok, phee_texts("dev", 40), 64).ids, len(tok))
    assert np.allclose([freq[t] for t in range(len(tok))], inp.token_frequency)
    for i, seq in enumerate(ids):
        rows = token_logprobs(model, seq)
        ll = [r[0] for r in rows]
        z = [(r[0] - r[1]) / max(r[2], SIGMA_FLOOR) for r in rows]
        L = -np.mean(ll)
        L_ref = -np.nanmean(inp.reference.logprob[i])
        L_lower = -np.mean([r[0] for r in token_logprobs(model, lower_ids[i])])
        L_prefixed = -np.mean([r[0] for r in token_logprobs(model, seq, prefix)])
        expected = {
            "loss": -L,
            "reference": L_ref - L,
            "zlib": -L / len(zlib.compress(TEXTS[i].encode())),
            "lowercase": L_lower - L,
            "recall": L_prefixed / L,
            "min_k@0.2": readable_min_k(ll, 0.2),
            "min_k@0.5": readable_min_k(ll, 0.5),
            "min_k_plus@0.2": readable_min_k(z, 0.2),
            "min_k_plus@0.5": readable_min_k(z, 0.5),
            "dc_pdd": readable_dc_pdd(seq, ll, freq),
            "neighbour": np.mean(
                [
                    -np.mean([r[0] for r in token_logprobs(model, s)])
                    for s in encode(tok, neighbours_of(TEXTS[i]), 64).ids
                ]
            )
            - L,
        }
        # RMIA, LiRA (test_references) and the gradient norm (below) need what only a run has
        own_models = [n for n in ATTACKS if not ATTACKS[n].needs & {"references", "gradient_norms"}]
        for label, name, k in attack_labels(own_models, [0.2, 0.5]):
            got = run_attack(name, inp, k)[i]
            assert got == pytest.approx(expected[label], rel=1e-4, abs=1e-5), (label, i)


def test_neighbours_swap_a_tenth_of_the_words_for_other_words_of_the_vocabulary():
    words = vocabulary(phee_texts("dev", 30))
    text = TEXTS[0]
    got = neighbours(text, words, 5, np.random.default_rng(0))
    assert got == neighbours(text, words, 5, np.random.default_rng(0))  # seeded
    n = len(text.split())
    for near in got:
        changed = [(a, b) for a, b in zip(text.split(), near.split(), strict=True) if a != b]
        assert len(changed) == max(1, round(SWAP_SHARE * n)) and all(b in words for _, b in changed)
    assert len(set(got)) > 1
    assert neighbours("", words, 3, np.random.default_rng(0)) == ["", "", ""]  # nothing to swap: copies
    assert neighbours("a b", ["a"], 2, np.random.default_rng(0)) == ["a b", "a b"]  # no other word to swap in


def test_first_occurrences_marks_each_distinct_token_once_per_row():
    ids = np.array([[5, 3, 5, -1], [2, 2, 2, 7], [-1, -1, -1, -1]])
    expected = [[True, True, False, False], [True, False, False, True], [False] * 4]
    assert first_occurrences(ids).tolist() == expected


def test_dc_pdd_rewards_confidence_on_rare_tokens_and_caps_each_token():
    """Two texts, same probabilities: the one whose likely tokens are rare in the reference corpus scores
    higher; a repeated token counts once; a token's contribution never exceeds the bound."""
    from memlens.attacks.calibrated import DC_PDD_BOUND, dc_pdd
    from memlens.scoring.stats import TokenStats

    logprob = np.log(np.array([[0.002, 0.002, 0.5], [0.002, 0.002, 0.5]], dtype=np.float32))
    stats = TokenStats(logprob, logprob, np.ones_like(logprob), np.array([3, 3]))
    freq = np.array([0.5, 0.3, 0.1999, 0.0001])  # token 3 is rare
    ids = np.array([[3, 3, 0], [0, 0, 1]])
    got = dc_pdd(AttackInputs(stats, token_ids=ids, token_frequency=freq))
    rare = min(0.002 * -math.log(1e-4), DC_PDD_BOUND)  # token 3 once, then token 0 (p = 0.5, capped)
    assert got[0] == pytest.approx((rare + DC_PDD_BOUND) / 2, rel=1e-5)
    assert got[1] == pytest.approx((0.002 * -math.log(0.5) + DC_PDD_BOUND) / 2, rel=1e-5)  # token 0 once, 1 capped
    assert got[0] > got[1]


def test_min_k_edge_cases():
    values = np.array([[-1.0, -5.0, -3.0, np.nan], [-2.0, np.nan, np.nan, np.nan], [np.nan] * 4])
    lengths = np.array([3, 1, 0])
    np.testing.assert_allclose(mean_of_lowest(values, lengths, 0.5)[:2], [-5.0, -2.0])  # max(1, floor(1.5)) = 1
    np.testing.assert_allclose(mean_of_lowest(values, lengths, 1.0)[:2], [-3.0, -2.0])
    assert np.isnan(mean_of_lowest(values, lengths, 0.5)[2])
    with pytest.raises(ValueError):
        mean_of_lowest(values, lengths, 0.0)


def test_attacks_are_batch_invariant(tiny):
    ids = encode(tiny.tokenizer, TEXTS, 64).ids
    a = score_ids(tiny.model, ids, tiny.tokenizer.pad_token_id, batch_size=1)
    b = score_ids(tiny.model, ids, tiny.tokenizer.pad_token_id, batch_size=16)
    for label, name, k in attack_labels(["loss", "zlib", "min_k", "min_k_plus"], [0.1, 0.3]):
        np.testing.assert_allclose(
            run_attack(name, AttackInputs(a, texts=TEXTS), k),
            run_attack(name, AttackInputs(b, texts=TEXTS), k),
            atol=1e-5,
            err_msg=label,
        )


def test_missing_inputs_and_k_are_clear_errors(inputs):
    _, _, _, inp = inputs
    with pytest.raises(MemlensError, match="needs reference"):
        run_attack("reference", AttackInputs(inp.target))
    with pytest.raises(MemlensError, match="needs parameter k"):
        run_attack("min_k", inp)
    with pytest.raises(MemlensError, match="unknown attack"):
        run_attack("psychic", inp)


def test_cache_hits_and_is_invalidated_when_adapter_weights_change(tiny, tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model

    monkeypatch.setenv("MEMLENS_CACHE", str(tmp_path))
    ids = encode(tiny.tokenizer, TEXTS, 64).ids
    pad = tiny.tokenizer.pad_token_id
    first, hit1 = score_cached(tiny.model, ids, pad, identity="tiny")
    again, hit2 = score_cached(tiny.model, ids, pad, identity="tiny")
    assert (hit1, hit2) == (False, True)
    np.testing.assert_array_equal(first.logprob, again.logprob)
    model = get_peft_model(tiny.model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    _, hit3 = score_cached(model, ids, pad, identity="tiny")  # new parameter names -> new key
    _, hit4 = score_cached(model, ids, pad, identity="tiny")
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_B" in n).add_(0.01)
    changed, hit5 = score_cached(model, ids, pad, identity="tiny")
    assert (hit3, hit4, hit5) == (False, True, False)
    assert not np.allclose(changed.logprob[np.isfinite(changed.logprob)], again.logprob[np.isfinite(again.logprob)])
    _, hit6 = score_cached(model, ids[:3], pad, identity="tiny")  # other texts -> new key
    assert not hit6


def test_a_new_scoring_version_never_reads_old_entries(tiny, tmp_path, monkeypatch):
    from memlens.scoring import cache

    monkeypatch.setenv("MEMLENS_CACHE", str(tmp_path))
    ids = encode(tiny.tokenizer, TEXTS, 64).ids
    pad = tiny.tokenizer.pad_token_id
    assert score_cached(tiny.model, ids, pad, identity="tiny")[1] is False
    assert score_cached(tiny.model, ids, pad, identity="tiny")[1] is True
    monkeypatch.setattr(cache, "SCORING_VERSION", cache.SCORING_VERSION + 1)
    assert score_cached(tiny.model, ids, pad, identity="tiny")[1] is False


@pytest.mark.parametrize("corpus", [None, "validation", "pool"])
def test_dc_pdd_runs_from_the_cli_with_each_frequency_corpus(tiny_dir, tmp_path, corpus):
    attacks = {"names": ["loss", "dc_pdd"]} | ({"frequency_corpus": corpus} if corpus else {})
    cfg = tiny_config(tiny_dir, tmp_path / "out", attacks=attacks)
    result = invoke("run", write_config(tmp_path / "c.toml", cfg), "--quiet")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["records"]
    aucs = {r["epoch"]: r for r in rows if r["attack"] == "dc_pdd" and r["metric"] == "auc"}
    assert set(aucs) == {0, 1} and all(0 <= r["value"] <= 1 and r["ci_low"] <= r["ci_high"] for r in aucs.values())
    assert "dc_pdd" in result.stdout


def test_a_missing_frequency_corpus_is_one_clear_error(tiny_dir, tmp_path):
    attacks = {"names": ["dc_pdd"], "frequency_corpus": str(tmp_path / "nope.jsonl")}
    cfg = tiny_config(tiny_dir, tmp_path / "out", attacks=attacks)
    result = invoke("run", write_config(tmp_path / "c.toml", cfg), "--quiet")
    assert_one_line_error(result, "frequency_corpus .* is neither sotu, validation, pool nor an existing file")
    assert not (tmp_path / "out").exists()


def test_the_neighbourhood_attack_runs_from_the_cli_and_refuses_too_few_neighbours(tiny_dir, tmp_path):
    cfg = tiny_config(tiny_dir, tmp_path / "out", attacks={"names": ["loss", "neighbour"], "neighbours": 4})
    result = invoke("run", write_config(tmp_path / "c.toml", cfg), "--quiet")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["records"]
    aucs = {r["epoch"]: r for r in rows if r["attack"] == "neighbour" and r["metric"] == "auc"}
    assert set(aucs) == {0, 1} and all(r["ci_low"] <= r["value"] <= r["ci_high"] for r in aucs.values())
    cfg["attacks"]["neighbours"] = 1
    cfg["output"]["dir"] = str(tmp_path / "bad")
    bad = invoke("run", write_config(tmp_path / "bad.toml", cfg))
    assert_one_line_error(bad, "attacks.neighbours.*greater than or equal to 2")
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_gradient_norms_match_one_backward_pass_per_text(tiny_dir, method):
    from memlens.config import TuningConfig
    from memlens.models import load_model
    from memlens.scoring.gradients import gradient_norms
    from memlens.tuning import apply_method

    lm = load_model(str(tiny_dir), device="cpu")
    torch.manual_seed(0)
    model, _ = apply_method(lm.model, TuningConfig(method=method, rank=4, dropout=0.3))
    ids = encode(lm.tokenizer, TEXTS, 64).ids
    starts = [1 + (i % 3) for i in range(len(ids))]
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    model.eval()
    got = gradient_norms(model, ids, lm.tokenizer.pad_token_id, starts=starts, batch_size=4)
    params = [p for p in model.parameters() if p.requires_grad]
    for i, (seq, k) in enumerate(zip(ids, starts, strict=True)):  # the readable way: one text at a time
        logits = model(input_ids=torch.tensor([seq])).logits[0, :-1]
        loss = torch.nn.functional.cross_entropy(logits[k - 1 :], torch.tensor(seq[k:]))
        grads = torch.autograd.grad(loss, params)
        assert got[i] == pytest.approx(float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads))), rel=1e-4)
    assert not model.training and all(p.grad is None for p in params)
    assert all(torch.equal(v, before[k]) for k, v in model.named_parameters())
    assert all(m.p == 0.3 for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p)  # restored
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())  # opacus's hooks removed


def test_the_gradient_norm_attack_runs_after_fine_tuning_only(tiny_dir, tmp_path):
    cfg = tiny_config(
        tiny_dir, tmp_path / "out", tuning={"method": "lora"}, attacks={"names": ["loss", "gradient_norm"]}
    )
    result = invoke("run", write_config(tmp_path / "c.toml", cfg), "--quiet")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["records"]
    aucs = {r["epoch"]: r for r in rows if r["attack"] == "gradient_norm" and r["metric"] == "auc"}
    assert set(aucs) == {1} and aucs[1]["ci_low"] <= aucs[1]["value"] <= aucs[1]["ci_high"]


@pytest.mark.parametrize(
    ("sections", "pattern"),
    [
        ({"tuning": {"method": "ia3"}}, "gradient_norm cannot measure tuning.method 'ia3'"),
        ({"privacy": {"dp": True, "epsilon": 8.0}}, "gradient_norm and DP-SGD both hook"),
    ],
)
def test_gradient_norm_refuses_what_it_cannot_measure(tiny_dir, tmp_path, sections, pattern):
    cfg = tiny_config(tiny_dir, tmp_path / "out", attacks={"names": ["gradient_norm"]}, **sections)
    assert_one_line_error(invoke("run", write_config(tmp_path / "c.toml", cfg)), pattern)
    assert not (tmp_path / "out").exists()
