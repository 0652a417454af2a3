import json
import subprocess
import sys

import pytest
from helpers import assert_one_line_error, invoke, tiny_config, write_config, write_jsonl


def test_help_does_not_import_torch():
    code = (
        "import sys; from memlens.cli import app; sys.argv=['memlens','--help']\ntry: app()\nexcept SystemExit: pass\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import at start-up'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "demo" in proc.stdout and "run" in proc.stdout


def test_run_end_to_end_json(tiny_dir, tmp_path):
    cfg = write_config(tmp_path / "c.toml", tiny_config(tiny_dir, tmp_path / "out"))
    result = invoke("run", cfg, "--quiet", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["output_dir"] == str(tmp_path / "out") and (tmp_path / "out" / "results.json").is_file()
    table = invoke("run", cfg, "--quiet", "--overwrite")
    assert table.exit_code == 0 and "AUC pre-trained" in table.stdout and "validation perplexity" in table.stdout


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"data": {"dir": "/no/such/dir"}}, "data directory not found"),
        ({"model": {"name": "no-such-model"}}, "unknown model 'no-such-model'"),
        ({"model": {"name": "./missing/model"}}, "model path not found"),
        ({"tuning": {"method": "lora", "targets": ["wq"]}}, "tuning target 'wq' does not exist.*q_proj"),
        ({"training": {"epochs": "three"}}, r"field 'training\.epochs'"),
    ],
)
def test_bad_run_inputs(tiny_dir, tmp_path, change, pattern):
    cfg = write_config(tmp_path / "c.toml", tiny_config(tiny_dir, tmp_path / "out", **change))
    assert_one_line_error(invoke("run", cfg, "--quiet"), pattern)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("members", "nonmembers", "pattern"),
    [
        (None, ["fine"], r"m\.jsonl:2: malformed JSON"),
        ([], ["fine"], "members set is empty"),
        (["shared text", "x"], ["shared text"], "appear in both the member and non-member sets"),
    ],
)
def test_bad_data_files(tiny_dir, tmp_path, members, nonmembers, pattern):
    m = tmp_path / "m.jsonl"
    if members is None:
        m.write_text('{"text": "ok"}\n{"text": oops}\n')
    else:
        write_jsonl(m, members)
    data = {
        "source": "files",
        "members": str(m),
        "nonmembers": str(write_jsonl(tmp_path / "n.jsonl", nonmembers)),
        "validation": str(write_jsonl(tmp_path / "v.jsonl", ["validation text"])),
    }
    cfg = tiny_config(tiny_dir, tmp_path / "out")
    cfg["data"] = data
    path = write_config(tmp_path / "c.toml", cfg)
    assert_one_line_error(invoke("run", path, "--quiet"), pattern)


def test_overlap_override_flag(tiny_dir, tmp_path):
    data = {
        "source": "files",
        "members": str(write_jsonl(tmp_path / "m.jsonl", ["shared text", "member only"])),
        "nonmembers": str(write_jsonl(tmp_path / "n.jsonl", ["shared text", "non-member only"])),
        "validation": str(write_jsonl(tmp_path / "v.jsonl", ["validation text"])),
    }
    cfg = tiny_config(tiny_dir, tmp_path / "out")
    cfg["data"] = data
    path = write_config(tmp_path / "c.toml", cfg)
    result = invoke("run", path, "--quiet", "--allow-overlap", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["data"]["member_nonmember_overlap"] == 1


def test_real_process_prints_one_line_and_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "memlens", "run", str(tmp_path / "none.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: config file not found: {tmp_path / 'none.toml'}"


def test_listing_commands():
    assert "reference" in invoke("attacks").stdout
    assert "smollm2-135m" in invoke("models", "list").stdout
    assert_one_line_error(invoke("data", "download", "wikitext", "/tmp/x"), "unknown dataset")


def test_progress_in_a_log_is_a_line_now_and_then(monkeypatch, capsys):
    from memlens import progress

    monkeypatch.setattr(progress, "_enabled", True)
    monkeypatch.setattr(progress, "LOG_EVERY", 0.0)  # every advance prints
    assert not progress.console.is_terminal  # pytest captures stderr: as in a log file
    with progress.bar("scoring", 200, "tokens") as bar:
        bar.advance(50)
        bar.note("trial 1")
        bar.advance(150)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("memlens: scoring: 50/200 tokens (25%), 0:00 elapsed, eta ")
    assert lines[-1] == "memlens: scoring: 200/200 tokens (100%), 0:00 elapsed · trial 1"
