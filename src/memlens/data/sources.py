"""Reading texts from disk: JSONL and CSV files (optionally gzip-compressed), Parquet, Hugging Face dataset
folders, and the datasets shipped inside memlens (PHEE, SOTU).

A record is a plain text (its ``text_field``), a chat (``messages``: ``{role, content}`` objects ending with the
assistant's reply) or an instruction (``prompt`` + ``completion``, strings, or lists of messages as TRL's
conversational prompt-completion format). For the last two, the completion (the last reply) is what is scored
and learned; the rest is its context (:func:`memlens.tokens.encode_records`)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from memlens.errors import MemlensError
from memlens.files import atomic_path, describe_os_error, sha256

Turns = tuple[tuple[str, str], ...]  # (role, content) messages


@dataclass(frozen=True)
class Text:
    """One text with a stable id (from the file's ``id`` field, else ``FILE:LINE``). ``text`` is what is scored:
    the whole text, or a record's completion; ``prompt`` its context: ``None`` (a plain text), a string (an
    instruction record) or the chat turns before the reply."""

    id: str
    text: str
    prompt: str | Turns | None = None

    @property
    def kind(self) -> str:
        return "text" if self.prompt is None else "instruction" if isinstance(self.prompt, str) else "chat"


def as_records(texts) -> list[Text]:
    """``Text`` records from records or plain strings (a string becomes a plain text without an id)."""
    return [t if isinstance(t, Text) else Text("", t) for t in texts]


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
    for lineno, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise MemlensError(f"{path}:{lineno}: malformed JSON ({err.msg})") from None
        except ValueError as err:  # e.g. an integer of more than 4,300 digits
            raise MemlensError(f"{path}:{lineno}: unreadable JSON ({_first_line(err)})") from None
        except RecursionError:
            raise MemlensError(f"{path}:{lineno}: JSON nested too deeply") from None
        if not isinstance(obj, dict):
            raise MemlensError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        out.append(_record(obj, text_field, path, lineno))
    return out


def read_csv(path: Path, text_field: str = "text") -> list[Text]:
    """Read a CSV file whose first line names the columns. Errors give positions, never the file's text."""
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""), strict=True)
    try:
        if reader.fieldnames is None:
            return []
        if reader.fieldnames.count(text_field) > 1:
            raise MemlensError(f"{path}: the header (line 1) names column {text_field!r} more than once")
        if text_field not in reader.fieldnames and not {"prompt", "completion"} <= set(reader.fieldnames):
            raise MemlensError(
                f"{path}: the header (line 1) has no column {text_field!r} ({len(reader.fieldnames)} columns); the "
                "first line must name the columns (set data.text_field to the text column's name, or give "
                "prompt and completion columns)"
            )
        return [_record(row, text_field, path, reader.line_num) for row in reader]
    except csv.Error as err:
        raise MemlensError(f"{path}:{reader.line_num or 1}: malformed CSV ({err})") from None


def read_texts(path: str | Path, text_field: str = "text") -> list[Text]:
    """Read a ``.jsonl``/``.json`` (one object a line) or ``.csv`` file, optionally ``.gz``-compressed."""
    path = Path(path)
    if path.is_dir():
        return read_hf_folder(path, text_field)
    kind = Path(path.stem).suffix.lower() if path.suffix.lower() == ".gz" else path.suffix.lower()
    if kind == ".csv":
        return read_csv(path, text_field)
    if kind == ".parquet":
        return read_parquet(path, text_field)
    if kind in {".jsonl", ".json", ".ndjson"}:
        return read_jsonl(path, text_field)
    raise MemlensError(
        f"{path}: unsupported file type {path.suffix!r} (use .jsonl, .csv (optionally .gz), .parquet, or a "
        "Hugging Face dataset folder written by save_to_disk)"
    )


def read_parquet(path: Path, text_field: str = "text") -> list[Text]:
    """A Parquet file's rows (``id`` from an ``id`` column where there is one, else ``FILE:ROW``)."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise MemlensError(f"data file not found: {path}")
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as err:  # pyarrow.ArrowInvalid is a ValueError
        raise MemlensError(f"cannot read Parquet file {path}: {_first_line(err)}") from None
    return _table_texts(table, text_field, path)


def read_hf_folder(path: Path, text_field: str = "text") -> list[Text]:
    """A Hugging Face ``Dataset.save_to_disk`` folder (``state.json`` naming its Arrow stream files), read
    with pyarrow: no ``datasets`` package and no network needed. A ``DatasetDict`` folder is refused with the
    splits it holds (name one of them)."""
    import pyarrow as pa

    state = path / "state.json"
    if not state.is_file():
        splits = sorted(p.name for p in path.iterdir() if (p / "state.json").is_file())
        hint = f"; it holds the splits {', '.join(splits)}: name one of those folders" if splits else ""
        raise MemlensError(f"{path} is a folder but not a Hugging Face dataset saved with save_to_disk{hint}")
    try:
        files = [path / f["filename"] for f in json.loads(_read_text(state))["_data_files"]]
        tables = []
        for f in files:
            with pa.memory_map(str(f)) as source:
                tables.append(pa.ipc.open_stream(source).read_all())
        table = pa.concat_tables(tables) if tables else None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MemlensError(f"cannot read Hugging Face dataset folder {path}: {_first_line(err)}") from None
    if table is None:
        return []
    return _table_texts(table, text_field, path)


def read_hf(dataset: str, config: str | None, split: str, text_field: str = "text") -> list[Text]:
    """One split of a Hugging Face dataset: a local ``save_to_disk`` folder of a ``DatasetDict`` (read offline
    with pyarrow), else a hub id through ``datasets.load_dataset`` (needs the ``datasets`` package, and the
    network unless the hub cache holds it)."""
    local = Path(dataset)
    if local.is_dir():
        if config is not None:
            raise MemlensError(f"{dataset} is a local dataset folder: leave data.dataset_config unset")
        return read_hf_folder(local / split, text_field)
    try:
        import datasets
    except ImportError:
        raise MemlensError(
            "data.source = 'hf' with a hub id needs the datasets package: pip install datasets"
        ) from None
    try:
        ds = datasets.load_dataset(dataset, config, split=split)
    except Exception as err:  # offline, unknown id, unknown split or config: the library's own message, one line
        raise MemlensError(
            f"cannot load Hugging Face dataset {dataset!r} split {split!r}: {_first_line(err)}"
        ) from None
    return _table_texts(ds.data.table, text_field, Path(f"{dataset}:{split}"))


def _table_texts(table, text_field: str, path: Path) -> list[Text]:
    """Rows of an Arrow table as texts: the ``text_field`` column (strings), else a ``messages`` column or
    ``prompt`` and ``completion`` columns, and the ``id`` column if any."""
    names = set(table.column_names)
    fields = next(
        (f for f in ([text_field], ["messages"], ["prompt", "completion"]) if set(f) <= names),
        None,
    )
    if fields is None:
        shown = [n for n in table.column_names if _NAME.match(n)]
        raise MemlensError(
            f"{path}: no column {text_field!r}, 'messages' or 'prompt' + 'completion' "
            f"(columns: {', '.join(shown[:8]) or 'none shown'}; set data.text_field)"
        )
    rows = table.select([*fields, *(["id"] if "id" in names else [])]).to_pylist()
    return [_record(r, text_field, path, i) for i, r in enumerate(rows, 1)]


PACKAGED = {"phee": PHEE_TEXT_FIELD, "sotu": "text"}  # datasets shipped inside memlens -> their text field


def read_packaged(name: str, split: str) -> list[Text]:
    """One split (``train``, ``dev`` or ``test``) of a dataset shipped inside memlens (:data:`PACKAGED`; each
    folder's README.md says where it comes from and under which license)."""
    from importlib import resources

    with resources.as_file(resources.files("memlens.data") / name / f"{split}.jsonl.gz") as packaged:
        return read_jsonl(packaged, PACKAGED[name])


def read_phee(data_dir: str | Path | None, split: str) -> list[Text]:
    """One PHEE split (``train``, ``dev`` or ``test``) from a local directory, or (``None``) the copy shipped
    inside memlens (its sentences and ids; ``memlens/data/phee/README.md``)."""
    if data_dir is None:
        return read_packaged("phee", split)
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
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MemlensError(f"cannot create {dest}: {describe_os_error(err)}") from None
    for split, (file, sha) in PHEE_FILES.items():
        target = dest / file
        if target.is_file() and sha256(target) == sha:
            continue
        with atomic_path(target) as tmp:
            try:
                with urllib.request.urlopen(url.format(split=split), timeout=60) as resp, tmp.open("wb") as fh:
                    shutil.copyfileobj(resp, fh)
            except OSError as err:
                raise MemlensError(f"could not download PHEE {split}: {err}") from None
            got = sha256(tmp)
            if got != sha:
                raise MemlensError(f"PHEE {split}: sha256 mismatch (expected {sha}, got {got}); nothing written")
    return dest


def _record(obj: dict, text_field: str, path: Path, lineno: int) -> Text:
    where = f"{path}:{lineno}"
    prompt: str | Turns | None = None
    if text_field in obj:
        text = obj[text_field]
        if not isinstance(text, str):
            raise MemlensError(f"{where}: field {text_field!r} is {type(text).__name__}, not a string")
    elif "messages" in obj:
        turns = _turns(obj["messages"], where, "messages")
        if len(turns) < 2 or turns[-1][0] != "assistant":
            raise MemlensError(f"{where}: 'messages' must end with the assistant's reply after at least one turn")
        prompt, text = turns[:-1], turns[-1][1]
    elif "prompt" in obj and "completion" in obj:
        prompt, text = _prompt_completion(obj["prompt"], obj["completion"], where)
    else:
        raise MemlensError(
            f"{where}: no field {text_field!r}, 'messages' or 'prompt' + 'completion' ({_field_names(obj)})"
        )
    rid = obj.get("id")
    rid = str(rid) if rid not in (None, "") else f"{path.name}:{lineno}"
    parts = [text, rid, *([prompt] if isinstance(prompt, str) else [c for turn in prompt or () for c in turn])]
    for value in parts:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a JSON escape such as "\ud800"
            what = "id" if value is rid else "text"
            raise MemlensError(f"{where}: the {what} holds an unpaired UTF-16 surrogate escape") from None
    return Text(id=rid, text=text, prompt=prompt)


def _turns(messages, where: str, field: str) -> Turns:
    ok = isinstance(messages, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
    )
    if not ok:
        raise MemlensError(f"{where}: {field!r} must be a list of {{role, content}} objects with string values")
    return tuple((m["role"], m["content"]) for m in messages)


def _prompt_completion(prompt, completion, where: str) -> tuple[str | Turns, str]:
    """An instruction record: strings, or (conversational) a list of messages and a one-message reply."""
    if isinstance(prompt, str) and isinstance(completion, str):
        return prompt, completion
    if isinstance(prompt, list) and isinstance(completion, list):
        turns, reply = _turns(prompt, where, "prompt"), _turns(completion, where, "completion")
        if len(reply) == 1 and reply[0][0] == "assistant" and turns:
            return turns, reply[0][1]
    raise MemlensError(
        f"{where}: 'prompt' and 'completion' must both be strings, or a list of messages and one assistant message"
    )


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")


def _field_names(obj: dict) -> str:
    """The record's field names, for an error: only those that look like names (a key that looks like data,
    such as a sentence, is counted, never shown)."""
    names = [k for k in obj if isinstance(k, str) and _NAME.match(k)]
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    hidden = len(obj) - len(names)
    return f"fields: {shown or 'none shown'}" + (f"; {hidden} more not shown" if hidden else "")


def _read_text(path: Path) -> str:
    """The whole file as text (UTF-8, a leading BOM dropped); a byte that is not UTF-8 is reported at its line."""
    if not path.is_file():
        raise MemlensError(f"data file not found: {path}")
    try:
        data = path.read_bytes()
        if path.suffix.lower() == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        detail = describe_os_error(err) if isinstance(err, OSError) and err.errno else _first_line(err)
        raise MemlensError(f"cannot read data file {path}: {detail}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise MemlensError(f"{path}:{line}: not UTF-8 text (byte {data[err.start]:#04x})") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip() or type(err).__name__).splitlines()[0]
