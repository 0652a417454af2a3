"""File-system helpers every stage shares: safe labels, atomic writes, locks, digests, the cache folder.

One temp-name scheme (``.NAME.tmpPID`` beside the target) lets a later process tell a dead writer's leftovers
from a live one's (:func:`remove_stale`). A lock file is deleted by its holder on release, so locks leave
nothing behind; a holder killed with ``-9`` leaves a file the next taker simply reuses.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import shutil
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from memlens.errors import MemlensError

_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>\d+)$")
MAX_LABEL = 200  # bytes: a folder name may have 255, and memlens adds ".old.tmpPID" to it


def cache_dir() -> Path:
    """Root of memlens's cache (``$MEMLENS_CACHE`` or ``~/.cache/memlens``)."""
    return Path(os.environ.get("MEMLENS_CACHE") or Path.home() / ".cache" / "memlens").expanduser()


def safe_label(name: str, what: str = "name") -> str:
    """``name`` if it can be one folder or file name as it is; else a :class:`MemlensError` saying why.

    Refused: empty or blank, ``.`` and ``..``, path separators, control characters, a leading ``-`` or
    ``.`` (hidden or option-like names), and more than ``MAX_LABEL`` bytes in UTF-8.
    """
    if not isinstance(name, str) or not name.strip():
        raise MemlensError(f"{what} must not be empty")
    problems = []
    if name in (".", ".."):
        problems.append(f"{name!r} names a folder, not a run")
    if "/" in name or "\\" in name:
        problems.append("it holds a path separator")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        problems.append("it holds control characters")
    if name[0] in ".-":
        problems.append(f"it starts with {name[0]!r}")
    if name != name.strip():
        problems.append("it starts or ends with white space")
    if len(name.encode("utf-8", "replace")) > MAX_LABEL:
        problems.append(f"it is longer than {MAX_LABEL} bytes")
    if problems:
        raise MemlensError(f"{what} {name[:40]!r} cannot name a folder: {'; '.join(problems)}")
    return name


def temp_path(path: Path) -> Path:
    """The temporary sibling of ``path`` this process writes before moving it into place."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def remove(path: Path) -> None:
    """Delete a file or folder if it exists (no error when it does not)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
        return
    with suppress(FileNotFoundError, NotADirectoryError):
        path.unlink()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write (a file or a folder); it replaces ``path`` only when
    the block ends without an exception, and is deleted otherwise (Ctrl-C included)."""
    path = Path(path)
    tmp = temp_path(path)
    remove(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        remove(tmp)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and durably (readers see the old file or the new one, never a
    part); a failure is a :class:`MemlensError` naming the file."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        raise MemlensError(f"cannot write {path}: {describe_os_error(err)}") from None
    return path


def remove_stale(folder: Path, names: set[str] | None = None, *, delete: bool = True) -> list[Path]:
    """Temp files and folders (``.NAME.tmpPID``) in ``folder`` whose writing process is gone: deleted (or
    only listed, ``delete=False``); only those of the given target ``names`` when given (a shared folder
    may hold other programs' files)."""
    found: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:  # missing or unreadable: nothing to clean
        return found
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m and (names is None or m["name"] in names) and not pid_alive(int(m["pid"])):
            if delete:
                remove(entry)
            found.append(entry)
    return found


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


@contextmanager
def lock(path: str | Path, *, wait: bool = True, busy: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed, deleted on release).

    ``wait=False`` raises :class:`MemlensError` with ``busy`` when another process holds it. The lock dies
    with its process, so a killed holder never blocks anyone.
    """
    path = Path(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise MemlensError(busy or f"{path} is locked by another process") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:  # the previous holder deleted it as we took it: take the new one
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # before unlocking, so a waiter on this inode sees it gone and retries
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def sha256(path: str | Path) -> str:
    """The file's sha256 as hex."""
    with Path(path).open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def describe_os_error(err: OSError) -> str:
    """A short reason for a failed file operation ('permission denied', 'read-only file system', ...)."""
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return (err.strerror or type(err).__name__).lower()
