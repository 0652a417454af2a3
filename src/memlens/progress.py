"""Progress bars and status lines on stderr (rich), silenced with ``MEMLENS_QUIET=1`` or ``set_enabled(False)``.

Messages are plain text: user-provided strings (labels, paths, errors) are escaped, never read as markup.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.markup import escape

T = TypeVar("T")
console = Console(stderr=True, highlight=False)


def quiet_by_env() -> bool:
    """Whether ``MEMLENS_QUIET`` asks for no progress output."""
    return os.environ.get("MEMLENS_QUIET", "") not in ("", "0")


_enabled = not quiet_by_env()


def set_enabled(on: bool) -> None:
    """Turn progress output on or off for this process (``MEMLENS_QUIET=1`` keeps it off)."""
    global _enabled
    _enabled = on and not quiet_by_env()


def enabled() -> bool:
    return _enabled


@contextmanager
def quiet() -> Iterator[None]:
    """No progress output inside the block (warnings still show)."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


def info(message: str) -> None:
    """One status line (e.g. "fine-tuning done in 40 s")."""
    if _enabled:
        console.print(f"[dim]memlens:[/] {escape(message)}")


def warn(message: str) -> None:
    """A warning line on stderr, shown even when progress output is off."""
    print(f"memlens: warning: {message}", file=sys.stderr, flush=True)


@contextmanager
def bar(description: str, total: int, unit: str = "") -> Iterator:
    """A progress bar; ``advance(n)`` on the yielded object (``None``-safe when disabled)."""
    if not _enabled:
        yield _NoBar()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    cols = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    with Progress(*cols, console=console, transient=False) as prog:
        task = prog.add_task(escape(description), total=total, note="")
        yield _Bar(prog, task)


def track(items: Iterable[T], description: str, total: int) -> Iterator[T]:
    """Iterate with a progress bar."""
    with bar(description, total) as b:
        for item in items:
            yield item
            b.advance(1)


class _Bar:
    def __init__(self, prog, task) -> None:
        self._prog, self._task = prog, task

    def advance(self, n: float = 1) -> None:
        self._prog.advance(self._task, n)

    def note(self, text: str) -> None:
        self._prog.update(self._task, note=escape(text))


class _NoBar:
    def advance(self, n: float = 1) -> None:
        pass

    def note(self, text: str) -> None:
        pass
