"""Refactors change no number: a tiny run touching every kind of result row gives, field by field, what the
code gave before (``tests/data/golden-results.json``, written by ``python tests/golden.py``).

Numbers are compared to a relative 1e-5: another CPU or another build of the numerical libraries moves float32
results by about 1e-6 (canary exposures and extraction probabilities did, on a replaced development machine,
with the code unchanged); a change of the computation moves them by far more."""

from __future__ import annotations

import json
import math

import pytest
from golden import GOLDEN, run_golden

from memlens.records import FIELDS, from_dict
from memlens.records import TIMINGS as TIMING


def _key(r: dict) -> tuple:
    return tuple(r[f] for f in ("epoch", "kind", "attack", "metric", "fpr", "subset", "decoding", "repetitions"))


def _same(a, b) -> bool:
    """Equal, floats to a relative 1e-5 (NaN equals NaN), dicts and lists item by item."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5) or (math.isnan(a) and math.isnan(b))  # tiny probabilities too
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.fixture(scope="module")
def now_and_then(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("golden") / "out"
    run_golden(tiny_dir, out)
    return json.loads((out / "results.json").read_text()), json.loads(GOLDEN.read_text())


def test_every_record_is_the_same(now_and_then):
    now, then = now_and_then
    new = {_key(r): r for r in (from_dict(x).to_dict() for x in now["records"]) if r["metric"] not in TIMING}
    old = {_key(r): r for r in (from_dict(x).to_dict() for x in then["records"]) if r["metric"] not in TIMING}
    assert sorted(map(str, new)) == sorted(map(str, old))
    differ = [(k, f, old[k][f], new[k][f]) for k in old for f in FIELDS if not _same(old[k][f], new[k][f])]
    # schema-1 rows carry no seed: the only field a legacy row cannot tell
    assert [d for d in differ if d[1] != "seed"] == []


@pytest.mark.parametrize("section", ["data", "split_audit", "tuning", "reference_model"])
def test_every_summary_is_the_same(now_and_then, section):
    now, then = now_and_then
    assert now[section] == then[section]


def test_training_and_extraction_are_the_same_but_for_timings(now_and_then):
    now, then = now_and_then

    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if "second" not in k and k != "wall"}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    for section in ("training", "extraction"):
        assert _same(strip(now[section]), strip(then[section])), (strip(now[section]), strip(then[section]))
