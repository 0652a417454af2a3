import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest
import tomli_w
from helpers import tiny_config
from typer.testing import CliRunner

from memlens.cli import app
from memlens.errors import MemlensError
from memlens.experiments.store import Store
from memlens.experiments.sweep import expand, run_sweep, store_progress


def base_config(tiny_dir, **sections) -> dict:
    cfg = tiny_config(tiny_dir, "unused", **sections)
    for k in ("name", "output"):
        cfg.pop(k)
    return cfg


def test_grid_and_variants_expand_to_validated_trials(tiny_dir):
    spec = {
        "name": "s",
        "base": base_config(tiny_dir),
        "grid": {"rank": [1, 2, 4], "targets": [["q"], ["v", "o"]]},
        "variants": [{"method": "lora"}, {"label": "ia3", "method": "ia3", "tuning.targets": ["k"]}],
    }
    sweep = expand(spec)
    assert len(sweep.trials) == 2 * 3 * 2
    labels = [t.label for t in sweep.trials]
    assert labels[0] == "method=lora rank=1 targets=q" and labels[-1] == "ia3 rank=4 targets=v+o"
    assert sweep.trials[-1].config.tuning.targets == ["v", "o"] and sweep.trials[-1].config.tuning.method == "ia3"
    assert len({t.hash for t in sweep.trials}) == len(sweep.trials)


def test_axes_of_optional_sections_expand_and_create_the_section(tiny_dir):
    """A DynamicCut fraction curve, a DP budget series: axes of [mitigation] / [privacy] / [distillation]
    work whether or not the base config has the section (an override creates it with its defaults)."""
    base = base_config(tiny_dir) | {"mitigation": {"method": "dynamiccut"}}
    sweep = expand({"name": "s", "base": base, "grid": {"mitigation.fraction": [0.1, 0.2, 0.4]}})
    assert [t.config.mitigation.fraction for t in sweep.trials] == [0.1, 0.2, 0.4]
    assert {t.config.mitigation.method for t in sweep.trials} == {"dynamiccut"}
    kd = expand({"name": "s", "base": base_config(tiny_dir), "grid": {"distillation.objectives": [["sequence"]]}})
    (trial,) = kd.trials
    assert trial.config.distillation.objectives == ["sequence"] and trial.config.distillation.student == "same"
    with pytest.raises(MemlensError, match=r"distillation\.nonsense is not a config field"):
        expand({"name": "s", "base": base_config(tiny_dir), "grid": {"distillation.nonsense": [1]}})


def test_a_new_optional_field_keeps_an_old_sweeps_trials(tiny_dir):
    """The trial hash leaves out fields that are None (unset), so adding an optional field to a later memlens
    (model.adapter was one) does not turn every stored trial into a stranger; a value that is set still counts."""
    import hashlib
    import json

    (trial,) = expand({"name": "s", "base": base_config(tiny_dir)}).trials
    dump = trial.config.model_dump(mode="json", exclude={"output"})
    assert dump["model"]["adapter"] is None and dump["data"]["members"] is None

    def drop_none(d):
        return {k: drop_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}

    expected = hashlib.sha256(json.dumps(drop_none(dump), sort_keys=True).encode()).hexdigest()[:16]
    assert trial.hash == expected
    (other,) = expand(
        {"name": "s", "base": base_config(tiny_dir) | {"model": {"name": str(tiny_dir), "adapter": "x"}}}
    ).trials
    assert other.hash != trial.hash


def test_seeds_repeat_every_trial_once_per_training_seed(tiny_dir):
    sweep = expand({"name": "s", "base": base_config(tiny_dir), "grid": {"rank": [1, 2]}, "seeds": [0, 1, 2]})
    assert [t.label for t in sweep.trials][:3] == ["rank=1 seed=0", "rank=1 seed=1", "rank=1 seed=2"]
    assert [t.config.training.seed for t in sweep.trials] == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ({"grid": {"colour": [1]}}, "unknown sweep axis 'colour'"),
        ({"grid": {"tuning.nope": [1]}}, "unknown sweep axis 'tuning.nope'"),
        ({"grid": {"rank": []}}, "needs a non-empty list"),
        ({"variants": []}, r"\[\[variants\]\] is empty"),
        ({"grid": {"rank": ["x"]}}, r"field 'tuning\.rank'"),
        ({"grid": {"seed": [0, 0]}}, "are the same configuration"),
        ({"extra": 1}, "unknown top-level key"),
        ({"resources": 3}, r"\[resources\] must be a table"),
        ({"resources": {"cpus": "x"}}, r"\[resources\] cpus must be a non-negative number"),
        ({"resources": {"gpus": True}}, r"\[resources\] gpus must be a non-negative number"),
        ({"resources": {"cpus": 0}}, "asks for no CPU and no GPU"),
        ({"seeds": []}, "seeds must be a non-empty list"),
        ({"seeds": [0, -1]}, "seeds must be a non-empty list"),
        ({"seeds": [0, True]}, "seeds must be a non-empty list"),
        ({"seeds": [1, 1]}, "seeds repeat a seed"),
        ({"seeds": [0, 1], "grid": {"seed": [2]}}, "grid axis 'seed' is also given"),
        ({"seeds": [0, 2**32]}, r"field 'training\.seed'"),
    ],
)
def test_bad_sweeps(tiny_dir, spec, pattern):
    with pytest.raises(MemlensError, match=pattern):
        expand({"name": "s", "base": base_config(tiny_dir)} | spec)


@pytest.fixture(scope="module")
def sweep_file(tiny_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep") / "sweep.toml"
    spec = {
        "name": "killme",
        "base": base_config(tiny_dir, training={"epochs": 6, "eval_every": 2}),
        "grid": {"seed": [0, 1, 2, 3, 4, 5]},
    }
    path.write_text(tomli_w.dumps(spec))
    return path


def counts(folder) -> tuple[dict, int, int]:
    db = sqlite3.connect(folder / "results.db")
    status = dict(db.execute("SELECT status, COUNT(*) FROM trials GROUP BY status").fetchall())
    rows = db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    distinct = db.execute(
        "SELECT COUNT(*) FROM (SELECT DISTINCT trial, epoch, kind, attack, metric, fpr, subset, decoding FROM results)"
    ).fetchone()[0]
    return status, rows, distinct


def test_killed_sweep_resumes_without_duplicates(sweep_file, tmp_path):
    folder = tmp_path / "proj"
    cmd = [sys.executable, "-m", "memlens", "sweep", str(sweep_file), "--dir", str(folder), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.2)
        if (folder / "results.db").exists():
            try:
                if counts(folder)[0].get("done", 0) >= 2:
                    break
            except sqlite3.OperationalError:
                pass
        assert proc.poll() is None, proc.stderr.read().decode()
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9 mid-sweep, likely inside a trial
    proc.wait()
    status, rows, distinct = counts(folder)
    assert 2 <= status.get("done", 0) < 6 and rows == distinct
    per_trial = rows // status["done"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    status, rows, distinct = counts(folder)
    assert status == {"done": 6} and rows == distinct == 6 * per_trial
    # a third run finds nothing to do and changes nothing
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "6 done" and counts(folder)[1] == rows


def test_export_round_trip_and_changed_sweep_is_refused(sweep_file, tiny_dir, tmp_path):
    folder = tmp_path / "proj"
    spec = {"name": "small", "base": base_config(tiny_dir), "grid": {"seed": [0, 1]}}
    assert run_sweep(expand(spec), folder) == {"done": 2}
    store = Store(folder)
    frames = {}
    for fmt in ("csv", "json", "parquet"):
        path = store.export(tmp_path / f"r.{fmt}", fmt)
        frames[fmt] = {"csv": pd.read_csv, "json": pd.read_json, "parquet": pd.read_parquet}[fmt](path)
    ref = store.results()
    for fmt, df in frames.items():
        assert len(df) == len(ref) and list(df.columns) == list(ref.columns), fmt
        pd.testing.assert_series_equal(df["value"], ref["value"], check_names=False, atol=1e-12)
    with pytest.raises(MemlensError, match="unknown export format"):
        store.export(tmp_path / "r.xlsx", "xlsx")
    changed = spec | {"grid": {"seed": [0, 1, 2]}}
    with pytest.raises(MemlensError, match="created from a different sweep file"):
        run_sweep(expand(changed), folder)
    assert store.counts() == {"done": 2}


def test_failed_trial_is_recorded_and_sweep_goes_on(tiny_dir, tmp_path):
    spec = {
        "name": "f",
        "base": base_config(tiny_dir),
        "variants": [{"method": "lora", "targets": ["nope"]}, {"method": "full"}],
    }
    assert run_sweep(expand(spec), tmp_path) == {"done": 1, "failed": 1}
    trials = Store(tmp_path).trials()
    assert "tuning target 'nope'" in trials.loc[trials.status == "failed", "error"].item()


def test_a_dry_run_says_what_the_store_holds_and_what_a_run_would_do(tiny_dir, tmp_path):
    spec = {
        "name": "f",
        "base": base_config(tiny_dir),
        "variants": [{"method": "lora", "targets": ["nope"]}, {"method": "full"}, {"method": "head"}],
    }
    sweep = expand(spec)
    assert store_progress(tmp_path / "s", sweep) == f"{tmp_path / 's'}: no results store yet; a run does all 3 trials"
    assert run_sweep(sweep, tmp_path / "s") == {"done": 2, "failed": 1}
    Store(tmp_path / "s").db.execute("UPDATE trials SET status = 'pending' WHERE label LIKE '%head%'")
    kept = store_progress(tmp_path / "s", sweep)
    assert "1 of 3 trials done; a run now does 1 (1 failed: kept as they are; --retry-failed reruns them)" in kept
    assert "1 of 3 trials done; a run now does 2 (1 failed: retried)" in store_progress(
        tmp_path / "s", sweep, retry_failed=True
    )
    other = expand({**spec, "variants": spec["variants"][1:]})
    assert "a run would be refused" in store_progress(tmp_path / "s", other)
    assert (
        "no trial of sweep 'g' yet; a run copies 1 (1 from sweep 'f': the same configs, finished there) and "
        "does 2" in store_progress(tmp_path / "s", expand({**spec, "name": "g"}))
    )
    sweep_file = tmp_path / "f.toml"
    sweep_file.write_text(tomli_w.dumps(spec))
    result = CliRunner().invoke(
        app, ["sweep", str(sweep_file), "--dir", str(tmp_path / "s"), "--dry-run", "--retry-failed"]
    )
    assert result.exit_code == 0 and "a run now does 2 (1 failed: retried)" in result.stdout, result.output
    assert Store(tmp_path / "s").counts() == {"done": 1, "failed": 1, "pending": 1}  # a dry run changes nothing


def test_a_second_sweep_copies_the_trials_another_sweep_finished(tiny_dir, tmp_path, monkeypatch):
    base = base_config(tiny_dir)
    first = expand({"name": "one seed", "base": base, "variants": [{"method": "head"}, {"method": "full"}]})
    assert run_sweep(first, tmp_path) == {"done": 2}
    store = Store(tmp_path)
    store.db.execute("UPDATE trials SET status = 'pending' WHERE label LIKE '%full%'")  # not finished in that sweep
    (head,) = store.db.execute("SELECT id FROM trials WHERE label LIKE '%head%'").fetchone()
    more = expand(
        {"name": "more", "base": base, "variants": [{"method": "head"}, {"method": "full"}], "grid": {"lr": [1e-3]}}
    )
    assert store.finished_elsewhere("more", [t.config.model_dump(mode="json") for t in more.trials]) == {}  # lr
    head_cfg = first.trials[0].config.model_dump(mode="json")
    assert store.finished_elsewhere("new", [head_cfg, head_cfg]) == {0: (head, "one seed"), 1: (head, "one seed")}
    second = expand({"name": "again", "base": base, "variants": [{"method": "head"}, {"method": "full"}]})
    plan = store_progress(tmp_path, second)
    assert "a run copies 1 (1 from sweep 'one seed': the same configs, finished there) and does 1" in plan, plan
    assert re.search(r"; estimated ~\d+ (s|min) for those 1$", plan), plan  # the full fine-tune's share
    lines = []
    monkeypatch.setattr("memlens.progress.info", lines.append)
    assert run_sweep(second, tmp_path) == {"done": 2}
    assert (
        "2 trials, 0 already done, copied 1 (1 from sweep 'one seed': the same configs, finished there), 1 to run"
        in (lines[0])
    ), lines
    trials = Store(tmp_path).trials().set_index("id")
    copy = int(trials.index[(trials.sweep == "again") & trials.label.str.contains("head")][0])
    assert trials.loc[copy, "info"]["copied_from"] == {"sweep": "one seed", "trial": head}
    for col in ("started", "finished", "seconds"):  # the source's own times: it was not run again
        assert trials.loc[copy, col] == trials.loc[head, col]
    rows = Store(tmp_path).results()
    a, b = (
        rows[rows.trial == t].drop(columns=["trial", "sweep", "label"]).reset_index(drop=True) for t in (head, copy)
    )
    pd.testing.assert_frame_equal(a, b)
    for f in ("scores.csv", "results.json", "config.toml"):
        assert (store.trial_dir(copy) / f).read_bytes() == (store.trial_dir(head) / f).read_bytes()
    assert not list(tmp_path.glob("trials/*.copy"))
    from memlens.experiments.store import SweepView
    from memlens.report.findings import measured_section

    measured = "\n".join(measured_section(SweepView(Store(tmp_path), "again")))
    assert "1 copied from a run of the same configs in this folder (sweep 'one seed')" in measured, measured
    import shutil

    shutil.rmtree(store.trial_dir(head))  # the first source's folder gone: the next one stands in
    third = expand({"name": "third", "base": base, "variants": [{"method": "head"}]})
    assert run_sweep(third, tmp_path) == {"done": 1}
    info = Store(tmp_path).trials().query("sweep == 'third'")["info"].item()
    assert info["copied_from"] == {"sweep": "again", "trial": copy}, info
    with sqlite3.connect(tmp_path / "results.db") as db:  # as if every trial had been trained in bf16
        for i, raw in db.execute("SELECT id, info FROM trials WHERE status = 'done'").fetchall():
            info = json.loads(raw)
            info["model"]["dtype"] = "bfloat16"
            db.execute("UPDATE trials SET info = ? WHERE id = ?", (json.dumps(info), i))
    fourth = expand({"name": "fourth", "base": base, "variants": [{"method": "head"}]})
    assert "no trial of sweep 'fourth' yet; a run does all 1" in store_progress(tmp_path, fourth)
    assert run_sweep(fourth, tmp_path) == {"done": 1}  # run here in float32, not copied
    info = Store(tmp_path).trials().query("sweep == 'fourth'")["info"].item()
    assert "copied_from" not in info and info["model"]["dtype"] == "float32", info


def test_store_errors_are_one_line(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(MemlensError, match="cannot create results folder"):
        Store(tmp_path / "file" / "sub")
    with pytest.raises(MemlensError, match="no results store"):
        Store(tmp_path / "empty", create=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.db").write_text("not a database at all, just text" * 50)
    with pytest.raises(MemlensError, match="not a memlens database"):
        Store(tmp_path / "bad")
    store = Store(tmp_path / "ok")

    class Full:
        def execute(self, *a):
            raise sqlite3.OperationalError("database or disk is full")

    store.db = Full()
    with pytest.raises(MemlensError, match="the disk is full"):
        store.start(1)


def test_cli_dry_run_and_export(sweep_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default project folder would be runs/killme here
    runner = CliRunner()
    result = runner.invoke(app, ["sweep", str(sweep_file), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "6 trials" in result.stdout and "seed=5" in result.stdout
    assert not (tmp_path / "runs").exists()  # a dry run creates no store
    bad = runner.invoke(app, ["results", "export", "--dir", str(tmp_path / "none")])
    assert bad.exit_code == 2 and "no results store" in bad.stderr


def test_a_sweep_already_running_is_refused(tiny_dir, tmp_path):
    import fcntl

    spec = {"name": "busy [1]", "base": base_config(tiny_dir), "grid": {"seed": [0]}}  # any name, brackets included
    store = Store(tmp_path)
    with store.lock_path("busy [1]").open("a") as other:  # as another process running it would hold it
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(MemlensError, match=r"sweep 'busy \[1\]' is already running"):
            run_sweep(expand(spec), tmp_path)
        assert store.counts() == {}  # nothing was registered or reset
    assert run_sweep(expand(spec), tmp_path) == {"done": 1}  # the lock died with its holder


def test_trial_hashes_stay_those_of_earlier_versions():
    """Stores made by earlier versions resume: the hashes of a plain sweep are pinned (a change here strands
    every stored trial — make new fields optional, None by default, instead)."""
    spec = {
        "name": "s",
        "base": {"model": {"name": "smollm2-135m"}, "data": {"n_members": 10}},
        "grid": {"rank": [1, 4]},
    }
    assert [t.hash for t in expand(spec).trials] == ["6a7a06271757f1f8", "b9d7616f9d241d0e"]


def test_defaults_applied_at_run_time_are_pinned():
    """A field left None is not part of a trial's hash, and the run fills in a default: changing one of these would
    give a stored trial's hash other numbers (`results verify` would fail, a resumed sweep would mix them). A
    better default goes in as a new, explicit setting."""
    from memlens.tuning import DEFAULT_LR, lora

    assert DEFAULT_LR == {
        "full": 3e-5, "head": 1e-4, "lora": 1e-3, "ia3": 3e-3, "prefix": 1e-2, "prompt": 3e-2, "ptuning": 1e-2,
    }  # fmt: skip
    assert {k: list(v) for k, v in lora.DEFAULT_TARGETS.items()} == {
        "lora": ["q", "k", "v", "o"],
        "ia3": ["k", "v", "down"],
    }


def test_cost_estimate_counts_every_text_where_a_set_size_is_zero(tiny_dir):
    """``n_members = 0`` means "everything": the dry run's estimate counts the texts the run would use (it
    printed ~0 minutes for the full-scale presets before)."""
    from memlens.data.splits import load_splits, set_sizes
    from memlens.experiments.sweep import dry_run_table, estimate_seconds

    everything = base_config(tiny_dir, data={"n_members": 0, "n_nonmembers": 0, "n_validation": 0})
    (trial,) = expand({"name": "s", "base": everything}).trials
    used = load_splits(trial.config.data).info["used"]
    assert set_sizes(trial.config.data) == (used["members"], used["nonmembers"], used["validation"])
    sized = {"n_members": used["members"], "n_nonmembers": used["nonmembers"], "n_validation": used["validation"]}
    (explicit,) = expand({"name": "s", "base": base_config(tiny_dir, data=sized)}).trials
    assert used["members"] > 1000
    assert estimate_seconds(trial.config, 1e8) == pytest.approx(estimate_seconds(explicit.config, 1e8))
    missing = base_config(tiny_dir, data={"n_members": 0, "dir": str(tiny_dir / "nowhere")})
    (unread,) = expand({"name": "s", "base": missing}).trials
    assert set_sizes(unread.config.data) is None  # files that cannot be read: size unknown, no error
    assert estimate_seconds(unread.config, 1e8) is None
    assert dry_run_table(expand({"name": "s", "base": missing}))[0][0][2] == "unknown data size"


def test_cost_estimate_counts_dynamiccuts_extra_fine_tunes(tiny_dir):
    from memlens.experiments.sweep import estimate_seconds

    def cost(**sections):
        (trial,) = expand({"name": "s", "base": base_config(tiny_dir, **sections)}).trials
        return estimate_seconds(trial.config, 1e8)

    plain = cost()
    assert cost(mitigation={"method": "dynamiccut"}) == pytest.approx(3 * plain)  # ranking, cut, random control
    assert cost(mitigation={"method": "dynamiccut", "control": False}) == pytest.approx(2 * plain)
    assert cost(mitigation={"method": "dedup"}) == pytest.approx(plain)


def test_cost_estimate_of_an_auto_device_follows_the_gpu_it_would_use(tiny_dir, monkeypatch):
    from memlens.experiments import sweep as sweep_module

    (trial,) = expand({"name": "s", "base": base_config(tiny_dir) | {"model": {"name": str(tiny_dir)}}}).trials
    assert trial.config.model.device == "auto"
    costs = {}
    for gpu in (False, True):
        monkeypatch.setattr(sweep_module, "_cuda_available", lambda gpu=gpu: gpu)
        costs[gpu] = sweep_module.estimate_seconds(trial.config, 1e8)
        note = sweep_module.throughput_note(expand({"name": "s", "base": trial.config.model_dump()}))
        assert ("GFLOP/s on CUDA" if gpu else "GFLOP/s on CPU") in note and note.startswith("FLOPs at ~")
        monkeypatch.setattr(sweep_module, "LOAD_SECONDS", {"cpu": 0.0, "cuda": 0.0})  # compute alone:
        monkeypatch.setattr(sweep_module, "SPLIT_CHECK_SECONDS", 0.0)
        costs[gpu, "compute"] = sweep_module.estimate_seconds(trial.config, 1e8)
        monkeypatch.undo()
    compute = costs[False, "compute"] / costs[True, "compute"]
    assert compute == pytest.approx(sweep_module.FLOPS["cuda"] / sweep_module.FLOPS["cpu"])
    fixed = {gpu: costs[gpu] - costs[gpu, "compute"] for gpu in (False, True)}
    loads = sweep_module.LOAD_SECONDS
    assert fixed[False] - fixed[True] == pytest.approx(loads["cpu"] - loads["cuda"])  # the same split checks


def test_cost_estimate_counts_extractions_generated_tokens_and_each_trials_fixed_costs(tiny_dir):
    """Extraction decodes each extracted text's suffix (greedy, then num_samples per temperature) at the slow
    decoding rate; every trial pays for loading the model and the split checks of its texts."""
    from memlens.experiments import sweep as sweep_module

    def cost(extraction: dict | None = None, mean_tokens: float = 30.0, **data) -> float:
        sections = {"extraction": extraction} if extraction else {}
        base = base_config(tiny_dir, **sections)
        base["data"] |= data
        base["model"] |= {"device": "cpu"}
        (trial,) = expand({"name": "s", "base": base}).trials
        value = sweep_module.estimate_seconds(trial.config, 1e8, mean_tokens=mean_tokens)
        assert value is not None
        return value

    per_token = 2 * 1e8 / sweep_module.DECODE_FLOPS["cpu"]
    plain = cost()
    greedy = cost({"enabled": True, "n_texts": 10, "prefix": 0.5})
    assert greedy - plain == pytest.approx(per_token * 20 * 15)  # 10 members + 10 non-members, 15-token suffixes
    sampled = cost({"enabled": True, "n_texts": 10, "prefix": 0.5, "temperatures": [0.7, 1.0], "num_samples": 3})
    assert sampled - plain == pytest.approx(per_token * 20 * 15 * (1 + 2 * 3))
    counted = cost({"enabled": True, "n_texts": 10, "prefix": 10})  # a prefix of 10 tokens: 20-token suffixes
    assert counted - plain == pytest.approx(per_token * 20 * 20)
    capped = cost({"enabled": True, "n_texts": 10_000, "prefix": 0.5}, n_members=30, n_nonmembers=20)
    assert capped - cost(n_members=30, n_nonmembers=20) == pytest.approx(per_token * 50 * 15)  # no more than a set
    unsampled = cost({"enabled": True, "n_texts": 10, "prefix": 0.5, "greedy": False, "temperatures": [1.0]})
    assert unsampled - plain == pytest.approx(per_token * 20 * 15)  # one sample per prefix, no greedy pass
    scoring = 2 * (2 * 1e8 * 100 * 30) / sweep_module.FLOPS["cpu"]  # 100 more validation texts, before and after
    split_checks = 100 * sweep_module.SPLIT_CHECK_SECONDS
    assert cost(n_validation=120) - cost(n_validation=20) == pytest.approx(scoring + split_checks)
    assert plain > sweep_module.LOAD_SECONDS["cpu"]


def test_a_pilots_projection_uses_the_rates_of_the_device_it_ran_on(tiny_dir, monkeypatch):
    """A pilot measured on a GPU projects at CUDA rates also on a machine without one (the dry run's host does
    not decide), and at other rates than a pilot measured on the CPU: decoding and fixed costs do not scale
    with FLOP/s, so the device does not cancel out of measured ÷ estimated."""
    import pandas as pd

    from memlens.experiments import sweep as sweep_module
    from memlens.experiments.power import projected_seconds

    base = base_config(tiny_dir, extraction={"enabled": True, "n_texts": 10})
    base["model"] = {"name": "smollm2-135m"}  # device "auto"; a built-in's size is known without loading it
    (pilot_trial,) = expand({"name": "p", "base": base}).trials
    target = expand({"name": "t", "base": base, "grid": {"members": [40, 80], "epochs": [2, 4]}})
    projections = {}
    for gpu_here in (False, True):
        monkeypatch.setattr(sweep_module, "_cuda_available", lambda g=gpu_here: g)
        for ran in ("cpu", "cuda:0"):
            pilot = pd.DataFrame(
                {
                    "status": ["done"],
                    "config": [pilot_trial.config.model_dump(mode="json")],
                    "seconds": [100.0],
                    "info": [{"model": {"device": ran}}],
                }
            )
            projections[gpu_here, ran] = projected_seconds(pilot, target)
    for ran in ("cpu", "cuda:0"):
        assert projections[False, ran] == pytest.approx(projections[True, ran])
    assert projections[False, "cpu"] != pytest.approx(projections[False, "cuda:0"], rel=1e-3)

    # a target trial that names its device is estimated there, whatever device the pilot ran on
    pinned = expand({"name": "t", "base": base | {"model": {"name": "smollm2-135m", "device": "cpu"}}})
    own = {t.hash: sweep_module.estimate_seconds(t.config, 134_515_008, device="cpu") for t in pinned.trials}
    pilot = pd.DataFrame(
        {
            "status": ["done"],
            "config": [pilot_trial.config.model_dump(mode="json")],
            "seconds": [100.0],
            "info": [{"model": {"device": "cuda"}}],
        }
    )
    ratio = 100.0 / sweep_module.estimate_seconds(pilot_trial.config, 134_515_008, device="cuda")
    assert projected_seconds(pilot, pinned) == pytest.approx(ratio * sum(own.values()))


def test_verify_reruns_a_stored_trial_and_catches_a_changed_score(tiny_dir, tmp_path, monkeypatch):
    import tempfile

    from memlens.experiments.verify import verify_trial

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the reruns go
    tmp_path = tmp_path / "proj"

    spec = {
        "name": "v",
        "base": base_config(tiny_dir),
        "variants": [{"method": "lora", "targets": ["nope"]}, {"method": "lora", "label": "ok"}],
    }
    assert run_sweep(expand(spec), tmp_path) == {"done": 1, "failed": 1}
    done = Store(tmp_path).trials().query("status == 'done'").iloc[0]
    v = verify_trial(tmp_path, done["label"])  # by label; the same process and threads: identical
    assert v.reproduced and v.n_scores > 0 and v.max_score_diff == 0 and v.n_values > 0 and v.max_value_diff == 0
    runner = CliRunner()
    args = ["results", "verify", "--dir", str(tmp_path), "--quiet", "--trial"]
    scores = Store(tmp_path).trial_dir(int(done["id"])) / "scores.csv"
    df = pd.read_csv(scores, dtype={"id": str})
    df.loc[3, "score"] = df.loc[3, "score"] * 1.01  # one stored score changed by 1%: not what the trial computes
    df.to_csv(scores, index=False)
    changed = runner.invoke(app, [*args, str(done["id"])])
    assert changed.exit_code == 1 and "NOT reproduced (tolerance 0.0001): numbers differ" in changed.stderr
    assert "max |Δ| 0.0" in changed.stdout and "max |Δ| 0," not in changed.stdout.split("per-text")[1][:40]
    assert runner.invoke(app, [*args, str(done["id"]), "--tolerance", "0.02"]).exit_code == 0
    failed = runner.invoke(app, [*args, "1"])
    assert failed.exit_code == 2 and "is failed, not finished" in failed.stderr
    missing = runner.invoke(app, [*args, "no such label"])
    assert missing.exit_code == 2 and "no trial 'no such label'" in missing.stderr
    assert not list(scratch.iterdir())  # the reruns left nothing behind


def test_records_of_an_older_memlens_match_on_their_identity():
    from memlens.experiments.verify import compare_records
    from memlens.records import Record

    new = [Record(metric="auc", value=0.6, epoch=1, attack="loss").to_dict()]
    old = [{k: v for k, v in new[0].items() if k != "objective"}]  # written before the field existed
    assert compare_records(old, new) == (1, 0.0, 0, None)
    assert compare_records(old, [new[0] | {"value": 0.65}])[1] == pytest.approx(0.05)
    assert compare_records(old, [new[0] | {"epoch": 2}]) == (0, 0.0, 2, None)
    assert compare_records(old, [new[0] | {"value": 0.65}])[3] == "1 mia loss auc: value 0.6 stored, 0.65 now"
    speed = [Record(metric="tokens_per_second", value=25.6, kind="extraction", attack="extraction greedy").to_dict()]
    assert compare_records(speed, [speed[0] | {"value": 20.7}]) == (0, 0.0, 0, None)  # the machine's speed
    ppl = [Record(metric="val_ppl", value=30.0, epoch=1, kind="utility").to_dict()]
    assert compare_records(ppl, [ppl[0] | {"value": 30.003}])[1] == pytest.approx(0.003 / 30.003)  # relative above 1
    flag = [new[0] | {"beats_blind": True}]
    assert compare_records(flag, [flag[0] | {"beats_blind": False}])[1] == 1.0  # a verdict that flipped
    counted = [new[0] | {"n_members": 10_000}]
    assert compare_records(counted, [counted[0] | {"n_members": 10_001}])[1] == 1.0  # one text more: not relative


def test_computation_key_ignores_the_name_and_where_results_go_but_not_what_is_kept(tiny_dir):
    from memlens.config import computation_key, parse_config

    cfg = parse_config(base_config(tiny_dir) | {"name": "a"}).model_dump(mode="json")
    key = computation_key(cfg)
    assert computation_key(cfg | {"name": "b", "output": {**cfg["output"], "dir": "elsewhere"}}) == key
    assert computation_key(cfg | {"output": {**cfg["output"], "save_adapter": True}}) != key
    assert computation_key(cfg | {"training": {**cfg["training"], "seed": 1}}) != key
    assert computation_key(cfg | {"tuning": {**cfg["tuning"], "prefix_init": None}}) == computation_key(
        cfg | {"tuning": {k: v for k, v in cfg["tuning"].items() if k != "prefix_init"}}
    )  # an unset field is no part of it, as in a store written before the field existed


def test_a_setting_the_method_does_not_read_keeps_the_computation(tiny_dir):
    """`reproduce --set prefix_init=text` in a preset's folder: every trial but the prefix ones is copied."""
    from memlens.config import computation_key, parse_config

    def key(**tuning):
        return computation_key(parse_config(base_config(tiny_dir, tuning=tuning)).model_dump(mode="json"))

    assert key(method="head", prefix_init="text") == key(method="head")
    assert key(method="lora", rank=4, prefix_init="text", virtual_tokens=3) == key(method="lora", rank=4)
    assert key(method="prefix", prefix_init="text") != key(method="prefix")
    assert key(method="prompt", prompt_init_text="other") == key(method="prompt")  # random start: text unread
    assert key(method="prompt", prompt_init="text", prompt_init_text="other") != key(
        method="prompt", prompt_init="text"
    )
    assert key(method="lora", rank=4) != key(method="lora", rank=8)
    assert key(method="prefix", prefix_init="random") == key(method="prefix")  # peft's random start either way

    def ranked(rank):  # DynamicCut ranks with a LoRA fine-tune of the same [tuning] table: its rank is read
        cfg = base_config(tiny_dir, tuning={"method": "full", "rank": rank})
        cfg["mitigation"] = {"method": "dynamiccut", "rank_method": "lora"}
        return computation_key(parse_config(cfg).model_dump(mode="json"))

    assert ranked(4) != ranked(64)


def test_a_copy_needs_the_same_device_and_dtype():
    from memlens.experiments.sweep import same_precision

    ran = {"model": {"device": "cpu", "dtype": "float32"}}
    explicit = {"model": {"device": "cpu", "dtype": "float32"}}
    assert same_precision(ran, explicit) and same_precision(ran, explicit, here=False)
    assert not same_precision(ran, {"model": {"device": "cpu", "dtype": "bfloat16"}})
    assert not same_precision({"model": {"device": "cuda:0", "dtype": "bfloat16"}}, explicit)
    assert not same_precision(ran, {"model": {"device": "auto"}}, here=False)  # a cluster elsewhere: unknown


def test_a_trial_another_sweep_finishes_meanwhile_is_copied_not_run(tiny_dir, tmp_path, monkeypatch):
    """Two sweeps of one store in two processes: before each trial the local backend looks again for a copy."""
    import memlens.experiments as experiments

    base = base_config(tiny_dir)
    other = expand({"name": "a", "base": base, "variants": [{"method": "full"}]})
    mine = expand({"name": "b", "base": base, "variants": [{"method": "head"}, {"method": "full"}]})
    real_run, calls = experiments.run, []

    def run(cfg):  # sweep b's first trial: meanwhile sweep a (as if in another process) finishes the full fine-tune
        calls.append(cfg.tuning.method)
        if len(calls) == 1:
            run_sweep(other, tmp_path)
        return real_run(cfg)

    monkeypatch.setattr(experiments, "run", run)
    lines = []
    monkeypatch.setattr("memlens.progress.info", lines.append)
    assert run_sweep(mine, tmp_path) == {"done": 2}
    assert calls == ["head", "full"]  # head for b, full for a: b's full was not trained again
    trials = Store(tmp_path).trials()
    copied = trials[(trials.sweep == "b") & trials.label.str.contains("full")]["info"].item()
    assert copied["copied_from"]["sweep"] == "a"
    assert any("copied from sweep 'a', which finished it meanwhile" in line for line in lines), lines
