import json
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import tiny_config

from memlens.attacks import ATTACKS
from memlens.config import parse_config
from memlens.errors import MemlensError
from memlens.experiments import run
from memlens.experiments.findings import load_scores
from memlens.experiments.runner import counted_scores, uncounted_texts
from memlens.experiments.store import Store
from memlens.metrics import roc_auc
from memlens.report.summary import summary_lines


def auc_of(results, epoch, attack):
    (row,) = [r for r in results["records"] if (r["epoch"], r["attack"], r["metric"]) == (epoch, attack, "auc")]
    return row


@pytest.fixture(scope="module")
def memorized(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "memorized"
    cfg = parse_config(
        tiny_config(
            tiny_dir,
            out,
            training={"epochs": 25, "eval_every": 10, "eval_at": [1], "save_checkpoints": True},
            data={"n_members": 32, "n_nonmembers": 32},
            attacks={"names": list(ATTACKS), "k": [0.2], "reference_models": 1},
        )
    )
    return cfg, run(cfg), out


def test_heavy_fine_tuning_is_detected(memorized):
    _, results, _ = memorized
    post, pre = auc_of(results, 25, "loss"), auc_of(results, 0, "loss")
    assert post["value"] > 0.9 and post["ci_low"] <= post["value"] <= post["ci_high"]
    assert abs(pre["value"] - 0.5) < 0.25  # an untrained model knows nothing of the members
    assert auc_of(results, 25, "reference")["value"] > 0.9
    assert [r for r in results["records"] if r["attack"] == "reference" and r["epoch"] == 0] == []
    ppl = {r["epoch"]: r["value"] for r in results["records"] if r["metric"] == "val_ppl"}
    assert ppl[25] < ppl[0]  # it learnt the language too
    assert results["tuning"]["trainable_share"] == 1.0
    assert results["environment"]["packed_scoring"] == {"LlamaForCausalLM float32": True}  # how it was scored


def test_shuffled_membership_labels_give_chance(memorized, tiny_dir):
    """Retrain the same run through the Python API, then shuffle the labels: AUC must fall to ≈ 0.5."""
    import torch

    from memlens.data import load_splits
    from memlens.models import load_model
    from memlens.scoring import score_texts
    from memlens.tokens import encode
    from memlens.tuning import apply_method, train

    cfg, results, _ = memorized
    splits = load_splits(cfg.data)
    lm = load_model(str(tiny_dir), device="cpu")
    texts = [t.text for t in splits.members + splits.nonmembers]
    torch.manual_seed(cfg.training.seed)
    model, _ = apply_method(lm.model, cfg.tuning)
    enc = encode(lm.tokenizer, texts, cfg.data.max_tokens)
    train(model, enc.ids[:32], lm.tokenizer.pad_token_id, cfg.training, lr=cfg.training.lr)
    scores = -score_texts(model, lm.tokenizer, texts, max_tokens=cfg.data.max_tokens).nll()
    assert roc_auc(scores[:32], scores[32:]) == pytest.approx(auc_of(results, 25, "loss")["value"])  # same seed
    rng = np.random.default_rng(0)
    shuffled = [roc_auc(*np.split(scores[rng.permutation(64)], 2)) for _ in range(40)]
    assert abs(np.mean(shuffled) - 0.5) < 0.05


def test_results_folder_holds_results_and_resolved_config(memorized):
    cfg, results, out = memorized
    saved = json.loads((out / "results.json").read_text())
    assert saved["records"] == json.loads(json.dumps(results["records"]))
    assert parse_config(__import__("tomllib").loads((out / "config.toml").read_text())) == cfg
    from memlens.data import load_splits

    written = (out / "results.json").read_text() + (out / "config.toml").read_text()
    splits = load_splits(cfg.data)
    assert not [t.id for t in splits.members + splits.nonmembers if t.text[:30] in written]  # no text stored


def test_refuses_non_empty_output_dir_and_leaves_it_alone(tiny_dir, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(MemlensError, match="not empty"):
        run(parse_config(tiny_config(tiny_dir, out)))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_failure_midway_writes_nothing(tiny_dir, tmp_path):
    out = tmp_path / "never"
    cfg = parse_config(tiny_config(tiny_dir, out, tuning={"method": "lora", "targets": ["nope"]}))
    with pytest.raises(MemlensError, match="tuning target 'nope'"):
        run(cfg)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_lora_run_and_no_output(tiny_dir, tmp_path):
    cfg = parse_config(tiny_config(tiny_dir, tmp_path / "x", tuning={"method": "lora", "targets": ["q", "v"]}))
    results = run(cfg, write=False)
    assert results["tuning"]["trainable_share"] < 0.1
    assert not (tmp_path / "x").exists()


def test_memorization_is_tracked_per_epoch_for_every_attack(memorized):
    _cfg, results, out = memorized
    labels = {
        "loss",
        "reference",
        "zlib",
        "lowercase",
        "recall",
        "min_k@0.2",
        "min_k_plus@0.2",
        "dc_pdd",
        "rmia",
        "lira",
        "neighbour",
        "gradient_norm",
    }
    aucs = {(r["epoch"], r["attack"]): r["value"] for r in results["records"] if r["metric"] == "auc"}
    for epoch in (0, 1, 10, 20, 25):
        expected = labels - {"reference", "gradient_norm"} if epoch == 0 else labels
        assert {a for (e, a) in aucs if e == epoch} == expected, epoch
        assert any(r["epoch"] == epoch and r["metric"] == "val_ppl" for r in results["records"])
    assert {e for (e, _) in aucs} == {0, 1, 10, 20, 25, None}  # None: the blind baseline
    assert aucs[(25, "loss")] > aucs[(1, "loss")]  # memorization grows with epochs
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch-1", "epoch-10", "epoch-20", "epoch-25"]


def test_blind_baseline_and_split_audit_are_reported(memorized):
    _, results, _ = memorized
    (blind,) = [r for r in results["records"] if r["attack"] == "blind"]
    assert 0.2 < blind["value"] < 0.8 and blind["ci_low"] < blind["ci_high"]  # same-distribution split
    aucs = [r for r in results["records"] if r["kind"] == "mia" and r["metric"] == "auc"]
    assert aucs and all(r["beats_blind"] is not None for r in aucs if r["ci_low"] is not None)
    assert blind["kind"] == "blind" and blind["beats_blind"] is None
    post = [r for r in results["records"] if r["epoch"] == 25 and r["attack"] == "loss" and r["metric"] == "auc"]
    assert post[0]["beats_blind"]
    assert results["split_audit"]["counts"]["members/nonmembers"] == {"exact": 0, "near": 0}


def test_each_fine_tuned_auc_is_tested_against_its_pretrained_auc(memorized, tiny_dir, tmp_path):
    _, results, _ = memorized
    rows = [r for r in results["records"] if r["kind"] == "mia" and r["metric"] == "auc"]
    assert all(r["beats_pretrained"] is None for r in rows if r["epoch"] == 0 or r["attack"] == "reference")
    assert auc_of(results, 25, "loss")["beats_pretrained"] is True
    # a learning rate too small to change anything: the fine-tuned AUC is the pre-trained one, and is flagged
    idle = run(parse_config(tiny_config(tiny_dir, tmp_path / "idle", training={"lr": 1e-12})))
    loss = auc_of(idle, 1, "loss")
    assert loss["value"] == pytest.approx(auc_of(idle, 0, "loss")["value"], abs=0.02)
    assert loss["beats_pretrained"] is False


def test_per_text_scores_are_saved_with_ids_only(memorized):
    import csv

    _, results, out = memorized
    rows = list(csv.DictReader((out / "scores.csv").open()))
    loss_25 = [r for r in rows if r["epoch"] == "25" and r["attack"] == "loss"]
    assert len(loss_25) == 64 and sum(int(r["member"]) for r in loss_25) == 32
    member = [float(r["score"]) for r in loss_25 if r["member"] == "1"]
    nonmember = [float(r["score"]) for r in loss_25 if r["member"] == "0"]
    auc = next(r for r in results["records"] if (r["epoch"], r["attack"], r["metric"]) == (25, "loss", "auc"))
    assert roc_auc(member, nonmember) == pytest.approx(auc["value"], abs=1e-6)


def test_extraction_and_canaries_in_a_run(tiny_dir, tmp_path):
    cfg = parse_config(
        tiny_config(
            tiny_dir,
            tmp_path / "ex",
            training={"epochs": 40, "eval_every": 0, "batch_size": 4},
            data={"n_members": 8, "n_nonmembers": 8, "n_validation": 8},
            extraction={"enabled": True, "n_texts": 6, "temperatures": [0.5], "num_samples": 2},
            canaries={"enabled": True, "kind": "digits", "n": 2, "repetitions": [1, 16], "n_candidates": 200},
        )
    )
    results = run(cfg)
    last = [r for r in results["records"] if r["epoch"] == 40]
    ext = {(r["decoding"], r["metric"], r["subset"]): r for r in last if r["kind"] == "extraction"}
    share_m, share_n = (ext[("greedy", "ngram_share", s)]["value"] for s in ("members", "nonmembers"))
    assert share_m > share_n  # a memorizing model continues members better than non-members
    per_text = pd.read_csv(tmp_path / "ex" / "scores.csv").query("attack == 'extraction greedy ngram_share'")
    assert len(per_text) == 12 and set(per_text["epoch"]) == {40}  # the 6 + 6 extracted texts, no others
    assert per_text.groupby("member")["score"].mean()[1] == pytest.approx(share_m, abs=1e-6)
    sampled = ext[("T=0.5", "exact_match_rate", "members")]
    assert sampled["temperature"] == 0.5 and sampled["attack"] == "extraction T=0.5"
    chance = pd.read_csv(tmp_path / "ex" / "scores.csv").query("attack == 'extraction T=0.5 p_extracted'")
    assert len(chance) == 12 and chance["score"].between(0, 1).all()  # each extracted text's exact probability
    mean_row = ext[("T=0.5", "p_extracted_mean", "members")]
    mean_m = mean_row["value"]
    assert mean_row["ci_low"] <= mean_m <= mean_row["ci_high"]
    assert chance.groupby("member")["score"].mean()[1] == pytest.approx(mean_m, abs=1e-6)
    assert 0 <= ext[("T=0.5", "np_extractable_rate", "members")]["value"] <= 1
    assert any("exact probability of extraction" in line for line in summary_lines(results))
    can = {(r["repetitions"], r["metric"]): r["value"] for r in last if r["kind"] == "canary"}
    assert can[(16, "canary_exposure")] > can[(0, "canary_exposure")]  # 0: the never-inserted controls
    assert can[(16, "canary_extraction_rate")] >= can[(1, "canary_extraction_rate")]
    assert set(results["extraction"]["summaries"]) == {
        "greedy/members",
        "greedy/nonmembers",
        "T=0.5/members",
        "T=0.5/nonmembers",
    }
    assert "secret code" not in (tmp_path / "ex" / "results.json").read_text()


def test_a_given_reference_model(tiny, tiny_dir, tmp_path):
    import torch

    def run_with(reference_model=None):
        cfg = tiny_config(tiny_dir, tmp_path, attacks={"reference_model": reference_model})
        return run(parse_config(cfg), write=False)

    base, same = run_with(), run_with(str(tiny_dir))
    assert same["reference_model"]["parameters"] == base["model"]["parameters"] and base["reference_model"] is None
    assert auc_of(same, 1, "reference")["value"] == pytest.approx(auc_of(base, 1, "reference")["value"], abs=1e-9)
    assert auc_of(same, 0, "reference")["value"] == 0.5  # R = M before fine-tuning: every score ties
    other_dir = tmp_path / "other"  # another model: the tiny one with its weights perturbed
    with torch.no_grad():
        for p in tiny.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    tiny.model.save_pretrained(other_dir, safe_serialization=True)
    tiny.tokenizer.save_pretrained(other_dir)
    other = run_with(str(other_dir))
    assert auc_of(other, 0, "reference")["value"] != 0.5
    assert auc_of(other, 1, "reference")["value"] != auc_of(base, 1, "reference")["value"]
    out = tmp_path / "d"
    with pytest.raises(MemlensError, match="no-such-model"):
        run(parse_config(tiny_config(tiny_dir, out, attacks={"reference_model": str(tmp_path / "no-such-model")})))
    assert not out.exists()


@pytest.mark.parametrize("distinct", [True, False])
def test_repeated_texts_count_once_in_the_metrics_unless_asked(tiny_dir, tmp_path, distinct):
    from helpers import phee_texts, write_jsonl

    members = phee_texts("train", 20)
    members += [*members[:4], members[0].upper()]  # 4 exact copies, and one that differs only in case
    data = {
        "source": "files",
        "members": str(write_jsonl(tmp_path / "m.jsonl", members)),
        "nonmembers": str(write_jsonl(tmp_path / "n.jsonl", phee_texts("test", 24))),
        "validation": str(write_jsonl(tmp_path / "v.jsonl", phee_texts("dev", 8))),
        "n_members": 0,
        "n_nonmembers": 0,
        "n_validation": 0,
    }
    cfg = tiny_config(tiny_dir, tmp_path / "out", data=data, attacks={"distinct": distinct, "bootstrap": 50})
    results = run(parse_config(cfg))
    loss = auc_of(results, 1, "loss")
    assert loss["n_members"] == (20 if distinct else 25) and loss["n_nonmembers"] == 24
    (gap,) = [r for r in results["records"] if r["metric"] == "loss_gap"]
    assert gap["n_members"] == loss["n_members"]
    assert results["data"]["duplicates_counted_once"] == (5 if distinct else 0)
    left_out = results["data"]["duplicate_ids"]
    assert len(left_out["members"]) == (5 if distinct else 0) and left_out["nonmembers"] == []

    # paired tests on scores.csv (findings, `memlens compare`) count the texts the run counted
    out = tmp_path / "out"
    scores = pd.read_csv(out / "scores.csv", dtype={"id": str, "attack": str})
    assert scores.groupby(["attack", "epoch"])["member"].sum().eq(25).all()  # every copy has its scores
    counted = counted_scores(scores, out)
    assert counted.groupby(["attack", "epoch"])["member"].sum().eq(loss["n_members"]).all()
    assert (counted["member"] == 0).sum() == (scores["member"] == 0).sum()
    store = Store(tmp_path / "store")
    store.register_sweep("s", {}, "h", [("h1", "t", cfg)])
    store.finish(1, results["records"], {}, 1.0)
    shutil.copytree(out, store.trial_dir(1))
    assert load_scores(store).n_members == loss["n_members"]
    # a run saved before the left-out ids were recorded: they are found again from its config's data
    saved = json.loads((out / "results.json").read_text())
    del saved["data"]["duplicate_ids"]
    (out / "results.json").write_text(json.dumps(saved))
    assert counted_scores(scores, out).equals(counted)
    assert uncounted_texts(out, scores.loc[(scores.attack == "loss") & (scores.epoch == 0), "id"]) == {
        (i, 1) for i in left_out["members"]
    }
    if distinct:  # ... from data that are no longer the ones it scored: one clear error, never a wrong answer
        write_jsonl(tmp_path / "m.jsonl", members[1:])
        with pytest.raises(MemlensError, match=r"set MEMLENS_DATA_DIR \(or data.dir\) as the run had it"):
            counted_scores(scores, out)


def test_dedup_trains_on_one_copy_of_each_repeated_text(tiny_dir, tmp_path):
    """[mitigation] dedup: a canary repeated 6 times is trained on once; members are still all attacked; the
    left-out ids are reported (never text), and a run without the table trains on everything."""
    from memlens.report.summary import summary_lines

    def go(out, **extra):
        cfg = tiny_config(
            tiny_dir,
            tmp_path / out,
            data={"n_members": 12, "n_nonmembers": 12, "n_validation": 8},
            canaries={"enabled": True, "kind": "digits", "n": 1, "repetitions": [1, 6], "n_candidates": 20},
            **extra,
        )
        return run(parse_config(cfg))

    plain, dedup = go("plain"), go("dedup", mitigation={"method": "dedup"})
    m = dedup["mitigation"]
    assert plain["mitigation"] is None and m["dropped"] == 5 and m["trained"] == 12 + 1 + 1
    assert len({i.split("#")[0] for i in m["dropped_ids"]}) == 1 and m["dropped_ids"][0].startswith("canary")
    assert dedup["training"]["train_tokens"] < plain["training"]["train_tokens"]
    assert sum(r["kind"] == "mia" for r in dedup["records"]) == sum(r["kind"] == "mia" for r in plain["records"])
    assert "mitigation dedup: trained on 14 texts, 5 duplicates left out" in summary_lines(dedup)
    with pytest.raises(MemlensError, match="mitigation"):
        parse_config({"mitigation": {"method": "scrub"}})


def test_a_run_whose_fine_tune_diverged_says_so(tiny_dir, tmp_path):
    cfg = tiny_config(tiny_dir, tmp_path / "out", tuning={"method": "full"}, training={"epochs": 2, "lr": 1.0})
    results = run(parse_config(cfg))
    (drop,) = [r for r in results["records"] if r["metric"] == "nonmember_drop" and r["epoch"] == 2]
    assert drop["ci_high"] < -0.405, drop  # lr 1.0 on every weight: unseen texts' perplexity up > 1.5-fold
    assert any("is taken as diverged; usual causes: a learning rate" in line for line in summary_lines(results))
    calm = run(parse_config(tiny_config(tiny_dir, tmp_path / "calm")))
    assert not any("diverged" in line for line in summary_lines(calm))


def test_a_gpu_run_scoring_small_batches_is_told_larger_ones_are_faster():
    from memlens.experiments.runner import scoring_hint

    assert "[scoring] batch_size = 64 or more" in scoring_hint("cuda", 16)
    assert "[scoring] batch_size = 64 or more" in scoring_hint("cuda:1", 32)
    assert scoring_hint("cuda", 64) is None and scoring_hint("cpu", 16) is None
