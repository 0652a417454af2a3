"""An interrupted fine-tune goes on from its last finished epoch and ends with the numbers of one that never stopped."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import invoke, tiny_config, write_config

from memlens.config import parse_config
from memlens.errors import MemlensError
from memlens.experiments import resume, runner
from memlens.experiments import run as run_api

SPEED = {"tokens_per_second"}


def _cfg(tiny_dir, out, **training):
    # LoRA with dropout (the torch RNG), accumulation and warm-up (the schedule), 3 epochs each evaluated, then
    # extraction
    return tiny_config(
        tiny_dir,
        out,
        tuning={"method": "lora", "rank": 4, "dropout": 0.1},
        training={"epochs": 3, "grad_accum": 2, "batch_size": 4, "warmup_ratio": 0.3, "schedule": "cosine"} | training,
        scoring={"cache": False},
        extraction={"enabled": True, "n_texts": 8},
    )


def _interrupt_after(monkeypatch, stop: int) -> list[int]:
    """Make the run raise KeyboardInterrupt right after the state of epoch ``stop`` is saved."""
    saved: list[int] = []
    original = runner.save_state

    def save_then_stop(folder, key, state):
        original(folder, key, state)
        saved.append(state.train.epoch)
        if state.train.epoch == stop:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner, "save_state", save_then_stop)
    return saved


def _measured(results: dict) -> list[dict]:
    return [r for r in results["records"] if r["metric"] not in SPEED]


@pytest.mark.parametrize("stop", [2, 3])  # 3: after the last epoch (then the extraction is what is left)
def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(tiny_dir, tmp_path, monkeypatch, stop):
    whole = run_api(parse_config(_cfg(tiny_dir, tmp_path / "whole")))
    assert not list(tmp_path.glob(".*.resume"))  # a finished run keeps no state

    out = tmp_path / "cut"
    cfg = parse_config(_cfg(tiny_dir, out))
    saved = _interrupt_after(monkeypatch, stop)
    with pytest.raises(KeyboardInterrupt):
        run_api(cfg)
    assert saved == list(range(1, stop + 1)) and not out.exists()
    state = tmp_path / ".cut.resume"
    assert [p.name for p in state.iterdir()] == [f"epoch-{stop}"]  # only the last epoch's state is kept
    monkeypatch.undo()

    resumed = run_api(cfg)
    assert resumed["training"]["resumed_after_epoch"] == stop and "resumed_after_epoch" not in whole["training"]
    assert not state.exists()
    assert _measured(resumed) == _measured(whole)  # every epoch's AUCs, CIs, losses, exactly
    assert [e["train_loss"] for e in resumed["training"]["epochs"]] == [
        e["train_loss"] for e in whole["training"]["epochs"]
    ]
    assert (out / "scores.csv").read_bytes() == (tmp_path / "whole" / "scores.csv").read_bytes()


def test_a_state_saved_by_another_config_is_deleted_not_used(tiny_dir, tmp_path, monkeypatch, capsys):
    from memlens import progress

    out = tmp_path / "out"
    _interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run_api(parse_config(_cfg(tiny_dir, out)))
    monkeypatch.undo()
    progress.set_enabled(True)
    other = run_api(parse_config(_cfg(tiny_dir, out, lr=1e-3)))
    assert "resumed_after_epoch" not in other["training"]
    assert "another config, data or model" in capsys.readouterr().err
    assert not (tmp_path / ".out.resume").exists()


def test_a_damaged_state_is_a_warning_and_a_fresh_start(tiny_dir, tmp_path, monkeypatch, capsys):
    from memlens import progress

    out = tmp_path / "out"
    cfg = parse_config(_cfg(tiny_dir, out))
    _interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run_api(cfg)
    monkeypatch.undo()
    (tmp_path / ".out.resume" / "epoch-1" / resume.TRAINING).write_bytes(b"not safetensors")
    progress.set_enabled(True)
    assert "resumed_after_epoch" not in run_api(cfg)["training"]
    assert "cannot be used" in capsys.readouterr().err
    assert not (tmp_path / ".out.resume").exists()


def test_the_cli_says_the_finished_epochs_are_kept(tiny_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _interrupt_after(monkeypatch, 1)
    result = invoke("run", write_config(tmp_path / "c.toml", _cfg(tiny_dir, out, epochs=2)), "--quiet")
    assert result.exit_code == 130 and "the same command again goes on from it" in result.stderr
    assert str(tmp_path / ".out.resume") in result.stderr.replace("\n", "")
    meta = json.loads((tmp_path / ".out.resume" / "epoch-1" / resume.META).read_text())
    assert meta["epoch"] == 1 and "train_loss" in meta["training"]["loop"]["epochs"][0]


def test_what_keeps_no_state(tiny_dir, tmp_path):
    dp = parse_config(_cfg(tiny_dir, tmp_path / "a") | {"privacy": {"dp": True, "noise_multiplier": 1.0}})
    assert not resume.resumable(dp)
    assert not resume.resumable(parse_config(_cfg(tiny_dir, tmp_path / "b", save_checkpoints=True)))
    assert not resume.resumable(parse_config(_cfg(tiny_dir, tmp_path / "run-{time}")))  # a rerun writes elsewhere
    off = _cfg(tiny_dir, tmp_path / "d")
    off["output"]["resume"] = False
    assert not resume.resumable(parse_config(off))
    assert resume.resumable(parse_config(_cfg(tiny_dir, tmp_path / "c")))


def test_a_state_that_cannot_be_written_is_a_warning_and_the_run_finishes(tiny_dir, tmp_path, capsys):
    from memlens import progress

    (tmp_path / ".out.resume").write_text("a file where the state folder would go")
    progress.set_enabled(True)
    results = run_api(parse_config(_cfg(tiny_dir, tmp_path / "out", epochs=1)))
    assert "could not save the state after epoch 1" in capsys.readouterr().err
    assert (tmp_path / "out" / "results.json").exists() and results["records"]


def test_a_state_that_does_not_fit_the_model_is_refused_before_anything_changes(tiny_dir):
    """A real state, then each way it can be wrong: refused by check_state, and train() leaves the weights as
    they were (everything is checked before anything is copied)."""
    from memlens.config import TrainingConfig, TuningConfig
    from memlens.models import load_model
    from memlens.tokens import encode
    from memlens.tuning import apply_method, train
    from memlens.tuning.train import TrainState, check_state

    def fresh():
        torch.manual_seed(0)
        lm = load_model(str(tiny_dir), device="cpu")
        return apply_method(lm.model, TuningConfig(method="lora", rank=2))[0], lm.tokenizer

    model, tok = fresh()
    ids, cfg, states = encode(tok, ["a b c d e f", "g h i j k"], 16).ids, TrainingConfig(epochs=1), []
    train(model, ids, tok.pad_token_id, cfg, lr=1e-3, on_state=states.append)
    (good,) = states
    model, _ = fresh()
    check_state(good, model)
    t, meta = good.tensors, good.meta
    bad = [
        ({**t, "weight.1": torch.zeros(3)}, meta, "does not fit"),
        ({**t, f"weight.{len(meta['names'])}": torch.zeros(3)}, meta, "more trainable weights"),
        ({**t, "adam.0.foo": torch.zeros(3)}, meta, "not AdamW's"),
        ({**t, "rng.torch": torch.zeros(5, dtype=torch.uint8)}, meta, "RNG"),
        (t, {**meta, "names": meta["names"][::-1]}, "not this model's"),
        (t, {**meta, "param_groups": [{"params": [0]}]}, "groups"),
        (t, {k: v for k, v in meta.items() if k != "loop"}, "summary"),
        (t, {**meta, "schedule": {}}, "schedule"),
        (t, {**meta, "sampler": {}}, "sampler"),
    ]
    before = [p.detach().clone() for p in model.parameters()]
    for tensors, m, why in bad:
        with pytest.raises(ValueError, match=why):
            check_state(TrainState(1, tensors, m), model)
        with pytest.raises(ValueError, match=why):
            train(model, ids, tok.pad_token_id, cfg, lr=1e-3, resume_from=TrainState(1, dict(tensors), m))
        assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_train_refuses_to_resume_dp_sgd(tiny):
    from memlens.config import PrivacyConfig, TrainingConfig
    from memlens.tuning import train

    ids = [[1, 5, 6, 7], [1, 8, 9, 10]]
    with pytest.raises(ValueError, match="cannot be resumed"):
        train(
            tiny.model,
            ids,
            0,
            TrainingConfig(epochs=1),
            lr=1e-3,
            privacy=PrivacyConfig(dp=True, noise_multiplier=1.0),
            on_state=lambda s: None,
        )


def test_a_killed_sweep_trial_goes_on_from_its_last_epoch(tiny_dir, tmp_path, monkeypatch):
    from memlens.experiments.store import Store
    from memlens.experiments.sweep import expand, run_sweep

    base = _cfg(tiny_dir, "unused")
    for k in ("name", "output"):
        base.pop(k)
    sweep = expand({"name": "s", "base": base, "grid": {"seed": [0]}})
    _interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, tmp_path / "store")
    monkeypatch.undo()
    assert (tmp_path / "store" / "trials" / ".trial-0001.resume" / "epoch-1").is_dir()
    assert run_sweep(sweep, tmp_path / "store") == {"done": 1}
    (info,) = Store(tmp_path / "store").trials()["info"]
    assert info["training"]["resumed_after_epoch"] == 1
    assert not (tmp_path / "store" / "trials" / ".trial-0001.resume").exists()


def test_a_run_that_fails_after_an_epoch_leaves_no_state(tiny_dir, tmp_path, monkeypatch):
    original = runner.save_state

    def save_then_fail(folder, key, state):
        original(folder, key, state)
        raise RuntimeError("a bug after the epoch")

    monkeypatch.setattr(runner, "save_state", save_then_fail)
    with pytest.raises(RuntimeError):
        run_api(parse_config(_cfg(tiny_dir, tmp_path / "a" / "out")))
    assert not (tmp_path / "a").exists()  # neither the state nor the parent folder the run created


def test_records_with_numpy_numbers_are_saved(tmp_path):
    """Counts and flags are often numpy scalars (np.int64, np.bool_), which json refuses: they are saved as
    results.json saves them."""
    import numpy as np

    from memlens.records import Record
    from memlens.tuning.train import TrainState

    numbers = {"value": np.float64(0.6), "n_members": np.int64(3), "beats_blind": np.bool_(True)}
    record = Record(kind="mia", attack="loss", metric="auc", epoch=1, **numbers)
    state = TrainState(1, {"weight.0": torch.zeros(2)}, {"loop": {}})
    resume.save(tmp_path / "s", "key", resume.Saved(state, {1: {"loss": np.zeros(3)}}, [record], []))
    meta = json.loads((tmp_path / "s" / "epoch-1" / resume.META).read_text())
    assert meta["records"][0]["n_members"] == 3 and meta["records"][0]["beats_blind"] is True


def test_a_ray_trial_whose_worker_died_goes_on_from_its_last_epoch_on_that_node(tiny_dir, tmp_path, monkeypatch):
    """run_trial, the function Ray runs on a worker (called here without Ray): an attempt killed after epoch 1
    leaves its state in the node's private working folder; an attempt while another holds the folder runs apart,
    from the start; the next attempt goes on from the state and cleans up."""
    import os
    import stat
    import tempfile
    import time

    from memlens.experiments.distributed import OLD_TRIAL_DIR, STALE_DAYS, run_trial, working_root
    from memlens.files import lock

    node = tmp_path / "node"  # the node's temporary folder
    node.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(node))
    root = working_root()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700  # it holds weights fine-tuned on the user's data
    stale, fresh, old_style = root / "0123456789abcdef", root / "fedcba9876543210", node / f"{OLD_TRIAL_DIR}999999-x"
    for d in (stale, fresh, old_style):
        (d / "out").mkdir(parents=True)
    week_ago = time.time() - (STALE_DAYS + 1) * 86400
    for p in (stale / "out", stale):
        os.utime(p, (week_ago, week_ago))
    config = parse_config(_cfg(tiny_dir, "unused")).model_dump(mode="json")
    target = str(tmp_path / "store" / "trials" / "trial-0001")
    _interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):  # as a worker dies: no clean-up runs
        run_trial(config, target)
    (work,) = {p for p in root.iterdir() if p.is_dir()} - {fresh}
    assert (work / ".out.resume" / "epoch-1").is_dir() and not stale.exists()
    assert fresh.exists() and (not old_style.exists() or os.path.exists("/proc/999999"))  # pid 999999: gone
    monkeypatch.setattr(runner, "save_state", resume.save)
    with lock(root / f"{work.name}.lock"):  # another attempt of the trial still runs
        apart = run_trial(config, target)
    assert "resumed_after_epoch" not in apart["info"]["training"] and (work / ".out.resume" / "epoch-1").is_dir()
    out = run_trial(config, target)
    assert out["info"]["training"]["resumed_after_epoch"] == 1 and not work.exists()
    assert "results.json" in out["files"] and f"{target}" in out["files"]["config.toml"].decode()
    bad = parse_config(_cfg(tiny_dir, "unused") | {"tuning": {"method": "lora", "targets": ["nope"]}})
    with pytest.raises(MemlensError, match="nope"):  # a trial that raises leaves nothing behind
        run_trial(bad.model_dump(mode="json"), str(tmp_path / "store" / "trials" / "trial-0002"))
    assert {p for p in root.iterdir() if p.is_dir()} == {fresh}
    os.chmod(root, 0o755)
    with pytest.raises(MemlensError, match="is not a private folder of this user"):
        run_trial(config, target)
