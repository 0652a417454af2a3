"""Distillation: the KD objectives, smaller students, the transfer set and a teacher → student run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_one_line_error, invoke, tiny_config, write_config, write_jsonl

from memlens.config import parse_config
from memlens.data import load_splits
from memlens.data.splits import unused_texts
from memlens.errors import MemlensError
from memlens.experiments.distillation import teacher_continuations, teacher_samples, transfer_texts
from memlens.experiments.runner import Measured
from memlens.experiments.store import Store
from memlens.metrics import rank_correlation
from memlens.models import load_model
from memlens.report.data import load_report_data
from memlens.report.plots import auc_by_block
from memlens.tokens import encode_records
from memlens.tuning.distill import check_shared_vocabulary, half_depth, kd_loss, keep_blocks


def _logits(seed: int, shape=(2, 5, 7)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2


def _labels() -> torch.Tensor:
    labels = torch.randint(0, 7, (2, 5), generator=torch.Generator().manual_seed(9))
    labels[1, 3:] = -100  # padding: positions 2 and 3 of row 1 predict nothing
    return labels


def test_kd_losses_are_the_kl_divergences_over_labelled_positions_only():
    s, t, labels = _logits(0), _logits(1), _labels()
    keep = labels[:, 1:] != -100
    ps, pt = F.softmax(s[:, :-1][keep], -1), F.softmax(t[:, :-1][keep], -1)
    forward = (pt * (pt.log() - ps.log())).sum(-1).mean()
    reverse = (ps * (ps.log() - pt.log())).sum(-1).mean()
    assert kd_loss(s, t, labels, objective="forward_kl") == pytest.approx(float(forward), rel=1e-5)
    assert kd_loss(s, t, labels, objective="reverse_kl") == pytest.approx(float(reverse), rel=1e-5)
    ce = F.cross_entropy(s[:, :-1][keep], labels[:, 1:][keep])
    mixed = kd_loss(s, t, labels, objective="mixed", alpha=0.3)
    assert mixed == pytest.approx(float(0.3 * forward + 0.7 * ce), rel=1e-5)
    assert kd_loss(t, t, labels, objective="forward_kl") == pytest.approx(0.0, abs=1e-6)
    moved = s.clone()
    moved[1, 2:] += 50 * torch.randn(3, 7)  # positions that predict padding, and the last (predicts nothing)
    moved[:, -1] += 5
    assert kd_loss(moved, t, labels, objective="forward_kl") == pytest.approx(float(forward), rel=1e-5)
    # temperature T: KL of the softened distributions, times T²
    soft = kd_loss(s, t, labels, objective="forward_kl", temperature=2.0)
    qs, qt = F.softmax(s[:, :-1][keep] / 2, -1), F.softmax(t[:, :-1][keep] / 2, -1)
    assert soft == pytest.approx(float(4 * (qt * (qt.log() - qs.log())).sum(-1).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="sequence"):
        kd_loss(s, t, labels, objective="sequence")


@pytest.mark.parametrize("objective", ["forward_kl", "reverse_kl"])
def test_a_free_student_trained_on_a_kl_objective_matches_the_teacher_distribution(objective):
    teacher = _logits(3, (1, 6, 11))
    labels = torch.zeros(1, 6, dtype=torch.long)
    student = torch.zeros(1, 6, 11, requires_grad=True)
    opt = torch.optim.Adam([student], lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        kd_loss(student, teacher, labels, objective=objective).backward()
        opt.step()
    p_student = F.softmax(student[0, :-1].detach(), -1)
    p_teacher = F.softmax(teacher[0, :-1], -1)
    assert torch.allclose(p_student, p_teacher, atol=2e-3)


def test_forward_kl_covers_the_teachers_modes_reverse_kl_picks_one():
    """With a student that can only place one bump, forward KL spreads over both teacher modes (mean-seeking)
    and reverse KL sits on one of them (mode-seeking): the two objectives optimise different things."""
    grid = torch.arange(9.0)
    teacher = torch.log(torch.exp(-((grid - 1) ** 2)) + torch.exp(-((grid - 7) ** 2)))[None, None].repeat(1, 2, 1)
    labels = torch.zeros(1, 2, dtype=torch.long)
    centres = {}
    for objective in ("forward_kl", "reverse_kl"):
        mu = torch.tensor(3.0, requires_grad=True)  # student logits: −(x − μ)² / 2, one bump
        opt = torch.optim.Adam([mu], lr=0.05)
        for _ in range(600):
            opt.zero_grad()
            student = (-((grid - mu) ** 2) / 2)[None, None].repeat(1, 2, 1)
            kd_loss(student, teacher, labels, objective=objective).backward()
            opt.step()
        centres[objective] = mu.item()
    assert abs(centres["forward_kl"] - 4) < 0.2  # between the modes (moment matching: the teacher mean)
    assert abs(centres["reverse_kl"] - 1) < 0.2  # on the nearer mode


def test_half_depth_keeps_every_other_block_and_the_model_still_generates(tiny_dir):
    lm = load_model(str(tiny_dir))
    model = lm.model
    ids = torch.tensor([[1, 5, 9, 13]])
    keep_blocks(model, [1])  # the second block becomes block 0 (its KV-cache index too)
    assert model.config.num_hidden_layers == 1 and len(model.model.layers) == 1
    assert model.model.layers[0].self_attn.layer_idx == 0
    out = model.generate(input_ids=ids, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 7)
    again = load_model(str(tiny_dir)).model
    half_depth(again)
    assert len(again.model.layers) == 1 and again.config.num_hidden_layers == 1
    with pytest.raises(MemlensError, match="distinct, increasing"):
        keep_blocks(load_model(str(tiny_dir)).model, [1, 0])


def test_a_prompt_tuned_teacher_is_distilled_on_the_texts_own_positions(tiny_dir):
    """peft's prompt tuning prepends virtual positions to the teacher's logits; the KD loss compares the text's."""
    from memlens.config import TuningConfig
    from memlens.tuning import apply_method
    from memlens.tuning.distill import kd_objective

    teacher, _ = apply_method(load_model(str(tiny_dir)).model, TuningConfig(method="prompt", virtual_tokens=4))
    student = load_model(str(tiny_dir)).model
    ids = torch.tensor([[1, 5, 9, 13, 2], [1, 7, 3, 0, 0]])
    mask = (torch.arange(5)[None, :] < torch.tensor([[5], [3]])).long()
    labels = ids.masked_fill(mask == 0, -100)
    loss = kd_objective(teacher, objective="forward_kl", temperature=1.0, alpha=0.5)(student, ids, mask, labels)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad


def test_a_logit_objective_needs_a_shared_vocabulary(tiny_dir):
    lm = load_model(str(tiny_dir))

    class Other:
        def get_vocab(self):
            return {"a": 0, "b": 1}

    check_shared_vocabulary(lm.tokenizer, lm.tokenizer, lm.model, lm.model, "forward_kl")
    with pytest.raises(MemlensError, match=r"vocabularies differ.*use objective 'sequence'"):
        check_shared_vocabulary(lm.tokenizer, Other(), lm.model, lm.model, "forward_kl")


def test_the_transfer_set_never_holds_a_member(tiny_dir, tmp_path):
    cfg = parse_config(tiny_config(tiny_dir, tmp_path / "out", distillation={"n_transfer": 0}))
    splits = load_splits(cfg.data)
    members = {" ".join(x.text.split()) for x in splits.members}
    scored = members | {" ".join(x.text.split()) for x in splits.nonmembers + splits.validation}
    pool, info = transfer_texts(cfg, splits)
    assert pool is not None and len(pool) == len(unused_texts(cfg.data, splits)) == info["available"]
    assert not {" ".join(x.text.split()) for x in pool} & scored
    cfg.distillation.n_transfer = 30
    assert len(transfer_texts(cfg, splits)[0]) == 30
    # a user's file with two members in it: they are dropped, and counted
    own = [splits.members[0].text, "A sentence nobody trained on.", splits.members[3].text, "Another one."]
    cfg.distillation.transfer = str(write_jsonl(tmp_path / "t.jsonl", own))
    texts, info = transfer_texts(cfg, splits)
    assert [t.text for t in texts] == own[1::2] and info["members_dropped"] == 2
    cfg.distillation.transfer = str(tmp_path / "missing.jsonl")
    with pytest.raises(MemlensError, match="neither pool, validation, generations nor an existing file"):
        transfer_texts(cfg, splits)


def test_sequence_kd_trains_on_the_teachers_continuations_of_the_transfer_prompts(tiny_dir, tmp_path):
    """Sequence-level KD's texts: each keeps its transfer text's first prompt_tokens tokens and continues them
    with the teacher's own samples; the teacher's start-token samples are its own texts, not members."""
    distillation = {"prompt_tokens": 4, "n_transfer": 6, "transfer": "generations"}
    cfg = parse_config(tiny_config(tiny_dir, tmp_path / "out", distillation=distillation))
    lm = load_model(str(tiny_dir))
    teacher = Measured({}, {}, [], 0, np.zeros(0, bool), lm.model, lm.tokenizer)
    splits = load_splits(cfg.data)
    transfer = splits.members[:5]
    made = teacher_continuations(cfg, teacher, transfer)
    assert len(made) == 5
    for src, ids, new in zip(transfer, encode_records(lm.tokenizer, transfer, 48).ids, made, strict=True):
        prompt = lm.tokenizer.decode(ids[:5], skip_special_tokens=True).strip()  # the start token + 4 tokens
        assert new.text.startswith(prompt) and new.text != src.text  # continued by the teacher's own samples
    again = teacher_continuations(cfg, teacher, transfer)
    assert [t.text for t in again] == [t.text for t in made]  # seeded
    samples = teacher_samples(cfg, teacher, splits)
    assert len(samples) == 6 and len({t.text for t in samples}) > 1
    assert not {t.text for t in samples} & {t.text for t in splits.members}


def test_rank_correlation_has_a_ci_and_says_when_it_is_not_estimable():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    r = rank_correlation(x, x + rng.normal(size=200))
    assert 0.5 < r.ci_low < r.rho < r.ci_high < 0.9 and r.n == 200
    null = [rank_correlation(rng.normal(size=60), rng.normal(size=60)) for _ in range(200)]
    assert sum(c.ci_low > 0 or c.ci_high < 0 for c in null) <= 20  # ~5% false claims at 95%
    with pytest.warns(UserWarning, match="not estimable"):
        few = rank_correlation(x[:5], x[:5])
    assert np.isnan(few.rho) and "5 finite pairs" in few.note
    with pytest.warns(UserWarning, match="constant"):
        assert np.isnan(rank_correlation(x, np.zeros(200)).rho)


def test_a_distillation_run_attacks_each_student_on_the_teachers_texts(tiny_dir, tmp_path):
    distillation = {"objectives": ["forward_kl", "sequence"], "n_transfer": 24, "epochs": 1, "lr": 3e-3}
    cfg = tiny_config(
        tiny_dir,
        tmp_path / "out",
        training={"epochs": 2},
        extraction={"enabled": True, "n_texts": 12, "prefix": 0.5},
        distillation=distillation,
    )
    result = invoke("run", write_config(tmp_path / "c.toml", cfg), "--quiet")
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    d = results["distillation"]
    assert d["transfer"] == {
        "source": "pool",
        "available": d["transfer"]["available"],
        "members_dropped": 0,
        "texts": 24,
    }
    assert [s["objective"] for s in d["students"]] == ["forward_kl", "sequence"]
    rows = d["records"]
    assert {r["role"] for r in rows} == {"student"}
    assert {r["objective"] for r in rows} == {"control", "forward_kl", "sequence"}
    assert d["control"]["objective"] == "control" and d["control"]["train_tokens"] > 0
    assert all(r["role"] == "target" for r in results["records"])
    for s in d["students"]:
        assert {c["attack"] for c in s["comparisons"]} >= {"loss", "reference"}
        assert {c["versus"] for c in s["comparisons"]} == {"teacher", "no-teacher control"}
        assert all(c["ci_low"] <= c["diff"] <= c["ci_high"] for c in s["comparisons"])
        aucs = [r for r in rows if r["objective"] == s["objective"] and r["metric"] == "auc" and r["kind"] == "mia"]
        assert {r["n_members"] for r in aucs} == {24}  # the teacher's members, every one
        assert any(r["kind"] == "extraction" for r in rows if r["objective"] == s["objective"])
    assert d["teacher_agreement"] and all(a["n"] == 12 or a["note"] for a in d["teacher_agreement"])
    assert "distillation: student same, 24 transfer texts (pool)" in result.stdout
    assert "forward_kl student" in result.stdout and "membership vs memorization" in result.stdout
    assert "control (LM loss on the transfer texts, no teacher)" in result.stdout


def test_a_per_block_sweep_stores_the_students_apart_and_draws_them_beside_their_teachers(tiny_dir, tmp_path):
    distillation = {"n_transfer": 16, "epochs": 1, "objectives": ["reverse_kl", "mixed"]}
    base = tiny_config(tiny_dir, tmp_path / "unused", tuning={"method": "lora"}, distillation=distillation)
    base.pop("output")
    spec = {"name": "kd", "base": base, "grid": {"tuning.layers": [[0], [1]]}}
    result = invoke("sweep", write_config(tmp_path / "sweep.toml", spec), "--dir", tmp_path / "store", "--quiet")
    assert result.exit_code == 0, result.output
    store = Store(tmp_path / "store", create=False)
    try:
        targets, students, every = store.results(), store.results(role="student"), store.results(role=None)
    finally:
        store.close()
    assert set(targets["role"]) == {"target"} and set(students["role"]) == {"student"}
    assert set(students["objective"]) == {"control", "reverse_kl", "mixed"}
    assert len(every) == len(targets) + len(students)
    data = load_report_data(tmp_path / "store", "loss")
    assert sorted(data.final["block"]) == [0, 1]
    assert len(data.students) == 6 and data.students["auc"].between(0, 1).all()
    svg = auc_by_block(data.final, data.students, attack="loss")
    assert svg is not None and "student, mixed" in svg and "fine-tuned (teacher)" in svg
    assert auc_by_block(data.final.assign(block=None), data.students, attack="loss") is None
    report = invoke("report", "--dir", tmp_path / "store", "--out", tmp_path / "report")
    assert report.exit_code == 0, report.output
    assert "Memorization per block" in (tmp_path / "report" / "report.html").read_text()


@pytest.mark.parametrize(
    ("distillation", "extra", "pattern"),
    [
        ({"objectives": ["forward_kl", "forward_kl"]}, {}, "objectives must not repeat"),
        ({"objectives": ["soft"]}, {}, "distillation.objectives"),
        ({"transfer": "nowhere.jsonl"}, {}, "neither pool, validation, generations nor an existing file"),
        ({}, {"mitigation": {"method": "dynamiccut"}}, "DynamicCut and distillation cannot be combined"),
        ({"student": "no-such-model-anywhere"}, {}, "no-such-model-anywhere"),
    ],
)
def test_bad_distillation_settings_are_one_clear_error(tiny_dir, tmp_path, distillation, extra, pattern):
    cfg = tiny_config(tiny_dir, tmp_path / "out", distillation=distillation, **extra)
    result = invoke("run", write_config(tmp_path / "c.toml", cfg), "--quiet")
    assert_one_line_error(result, pattern)
    assert not (tmp_path / "out").exists()
