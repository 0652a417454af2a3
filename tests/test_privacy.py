"""DP-SGD (clipping, noise, accountant, refusals) and the one-run ε audit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, invoke, tiny_config, write_config

import memlens
from memlens.config import PrivacyConfig, TrainingConfig, TuningConfig, parse_config
from memlens.errors import MemlensError
from memlens.extraction.epsilon import audit_canaries, epsilon_lower_bound, one_run_audit, p_value
from memlens.tuning import apply_method, train
from memlens.tuning.private import PrivateSteps, clip_and_sum


def _lora(tiny):
    torch.manual_seed(0)  # LoRA's A is random
    model, _ = apply_method(tiny.model, TuningConfig(method="lora", rank=4, dropout=0.0))
    return model


def _ids(n: int, length: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(1, 500, size=(n, length)).tolist()


def test_clipping_scales_each_sample_to_the_bound_over_all_parameters():
    g = [torch.randn(5, 3, 4) * 10, torch.randn(5, 7)]
    g[0][2], g[1][2] = 1e-3, 1e-3  # one sample already inside the bound
    summed, norms = clip_and_sum(g, 1.0)
    true = torch.sqrt((g[0] ** 2).sum((1, 2)) + (g[1] ** 2).sum(1))
    assert torch.allclose(norms, true)
    for i in range(5):  # the batch's sum is the sum of each sample clipped on its own
        one, _ = clip_and_sum([x[i : i + 1] for x in g], 1.0)
        assert float(torch.sqrt(sum((o**2).sum() for o in one))) <= 1.0 + 1e-5
    each = [clip_and_sum([x[i : i + 1] for x in g], 1.0)[0] for i in range(5)]
    assert all(torch.allclose(s, sum(e[j] for e in each), atol=1e-5) for j, s in enumerate(summed))
    assert [x.shape for x in summed] == [(3, 4), (7,)]  # one sum per parameter, in its shape
    small, _ = clip_and_sum([x[2:3] for x in g], 1.0)
    assert torch.allclose(small[1], g[1][2], atol=1e-6)  # a small gradient is not rescaled


def test_per_text_gradients_are_clipped_before_the_noise_and_only_trainable_weights_are_hooked(tiny):
    model = _lora(tiny)
    model.train()
    privacy = PrivacyConfig(dp=True, noise_multiplier=0.0, max_grad_norm=1e-3)
    steps = PrivateSteps(model, privacy, n=16, batch=4, epochs=1, seed=0)
    ids = torch.tensor(_ids(4, 12))
    mask = torch.ones_like(ids)
    steps.backward(ids[:1], mask[:1], ids[:1].clone())
    norm1 = float(torch.sqrt(sum((s**2).sum() for s in steps.sums)))
    assert steps.norms[0][0] > 1e-3 and norm1 == pytest.approx(1e-3, rel=1e-3)  # it was clipped, to C
    steps.backward(ids[1:], mask[1:], ids[1:].clone())
    assert float(torch.sqrt(sum((s**2).sum() for s in steps.sums))) <= 4 * 1e-3 * (1 + 1e-4)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert all(getattr(p, "grad_sample", None) is None and p.grad is None for p in frozen)
    steps.noised()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trainable)
    assert steps.close()["clipped_share"] == 1.0


def test_dp_without_noise_or_clipping_equals_ordinary_training(tiny_dir):
    """σ = 0 and a bound no gradient reaches, one batch of equal-length texts: the DP update is the ordinary one."""
    from memlens.models import load_model

    ids = _ids(8, 10)
    cfg = TrainingConfig(epochs=2, batch_size=8, lr=1e-2, max_grad_norm=None)
    weights = []
    for privacy in (None, PrivacyConfig(dp=True, noise_multiplier=0.0, max_grad_norm=1e9, poisson=False)):
        model = _lora(load_model(str(tiny_dir), device="cpu"))
        info = train(model, ids, 0, cfg, lr=1e-2, privacy=privacy)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad]))
    assert float(weights[0].abs().max()) > 0
    assert torch.allclose(weights[0], weights[1], atol=1e-5)
    assert info["privacy"]["epsilon"] is None and info["privacy"]["clipped_share"] == 0.0


def test_per_text_gradients_of_a_full_fine_tune_sum_to_the_batch_gradient(tiny_dir):
    """Every weight, the tied token embedding included: its padding row (the tiny model's start token) gets no
    per-text gradient from the lookup, as torch's own backward has it (opacus alone would add one)."""
    import torch.nn.functional as F

    from memlens.models import load_model
    from memlens.scoring.gradients import per_sample_module
    from memlens.tokens import pad_batch

    model = load_model(str(tiny_dir), device="cpu").model
    assert model.model.embed_tokens.padding_idx == 0 and model.lm_head.weight is model.model.embed_tokens.weight
    ids, mask = pad_batch([[0, *s] for s in _ids(2, 12) + _ids(2, 7, seed=1)], 0)  # start token 0, as texts

    def loss(m):
        nll = F.cross_entropy(m(input_ids=ids, attention_mask=mask).logits[:, :-1].transpose(1, 2), ids[:, 1:],
                              reduction="none")  # fmt: skip
        learned = mask[:, 1:] == 1
        return ((nll * learned).sum(1) / learned.sum(1)).sum()

    params = [p for p in model.parameters() if p.requires_grad]
    batch = torch.autograd.grad(loss(model), params)
    module = per_sample_module(model)
    model.train()
    loss(module).backward()
    for p, g in zip(params, batch, strict=True):
        assert torch.allclose(p.grad_sample.sum(0), g, atol=1e-5), p.shape
    module._close()


def test_dp_training_moves_the_adapter_spends_its_budget_and_leaves_the_base_alone(tiny):
    model = _lora(tiny)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora_b = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    privacy = PrivacyConfig(dp=True, epsilon=4.0, delta=1e-3)
    info = train(model, _ids(40, 9), 0, TrainingConfig(epochs=2, batch_size=8), lr=1e-2, privacy=privacy)["privacy"]
    moved = [float((p.detach() - lora_b[n]).abs().max()) for n, p in model.named_parameters() if n in lora_b]
    assert min(moved) > 0  # every adapter moved (LoRA's B starts at zero)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert 3.6 <= info["epsilon"] <= 4.0 + 1e-6  # the noise was calibrated to spend the budget, not more
    assert info["steps"] == 2 * 5 and info["sample_rate"] == pytest.approx(0.2) and info["sampling"] == "poisson"
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None for p in model.parameters())


def test_dp_full_fine_tune_of_a_bf16_model_clips_in_float32_and_moves_every_weight(tiny_dir):
    """bf16 weights (CUDA's default): per-text norms, clipping and the noised sum in float32, the update through
    float32 masters (this crashed on the bf16 norms before)."""
    from memlens.models import load_model

    lm = load_model(str(tiny_dir), device="cpu", dtype="bfloat16")
    model, _ = apply_method(lm.model, TuningConfig(method="full"))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    privacy = PrivacyConfig(dp=True, epsilon=8.0, delta=1e-3, max_grad_norm=0.5)
    out = train(model, _ids(40, 9), 0, TrainingConfig(epochs=1, batch_size=8), lr=1e-3, privacy=privacy)
    assert out["master_weights"] == "float32" and 7.0 <= out["privacy"]["epsilon"] <= 8.0 + 1e-6
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert all(not torch.equal(p, start[n]) for n, p in model.named_parameters())  # noise reaches every weight
    grads = [torch.randn(6, 3, 5, dtype=torch.bfloat16), torch.randn(6, 7, dtype=torch.bfloat16)]
    summed, norms = clip_and_sum(grads, 0.5)
    assert norms.dtype == torch.float32 and all(s.dtype == torch.float32 for s in summed)
    clipped = [clip_and_sum([g[i : i + 1] for g in grads], 0.5)[0] for i in range(6)]
    assert max(float(torch.sqrt(sum((c**2).sum() for c in each))) for each in clipped) <= 0.5 + 1e-6


def test_a_delta_not_below_one_over_n_or_a_budget_too_small_is_refused(tiny):
    model = _lora(tiny)
    with pytest.raises(MemlensError, match="not below 1/N"):
        PrivateSteps(model, PrivacyConfig(dp=True, epsilon=1.0, delta=0.1), n=20, batch=4, epochs=1, seed=0)
    with pytest.raises(MemlensError, match=r"privacy\.epsilon 0\.001 cannot be met over 500 steps"):
        PrivateSteps(model, PrivacyConfig(dp=True, epsilon=1e-3), n=1000, batch=500, epochs=250, seed=0)


@pytest.mark.parametrize(
    ("section", "tuning", "pattern"),
    [
        ({"dp": True}, "lora", "exactly one of epsilon"),
        ({"dp": True, "epsilon": 1.0, "noise_multiplier": 1.0}, "lora", "exactly one of epsilon"),
        ({"epsilon": 1.0}, "lora", "only with dp = true"),
        ({"dp": True, "epsilon": 1.0}, "ia3", "DP-SGD cannot train tuning.method 'ia3'"),
        ({"dp": True, "epsilon": 1.0}, "prompt", "soft prompt once per batch"),
        ({"audit": -1}, "lora", "privacy.audit"),
        ({"audit": 5}, "lora", "at least 20 canaries"),
        ({"dp": True, "epsilon": 1.0}, "lora+checkpointing", "gradient_checkpointing cannot be combined with DP-SGD"),
        ({"audit_canaries": "sentences"}, "lora", "audit_canaries applies with privacy.audit"),
        ({"audit": 50, "audit_canaries": "poem"}, "lora", "privacy.audit_canaries"),
        ({"audit": 5000, "audit_canaries": "pool"}, "lora", "only .* pool texts are left"),
    ],
)
def test_bad_privacy_configs_are_one_clear_error(tmp_path, tiny_dir, section, tuning, pattern):
    method, _, checkpointing = tuning.partition("+")
    training = {"gradient_checkpointing": True} if checkpointing else {}
    cfg = tiny_config(tiny_dir, tmp_path / "out", privacy=section, tuning={"method": method}, training=training)
    result = invoke("run", write_config(tmp_path / "c.toml", cfg))
    assert_one_line_error(result, pattern)
    assert not (tmp_path / "out").exists()


def test_p_value_and_bound_match_the_closed_form_and_grow_with_evidence():
    # δ = 0, every guess right: P[Bin(r, q) ≥ r] = q^r = β  ⇒  ε = logit(β^(1/r))
    beta = 0.05
    for r in (10, 100):
        q = beta ** (1 / r)
        assert epsilon_lower_bound(1000, r, r, delta=0, beta=beta) == pytest.approx(np.log(q / (1 - q)), abs=1e-5)
    assert p_value(100, 50, 30, 0.5, 1e-5) < p_value(100, 50, 30, 1.0, 1e-5)  # rising in ε
    assert p_value(100, 50, 30, 0.5, 1e-3) > p_value(100, 50, 30, 0.5, 0)  # δ only weakens the test
    assert epsilon_lower_bound(1000, 100, 50, delta=1e-5, beta=beta) == 0.0  # a coin's accuracy proves nothing
    with pytest.raises(ValueError):
        epsilon_lower_bound(10, 20, 5, delta=0, beta=beta)


def _randomised_response(eps: float, m: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """An ε-DP mechanism on each canary's membership bit: the score shows the truth w.p. e^ε / (1 + e^ε)."""
    trained = rng.random(m) < 0.5
    shown = np.where(rng.random(m) < 1 / (1 + np.exp(-eps)), trained, ~trained)
    return shown + 0.01 * rng.random(m), trained


def test_the_audit_never_claims_more_than_the_true_epsilon_and_finds_a_real_leak():
    rng = np.random.default_rng(0)
    over = [
        one_run_audit(*_randomised_response(1.0, 400, rng), delta=0)["epsilon_lower_bound"] > 1.0 for _ in range(40)
    ]
    assert sum(over) <= 2  # a 95% bound may be exceeded 5% of the time
    blind = [
        one_run_audit(rng.random(400), rng.random(400) < 0.5, delta=1e-5)["epsilon_lower_bound"] for _ in range(40)
    ]
    assert sum(b > 0 for b in blind) <= 2  # scores that know nothing prove nothing
    found = memlens.one_run_audit(*_randomised_response(4.0, 1000, rng), delta=1e-5)  # the public API
    assert 2.0 < found["epsilon_lower_bound"] <= 4.0 and found["ceiling"] >= found["epsilon_lower_bound"]


def test_audit_canaries_are_distinct_seeded_and_half_trained():
    texts, trained = audit_canaries(2000, seed=3)
    assert len({t.text for t in texts}) == 2000 and texts[5].id == "audit-5"
    again, trained2 = audit_canaries(2000, seed=3)
    assert [t.text for t in again] == [t.text for t in texts] and np.array_equal(trained, trained2)
    assert 0.45 < trained.mean() < 0.55
    with pytest.raises(MemlensError, match="at least 20 audit canaries"):
        one_run_audit(np.zeros(10), np.ones(10, bool), delta=1e-5)
    with pytest.raises(MemlensError, match="one finite score"):
        one_run_audit(np.array([np.nan] * 30), np.ones(30, bool), delta=1e-5)


def test_audit_canaries_of_each_kind_are_drawn_from_texts_no_run_holds():
    from memlens.config import DataConfig
    from memlens.data.splits import audit_candidates, load_splits, unused_texts

    data = DataConfig(source="sotu", n_members=300, n_nonmembers=300, n_validation=100)
    splits = load_splits(data)  # the run's own texts are SOTU sentences here: none may be a canary
    run_texts = {" ".join(t.text.split()) for t in splits.members + splits.nonmembers + splits.validation}
    sentences = audit_candidates("sentences", data, splits)
    assert len(sentences) > 1000 and not run_texts & {" ".join(t.split()) for t in sentences}
    assert all(40 <= len(t.strip()) <= 200 for t in sentences)
    texts, trained = audit_canaries(200, seed=1, kind="sentences", texts=sentences)
    assert len({t.text for t in texts}) == 200 and {t.text for t in texts} <= set(sentences)
    assert 0.35 < trained.mean() < 0.65
    words, _ = audit_canaries(200, seed=1, kind="words", texts=audit_candidates("words", data, splits))
    assert len({t.text for t in words}) == 200 and all(len(t.text.split()) == 8 for t in words)
    pool = audit_candidates("pool", data, splits)
    assert pool == [t.text for t in unused_texts(data, splits)] and audit_candidates("records", data, splits) == []
    with pytest.raises(MemlensError, match="only 30 pool texts are left"):
        audit_canaries(40, seed=0, kind="pool", texts=pool[:30])
    both = {"privacy": {"audit": 40, "audit_canaries": "pool"}, "attacks": {"names": ["rmia"], "reference_models": 1}}
    with pytest.raises(MemlensError, match="both draw on the unused texts"):
        parse_config(tiny_config(Path("tiny"), Path("out"), **both))


def test_a_private_run_records_its_epsilon_and_its_audit(tmp_path, tiny_dir):
    from memlens.experiments.runner import run
    from memlens.report.summary import privacy_lines

    privacy = {"dp": True, "epsilon": 8.0, "delta": 1e-3, "audit": 40}
    cfg = parse_config(tiny_config(tiny_dir, tmp_path / "out", privacy=privacy, tuning={"method": "lora"}))
    results = run(cfg, write=False)
    p = results["privacy"]
    assert p["dp"] and 7.0 < p["epsilon"] <= 8.0 and p["training_texts"] == 24 + p["audit"]["trained"]
    assert p["audit"]["canaries"] == 40 and 0 <= p["audit"]["epsilon_lower_bound"] <= p["audit"]["ceiling"]
    rows = {r["metric"]: r for r in results["records"] if r["kind"] == "privacy"}
    assert rows["epsilon"]["value"] == p["epsilon"] and rows["epsilon_lower_bound"]["attack"] == "one-run audit"
    lines = privacy_lines(p)
    assert lines[0].startswith("DP-SGD: ε = ") and lines[1].startswith("one-run audit: ε ≥ ")
    assert "Record of" not in str(results)  # audit canary texts are never written out


@pytest.mark.parametrize("kind", [None, "sentences"])
def test_the_audit_proves_a_positive_epsilon_for_a_fine_tune_that_memorizes(tmp_path, tiny_dir, kind):
    """No DP, heavy full fine-tuning of the tiny model: the trained audit canaries stand out, ε ≥ something > 0."""
    from memlens.experiments.runner import run
    from memlens.report.summary import privacy_lines

    privacy = {"audit": 100} | ({"audit_canaries": kind} if kind else {})
    sections = {"privacy": privacy, "training": {"epochs": 6, "lr": 3e-3}}
    results = run(parse_config(tiny_config(tiny_dir, tmp_path / "out", **sections)), write=False)
    audit = results["privacy"]["audit"]
    assert results["privacy"]["dp"] is False and 0.3 < audit["epsilon_lower_bound"] <= audit["ceiling"]
    if kind:  # the canaries are real sentences: none of them is written out
        from memlens.data.splits import audit_candidates, load_splits

        cfg = parse_config(tiny_config(tiny_dir, tmp_path / "out", **sections))
        candidates = audit_candidates(kind, cfg.data, load_splits(cfg.data))
        texts, _ = audit_canaries(100, seed=cfg.training.seed, kind=kind, texts=candidates)
        dumped = json.dumps(results, default=str)
        assert not any(t.text in dumped for t in texts)
    assert (
        audit["canaries_kind"] == (kind or "records")
        and f"({kind or 'records'})" in privacy_lines(results["privacy"])[0]
    )
