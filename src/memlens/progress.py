"""Progress bars and status lines on stderr (rich), silenced with ``MEMLENS_QUIET=1`` or ``quiet()``."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console

T = TypeVar("T")
console = Console(stderr=True, highlight=False)
_enabled = os.environ.get("MEMLENS_QUIET", "") in ("", "0")


def set_enabled(on: bool) -> None:
    """Turn progress output on or off for this process."""
    global _enabled
    _enabled = on


def enabled() -> bool:
    return _enabled


def info(message: str) -> None:
    """One status line (e.g. "fine-tuning done in 40 s")."""
    if _enabled:
        console.print(f"[dim]memlens:[/] {message}")


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
        task = prog.add_task(description, total=total, note="")
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
        self._prog.update(self._task, note=text)


class _NoBar:
    def advance(self, n: float = 1) -> None:
        pass

    def note(self, text: str) -> None:
        pass
