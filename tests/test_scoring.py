import numpy as np
import pytest
import torch
from helpers import phee_texts

from memlens.scoring import TokenStats, score_ids, score_texts
from memlens.tokens import encode

TEXTS = [*phee_texts("dev", 9), "Short.", "A", "Rash after amoxicillin, twice, in a 3-year-old boy."]


def unbatched_reference(model, tok, texts, max_tokens):
    """One text at a time, no padding, straight from the definition."""
    rows = []
    for ids in encode(tok, texts, max_tokens).ids:
        x = torch.tensor([ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].double(), -1)
        p = logp.exp()
        ll = logp[torch.arange(len(ids) - 1), x[0, 1:]]
        mu = (p * logp).sum(-1)
        var = (p * (logp - mu[:, None]) ** 2).sum(-1)
        rows.append((ll.numpy(), mu.numpy(), var.sqrt().numpy()))
    return rows


def test_batched_equals_unbatched_with_mixed_lengths(tiny):
    stats = score_texts(tiny.model, tiny.tokenizer, TEXTS, max_tokens=40, batch_size=4)
    ref = unbatched_reference(tiny.model, tiny.tokenizer, TEXTS, 40)
    assert len(set(stats.lengths.tolist())) > 5  # really mixed lengths, so padding is exercised
    for i, (ll, mu, sd) in enumerate(ref):
        n = stats.lengths[i]
        assert n == len(ll)
        np.testing.assert_allclose(stats.logprob[i, :n], ll, atol=1e-5)
        np.testing.assert_allclose(stats.mu[i, :n], mu, atol=1e-5)  # μ against an explicit full softmax
        np.testing.assert_allclose(stats.sigma[i, :n], sd, atol=1e-4)
        assert np.isnan(stats.logprob[i, n:]).all()
    nll = stats.nll()
    for i, (ll, _, _) in enumerate(ref):
        expected = -ll.mean() if len(ll) else np.nan
        np.testing.assert_allclose(nll[i], expected, atol=1e-5)


def test_left_padding_equals_unbatched(tiny):
    ids = encode(tiny.tokenizer, TEXTS, 40).ids
    left = score_ids(tiny.model, ids, tiny.tokenizer.pad_token_id, batch_size=5, padding_side="left")
    for i, (ll, _, sd) in enumerate(unbatched_reference(tiny.model, tiny.tokenizer, TEXTS, 40)):
        np.testing.assert_allclose(left.logprob[i, : len(ll)], ll, atol=1e-5)
        np.testing.assert_allclose(left.sigma[i, : len(ll)], sd, atol=1e-4)
    with pytest.raises(ValueError, match="padding_side"):
        score_ids(tiny.model, ids, 0, padding_side="left", prefix=[1, 2])


def test_batch_size_does_not_change_scores(tiny):
    a = score_texts(tiny.model, tiny.tokenizer, TEXTS, batch_size=1)
    b = score_texts(tiny.model, tiny.tokenizer, TEXTS, batch_size=32)
    np.testing.assert_allclose(a.nll(), b.nll(), atol=1e-5)


def test_truncation_is_counted(tiny):
    enc = encode(tiny.tokenizer, TEXTS, max_tokens=8)
    assert enc.n_truncated == sum(len(tiny.tokenizer(t)["input_ids"]) > 8 for t in TEXTS) > 0
    assert enc.lengths.max() == 8


def test_zlib_compresses_the_scored_part_of_a_cut_text(tiny):
    from memlens.tokens import scored_texts

    enc = encode(tiny.tokenizer, TEXTS, max_tokens=8)
    scored = scored_texts(tiny.tokenizer, TEXTS, enc)
    for text, part, ids, cut in zip(TEXTS, scored, enc.ids, enc.truncated, strict=True):
        if cut:
            assert len(part) < len(text) and part == tiny.tokenizer.decode(ids, skip_special_tokens=True)
        else:
            assert part == text


def test_perplexity_is_token_weighted(tiny):
    stats = score_texts(tiny.model, tiny.tokenizer, TEXTS[:4])
    total = np.nansum(stats.logprob)
    assert stats.perplexity() == pytest.approx(np.exp(-total / stats.lengths.sum()), rel=1e-6)


def test_stats_save_load_and_take(tmp_path, tiny):
    stats = score_texts(tiny.model, tiny.tokenizer, TEXTS[:5])
    stats.save(tmp_path / "s.npz")
    back = TokenStats.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.logprob, stats.logprob)
    sub = stats.take(np.array([1, 3]))
    np.testing.assert_allclose(sub.nll(), stats.nll()[[1, 3]])
    both = TokenStats.concat([stats.take(np.array([0])), stats.take(np.array([1, 2]))])
    np.testing.assert_allclose(both.nll(), stats.nll()[:3])


def test_disabled_adapters_score_like_the_base_model(tiny):
    from peft import LoraConfig, get_peft_model

    base = score_texts(tiny.model, tiny.tokenizer, TEXTS[:6])
    peft_model = get_peft_model(tiny.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # make the adapters matter
    adapted = score_texts(peft_model, tiny.tokenizer, TEXTS[:6])
    off = score_texts(peft_model, tiny.tokenizer, TEXTS[:6], disable_adapters=True)
    assert np.abs(adapted.nll() - base.nll()).max() > 1e-3
    np.testing.assert_allclose(off.nll(), base.nll(), atol=1e-6)


def test_packing_shares_rows_and_changes_nothing(tiny):
    from memlens.scoring import engine

    ids = encode(tiny.tokenizer, TEXTS, 40).ids
    lengths = np.array([len(s) - 1 for s in ids])
    starts = [1] * len(ids)
    batches = list(engine._packed_batches(ids, starts, lengths, tiny.tokenizer.pad_token_id, batch_size=4))
    restarts = [int((b.inputs["position_ids"][:, 1:] == 0).sum()) for b in batches]
    assert sum(restarts) > 0  # some row holds more than one text
    assert sorted(np.concatenate([np.unique(b.texts) for b in batches]).tolist()) == np.flatnonzero(lengths).tolist()
    padded_batches = engine._padded_batches(ids, starts, lengths, tiny.tokenizer.pad_token_id, 4, ())
    slots = [sum(b.inputs["input_ids"].numel() for b in bs) for bs in (batches, padded_batches)]
    assert slots[0] < slots[1]  # fewer token slots: less padding
    packed = score_ids(tiny.model, ids, tiny.tokenizer.pad_token_id, batch_size=4)
    padded = score_ids(tiny.model, ids, tiny.tokenizer.pad_token_id, batch_size=4, pack=False)
    for key in ("logprob", "mu", "sigma"):
        np.testing.assert_allclose(getattr(packed, key), getattr(padded, key), atol=1e-5)


def _tiny_random(arch: str):
    """A 2-layer random model of one architecture (no download: built from its config)."""
    import transformers as tf

    common = {"vocab_size": 101, "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 2}
    configs = {
        "llama": lambda: tf.LlamaConfig(**common, intermediate_size=64, num_key_value_heads=2),
        "qwen2": lambda: tf.Qwen2Config(**common, intermediate_size=64, num_key_value_heads=2),
        "gemma3_text": lambda: tf.Gemma3TextConfig(**common, intermediate_size=64, num_key_value_heads=2, head_dim=8),
        "gpt2": lambda: tf.GPT2Config(vocab_size=101, n_embd=32, n_head=4, n_layer=2),
        "gpt_neox": lambda: tf.GPTNeoXConfig(**common, intermediate_size=64),
        "opt": lambda: tf.OPTConfig(**common, ffn_dim=64, word_embed_proj_dim=32),
        "bloom": lambda: tf.BloomConfig(vocab_size=101, hidden_size=32, n_head=4, n_layer=2),
    }
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(configs[arch]()).eval()


RANDOM_IDS = [list(np.random.default_rng(i).integers(3, 100, 3 + 5 * i % 27)) for i in range(20)]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3_text", "gpt2", "gpt_neox", "opt", "bloom"])
def test_only_architectures_whose_mask_restarts_are_packed(arch):
    """OPT and BLOOM build their causal mask without the position ids: packed texts would see each other
    (ℓ off by 0.1 and 0.007 nats here), so they are scored padded; the others pack and equal the padded path."""
    from memlens.scoring import engine

    model = _tiny_random(arch)
    assert (arch in engine.PACKABLE) == (arch not in ("opt", "bloom"))
    default = score_ids(model, RANDOM_IDS, 0, batch_size=8)
    padded = score_ids(model, RANDOM_IDS, 0, batch_size=8, pack=False)
    np.testing.assert_allclose(default.logprob, padded.logprob, atol=1e-5)
    forced = score_ids(model, RANDOM_IDS, 0, batch_size=8, _check=False)  # packing as the old code did
    leak = np.nanmax(np.abs(forced.logprob - padded.logprob))
    assert (leak > 1e-3) == (arch in ("opt", "bloom")), leak


def test_packing_self_check_falls_back_with_a_warning(monkeypatch, capsys):
    from memlens.scoring import engine

    model = _tiny_random("opt")
    monkeypatch.setattr(engine, "PACKABLE", engine.PACKABLE | {"opt"})  # as if OPT were wrongly listed
    monkeypatch.setattr(engine, "_pack_verified", {})
    stats = score_ids(model, RANDOM_IDS, 0, batch_size=8)
    padded = score_ids(model, RANDOM_IDS, 0, batch_size=8, pack=False)
    np.testing.assert_allclose(stats.logprob, padded.logprob, atol=1e-5)
    assert "packed scoring of OPTForCausalLM lets packed texts see each other" in capsys.readouterr().err
    assert engine._pack_verified == {("OPTForCausalLM", "torch.float32"): False}
    monkeypatch.setattr(engine, "_pack_verified", {})
    long = [list(np.random.default_rng(i).integers(3, 100, 70)) for i in range(4)]  # no two share a 128-token row
    assert engine.packing_verified(model, long, 0, 8) and engine._pack_verified == {}  # nothing packed: not kept


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_half_precision_self_check_allows_rounding_but_not_leaks(arch, monkeypatch, capsys):
    """bf16 rounds the logits, so packed and padded differ by rounding as padded passes of two batch sizes do
    (here, with logits made 100× larger, by 0.06 nats on a token but 0.0004 on average): Llama still packs;
    OPT, whose packed texts see each other, is caught by the leak probe, exact whatever the rounding."""
    from memlens.scoring import engine

    model = _tiny_random(arch)
    with torch.no_grad():
        model.lm_head.weight.mul_(100)
    model = model.to(torch.bfloat16)
    monkeypatch.setattr(engine, "PACKABLE", engine.PACKABLE | {"opt"})  # as if OPT were wrongly listed
    monkeypatch.setattr(engine, "_pack_verified", {})
    forced = score_ids(model, RANDOM_IDS, 0, batch_size=8, _check=False)
    padded = score_ids(model, RANDOM_IDS, 0, batch_size=8, pack=False)
    assert np.nanmax(np.abs(forced.logprob - padded.logprob)) > 2e-2  # a per-token check would refuse both
    stats = score_ids(model, RANDOM_IDS, 0, batch_size=8)
    verified = engine._pack_verified[(type(model).__name__, "torch.bfloat16")]
    assert verified == (arch == "llama")
    np.testing.assert_array_equal(stats.logprob, (forced if verified else padded).logprob)
    assert ("lets packed texts see each other" in capsys.readouterr().err) == (arch == "opt")


def test_pack_fills_bins_best_fit():
    from memlens.scoring.engine import best_fit

    sizes = np.array([60, 50, 40, 30, 20, 10, 3, 2])
    bins = best_fit(sizes, 64)
    assert sorted(i for b in bins for i in b) == list(range(len(sizes)))
    assert all(sizes[b].sum() <= 64 for b in bins)
    assert len(bins) == 4  # ⌈215 / 64⌉: no bin wasted


@pytest.mark.parametrize("scale", [1.0, 60.0])  # ordinary and very peaked next-token distributions
def test_sliced_head_matches_full_softmax(scale):
    from memlens.scoring import engine

    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(30, 16, generator=g), torch.randn(50, 16, generator=g) * scale / 4
    bias, targets, where = torch.randn(50, generator=g), torch.randint(0, 50, (20,), generator=g), torch.arange(5, 25)
    # 7 entries a slice: many slices and a ragged last one; 8 positions a tile: three tiles, the last ragged
    ll, mu, sd = engine._reduce_sliced(hidden, where, targets, weight=weight, bias=bias, tiles=(8, 7))
    logp = torch.log_softmax((hidden[where] @ weight.T + bias).double(), -1)
    p = logp.exp()
    exp_mu = (p * logp).sum(-1)
    np.testing.assert_allclose(ll, logp[torch.arange(20), targets], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mu, exp_mu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sd, (p * (logp - exp_mu[:, None]) ** 2).sum(-1).sqrt(), rtol=1e-4, atol=1e-5)


def test_sliced_head_with_the_cuda_tiles_matches_full_softmax():
    """The CUDA tile sizes, run on CPU tensors in bf16 as on a GPU: two row tiles and two vocabulary slices,
    each ragged; checked against the full softmax at positions on both sides of every tile edge."""
    from memlens.scoring import engine

    rows, vocab = engine.HEAD_TILES["cuda"]
    n, v = rows + 300, vocab + 1000
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, 8, generator=g).bfloat16()
    weight, targets = (torch.randn(v, 8, generator=g) * 2).bfloat16(), torch.randint(0, v, (n,), generator=g)
    targets[:4] = torch.tensor([0, vocab - 1, vocab, v - 1])  # targets in each slice, at their edges
    where = torch.arange(n)
    ll, mu, sd = engine._reduce_sliced(hidden, where, targets, weight=weight, bias=None, tiles=(rows, vocab))
    check = torch.tensor([0, 1, 2, 3, rows - 1, rows, rows + 1, n - 1])
    logp = torch.log_softmax(torch.nn.functional.linear(hidden[check], weight).double(), -1)
    p = logp.exp()
    exp_mu = (p * logp).sum(-1)
    np.testing.assert_allclose(ll[check], logp[torch.arange(len(check)), targets[check]], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(mu[check], exp_mu, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(sd[check], (p * (logp - exp_mu[:, None]) ** 2).sum(-1).sqrt(), rtol=1e-4, atol=1e-4)
    assert torch.isfinite(ll).all() and torch.isfinite(sd).all()


def test_output_head_is_restored_and_other_heads_use_their_own_logits(tiny, monkeypatch):
    from memlens.scoring import engine

    head = tiny.model.get_output_embeddings()
    ids = encode(tiny.tokenizer, TEXTS[:5], 40).ids
    with pytest.raises(IndexError):  # a token id outside the vocabulary fails inside the model call...
        score_ids(tiny.model, [*ids, [1, 10**6]], tiny.tokenizer.pad_token_id)
    assert "forward" not in head.__dict__  # ...and the head is the model's own again
    sliced = score_ids(tiny.model, ids, tiny.tokenizer.pad_token_id)
    tiny.model.config.final_logit_softcapping = 30.0  # a model whose logits are more than lm_head(hidden)
    spy = []
    real = engine._reduce_logits
    monkeypatch.setattr(engine, "_reduce_logits", lambda *a: spy.append(1) or real(*a))
    own = score_ids(tiny.model, ids, tiny.tokenizer.pad_token_id)
    assert spy  # the model's own logits were reduced
    for key in ("logprob", "mu", "sigma"):
        np.testing.assert_allclose(getattr(own, key), getattr(sliced, key), atol=1e-5)


def bos_adding_copy(tok):
    """The tiny tokenizer, made to put ``<eos>`` before every text itself (as Gemma's adds ``<bos>``)."""
    import copy

    from tokenizers.processors import TemplateProcessing

    other = copy.deepcopy(tok)
    eos = (tok.eos_token, tok.eos_token_id)
    other.backend_tokenizer.post_processor = TemplateProcessing(single="<eos> $A", special_tokens=[eos])
    assert other("Rash.")["input_ids"][0] == tok.eos_token_id
    return other


def test_every_tokenizer_gives_one_start_token_and_the_first_word_is_scored(tiny):
    """With or without a BOS of the tokenizer's own, every text starts with exactly one start token, so the
    first word is scored (and trained on) for every model."""
    texts = ["Rash.", "Severe hepatotoxicity after valproate."]
    plain = [tiny.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    for tok in (tiny.tokenizer, bos_adding_copy(tiny.tokenizer)):
        ids = encode(tok, texts, 64).ids
        assert ids == [[tok.eos_token_id, *p] for p in plain]
        stats = score_texts(tiny.model, tok, texts, max_tokens=64)
        assert stats.lengths.tolist() == [len(p) for p in plain]
    assert encode(tiny.tokenizer, texts, 3).ids[1] == [tiny.tokenizer.eos_token_id, *plain[1][:2]]


def test_a_prefix_takes_the_place_of_the_start_token(tiny):
    """ReCaLL's join: the prefix (with its start token) then the text's tokens, never a start token between."""
    tok, model = tiny.tokenizer, tiny.model
    prefix = encode(tok, ["Context sentence. "], 64).ids[0]
    ids = encode(tok, TEXTS[:4], 64).ids
    got = score_ids(model, ids, tok.pad_token_id, prefix=prefix)
    joined = score_ids(model, [[*prefix, *s[1:]] for s in ids], tok.pad_token_id)
    for i, s in enumerate(ids):
        n = len(s) - 1
        assert got.lengths[i] == n
        at = len(prefix) - 1  # the prefix's last token predicts the text's token 1
        np.testing.assert_allclose(got.logprob[i, :n], joined.logprob[i, at : at + n], atol=1e-4)
    one = score_ids(model, ids, tok.pad_token_id, prefix=[tok.eos_token_id])  # the start token alone: no change
    np.testing.assert_allclose(one.logprob, score_ids(model, ids, tok.pad_token_id).logprob, atol=1e-5)


@pytest.mark.parametrize("path", [{"pack": True}, {"pack": False}, {"padding_side": "left"}])
def test_a_prompt_is_context_only_the_completion_is_scored(tiny, path):
    """``starts[i]``: tokens before it are context; the rest equal the full pass's statistics, on every path."""
    ids = encode(tiny.tokenizer, TEXTS, 40).ids
    starts = [1 + (i * 3) % max(len(s) - 1, 1) for i, s in enumerate(ids)]
    full = score_ids(tiny.model, ids, 0, batch_size=4)
    part = score_ids(tiny.model, ids, 0, batch_size=4, starts=starts, **path)
    for i, (s, k) in enumerate(zip(ids, starts, strict=True)):
        n = len(s) - k
        assert part.lengths[i] == max(n, 0)
        np.testing.assert_allclose(part.logprob[i, :n], full.logprob[i, k - 1 : k - 1 + n], atol=1e-4)
        np.testing.assert_allclose(part.sigma[i, :n], full.sigma[i, k - 1 : k - 1 + n], atol=1e-4)
    with pytest.raises(ValueError, match="starts"):
        score_ids(tiny.model, ids, 0, starts=[0] * len(ids))
