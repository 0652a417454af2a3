"""Typed result records: every fact in a field of its own, and files of schema 1 still readable."""

from __future__ import annotations

import json
import sqlite3

import pytest
from golden import GOLDEN

from memlens.experiments.store import Store
from memlens.records import FIELDS, Record, from_dict, from_legacy

LEGACY = json.loads((GOLDEN.parent / "schema1-results.json").read_text())["records"]  # by the schema-1 code

OLD_SCHEMA = """
CREATE TABLE sweeps (name TEXT PRIMARY KEY, spec_hash TEXT NOT NULL, spec TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE trials (id INTEGER PRIMARY KEY, sweep TEXT NOT NULL, config_hash TEXT NOT NULL, label TEXT NOT NULL,
    config TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending', error TEXT, started REAL, finished REAL,
    seconds REAL, info TEXT, UNIQUE (sweep, config_hash));
CREATE TABLE results (trial INTEGER NOT NULL, epoch INTEGER, attack TEXT, metric TEXT NOT NULL, value REAL,
    ci_low REAL, ci_high REAL, beats_blind INTEGER);
"""


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"epoch": 1, "attack": "min_k@0.2", "metric": "tpr@fpr=0.01", "value": 0.3}, ("mia", "min_k", 0.2, 0.01)),
        ({"epoch": 1, "attack": "loss", "metric": "auc", "value": 0.7}, ("mia", "loss", None, None)),
        ({"epoch": None, "attack": "blind", "metric": "auc", "value": 0.5}, ("blind", "blind", None, None)),
        ({"epoch": 0, "attack": None, "metric": "val_ppl", "value": 9.0}, ("utility", None, None, None)),
    ],
)
def test_legacy_names_become_fields(row, expected):
    r = from_legacy(row)
    assert (r.kind, r.attack_name, r.k, r.fpr) == expected and r.attack == row["attack"]
    assert r.metric == ("tpr" if row["metric"].startswith("tpr@") else row["metric"])


def test_legacy_extraction_and_canary_rows():
    ext = from_legacy(
        {"epoch": 3, "attack": "extraction T=0.7", "metric": "extraction_ngram_share_members", "value": 1}
    )
    assert (ext.kind, ext.metric, ext.subset, ext.decoding, ext.temperature) == (
        "extraction",
        "ngram_share",
        "members",
        "T=0.7",
        0.7,
    )
    assert from_legacy({"epoch": 3, "attack": "canary x16", "metric": "canary_auc", "value": 1}).repetitions == 16
    assert from_legacy({"epoch": 3, "attack": "canary controls", "metric": "canary_auc", "value": 1}).repetitions == 0


def test_every_golden_row_reads_and_round_trips():
    records = [from_dict(r) for r in LEGACY]
    assert {r.kind for r in records} == {"mia", "blind", "utility", "extraction", "canary"}
    assert all(from_dict(r.to_dict()) == r for r in records)
    assert set(records[0].to_dict()) == set(FIELDS)


def test_nan_is_written_as_null():
    assert Record("auc", float("nan")).to_dict()["value"] is None


def _old_store(folder):
    folder.mkdir()
    db = sqlite3.connect(folder / "results.db")
    db.executescript(OLD_SCHEMA)
    db.execute("INSERT INTO sweeps VALUES ('s', 'h', '{}', 0)")
    db.execute(
        "INSERT INTO trials (id, sweep, config_hash, label, config, status) VALUES (1, 's', 'c', 't', '{}', 'done')"
    )
    cols = ("epoch", "attack", "metric", "value", "ci_low", "ci_high", "beats_blind")
    rows = [(1, *(r.get(c) for c in cols)) for r in LEGACY]
    db.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.commit()
    db.close()


def _kinds(df):
    return df.groupby("kind").size().to_dict()


def test_a_schema_1_store_is_read_and_upgraded(tmp_path):
    _old_store(tmp_path / "old")
    expected = _kinds(__import__("pandas").DataFrame([from_legacy(r).to_dict() for r in LEGACY]))
    read_only = Store(tmp_path / "old", create=False)
    assert _kinds(read_only.results()) == expected  # read through from_legacy, the file untouched
    read_only.close()
    assert "kind" not in {
        r[1] for r in sqlite3.connect(tmp_path / "old" / "results.db").execute("PRAGMA table_info(results)")
    }
    upgraded = Store(tmp_path / "old")  # opened for writing: a column per field, filled once
    df = upgraded.results()
    assert _kinds(df) == expected and df["kind"].notna().all()
    tpr = df[(df["metric"] == "tpr") & (df["fpr"] == 0.01) & (df["attack"] == "loss")]
    assert len(tpr) == 3  # epochs 0, 1, 2
    upgraded.close()


def test_identity_fields_name_each_record_of_a_run_once():
    import json
    from pathlib import Path

    from memlens.records import IDENTITY, OUTCOMES, from_dict

    results = json.loads((Path(__file__).parent / "data" / "golden-results.json").read_text())
    keys = [tuple(from_dict(r).to_dict()[f] for f in IDENTITY) for r in results["records"]]
    assert len(keys) > 50 and len(set(keys)) == len(keys)
    assert "value" in OUTCOMES and "value" not in IDENTITY and {"epoch", "attack", "metric", "role"} <= set(IDENTITY)
