"""A user's data is never destroyed or lost: one regression test per defect found by hostile-but-honest use.

Path-safety tests run in a temp folder and check, byte for byte, that nothing outside the intended output
changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from helpers import assert_one_line_error, invoke, tiny_config, tree, write_config, write_jsonl

from memlens import progress
from memlens.errors import MemlensError


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """A current folder holding a user's files and an earlier runs/ folder, as a real one would."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("my notes")
    (tmp_path / "runs" / "old").mkdir(parents=True)
    (tmp_path / "runs" / "old" / "keep.txt").write_text("an earlier result")
    return tmp_path


def read_only_dir(path: Path) -> Path:
    """A folder nothing can be written into, even by root (``chattr +i``); skipped where neither works."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    else:
        path.chmod(0o555)
    try:
        (path / ".probe").write_text("x")
    except OSError:
        return path
    (path / ".probe").unlink()
    pytest.skip("cannot make a read-only folder here")


def writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    path.chmod(0o755)


# -- critical: --overwrite and the run name -----------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["", " ", ".", "..", "../../x", "a/b", "/abs", "x\x00y", "line\nbreak", "-rf", ".hidden"]
)
def test_unsafe_run_names_are_refused_and_nothing_is_touched(tiny_dir, workdir, name):
    cfg = tiny_config(tiny_dir, "runs/{name}", name=name)
    path = write_config(workdir / "c.toml", cfg) if "\x00" not in name else None
    if path is None:  # TOML cannot hold NUL: the Python API gets the same refusal
        from memlens.config import parse_config

        with pytest.raises(MemlensError, match="run name"):
            parse_config(cfg)
        return
    before = tree(workdir)
    assert_one_line_error(invoke("run", path, "--quiet", "--overwrite"), "run name")
    assert tree(workdir) == before


def test_overwrite_never_deletes_a_folder_memlens_did_not_write(tiny_dir, workdir):
    before = tree(workdir)
    for out in (".", "runs", "runs/old", str(workdir)):
        cfg = write_config(workdir / "c.toml", tiny_config(tiny_dir, out))
        assert_one_line_error(invoke("run", cfg, "--quiet", "--overwrite"), "not written by memlens")
    assert tree(workdir) == {**before, "c.toml": (workdir / "c.toml").read_bytes()}


def test_overwrite_replaces_a_run_folder_but_not_files_added_to_it(tiny_dir, workdir):
    cfg = write_config(workdir / "c.toml", tiny_config(tiny_dir, "runs/r"))
    assert invoke("run", cfg, "--quiet").exit_code == 0
    assert (workdir / "runs" / "r" / ".memlens-run").is_file()
    assert_one_line_error(invoke("run", cfg, "--quiet"), "holds an earlier run.*--overwrite")
    (workdir / "runs" / "r" / "analysis.ipynb").write_text("{}")
    assert_one_line_error(invoke("run", cfg, "--quiet", "--overwrite"), r"1 file\(s\) memlens did not write")
    assert (workdir / "runs" / "r" / "analysis.ipynb").read_text() == "{}"
    (workdir / "runs" / "r" / "analysis.ipynb").unlink()
    first = json.loads((workdir / "runs" / "r" / "results.json").read_text())["created"]
    time.sleep(1.1)
    assert invoke("run", cfg, "--quiet", "--overwrite").exit_code == 0
    assert json.loads((workdir / "runs" / "r" / "results.json").read_text())["created"] != first
    assert sorted(p.name for p in (workdir / "runs").iterdir()) == ["old", "r"]  # no staging left behind


def test_a_results_folder_of_an_earlier_version_can_be_overwritten(tmp_path):
    from memlens.experiments.outputs import check_output_dir

    old = tmp_path / "r"
    old.mkdir()
    (old / "results.json").write_text(json.dumps({"memlens_version": "0.0.9"}))
    (old / "scores.csv").write_text("id\n")
    check_output_dir(old, overwrite=True)  # no marker, but memlens's own results.json: accepted
    (old / "results.json").write_text(json.dumps({"something": "else"}))
    with pytest.raises(MemlensError, match="not written by memlens"):
        check_output_dir(old, overwrite=True)


# -- failing at the start what could fail at the end --------------------------------------------------------
def _no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the output folder was checked")


@pytest.mark.parametrize("out", ["file/sub/out", "ro/sub/out", "ro/out"])
def test_unwritable_output_fails_before_the_model_loads(tiny_dir, workdir, monkeypatch, out):
    import memlens.models

    (workdir / "file").write_text("a file, not a folder")
    ro = read_only_dir(workdir / "ro")
    monkeypatch.setattr(memlens.models, "load_model", _no_model)
    try:
        cfg = write_config(workdir / "c.toml", tiny_config(tiny_dir, out))
        assert_one_line_error(invoke("run", cfg, "--quiet"), "cannot write results to")
        assert list(ro.iterdir()) == []
    finally:
        writable(ro)


def test_missing_lora_target_fails_before_any_scoring(tiny_dir, tmp_path, monkeypatch):
    import memlens.experiments.runner as runner

    def no_scoring(*a, **k):
        raise AssertionError("scored before the LoRA targets were checked")

    monkeypatch.setattr(runner, "score_stage", no_scoring)
    out = tmp_path / "a" / "b" / "out"
    cfg = write_config(tmp_path / "c.toml", tiny_config(tiny_dir, out, tuning={"method": "lora", "targets": ["wq"]}))
    assert_one_line_error(invoke("run", cfg, "--quiet"), "tuning target 'wq' does not exist.*q_proj")
    assert not (tmp_path / "a").exists()  # the parent folders it created are gone too


def test_interrupted_run_leaves_nothing(tiny_dir, tmp_path, monkeypatch):
    import memlens.tuning

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(memlens.tuning, "train", interrupt)
    cfg = write_config(tmp_path / "c.toml", tiny_config(tiny_dir, tmp_path / "new" / "out"))
    result = invoke("run", cfg, "--quiet")
    assert result.exit_code == 130 and "interrupted" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]


# -- medium ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 truncated", b"not a zip at all"])
def test_damaged_score_cache_entry_is_recomputed(tiny, tmp_path, monkeypatch, capsys, damage):
    from memlens.scoring import score_cached

    monkeypatch.setenv("MEMLENS_CACHE", str(tmp_path))
    ids = [[5, 6, 7, 8, 9], [10, 11, 12]]
    first, hit = score_cached(tiny.model, ids, 0, identity="t")
    assert not hit
    (entry,) = (tmp_path / "scores").glob("*.npz")
    entry.write_bytes(damage)
    progress.set_enabled(True)
    try:
        again, hit = score_cached(tiny.model, ids, 0, identity="t")
    finally:
        progress.set_enabled(False)
    assert not hit and "damaged" in capsys.readouterr().err
    import numpy as np

    np.testing.assert_allclose(again.logprob, first.logprob, equal_nan=True)
    assert score_cached(tiny.model, ids, 0, identity="t")[1]  # the rewritten entry is used next time


@pytest.mark.parametrize("text", ["LoRA [/attn]", "[attn] q,k", "error [/x] in [bold]"])
def test_markup_in_messages_is_printed_as_text(capsys, text):
    progress.set_enabled(True)
    try:
        progress.info(text)
        with progress.bar(text, 2) as bar:
            bar.note(text)
            bar.advance(2)
    finally:
        progress.set_enabled(False)
    err = capsys.readouterr().err
    assert err.count(text) >= 2


def test_sweep_with_markup_in_labels_runs_every_trial(tiny_dir, tmp_path):
    from memlens.experiments.sweep import expand, run_sweep

    base = tiny_config(tiny_dir, tmp_path / "unused")
    base.pop("output")
    spec = {"name": "markup", "base": base, "variants": [{"label": "LoRA [/attn]"}, {"label": "[x] seed", "seed": 1}]}
    progress.set_enabled(True)
    try:
        assert run_sweep(expand(spec), tmp_path / "store") == {"done": 2}
    finally:
        progress.set_enabled(False)


def test_dry_run_with_huge_epochs_is_instant(tiny_dir, tmp_path):
    base = tiny_config(tiny_dir, tmp_path / "unused", training={"epochs": 10**12, "eval_at": [3, 7]})
    base.pop("output")
    sweep = tmp_path / "s.toml"
    write_config(sweep, {"name": "huge", "base": base, "grid": {"seed": [0, 1]}})
    t0 = time.perf_counter()
    result = invoke("sweep", sweep, "--dry-run")
    assert result.exit_code == 0, result.output
    assert time.perf_counter() - t0 < 10 and "2 trials" in result.stdout


def test_count_of_evaluations_matches_the_epochs_evaluated():
    from memlens.config import parse_config
    from memlens.experiments.runner import count_evaluations, is_evaluated

    for epochs in range(0, 13):
        for every in range(0, 5):
            for at in ([], [1], [2, 5, 40], [3, 3]):
                cfg = parse_config({"training": {"epochs": epochs, "eval_every": every, "eval_at": at}})
                assert count_evaluations(cfg) == sum(is_evaluated(cfg, e) for e in range(epochs + 2))


def _fake_gguf(folder: Path) -> Path:
    path = folder / "fake.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 5)  # a header cut short
    return path


def test_truncated_gguf_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMLENS_CACHE", str(tmp_path / "cache"))
    path = _fake_gguf(tmp_path)
    assert_one_line_error(invoke("models", "prepare", path, "--quiet"), "could not convert .*fake.gguf")
    models = tmp_path / "cache" / "models"
    assert [p.name for p in models.iterdir()] == []  # no temp folder, no lock file


def test_interrupted_conversion_leaves_no_temp_folder_or_lock(tmp_path, monkeypatch):
    import transformers

    from memlens.models.loading import _from_gguf

    monkeypatch.setenv("MEMLENS_CACHE", str(tmp_path / "cache"))
    models = tmp_path / "cache" / "models"
    models.mkdir(parents=True)
    stale = models / ".fake-0123456789abcdef.tmp999999999"  # a conversion killed with -9 long ago
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 1000)

    class Half:
        def save_pretrained(self, folder, **kw):
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / "model.safetensors").write_bytes(b"x" * 1000)
            raise KeyboardInterrupt  # Ctrl-C half-way through writing

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: None)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: Half())
    with pytest.raises(KeyboardInterrupt):
        _from_gguf(_fake_gguf(tmp_path), label="fake")
    assert list(models.iterdir()) == []


# -- low: one clear error line each --------------------------------------------------------------------------
def _files_config(tiny_dir, tmp_path, members: Path, **data) -> Path:
    cfg = tiny_config(tiny_dir, tmp_path / "out")
    cfg["data"] = {
        "source": "files",
        "members": str(members),
        "nonmembers": str(write_jsonl(tmp_path / "n.jsonl", ["a non-member", "another one"])),
        "validation": str(write_jsonl(tmp_path / "v.jsonl", ["validation text"])),
        **data,
    }
    return write_config(tmp_path / "c.toml", cfg)


SECRET = "Patient Jane Roe, MRN 4471, HIV positive"


@pytest.mark.parametrize(
    ("name", "content", "pattern"),
    [
        ("deep.jsonl", b"[" * 100_000 + b"]" * 100_000 + b"\n", r"deep\.jsonl:1: .*(nested|JSON)"),
        ("bigint.jsonl", b'{"id": ' + b"7" * 5000 + b', "text": "x"}\n', r"bigint\.jsonl:1: unreadable JSON"),
        ("header.csv", b"t" * 5_000_000 + b"\nrow\n", r"header\.csv:1: malformed CSV"),
        ("line5.jsonl", b'{"text": "a"}\n' * 4 + b'{"text": "caf\xe9"}\n', r"line5\.jsonl:5: not UTF-8"),
        ("line5.csv", b"id,text\n" + b"1,a\n" * 3 + b"2,caf\xe9\n", r"line5\.csv:5: not UTF-8"),
        ("noheader.csv", f"1,{SECRET}\n2,another secret\n".encode(), r"noheader\.csv: the header .* no column 'text'"),
    ],
)
def test_bad_data_files_are_one_line_and_never_print_text(tiny_dir, tmp_path, name, content, pattern):
    path = tmp_path / name
    path.write_bytes(content)
    result = invoke("run", _files_config(tiny_dir, tmp_path, path), "--quiet")
    assert_one_line_error(result, pattern)
    assert SECRET not in result.output and "secret" not in result.output
    assert not (tmp_path / "out").exists()


def test_duplicate_ids_are_renamed_and_empty_texts_counted(tiny_dir, tmp_path):
    members = tmp_path / "m.jsonl"
    rows = [{"id": "a", "text": "first text"}, {"id": "a", "text": "second text"}, {"id": "a#2", "text": "third"}]
    rows += [{"id": "e", "text": "   "}, {"id": "f", "text": ""}, {"id": "b", "text": "fourth text"}]
    members.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = invoke("run", _files_config(tiny_dir, tmp_path, members), "--quiet")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "results.json").read_text())["data"]
    assert data["dropped_empty"] == {"members": 2, "nonmembers": 0, "validation": 0}
    assert data["renamed_duplicate_ids"] == 1
    assert "empty texts dropped: 2 members" in result.stdout and "duplicate ids renamed" in result.stdout
    ids = {line.split(",")[0] for line in (tmp_path / "out" / "scores.csv").read_text().splitlines()[1:]}
    assert {"a", "a#3", "a#2", "b"} <= ids


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("training", "epochs", "3"),
        ("scoring", "cache", "no"),
        ("data", "n_members", 16.0),
        ("tuning", "targets", []),
        ("training", "save_checkpoints", 1),
    ],
)
def test_config_types_are_strict(section, field, value):
    from memlens.config import parse_config

    with pytest.raises(MemlensError, match=rf"field '{section}\.{field}'"):
        parse_config({section: {field: value}})


def test_a_float_field_still_takes_an_integer():
    from memlens.config import parse_config

    assert parse_config({"training": {"lr": 1}}).training.lr == 1.0


def test_memlens_quiet_is_honoured_by_the_cli(monkeypatch):
    monkeypatch.setenv("MEMLENS_QUIET", "1")
    progress.set_enabled(True)  # what a command does without --quiet
    assert not progress.enabled()
    monkeypatch.setenv("MEMLENS_QUIET", "0")
    progress.set_enabled(True)
    assert progress.enabled()
    progress.set_enabled(False)


def test_hub_id_without_network_fails_fast_in_one_line(tiny_dir, tmp_path, monkeypatch):
    import memlens.models.loading as loading

    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty local hub cache
    cfg = write_config(tmp_path / "c.toml", tiny_config(tiny_dir, tmp_path / "out", model={"name": "nobody/nothing"}))
    t0 = time.perf_counter()
    result = invoke("run", cfg, "--quiet")
    assert_one_line_error(result, "'nobody/nothing'.*cannot be reached")
    assert time.perf_counter() - t0 < 15


def test_hub_reachable_is_false_at_once_when_offline(monkeypatch):
    from memlens.models.loading import hub_reachable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    assert hub_reachable() is False and time.perf_counter() - t0 < 0.1
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    assert hub_reachable(timeout=1) is False


def test_empty_results_db_is_one_clear_error(tmp_path):
    (tmp_path / "results.db").write_bytes(b"")
    assert_one_line_error(invoke("results", "export", "--dir", tmp_path), "not a memlens results store")
    assert_one_line_error(invoke("report", "--dir", tmp_path), "not a memlens results store")
    (tmp_path / "results.db").write_bytes(b"garbage" * 100)
    assert_one_line_error(invoke("report", "--dir", tmp_path), "not a memlens (results store|database)")


def test_store_in_a_read_only_folder_can_be_read(tiny_dir, tmp_path):
    from memlens.experiments.sweep import expand, run_sweep

    base = tiny_config(tiny_dir, tmp_path / "unused")
    base.pop("output")
    store = tmp_path / "store"
    assert run_sweep(expand({"name": "ro", "base": base}), store) == {"done": 1}
    for p in store.rglob("*"):
        if p.is_dir():
            read_only_dir(p)
    read_only_dir(store)
    try:
        result = invoke("results", "export", "--dir", store, "--out", tmp_path / "r.csv")
        assert result.exit_code == 0, result.output
        assert (tmp_path / "r.csv").read_text().startswith("sweep,label,trial")
        result = invoke("report", "--dir", store, "--out", tmp_path / "report")
        assert result.exit_code == 0, result.output
        assert (tmp_path / "report" / "report.html").is_file()
    finally:
        for p in [store, *store.rglob("*")]:
            if p.is_dir():
                writable(p)


def test_every_test_the_readme_names_exists():
    import re

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    section = readme.split("### Your files are safe", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"`(test_\w+)`", section)) | set(re.findall(r"::(test_\w+)", section))
    source = "".join(p.read_text() for p in (root / "tests").glob("test_*.py"))
    assert len(names) >= 20
    assert [n for n in sorted(names) if f"def {n}(" not in source] == []


# -- found by a second hostile pass ---------------------------------------------------------------------------
def test_a_file_added_during_the_run_is_never_deleted(tiny_dir, tmp_path, monkeypatch, capsys):
    import memlens.tuning

    out = tmp_path / "out"
    real_train = memlens.tuning.train

    def train_and_meanwhile(*a, **k):  # the user saves a file into the output folder while the run trains
        out.mkdir(exist_ok=True)
        (out / "thesis.txt").write_text("my draft")
        return real_train(*a, **k)

    monkeypatch.setattr(memlens.tuning, "train", train_and_meanwhile)
    result = invoke("run", write_config(tmp_path / "c.toml", tiny_config(tiny_dir, out)), "--quiet", "--json")
    assert result.exit_code == 0, result.output
    assert (out / "thesis.txt").read_text() == "my draft" and sorted(p.name for p in out.iterdir()) == ["thesis.txt"]
    aside = Path(json.loads(result.stdout)["output_dir"])
    assert aside.parent == tmp_path and aside.name.startswith("out-") and (aside / "results.json").is_file()
    assert f"{out} is not empty" in result.stderr and f"results written to {aside} instead" in result.stderr


def test_a_second_run_to_the_same_folder_is_refused(tiny_dir, tmp_path):
    from memlens.files import lock

    cfg = write_config(tmp_path / "c.toml", tiny_config(tiny_dir, tmp_path / "out"))
    with lock(tmp_path / ".out.lock"):  # as a run writing there would hold it
        assert_one_line_error(invoke("run", cfg, "--quiet"), "another memlens run is writing to")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]


def test_an_earlier_run_moved_aside_by_a_killed_publish_is_restored(tmp_path):
    from memlens.experiments.outputs import MARKER, Output

    old = tmp_path / ".out.old.tmp999999999"  # killed between moving the old run aside and the new one in
    old.mkdir()
    (old / MARKER).write_text("{}")
    (old / "results.json").write_text('{"memlens_version": "0.1.0"}')
    with pytest.raises(MemlensError, match="holds an earlier run"):
        Output.open(tmp_path / "out", overwrite=False)
    assert (tmp_path / "out" / "results.json").is_file() and not old.exists()


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_terminated_run_leaves_nothing(tiny_dir, tmp_path, sig):
    import signal
    import sys

    cfg = write_config(tmp_path / "c.toml", tiny_config(tiny_dir, tmp_path / "a" / "b" / "out"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "memlens", "run", str(cfg), "--quiet"], stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 60
    while not list((tmp_path / "a" / "b").glob(".out.tmp*")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + getattr(signal, sig), err
    assert "interrupted" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]


@pytest.mark.parametrize(
    "sweep",
    [
        {"name": "s", "variants": [{"label": 5, "method": "full"}]},
        {"name": "s", "grid": {"epochs": [1]}, "variants": [{"label": ["a"]}]},
        {"name": "s", "variants": ["a"]},
        {"name": "s", "variants": [1]},
        {"name": "s", "base": 1},
    ],
)
def test_malformed_sweep_files_are_one_line(tmp_path, sweep):
    path = write_config(tmp_path / "s.toml", sweep)
    assert_one_line_error(invoke("sweep", path, "--dry-run"), r"s\.toml: ")


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"name": "é" * 130}, "longer than 200 bytes"),
        ({"data": {"seed": -1}}, r"data\.seed"),
        ({"training": {"seed": 2**70}}, r"training\.seed"),
        ({"attacks": {"seed": -1}}, r"attacks\.seed"),
        ({"tuning": {"method": "lora", "rank": 10**13}}, r"tuning\.rank"),
        ({"tuning": {"method": "prompt", "virtual_tokens": 10**12}}, r"tuning\.virtual_tokens"),
        ({"canaries": {"enabled": True, "n_candidates": 10**13}}, r"canaries\.n_candidates"),
        ({"model": {"name": ""}}, r"model\.name"),
    ],
)
def test_out_of_range_settings_are_refused(tiny_dir, tmp_path, change, pattern):
    cfg = write_config(tmp_path / "c.toml", tiny_config(tiny_dir, tmp_path / "out", **change))
    assert_one_line_error(invoke("run", cfg, "--quiet"), pattern)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ('{"id": "a", "text": "abc \\ud800 def"}', "text holds an unpaired UTF-16 surrogate"),
        ('{"id": "\\udc80", "text": "fine"}', "id holds an unpaired UTF-16 surrogate"),
        ('{"Jane Roe HIV positive": "x", "body": "y"}', r"'completion' \(fields: body; 1 more not shown\)"),
    ],
)
def test_hostile_json_records(tiny_dir, tmp_path, line, pattern):
    members = tmp_path / "m.jsonl"
    members.write_text(line + "\n")
    result = invoke("run", _files_config(tiny_dir, tmp_path, members), "--quiet")
    assert_one_line_error(result, pattern)
    assert "Jane" not in result.output


def test_csv_with_a_repeated_text_column_or_open_quote_is_refused(tiny_dir, tmp_path):
    members = tmp_path / "m.csv"
    members.write_text("text,text\na,b\n")
    assert_one_line_error(invoke("run", _files_config(tiny_dir, tmp_path, members), "--quiet"), "more than once")
    members.write_text('id,text\n1,"never closed\n2,b\n')
    assert_one_line_error(invoke("run", _files_config(tiny_dir, tmp_path, members), "--quiet"), "malformed CSV")


def test_results_that_cannot_be_saved_are_one_line_and_leave_nothing(tiny_dir, tmp_path, monkeypatch):
    import errno

    import memlens.experiments.outputs as outputs

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs, "_write_outputs", disk_full)
    cfg = write_config(tmp_path / "c.toml", tiny_config(tiny_dir, tmp_path / "new" / "out"))
    assert_one_line_error(invoke("run", cfg, "--quiet"), "could not be saved .*no space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]


@pytest.mark.parametrize("cache", ["file", "read-only"])
def test_an_unusable_score_cache_only_costs_time(tiny_dir, tmp_path, monkeypatch, cache):
    target = tmp_path / "cache"
    if cache == "file":
        target.write_text("not a folder")
    else:
        read_only_dir(target)
    monkeypatch.setenv("MEMLENS_CACHE", str(target))
    import memlens.scoring.cache as score_cache

    monkeypatch.setattr(score_cache, "_unusable", False)
    try:
        result = invoke("run", write_config(tmp_path / "c.toml", tiny_config(tiny_dir, tmp_path / "out")), "--quiet")
    finally:
        if cache != "file":
            writable(target)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("score cache") == 1 and (tmp_path / "out" / "results.json").is_file()


def test_export_to_a_folder_and_home_in_output_dir(tmp_path, monkeypatch):
    from memlens.config import parse_config

    (tmp_path / "results.db").write_bytes(b"")
    assert_one_line_error(invoke("results", "export", "--dir", tmp_path, "--out", "."), "not a memlens results store")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_config({"output": {"dir": "~/runs/{name}"}}).output_dir() == tmp_path / "runs" / "run"
