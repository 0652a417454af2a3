"""Shared fixtures: a tiny randomly initialised Llama with a tokenizer trained here (no downloads).
Helpers that are not fixtures live in ``helpers.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import build_tiny

from memlens import progress

progress.set_enabled(False)


@pytest.fixture(autouse=True)
def _quiet_progress():
    """Every test starts with progress output off (a command run without --quiet turns it on)."""
    progress.set_enabled(False)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture()
def tiny(tiny_dir):
    """A fresh ``LoadedModel`` of the tiny model."""
    from memlens.models import load_model

    return load_model(str(tiny_dir), device="cpu")
