"""Helpers for driving the CLI in tests."""

from __future__ import annotations

import re
from pathlib import Path

import tomli_w
from typer.testing import CliRunner

from memlens.cli import app

runner = CliRunner()


def invoke(*args, env: dict | None = None):
    """Run ``memlens ARGS`` in-process; returns click's ``Result`` (stdout and stderr kept apart)."""
    return runner.invoke(app, [str(a) for a in args], env=env)


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(tomli_w.dumps(cfg))
    return path


def assert_one_line_error(result, pattern: str) -> None:
    """Exit status 2, one ``error: ...`` line on stderr matching ``pattern``, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in result.output


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (relative) with its bytes (None for folders): to prove nothing changed."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}
