import numpy as np
import pytest
from conftest import phee_texts

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
    with pytest.raises(MemlensError, match=r"LoRA target 'wq' does not exist.*q, k, v, o, gate, up, down.*q_proj"):
        apply_method(tiny.model, TuningConfig(method="lora", targets=["wq"]))


def test_grouped_batches_cover_everything_once_with_little_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 80, 1000)
    batches = grouped_batches(lengths, 16, rng)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    random_batches = np.array_split(rng.permutation(1000), 63)
    assert padding_fraction(lengths, batches) < 0.5 * padding_fraction(lengths, random_batches)
