"""The results store: one SQLite database (WAL mode) per project directory.

Tables:
- ``sweeps``: one row per sweep name, with the hash of its (expanded) specification;
- ``trials``: one row per configuration (unique by config hash within a sweep), with its status
  (``pending`` → ``running`` → ``done`` | ``failed``), error, timings, versions and the full config;
- ``results``: tidy rows, a column per field of :class:`memlens.records.Record` (a store written before
  schema 2 gains the new columns when opened for writing, its rows read through ``records.from_legacy``).

A trial's result rows and its ``done`` status are written in ONE transaction, so a process killed at any
moment (even ``kill -9``) leaves either a finished trial or none: rerunning resumes without duplicates.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from memlens.errors import MemlensError
from memlens.files import atomic_path, describe_os_error, lock
from memlens.records import FIELDS, SQL_TYPES, from_dict, from_legacy

SCHEMA = """
CREATE TABLE IF NOT EXISTS sweeps (
    name TEXT PRIMARY KEY,
    spec_hash TEXT NOT NULL,
    spec TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY,
    sweep TEXT NOT NULL REFERENCES sweeps(name),
    config_hash TEXT NOT NULL,
    label TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    error TEXT,
    started REAL,
    finished REAL,
    seconds REAL,
    info TEXT,
    UNIQUE (sweep, config_hash)
);
CREATE TABLE IF NOT EXISTS results (
    trial INTEGER NOT NULL REFERENCES trials(id),
    {result_columns}
);
CREATE INDEX IF NOT EXISTS results_trial ON results(trial);
"""
SCHEMA = SCHEMA.replace("{result_columns}", ",\n    ".join(f"{n} {t}" for n, t in SQL_TYPES.items()))
DB_NAME = "results.db"


class Store:
    """A project's results database. ``Store(dir)`` creates ``dir/results.db`` if needed."""

    def __init__(self, folder: str | Path, *, create: bool = True) -> None:
        self.folder = Path(folder)
        self.path = self.folder / DB_NAME
        if not create:
            self._open_read_only()
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise MemlensError(f"cannot create results folder {self.folder}: {describe_os_error(err)}") from None
        with self._errors("open"):
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(SCHEMA)
            self._upgrade()

    def _upgrade(self) -> None:
        """Give an older store a column per record field; rows written before schema 2 are filled from their
        legacy names (later fields simply stay empty on older rows)."""
        have = {r[1] for r in self.db.execute("PRAGMA table_info(results)")}
        missing = [n for n in FIELDS if n not in have]
        if not missing:
            return
        with self.transaction() as db:
            for n in missing:
                db.execute(f"ALTER TABLE results ADD COLUMN {n} {SQL_TYPES[n]}")
            rows = db.execute("SELECT rowid, * FROM results WHERE kind IS NULL").fetchall()
            names = ["rowid", *(d[0] for d in db.execute("SELECT * FROM results LIMIT 0").description)]
            updates = []
            for row in rows:
                rec = from_legacy(dict(zip(names, row, strict=True)))
                updates.append([*(_sql(getattr(rec, n)) for n in FIELDS), row[0]])
            assign = ", ".join(f"{n} = ?" for n in FIELDS)
            db.executemany(f"UPDATE results SET {assign} WHERE rowid = ?", updates)

    def _open_read_only(self) -> None:
        """Open an existing store for reading only: no write access to it or its folder is needed."""
        from urllib.parse import quote

        if not self.path.is_file():
            raise MemlensError(f"no results store in {self.folder} (run `memlens sweep` first)")
        uri = f"file:{quote(str(self.path.resolve()))}"
        with self._errors("open"):
            try:
                self.db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30, isolation_level=None)
                tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            except sqlite3.OperationalError:  # WAL needs its -shm file, which a read-only folder cannot hold
                self.db = sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)
                tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"sweeps", "trials", "results"} <= tables:
            self.db.close()
            raise MemlensError(f"{self.path} is not a memlens results store (it has no trials or results tables)")

    def close(self) -> None:
        self.db.close()

    def lock_path(self, sweep: str) -> Path:
        """The lock file of ``sweep`` (its name made file-safe, plus a hash so distinct names never share one)."""
        import hashlib
        import re

        safe = re.sub(r"[^A-Za-z0-9._-]", "_", sweep)[:64]
        return self.folder / f".sweep-{safe}-{hashlib.sha1(sweep.encode()).hexdigest()[:8]}.lock"

    def running(self, sweep: str):
        """Hold the sweep's lock while it runs: a second process running the same sweep on the same store
        would take the first one's 'running' trials for abandoned ones. The lock dies with its process."""
        busy = (
            f"sweep {sweep!r} is already running on {self.folder} in another process; "
            "wait for it to finish or use another results folder"
        )
        return lock(self.lock_path(sweep), wait=False, busy=busy)

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as err:
            msg = str(err)
            if "full" in msg:
                raise MemlensError(f"results store {self.path}: the disk is full ({what})") from None
            if "readonly" in msg or "read-only" in msg or "unable to open" in msg:
                raise MemlensError(f"results store {self.path} cannot be written ({msg})") from None
            raise MemlensError(f"results store {self.path}: {msg} ({what})") from None
        except sqlite3.DatabaseError as err:
            raise MemlensError(f"results store {self.path} is not a memlens database: {err}") from None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._errors("write"):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    # -- sweeps and trials -------------------------------------------------------------------------------
    def register_sweep(self, name: str, spec: dict, spec_hash: str, trials: list[tuple[str, str, dict]]) -> None:
        """Record a sweep and its trials ``(config_hash, label, config)``; refuse a changed spec."""
        with self.transaction() as db:
            row = db.execute("SELECT spec_hash FROM sweeps WHERE name = ?", (name,)).fetchone()
            if row and row[0] != spec_hash:
                raise MemlensError(
                    f"sweep {name!r} in {self.folder} was created from a different sweep file; results are never "
                    "mixed: use another --dir, or rename the sweep"
                )
            if not row:
                db.execute("INSERT INTO sweeps VALUES (?, ?, ?, ?)", (name, spec_hash, json.dumps(spec), time.time()))
            db.executemany(
                "INSERT OR IGNORE INTO trials (sweep, config_hash, label, config) VALUES (?, ?, ?, ?)",
                [(name, h, label, json.dumps(cfg, sort_keys=True)) for h, label, cfg in trials],
            )
            # a trial left 'running' by a killed process starts again
            db.execute("UPDATE trials SET status = 'pending' WHERE sweep = ? AND status = 'running'", (name,))

    def finished_elsewhere(
        self, sweep: str, configs: list[dict] | None = None, *, usable: Callable[[dict, dict], bool] | None = None
    ) -> dict[int, tuple[int, str]]:
        """Trials another sweep of this store finished with the same computation
        (:func:`~memlens.config.computation_key`) that can stand in for trials of ``sweep``: ``{i: (that trial's
        id, its sweep)}`` for each ``configs[i]`` (a sweep not registered yet) or, by default, for each pending
        trial ``i`` (its id) of ``sweep``. A candidate counts only with its folder's ``results.json`` and
        ``scores.csv`` and, given ``usable(its info, the config)``, where that is true (e.g. the same device and
        dtype); the first such, by id."""
        from memlens.config import computation_key

        if configs is None:
            rows = self.db.execute("SELECT id, config FROM trials WHERE sweep = ? AND status = 'pending'", (sweep,))
            wanted = {i: json.loads(cfg) for i, cfg in rows}
        else:
            wanted = dict(enumerate(configs))
        keys: dict[str, list] = {}
        for i, cfg in wanted.items():
            keys.setdefault(computation_key(cfg), []).append(i)
        found: dict[int, tuple[int, str]] = {}
        done = "SELECT id, sweep, config, info FROM trials WHERE status = 'done' AND sweep != ? ORDER BY id"
        for trial, other, cfg, info in self.db.execute(done, (sweep,)).fetchall():
            open_ = [i for i in keys.get(computation_key(json.loads(cfg)), []) if i not in found]
            folder = self.trial_dir(trial)
            if not open_ or not ((folder / "results.json").is_file() and (folder / "scores.csv").is_file()):
                continue
            for i in open_:
                if usable is None or usable(json.loads(info) if info else {}, wanted[i]):
                    found[i] = (trial, other)
        return found

    def reuse_finished(
        self, sweep: str, *, usable: Callable[[dict, dict], bool] | None = None, only: int | None = None
    ) -> dict[str, int]:
        """Mark done each pending trial of ``sweep`` (or its trial ``only``) that a trial of another sweep can
        stand in for (:meth:`finished_elsewhere`), copying that trial's rows and folder (files hard-linked where
        the file system allows: memlens replaces files, never rewrites them in place; its results.json keeps that
        sweep's name) and naming it in ``info["copied_from"]``. Returns ``{source sweep: trials copied}``. A copy
        that fails (e.g. the disk is full) leaves the trial to run; killed midway, the partial copy is a temp
        folder that a later run removes."""
        import shutil

        from memlens.files import remove, remove_stale, temp_path

        reused: dict[str, int] = {}
        for target, (source, other) in self.finished_elsewhere(sweep, usable=usable).items():
            if only is not None and target != only:
                continue
            src, dst = self.trial_dir(source), self.trial_dir(target)
            part = temp_path(dst)
            remove_stale(dst.parent, {dst.name})  # a killed copy's or run's temp folder
            try:
                remove(part)
                shutil.copytree(src, part, copy_function=_link_or_copy)
                remove(dst)  # a killed run's leftovers
                part.rename(dst)
            except OSError:
                remove(part)
                continue
            with self.transaction() as db:
                row = db.execute(
                    "SELECT started, finished, seconds, info FROM trials WHERE id = ? AND status = 'done'", (source,)
                ).fetchone()
                still = db.execute("SELECT 1 FROM trials WHERE id = ? AND status = 'pending'", (target,)).fetchone()
                if row is None or still is None:
                    continue
                info = {**(json.loads(row[3]) if row[3] else {}), "copied_from": {"sweep": other, "trial": source}}
                db.execute("DELETE FROM results WHERE trial = ?", (target,))
                fields = ", ".join(FIELDS)
                db.execute(
                    f"INSERT INTO results (trial, {fields}) SELECT ?, {fields} FROM results WHERE trial = ?",
                    (target, source),
                )
                db.execute(
                    "UPDATE trials SET status = 'done', error = NULL, started = ?, finished = ?, seconds = ?, "
                    "info = ? WHERE id = ?",
                    (row[0], row[1], row[2], json.dumps(info, default=str), target),
                )
            remove(dst.with_name(f".{dst.name}.resume"))  # a killed run's epoch state: not needed any more
            reused[other] = reused.get(other, 0) + 1
        return reused

    def pending(self, sweep: str, retry_failed: bool = False) -> list[tuple[int, str, dict]]:
        states = ("pending", "failed") if retry_failed else ("pending",)
        marks = ",".join("?" * len(states))
        rows = self.db.execute(
            f"SELECT id, label, config FROM trials WHERE sweep = ? AND status IN ({marks}) ORDER BY id",
            (sweep, *states),
        ).fetchall()
        return [(i, label, json.loads(cfg)) for i, label, cfg in rows]

    def start(self, trial: int) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE trials SET status = 'running', started = ?, error = NULL WHERE id = ?", (time.time(), trial)
            )

    def finish(self, trial: int, records: list[dict], info: dict, seconds: float) -> None:
        """Store a trial's rows (records as dicts, see :mod:`memlens.records`) and mark it done, atomically."""
        rows = [(trial, *(_sql(getattr(from_dict(r), n)) for n in FIELDS)) for r in records]
        marks = ", ".join("?" * (1 + len(FIELDS)))
        with self.transaction() as db:
            db.execute("DELETE FROM results WHERE trial = ?", (trial,))
            db.executemany(f"INSERT INTO results (trial, {', '.join(FIELDS)}) VALUES ({marks})", rows)
            db.execute(
                "UPDATE trials SET status = 'done', finished = ?, seconds = ?, info = ? WHERE id = ?",
                (time.time(), seconds, json.dumps(info, default=str), trial),
            )

    def fail(self, trial: int, error: str, seconds: float) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE trials SET status = 'failed', error = ?, finished = ?, seconds = ? WHERE id = ?",
                (error, time.time(), seconds, trial),
            )

    # -- reading -----------------------------------------------------------------------------------------
    def counts(self, sweep: str | None = None) -> dict[str, int]:
        q = "SELECT status, COUNT(*) FROM trials" + (" WHERE sweep = ?" if sweep else "") + " GROUP BY status"
        return dict(self.db.execute(q, (sweep,) if sweep else ()).fetchall())

    def trials(self):
        """All trials as a pandas DataFrame (config and info parsed into dicts)."""
        import pandas as pd

        df = pd.read_sql_query("SELECT * FROM trials ORDER BY id", self.db)
        for col in ("config", "info"):
            df[col] = [json.loads(v) if isinstance(v, str) and v else {} for v in df[col]]
        return df

    def results(self, role: str | None = "target"):
        """The tidy results table (a column per record field) joined with each trial's sweep, label and status
        (pandas). Rows of a store written before schema 2 opened read-only are read through ``from_legacy``.
        ``role``: the fine-tuned models' rows (``"target"``, default), distilled students' (``"student"``) or
        every row (``None``)."""
        import pandas as pd

        df = pd.read_sql_query(
            "SELECT t.sweep, t.label, r.* FROM results r JOIN trials t ON t.id = r.trial ORDER BY r.trial, r.epoch",
            self.db,
        )
        missing = [n for n in FIELDS if n not in df]  # a store opened read-only keeps the columns it was made with
        if missing and "kind" in df:
            df = df.reindex(columns=[*df.columns, *missing]).astype({n: object for n in missing})
        legacy = df["kind"].isna() if "kind" in df else pd.Series(True, index=df.index)
        if legacy.any():
            df = df.reindex(columns=list(dict.fromkeys([*df.columns, *FIELDS]))).astype({n: object for n in FIELDS})
            rows = [from_legacy(r).to_dict() for r in df[legacy].to_dict("records")]
            df.loc[legacy, FIELDS] = pd.DataFrame(rows, index=df.index[legacy])[FIELDS]
        if role is not None:
            df = df[df["role"].fillna("target") == role].reset_index(drop=True)
        return df

    def export(self, path: str | Path, fmt: str) -> Path:
        """Write the tidy results table (one row per trial, epoch, attack, metric) as csv, parquet or json."""
        path = Path(path)
        df = self.results(role=None)
        if df.empty:
            raise MemlensError(f"results store {self.path} holds no finished trial yet")
        if not path.name or path.is_dir():
            raise MemlensError(f"export: {path} is a folder; name the file to write (e.g. {path / f'results.{fmt}'})")
        if fmt not in ("csv", "json", "parquet"):
            raise MemlensError(f"unknown export format {fmt!r}: use csv, parquet or json")
        try:
            with atomic_path(path) as tmp:
                if fmt == "csv":
                    df.to_csv(tmp, index=False)
                elif fmt == "json":
                    df.to_json(tmp, orient="records", indent=1)
                else:
                    df.to_parquet(tmp, index=False)
        except OSError as err:
            raise MemlensError(f"cannot write {path}: {describe_os_error(err)}") from None
        return path

    def trial_dir(self, trial: int) -> Path:
        """Folder holding a trial's ``results.json``, ``scores.csv`` and ``config.toml``."""
        return self.folder / "trials" / f"trial-{trial:04d}"


class SweepView:
    """One sweep of a store read as if it were the whole store: :meth:`Store.trials`, :meth:`Store.results`,
    :meth:`Store.counts` and :meth:`Store.trial_dir` limited to that sweep's trials (the findings of one preset
    run whose folder holds other sweeps too)."""

    def __init__(self, store: Store, sweep: str) -> None:
        self.store, self.sweep = store, sweep

    def trials(self):
        df = self.store.trials()
        return df[df["sweep"] == self.sweep].reset_index(drop=True)

    def results(self, role: str | None = "target"):
        df = self.store.results(role)
        return df[df["sweep"] == self.sweep].reset_index(drop=True)

    def counts(self) -> dict[str, int]:
        return self.store.counts(self.sweep)

    def trial_dir(self, trial: int) -> Path:
        return self.store.trial_dir(trial)


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link ``src`` to ``dst``, or copy it where links are not possible (another file system)."""
    import os
    import shutil

    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _sql(v):
    """A record field as SQLite stores it (booleans as 0/1)."""
    return int(v) if isinstance(v, bool) else v


def stored(results: dict) -> tuple[list[dict], dict]:
    """What a store keeps of a trial's results: its rows (the target's and any distillation student's, role
    ``student``) and its info."""
    keys = ("model", "tuning", "training", "timings", "environment", "data", "privacy", "mitigation")
    students = (results.get("distillation") or {}).get("records", [])
    return results["records"] + students, {k: results.get(k) for k in keys}
