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
    if not console.is_terminal:  # a log file or CI: no live bar, a line now and then instead
        line = _LineBar(description, total, unit)
        yield line
        line.finish()
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


LOG_EVERY = 30.0  # seconds between progress lines when stderr is not a terminal


class _LineBar:
    """Progress as plain lines (``desc: 40/200 tokens (20%), 0:12 elapsed, eta 0:48``) every
    :data:`LOG_EVERY` seconds and at the end, for logs where a live bar cannot be drawn."""

    def __init__(self, description: str, total: int, unit: str) -> None:
        import time

        self._clock = time.monotonic
        self._desc, self._total, self._unit = description, total, unit
        self._done, self._note = 0.0, ""
        self._start = self._last = self._clock()

    def advance(self, n: float = 1) -> None:
        self._done += n
        if self._clock() - self._last >= LOG_EVERY:
            self._print()

    def note(self, text: str) -> None:
        self._note = text

    def finish(self) -> None:
        self._print()

    def _print(self) -> None:
        now = self._clock()
        self._last = now
        elapsed = now - self._start
        share = self._done / self._total if self._total else 1.0
        eta = f", eta {_clock(elapsed / share - elapsed)}" if 0 < share < 1 else ""
        note = f" · {self._note}" if self._note else ""
        print(
            f"memlens: {self._desc}: {self._done:g}/{self._total} {self._unit} ({100 * share:.0f}%), "
            f"{_clock(elapsed)} elapsed{eta}{note}",
            file=sys.stderr,
            flush=True,
        )


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


class _NoBar:
    def advance(self, n: float = 1) -> None:
        pass

    def note(self, text: str) -> None:
        pass
