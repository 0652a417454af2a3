import numpy as np
import pytest
import torch
from helpers import phee_texts

from memlens.config import TrainingConfig, TuningConfig
from memlens.data import Text
from memlens.errors import MemlensError
from memlens.extraction import (
    Decoding,
    aggregate,
    bleu,
    canary_report,
    exact_match,
    exposure,
    extract,
    generate_suffixes,
    insert,
    longest_common_ngram,
    make_canaries,
    ngram_share,
    rouge_l,
    score_pair,
    secret_spans,
    split_prefix,
    temperature_sweep,
    token_accuracy,
)
from memlens.models import load_model
from memlens.tokens import encode
from memlens.tuning import apply_method, train

# ---------------------------------------------------------------- metrics


def test_token_metrics_on_known_lists():
    ref = [1, 2, 3, 4, 5, 6]
    assert exact_match(ref, ref) and not exact_match([1, 2, 3, 4, 5, 7], ref) and not exact_match([1, 2, 3], ref)
    assert token_accuracy([1, 9, 3, 9, 5, 9], ref) == 0.5
    assert token_accuracy([1, 2, 3], ref) == 0.5  # the three missing positions count as wrong
    assert token_accuracy([2, 3, 4, 5, 6, 7], ref) == 0.0  # shifted by one: nothing in place
    assert longest_common_ngram([2, 3, 4, 5, 6, 7], ref) == 5  # ... but a 5-gram in common
    assert longest_common_ngram([9, 3, 4, 9, 1, 2, 3, 4, 9], ref) == 4
    assert longest_common_ngram([7, 8], ref) == 0 and longest_common_ngram([], ref) == 0
    assert ngram_share([9, 9, 1, 2, 3, 9], ref) == 0.5
    with pytest.raises(ValueError, match="empty"):
        ngram_share([1], [])


def test_longest_common_ngram_matches_brute_force():
    def brute(a, b):
        best = 0
        for i in range(len(a)):
            for j in range(len(b)):
                k = 0
                while i + k < len(a) and j + k < len(b) and a[i + k] == b[j + k]:
                    k += 1
                best = max(best, k)
        return best

    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b = (rng.integers(0, 3, rng.integers(0, 10)).tolist() for _ in range(2))
        assert longest_common_ngram(a, b) == brute(a, b), (a, b)


def test_text_metrics_and_aggregate():
    ref = "The patient developed a severe rash after amoxicillin."
    assert rouge_l(ref, ref) == 1.0 and bleu(ref, ref) == 1.0
    other = "The patient developed a mild fever after ibuprofen."
    assert 0 < rouge_l(other, ref) < 1 and 0 < bleu(other, ref) < 1
    rows = [score_pair([1, 2, 3], [1, 2, 3], ref, ref), score_pair([1, 2, 9], [1, 2, 3], other, ref)]
    assert rows[0] == {
        "exact_match": 1.0,
        "token_accuracy": 1.0,
        "longest_common_ngram": 3.0,
        "ngram_share": 1.0,
        "rouge_l": 1.0,
        "bleu": 1.0,
    }
    agg = aggregate(rows)
    assert agg["n"] == 2 and agg["exact_match_rate"] == 0.5
    assert agg["token_accuracy"] == pytest.approx(5 / 6) and agg["ngram_share"] == pytest.approx(5 / 6)


# ---------------------------------------------------------------- splitting and bad input


def test_split_prefix_counts_and_fractions():
    ids = list(range(10, 17))  # 7 tokens
    assert split_prefix(ids, 0.5) == ([10, 11, 12], [13, 14, 15, 16])  # floor(3.5)
    assert split_prefix(ids, 2) == ([10, 11], [12, 13, 14, 15, 16])
    assert split_prefix([1, 2], 0.5) == ([1], [2])


@pytest.mark.parametrize("prefix", [0.0, 1.0, 1.5, -0.5, 0, True])
def test_prefix_outside_range_is_refused(prefix):
    with pytest.raises(MemlensError, match=r"prefix must be a token count ≥ 1 or a fraction in \(0, 1\)"):
        split_prefix([1, 2, 3, 4], prefix)


def test_text_too_short_to_split(tiny):
    with pytest.raises(MemlensError, match=r"a text of 1 tokens cannot be split at prefix=0.5"):
        split_prefix([7], 0.5)
    with pytest.raises(MemlensError, match=r"a text of 4 tokens cannot be split at prefix=4"):
        split_prefix([1, 2, 3, 4], 4)
    with pytest.raises(MemlensError, match=r"none of the 2 texts is long enough to split at prefix=50"):
        extract(tiny.model, tiny.tokenizer, ["Short.", "Also short."], prefix=50)
    with pytest.raises(MemlensError, match="unknown extraction metric 'auc'"):
        extract(tiny.model, tiny.tokenizer, ["Short text here."], select="auc")
    with pytest.raises(MemlensError, match="greedy decoding gives one generation per prefix"):
        Decoding(num_samples=4)


def test_extract_skips_and_counts_short_texts(tiny):
    texts = ["A", *phee_texts("dev", 3)]
    res = extract(tiny.model, tiny.tokenizer, texts, max_tokens=24)
    assert res.skipped == [0] and res.summary["n_skipped"] == 1 and [r["index"] for r in res.rows] == [1, 2, 3]
    for r in res.rows:  # the split is over the text's own tokens; the start token is always prompted, never counted
        n = min(len(tiny.tokenizer(texts[r["index"]], add_special_tokens=False)["input_ids"]), 23)
        assert (r["prefix_tokens"], r["suffix_tokens"]) == (n // 2, n - n // 2)


# ---------------------------------------------------------------- canaries


@pytest.mark.parametrize("kind", ["patient", "digits"])
def test_canaries_are_deterministic_and_never_collide(kind):
    a = make_canaries(20, seed=3, kind=kind, n_controls=40)
    assert a == make_canaries(20, seed=3, kind=kind, n_controls=40)
    assert a != make_canaries(20, seed=4, kind=kind, n_controls=40)
    everyone = a.canaries + a.controls
    assert len(a.canaries) == 20 * 6 and len(a.controls) == 40
    for unique in ("secret", "prefix", "id"):
        assert len({getattr(c, unique) for c in everyone}) == 160
    for c in everyone:
        assert c.text.startswith(c.prefix + c.secret) and c.with_secret(c.secret) == c.text
    assert {c.repetitions for c in a.canaries} == {1, 2, 4, 8, 16, 32} and {c.repetitions for c in a.controls} == {0}
    with pytest.raises(MemlensError, match="exceed"):
        make_canaries(1000, seed=0, kind=kind)


def test_insert_repeats_canaries_and_never_controls():
    cs = make_canaries(1, seed=0, kind="digits", repetitions=(1, 4), n_controls=2)
    members = [Text(f"m{i}", t) for i, t in enumerate(phee_texts("train", 5))]
    mixed = insert(members, cs, seed=1)
    assert mixed == insert(members, cs, seed=1) and mixed != insert(members, cs, seed=2)
    assert sorted(t.id for t in mixed) == sorted(
        ["m0", "m1", "m2", "m3", "m4", "canary-0#1", *(f"canary-1#{j}" for j in range(1, 5))]
    )
    assert not {c.text for c in cs.controls} & {t.text for t in mixed}


@pytest.mark.parametrize("kind", ["patient", "digits"])
def test_secret_spans_spell_the_secret(tiny, kind):
    cs = make_canaries(3, seed=0, kind=kind, repetitions=(1,), n_controls=1)
    for c, (ids, a, b) in zip(cs.canaries, secret_spans(tiny.tokenizer, cs.canaries), strict=True):
        assert ids == encode(tiny.tokenizer, [c.text], 64).ids[0]
        assert ids[0] == tiny.tokenizer.eos_token_id  # the start token (the tiny tokenizer has no BOS)
        assert tiny.tokenizer.decode(ids[a:b]).strip() == c.secret
        assert tiny.tokenizer.decode(ids[:a], skip_special_tokens=True).strip() == c.prefix.strip()


# ---------------------------------------------------------------- a tiny model that memorized canaries


@pytest.fixture(scope="module")
def memorized(tiny_dir, tmp_path_factory):
    """The tiny model fully fine-tuned (120 steps, lr 3e-3) on 8 PHEE texts plus two canaries inserted once and
    two inserted 32 times; saved, so each test loads a fresh copy."""
    lm = load_model(str(tiny_dir), device="cpu")
    cs = make_canaries(2, seed=0, kind="digits", repetitions=(1, 32), n_controls=4)
    members = [Text(f"m{i}", t) for i, t in enumerate(phee_texts("train", 8))]
    ids = encode(lm.tokenizer, [t.text for t in insert(members, cs)], 48).ids
    model, _ = apply_method(lm.model, TuningConfig(method="full"))
    train(model, ids, lm.tokenizer.pad_token_id, TrainingConfig(epochs=12, batch_size=8), lr=3e-3)
    out = tmp_path_factory.mktemp("memorized")
    model.save_pretrained(out)
    lm.tokenizer.save_pretrained(out)
    return out, cs


def test_memorized_canary_is_extracted_and_exposed(memorized, tiny):
    path, cs = memorized
    lm = load_model(str(path), device="cpu")
    rows = {r["repetitions"]: r for r in canary_report(lm.model, lm.tokenizer, cs, n_candidates=200, n_boot=100)}
    assert rows[32]["extraction_rate"] == 1.0 and rows[0]["extraction_rate"] == 0.0
    assert rows[32]["auc"] == 1.0 and np.isnan(rows[0]["auc"])
    assert rows[32]["mean_exposure"] > rows[0]["mean_exposure"] + 10
    assert 0 <= rows[32]["at_ceiling"] <= 1 and rows[0]["at_ceiling"] == 0.0
    seen, unseen = cs.canaries[-1], cs.controls[0]
    assert seen.repetitions == 32
    assert exposure(lm.model, lm.tokenizer, seen, n_candidates=200) > exposure(lm.model, lm.tokenizer, unseen) + 10
    untrained = canary_report(tiny.model, tiny.tokenizer, cs, n_candidates=50, n_boot=0)
    assert all(r["extraction_rate"] == 0.0 for r in untrained)


@pytest.mark.parametrize(("rank", "tolerance"), [(50, 0.6), (1000, 0.4), (50_000, 0.15)])
def test_exposure_estimator_recovers_known_ranks(rank, tolerance):
    """A secret space of 10⁶ with skewed log-likelihoods and the secret at a known rank, 1,000 candidates: the
    mean estimate over 60 canaries is the true exposure. Counting alone says ~19.9 bits (the ceiling) at
    rank 50 (true 14.3) and ~14 bits at rank 1,000 (true 10.0)."""
    from scipy.stats import skewnorm

    from memlens.extraction.exposure import estimate_exposure

    rng = np.random.default_rng(rank)
    space = 10**6
    population = np.sort(skewnorm.rvs(-4, loc=-30, scale=6, size=space, random_state=rng))[::-1]
    others = np.delete(population, rank - 1)
    candidates = others[rng.integers(0, space - 1, (60, 1000))]
    estimate, at_ceiling = estimate_exposure(np.full(60, population[rank - 1]), candidates, space)
    truth = np.log2(space) - np.log2(rank)
    assert abs(estimate.mean() - truth) < tolerance, (estimate.mean(), truth)
    assert estimate.max() <= np.log2(space) and estimate.min() >= 0
    assert (at_ceiling.mean() > 0.9) if rank == 50 else (at_ceiling.mean() < 0.6)
    with pytest.raises(ValueError, match="candidate log-likelihoods"):
        estimate_exposure(np.zeros(2), np.zeros((3, 5)), space)


def test_extract_rows_and_best_of_n(memorized):
    path, cs = memorized
    lm = load_model(str(path), device="cpu")
    texts = [c.text for c in cs.canaries + cs.controls]  # repetitions 1, 1, 32, 32, then 4 controls
    greedy = extract(lm.model, lm.tokenizer, texts)
    share = np.array([r["ngram_share"] for r in greedy.rows])
    assert share[2:4].min() == 1.0 and share[4:].max() < 1.0
    assert set(greedy.rows[0]) == {"index", "prefix_tokens", "suffix_tokens", "best_sample", *greedy.samples}
    assert greedy.summary["tokens_per_second"] > 0 and "generations" not in greedy.to_dict()

    sample = Decoding("sample", temperature=1.5, num_samples=3)
    res = extract(lm.model, lm.tokenizer, texts, decoding=sample, select="token_accuracy", seed=1)
    acc = res.samples["token_accuracy"]
    assert acc.shape == (8, 3)
    np.testing.assert_array_equal([r["token_accuracy"] for r in res.rows], acc.max(axis=1))
    assert [r["best_sample"] for r in res.rows] == acc.argmax(axis=1).tolist()
    assert res.generations == extract(lm.model, lm.tokenizer, texts, decoding=sample, seed=1).generations
    assert res.generations != extract(lm.model, lm.tokenizer, texts, decoding=sample, seed=2).generations

    sweep = temperature_sweep(lm.model, lm.tokenizer, texts[2:4], (0.1, 1.0))
    assert [r["temperature"] for r in sweep] == [0.1, 1.0] and sweep[0]["ngram_share"] == 1.0


# ---------------------------------------------------------------- generation


def greedy_by_hand(model, prefix, n):
    """One token at a time through the model's own forward pass (peft's, for peft models)."""
    x = list(prefix)
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([x]), attention_mask=torch.ones(1, len(x), dtype=int)).logits
            x.append(int(logits[0, -1].argmax()))
    return x[len(prefix) :]


@pytest.mark.parametrize("method", ["none", "lora", "prompt", "prefix", "ptuning"])
def test_batched_left_padded_generation_equals_one_at_a_time(memorized, method):
    path, _ = memorized
    lm = load_model(str(path), device="cpu")
    lm.model.generation_config.repetition_penalty = 5.0  # a model's own settings must not change extraction
    lm.model.generation_config.no_repeat_ngram_size = 1
    torch.manual_seed(1)  # random virtual tokens
    model = lm.model if method == "none" else apply_method(lm.model, TuningConfig(method=method, virtual_tokens=4))[0]
    ids = encode(lm.tokenizer, phee_texts("train", 6), 48).ids
    prefixes, lengths = [s[:n] for s, n in zip(ids, [3, 9, 5, 12, 2, 9], strict=True)], [6, 4, 7, 5, 6, 3]
    batched = generate_suffixes(model, lm.tokenizer, prefixes, lengths, batch_size=4)
    single = [generate_suffixes(model, lm.tokenizer, [p], [n])[0] for p, n in zip(prefixes, lengths, strict=True)]
    assert batched == single
    assert [g[0] for g in batched] == [greedy_by_hand(model, p, n) for p, n in zip(prefixes, lengths, strict=True)]
    assert len({tuple(g[0]) for g in batched}) > 3  # not a degenerate model


def test_prompt_tuned_generation_has_exact_lengths_of_real_tokens(tiny):
    model, _ = apply_method(tiny.model, TuningConfig(method="prompt", virtual_tokens=4))
    ids = encode(tiny.tokenizer, phee_texts("dev", 5), 40).ids
    prefixes = [s[:k] for s, k in zip(ids, [1, 4, 7, 2, 9], strict=True)]
    lengths = [5, 1, 8, 3, 6]
    gens = generate_suffixes(model, tiny.tokenizer, prefixes, lengths, decoding=Decoding("sample", num_samples=3))
    vocab = model.get_input_embeddings().num_embeddings
    for per_prefix, n in zip(gens, lengths, strict=True):
        assert len(per_prefix) == 3 and all(len(g) == n for g in per_prefix)
        assert all(0 <= t < vocab for g in per_prefix for t in g)


# ---------------------------------------------------------------- (n, p)-discoverable extraction


def test_suffix_probability_at_temperature_one_is_the_teacher_forced_likelihood(tiny):
    from memlens.extraction.generate import suffix_log_probability
    from memlens.scoring import score_ids

    ids = encode(tiny.tokenizer, phee_texts("test", 6), 32).ids
    prefixes, suffixes = [s[:5] for s in ids], [s[5:] for s in ids]
    pad = tiny.tokenizer.pad_token_id
    got = suffix_log_probability(tiny.model, prefixes, suffixes, Decoding("sample"), pad, batch_size=4)
    stats = score_ids(tiny.model, ids, pad)
    expected = [np.nansum(stats.logprob[i, 4 : len(ids[i]) - 1]) for i in range(len(ids))]  # tokens 5..n-1
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    greedy = suffix_log_probability(tiny.model, prefixes, suffixes, Decoding(), pad)
    top1 = suffix_log_probability(tiny.model, prefixes, suffixes, Decoding("sample", top_k=1), pad)
    np.testing.assert_array_equal(greedy, top1)  # top-k = 1 sampling is greedy decoding
    assert set(np.unique(greedy)) <= {0.0, -np.inf}


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(0.7, 0, 1.0), (1.0, 5, 1.0), (1.3, 0, 0.8), (0.5, 7, 0.6)]
)
def test_decoded_probabilities_match_the_generate_warpers(temperature, top_k, top_p):
    """The transformation of the logits is the one ``generate`` samples from (transformers' own warpers)."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from memlens.extraction.generate import _decoded_log_prob

    z = torch.randn(6, 40, generator=torch.Generator().manual_seed(0)) * 3
    true = torch.arange(6) * 5
    warped = TemperatureLogitsWarper(temperature)(None, z.clone())
    if top_k:
        warped = TopKLogitsWarper(top_k)(None, warped)
    if top_p < 1:
        warped = TopPLogitsWarper(top_p)(None, warped)
    expected = torch.log_softmax(warped, -1).gather(-1, true[:, None])[:, 0]
    got = _decoded_log_prob(z, true, Decoding("sample", temperature=temperature, top_k=top_k, top_p=top_p))
    torch.testing.assert_close(got, expected)


def test_extraction_probability_over_n_samples():
    from memlens.extraction.generate import extraction_probability

    got = extraction_probability([*np.log([0.1, 1.0, 1e-12]).tolist(), -np.inf], 10)
    np.testing.assert_allclose(got, [1 - 0.9**10, 1.0, 1e-11, 0.0], rtol=1e-6, atol=1e-15)


def test_sampled_extraction_reports_each_texts_probability(memorized):
    path, cs = memorized
    lm = load_model(str(path), device="cpu")
    texts = [c.text for c in cs.canaries + cs.controls]  # repetitions 1, 1, 32, 32, then 4 controls
    res = extract(lm.model, lm.tokenizer, texts, decoding=Decoding("sample", num_samples=4), seed=0)
    p = np.array([r["p_extracted"] for r in res.rows])
    assert p[2:4].min() > p[4:].max()  # the canaries seen 32 times are far likelier to come out than controls
    assert res.summary["p_extracted_mean"] == pytest.approx(p.mean())
    assert res.summary["np_extractable_rate"] == pytest.approx((p >= 0.5).mean())
    lo, hi = res.summary["p_extracted_mean_ci"]
    assert 0 <= lo <= p.mean() <= hi <= 1 and hi > lo  # bootstrap over the texts
    lo, hi = res.summary["np_extractable_rate_ci"]
    assert lo <= (p >= 0.5).mean() <= hi and hi - lo > 0.2  # Clopper–Pearson on 8 texts: wide
