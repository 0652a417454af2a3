import numpy as np
import pytest
import torch
from helpers import phee_texts

from memlens.config import TrainingConfig, TuningConfig
from memlens.errors import MemlensError
from memlens.scoring import score_texts
from memlens.tokens import encode, grouped_batches, padding_fraction
from memlens.tuning import apply_method, train

TEXTS = phee_texts("train", 16)


def fit(tiny, tuning: TuningConfig, epochs=3, lr=3e-3, seed=0):
    import torch

    torch.manual_seed(seed)
    model, info = apply_method(tiny.model, tuning)
    enc = encode(tiny.tokenizer, TEXTS, 48)
    report = train(
        model, enc.ids, tiny.tokenizer.pad_token_id, TrainingConfig(epochs=epochs, batch_size=4, seed=seed), lr=lr
    )
    return model, info, report


def test_lora_trains_and_counts_parameters_like_peft(tiny):
    model, info, report = fit(tiny, TuningConfig(method="lora", targets=["attn", "down"], rank=4))
    trainable, total = model.get_nb_trainable_parameters()
    assert info["trainable_parameters"] == trainable and info["total_parameters"] == total
    assert info["params"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]
    losses = [e["train_loss"] for e in report["epochs"]]
    assert losses[-1] < losses[0]


def test_full_fine_tuning_lowers_member_loss(tiny):
    before = score_texts(tiny.model, tiny.tokenizer, TEXTS).nll().mean()
    model, info, _report = fit(tiny, TuningConfig(method="full"))
    assert info["trainable_share"] == 1.0
    assert score_texts(model, tiny.tokenizer, TEXTS).nll().mean() < before - 0.5


def test_same_seed_gives_same_scores(tiny_dir):
    from memlens.models import load_model

    runs = []
    for _ in range(2):
        lm = load_model(str(tiny_dir), device="cpu")
        model, _, _ = fit(lm, TuningConfig(method="lora", rank=4, dropout=0.1), epochs=2)
        runs.append(score_texts(model, lm.tokenizer, TEXTS).nll())
    np.testing.assert_array_equal(runs[0], runs[1])


def test_unknown_lora_target_lists_valid_names(tiny):
    with pytest.raises(MemlensError, match=r"tuning target 'wq' does not exist.*q, k, v, o, gate, up, down.*q_proj"):
        apply_method(tiny.model, TuningConfig(method="lora", targets=["wq"]))


def test_grouped_batches_cover_everything_once_with_little_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 80, 1000)
    batches = grouped_batches(lengths, 16, rng)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    random_batches = np.array_split(rng.permutation(1000), 63)
    assert padding_fraction(lengths, batches) < 0.5 * padding_fraction(lengths, random_batches)


METHOD_LR = {"full": 3e-3, "head": 3e-2, "lora": 1e-2, "ia3": 1e-1, "prefix": 3e-2, "prompt": 1e-1, "ptuning": 3e-2}


@pytest.mark.parametrize("method", list(METHOD_LR))
def test_every_method_trains_and_counts_trainable_parameters_honestly(tiny, method):
    model, info, report = fit(tiny, TuningConfig(method=method, virtual_tokens=4), epochs=4, lr=METHOD_LR[method])
    losses = [e["train_loss"] for e in report["epochs"]]
    assert losses[-1] < losses[0] - 0.01, losses
    counted = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if hasattr(model, "get_nb_trainable_parameters"):
        assert info["trainable_parameters"] == model.get_nb_trainable_parameters()[0]
    assert info["trainable_parameters"] == counted > 0
    stats = score_texts(model, tiny.tokenizer, TEXTS[:3])
    assert np.isfinite(stats.nll()).all()


def test_head_unties_and_leaves_the_embeddings_unchanged(tiny):
    emb_before = tiny.model.get_input_embeddings().weight.detach().clone()
    model, info, _ = fit(tiny, TuningConfig(method="head"), epochs=2, lr=3e-2)
    assert info["params"]["untied"] is True
    assert info["trainable_parameters"] == emb_before.numel()  # the untied head: vocab × hidden
    assert torch.equal(model.get_input_embeddings().weight, emb_before)
    assert not torch.equal(model.get_output_embeddings().weight, emb_before)


@pytest.mark.parametrize("method", ["prompt", "ptuning", "prefix"])
def test_prompt_methods_score_only_the_real_tokens(tiny, method):
    model, _, _ = fit(tiny, TuningConfig(method=method, virtual_tokens=6), epochs=1, lr=3e-2)
    stats = score_texts(model, tiny.tokenizer, TEXTS[:4], max_tokens=48, batch_size=4)
    for i, ids in enumerate(encode(tiny.tokenizer, TEXTS[:4], 48).ids):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        logits = logits[-len(ids) :]  # drop the virtual tokens' positions (prompt/P-tuning prepend them)
        logp = torch.log_softmax(logits[:-1].double(), -1)
        ll = logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()
        assert stats.lengths[i] == len(ids) - 1
        np.testing.assert_allclose(stats.logprob[i, : len(ll)], ll, atol=1e-5)


def test_lora_layer_subset(tiny):
    model, info, _ = fit(tiny, TuningConfig(method="lora", targets=["v"], layers="last:1", rank=2), epochs=1)
    adapted = {n.split(".layers.")[1].split(".")[0] for n, _ in model.named_parameters() if "lora_A" in n}
    assert adapted == {"1"} and info["params"]["layers"] == [1]
    with pytest.raises(MemlensError, match=r"tuning.layers \[7\] out of range: the model has layers 0..1"):
        apply_method(tiny.model, TuningConfig(method="lora", layers=[7]))


def test_unsupported_combination_is_a_clean_error(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
    with pytest.raises(MemlensError, match=r"tuning target 'q' does not exist.*module names.*c_attn"):
        apply_method(gpt2, TuningConfig(method="lora", targets=["q"]))
    with pytest.raises(MemlensError, match="tuning target 'k' does not exist"):
        apply_method(gpt2, TuningConfig(method="ia3"))


def test_the_loss_covers_exactly_the_completion_tokens(tiny):
    """With ``starts``, every label before a sequence's first completion token (and every pad) is -100; the rest
    are the token ids, checked token by token on the batch the model receives."""
    ids = encode(tiny.tokenizer, phee_texts("train", 6), 32).ids
    starts = [3, 1, 5, 2, 7, 4]
    seen = []
    hook = tiny.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["labels"].clone()), with_kwargs=True)
    try:
        train(tiny.model, ids, 0, TrainingConfig(epochs=1, batch_size=6), lr=0.0, starts=starts)
    finally:
        hook.remove()
    (labels,) = seen
    rows = {tuple(r[r != -100].tolist()) for r in labels}
    assert rows == {tuple(s[k:]) for s, k in zip(ids, starts, strict=True)}
    assert int((labels != -100).sum()) == sum(len(s) - k for s, k in zip(ids, starts, strict=True))


def test_packed_rows_restart_positions_and_learn_each_texts_own_tokens():
    from memlens.tuning.train import packed_rows

    seqs = [[0, 5, 6, 7], [0, 8, 9], [0, 3, 4, 5, 6, 7, 8]]
    ids, pos, labels = packed_rows(seqs, [1, 2, 1], pad_id=0, width=10)
    learned = sorted(int(t) for t in labels[labels != -100])
    assert learned == sorted([5, 6, 7, 9, 3, 4, 5, 6, 7, 8])  # text 2's prompt token (8) is context only
    assert ids.shape == (2, 10)  # best fit decreasing: 7 + 3 fill a row of 10, 4 goes alone
    assert pos.tolist() == [[*range(7), 0, 1, 2], [*range(4), *range(6)]]  # positions restart at every text
    assert ids.tolist() == [[0, 3, 4, 5, 6, 7, 8, 0, 8, 9], [0, 5, 6, 7, 0, 0, 0, 0, 0, 0]]
    assert (labels[1, 4:] == -100).all()  # a row's unused tail is never learned


@pytest.mark.parametrize("method", ["lora", "full"])
def test_packed_training_matches_padded_training(tiny_dir, method):
    from memlens.models import load_model

    out = {}
    for packing in (False, True):
        lm = load_model(str(tiny_dir), device="cpu")
        torch.manual_seed(0)
        model, _ = apply_method(lm.model, TuningConfig(method=method, rank=4, dropout=0.0))
        enc = encode(lm.tokenizer, TEXTS, 48)
        cfg = TrainingConfig(epochs=2, batch_size=4, seed=0, packing=packing)
        report = train(model, enc.ids, lm.tokenizer.pad_token_id, cfg, lr=3e-3)
        out[packing] = (report, score_texts(model, lm.tokenizer, TEXTS).nll())
    (padded, nll_padded), (packed, nll_packed) = out[False], out[True]
    assert packed["packed"] and not padded["packed"]
    assert packed["padding_fraction"] < padded["padding_fraction"]
    for a, b in zip(padded["epochs"], packed["epochs"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-4)
    np.testing.assert_allclose(nll_packed, nll_padded, atol=2e-4)  # same texts, same steps, same weights


@pytest.mark.parametrize("method", ["lora", "full", "prompt"])
def test_gradient_checkpointing_trains_the_same_weights(tiny_dir, method):
    """Checkpointed blocks (recomputed in the backward pass) give the same training as stored activations,
    while the autograd graph keeps a fraction of the activations."""
    from memlens.models import load_model

    out, saved = {}, {}
    for checkpointing in (False, True):
        lm = load_model(str(tiny_dir), device="cpu")
        torch.manual_seed(0)
        model, _ = apply_method(lm.model, TuningConfig(method=method, rank=4, dropout=0.1, virtual_tokens=4))
        enc = encode(lm.tokenizer, TEXTS, 48)
        cfg = TrainingConfig(epochs=2, batch_size=4, seed=0, gradient_checkpointing=checkpointing)
        saved[checkpointing] = 0

        def pack(t, key=checkpointing):  # bytes the graph keeps for the backward pass (outside checkpoints)
            saved[key] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            report = train(model, enc.ids, lm.tokenizer.pad_token_id, cfg, lr=3e-3)
        assert report["gradient_checkpointing"] is checkpointing
        assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())  # off again
        out[checkpointing] = (report, score_texts(model, lm.tokenizer, TEXTS).nll())
    (plain, nll_plain), (ckpt, nll_ckpt) = out[False], out[True]
    assert saved[True] < 0.5 * saved[False]  # the blocks' activations were not kept
    for a, b in zip(plain["epochs"], ckpt["epochs"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)  # dropout replayed, not redrawn
    np.testing.assert_allclose(nll_ckpt, nll_plain, atol=1e-5)


def test_prompt_learning_falls_back_to_padded_batches(tiny):
    model, _ = apply_method(tiny.model, TuningConfig(method="prompt", virtual_tokens=4))
    enc = encode(tiny.tokenizer, TEXTS, 48)
    report = train(model, enc.ids, tiny.tokenizer.pad_token_id, TrainingConfig(epochs=1, packing=True), lr=3e-3)
    assert report["packed"] is False


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_half_precision_weights_train_through_float32_masters(tiny_dir, grad_accum):
    """A full fine-tune of a bfloat16 model moves its weights as far as the float32 run does: updates below
    bf16's resolution accumulate in the float32 masters instead of being rounded away (updating the bf16
    weights directly moves them about half as far at this learning rate)."""
    from memlens.models import load_model

    moved, reports = {}, {}
    for dtype in ("float32", "bfloat16"):
        lm = load_model(str(tiny_dir), device="cpu", dtype=dtype)
        model, _ = apply_method(lm.model, TuningConfig(method="full"))
        start = [p.detach().float().clone() for p in model.parameters()]
        enc = encode(lm.tokenizer, TEXTS, 48)
        cfg = TrainingConfig(epochs=3, batch_size=4, grad_accum=grad_accum, seed=0)
        reports[dtype] = train(model, enc.ids, lm.tokenizer.pad_token_id, cfg, lr=3e-5)
        assert all(p.dtype == getattr(torch, dtype) for p in model.parameters())  # the model keeps its precision
        now = zip(model.parameters(), start, strict=True)
        moved[dtype] = torch.cat([(p.detach().float() - s).flatten() for p, s in now])
    assert reports["float32"]["master_weights"] is None and reports["bfloat16"]["master_weights"] == "float32"
    ratio = (moved["bfloat16"].norm() / moved["float32"].norm()).item()
    assert 0.85 < ratio < 1.15, ratio
    assert torch.nn.functional.cosine_similarity(moved["bfloat16"], moved["float32"], dim=0) > 0.9
    assert not any(p._post_accumulate_grad_hooks for p in model.parameters())  # the hooks are gone


def test_an_evaluations_backward_pass_leaves_no_gradient_for_the_next_step(tiny_dir):
    """Gradient norms measured after an epoch (a backward pass) must not leak into the next epoch's first step,
    also in bfloat16, where the float32 masters collect gradients through hooks."""
    from memlens.models import load_model
    from memlens.scoring.gradients import gradient_norms

    weights = []
    for evaluate in (False, True):
        lm = load_model(str(tiny_dir), device="cpu", dtype="bfloat16")
        model, _ = apply_method(lm.model, TuningConfig(method="full"))
        enc = encode(lm.tokenizer, TEXTS, 48)
        pad = lm.tokenizer.pad_token_id
        cfg = TrainingConfig(epochs=2, batch_size=4, seed=0)
        hook = (lambda epoch, m=model, ids=enc.ids, pad=pad: gradient_norms(m, ids, pad)) if evaluate else None
        train(model, enc.ids, pad, cfg, lr=3e-5, on_epoch_end=hook)
        weights.append(torch.cat([p.detach().float().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_prefixes_from_a_text_predict_as_the_model_does_after_that_text(tiny, tiny_dir):
    """prefix_init = "text": the prefixes are the model's own keys and values over the text (repeated to fill the
    virtual tokens), so the prefixed model's logits are the pre-trained model's after that text; random
    prefixes (peft's default) are not."""
    from pydantic import ValidationError

    from memlens.models import load_model

    text = "Sentences from case reports:"
    cfg = TuningConfig(method="prefix", virtual_tokens=6, prefix_init="text", prompt_init_text=text)
    with pytest.raises(MemlensError, match="prefix_init = 'text' needs the model's tokenizer"):
        apply_method(load_model(str(tiny_dir), device="cpu").model, cfg)
    model, info = apply_method(tiny.model, cfg, tiny.tokenizer)
    assert info["params"]["init"] == "text"
    start = (encode(tiny.tokenizer, [text], 10**9).ids[0] * 6)[:6]
    ids = encode(tiny.tokenizer, TEXTS[:1], 48).ids[0]
    model.eval()
    with torch.no_grad():
        got = model(input_ids=torch.tensor([ids])).logits[0, -len(ids) :]
        want = model.get_base_model()(input_ids=torch.tensor([start + ids])).logits[0, len(start) :]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    fresh = load_model(str(tiny_dir), device="cpu").model
    randomly, info = apply_method(fresh, TuningConfig(method="prefix", virtual_tokens=6))
    assert "init" not in info["params"]
    with torch.no_grad():
        other = randomly.eval()(input_ids=torch.tensor([ids])).logits[0, -len(ids) :]
    assert not torch.allclose(other, want, atol=1e-2)
    with pytest.raises(ValidationError, match="prefix_init"):
        TuningConfig(method="prefix", prefix_init="zeros")


VARIANTS = [  # each method, and the prompt-based ones with both starts
    {"method": m} for m in ("full", "head", "lora", "ia3", "prefix", "prompt", "ptuning")
] + [{"method": "prefix", "prefix_init": "text"}, {"method": "prompt", "prompt_init": "text"}]
OTHER = {  # another valid value of each [tuning] field
    "targets": ["q"],
    "rank": 3,
    "alpha": 5.0,
    "dropout": 0.3,
    "layers": [0],
    "virtual_tokens": 5,
    "prompt_init": "text",
    "prompt_init_text": "Another text entirely, of other words.",
    "prefix_init": "text",
    "encoder_hidden": 16,
}


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_a_method_reads_no_tuning_field_but_those_its_key_keeps(tiny, variant):
    """A trial of another sweep stands in for one whose config differs only in fields the method does not read
    (memlens.config.fields_read): changing any of those must leave the adapted model exactly as it was."""
    import copy

    from memlens.config import fields_read

    assert set(OTHER) == set(TuningConfig.model_fields) - {"method"}  # a new field needs a value here

    def adapted(cfg: TuningConfig) -> tuple[list, torch.Tensor, dict]:
        torch.manual_seed(0)
        model, info = apply_method(copy.deepcopy(tiny.model), cfg, tiny.tokenizer)
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([[5, 6, 7, 8]])).logits
        weights = [(n, p.detach().clone()) for n, p in model.named_parameters() if p.requires_grad]
        return weights, logits, info  # info: the method's parameters as applied (LoRA's alpha and dropout too)

    base = TuningConfig(**variant)
    weights, logits, info = adapted(base)
    unread = set(OTHER) - set(fields_read(base.model_dump(mode="json")))
    for name in sorted(unread):
        other_weights, other_logits, other_info = adapted(base.model_copy(update={name: OTHER[name]}))
        assert [n for n, _ in other_weights] == [n for n, _ in weights], name
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(weights, other_weights, strict=True)), name
        assert torch.equal(logits, other_logits) and other_info == info, name
