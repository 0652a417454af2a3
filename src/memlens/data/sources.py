"""Reading texts from disk: JSONL and CSV files, and the PHEE dataset directory."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from memlens.errors import MemlensError


@dataclass(frozen=True)
class Text:
    """One text with a stable id (from the file's ``id`` field, else ``FILE:LINE``)."""

    id: str
    text: str


PHEE_FILES = {  # split -> (file, sha256) as published at ZhaoyueSun/PHEE commit 41489b0 (data/json/*.json)
    "train": ("train.jsonl", "a2d6cbdae3d95cb3a7e13439164c002041061f6f9823608af483c82d17a31f2b"),
    "dev": ("dev.jsonl", "e1e24c0dfbe6f624e590a26d294f3082d0142ffc28b9da56761f1dd45e96aa53"),
    "test": ("test.jsonl", "ca7e24a88f62e8201583e14f206cd4df5c543acc627abd195bea4df8acd9afdf"),
}
PHEE_URL = "https://raw.githubusercontent.com/ZhaoyueSun/PHEE/41489b0/data/json/{split}.json"
PHEE_TEXT_FIELD = "context"


def read_jsonl(path: Path, text_field: str = "text") -> list[Text]:
    """Read one JSON object per line; blank lines are skipped, anything else malformed is an error."""
    out: list[Text] = []
    lineno = 0
    with _open_text(path) as fh, _utf8(path, lambda: lineno + 1):
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise MemlensError(f"{path}:{lineno}: malformed JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise MemlensError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            out.append(_record(obj, text_field, path, lineno))
    return out


def read_csv(path: Path, text_field: str = "text") -> list[Text]:
    """Read a CSV file with a header row."""
    with _open_text(path) as fh, _utf8(path, lambda: reader.line_num + 1):
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            return []
        if text_field not in reader.fieldnames:
            raise MemlensError(f"{path}: no column {text_field!r} (columns: {', '.join(reader.fieldnames)})")
        try:
            return [_record(row, text_field, path, i + 2) for i, row in enumerate(reader)]
        except csv.Error as err:
            raise MemlensError(f"{path}:{reader.line_num}: malformed CSV ({err})") from None


def read_texts(path: str | Path, text_field: str = "text") -> list[Text]:
    """Read a ``.jsonl``/``.json`` (one object a line) or ``.csv`` file."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return read_csv(path, text_field)
    if path.suffix.lower() in {".jsonl", ".json", ".ndjson"}:
        return read_jsonl(path, text_field)
    raise MemlensError(f"{path}: unsupported file type {path.suffix!r} (use .jsonl or .csv)")


def read_phee(data_dir: str | Path, split: str) -> list[Text]:
    """One PHEE split (``train``, ``dev`` or ``test``) from a local directory."""
    file, _ = PHEE_FILES[split]
    path = Path(data_dir) / file
    if not path.is_file():
        raise MemlensError(
            f"PHEE file not found: {path} (set data.dir / --data-dir / MEMLENS_DATA_DIR to the folder holding "
            f"{', '.join(f for f, _ in PHEE_FILES.values())}, or run `memlens data download phee DIR`)"
        )
    return read_jsonl(path, PHEE_TEXT_FIELD)


def download_phee(dest: str | Path, url: str = PHEE_URL) -> Path:
    """Download PHEE from its GitHub repository into ``dest``, checking every file's sha256.

    Each file is written only once its checksum matches, so ``dest`` never holds a partial or altered file.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for split, (file, sha) in PHEE_FILES.items():
        target = dest / file
        if target.is_file() and _sha256(target) == sha:
            continue
        with tempfile.NamedTemporaryFile(dir=dest, delete=False, suffix=".part") as tmp:
            try:
                with urllib.request.urlopen(url.format(split=split), timeout=60) as resp:
                    shutil.copyfileobj(resp, tmp)
            except OSError as err:
                os.unlink(tmp.name)
                raise MemlensError(f"could not download PHEE {split}: {err}") from None
        got = _sha256(Path(tmp.name))
        if got != sha:
            os.unlink(tmp.name)
            raise MemlensError(f"PHEE {split}: sha256 mismatch (expected {sha}, got {got}); nothing written")
        os.replace(tmp.name, target)
    return dest


def _record(obj: dict, text_field: str, path: Path, lineno: int) -> Text:
    if text_field not in obj:
        raise MemlensError(f"{path}:{lineno}: no field {text_field!r} (fields: {', '.join(map(str, obj))})")
    text = obj[text_field]
    if not isinstance(text, str):
        raise MemlensError(f"{path}:{lineno}: field {text_field!r} is {type(text).__name__}, not a string")
    rid = obj.get("id")
    return Text(id=str(rid) if rid not in (None, "") else f"{path.name}:{lineno}", text=text)


def _open_text(path: Path):
    if not path.is_file():
        raise MemlensError(f"data file not found: {path}")
    return path.open(encoding="utf-8", newline="")


@contextmanager
def _utf8(path: Path, where: Callable[[], int]) -> Iterator[None]:
    try:
        yield
    except UnicodeDecodeError:
        raise MemlensError(f"{path}:{where()}: not UTF-8 text") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
