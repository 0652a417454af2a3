"""Property-based hostile input: whatever a data file or config holds, the outcome is a result or one
:class:`MemlensError`, never another exception (which the CLI would show as a traceback)."""

from __future__ import annotations

import json
import string
import tempfile
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from memlens.config import RunConfig, parse_config
from memlens.data.sources import read_texts
from memlens.errors import MemlensError
from memlens.files import safe_label

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
records = st.dictionaries(st.sampled_from(["id", "text", "body", ""]) | st.text(max_size=6), json_values, max_size=4)


def _read(suffix: str, data: bytes, field: str = "text"):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"f{suffix}"
        path.write_bytes(data)
        try:
            return read_texts(path, field)
        except MemlensError as err:
            assert "\n" not in str(err).strip(), "an error is one line"
            return err


@FAST
@given(st.binary(max_size=400), st.sampled_from([".jsonl", ".csv"]))
@example(b"\xff\xfe", ".jsonl")
@example(b'{"text": "a"}\n\x00\n', ".jsonl")
@example(b'"a","b\n', ".csv")
def test_arbitrary_bytes_are_read_or_refused(data, suffix):
    out = _read(suffix, data)
    assert isinstance(out, list | MemlensError)
    if isinstance(out, list):
        assert all(isinstance(t.text, str) and isinstance(t.id, str) for t in out)


@FAST
@given(st.lists(records, max_size=6))
def test_arbitrary_json_lines_are_read_or_refused(rows):
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    out = _read(".jsonl", data)
    ok = all(isinstance(r.get("text"), str) for r in rows)
    assert isinstance(out, list) == ok, out  # refused exactly when a line has no string "text"
    if ok:
        assert [t.text for t in out] == [r["text"] for r in rows]


csv_cells = st.text(alphabet=string.printable + "éß€\u2028", max_size=12)


@FAST
@given(st.lists(st.lists(csv_cells, min_size=1, max_size=3), min_size=1, max_size=5))
def test_csv_quirks_are_read_or_refused(rows):
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf).writerows([["id", "text"], *rows])
    out = _read(".csv", buf.getvalue().encode())
    assert isinstance(out, list | MemlensError)


def _toml_values():
    scalars = st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8)
    return scalars | st.lists(scalars, max_size=3)


def _section(annotation):
    """The section's model, also for an optional section (``MitigationConfig | None``)."""
    return (
        next(a for a in typing.get_args(annotation) if a is not type(None))
        if typing.get_args(annotation)
        else annotation
    )


fields = {
    name: list(_section(f.annotation).model_fields) for name, f in RunConfig.model_fields.items() if name != "name"
}
non_null = _toml_values().filter(lambda v: v is not None)
section_values = st.sampled_from(sorted(fields)).flatmap(
    lambda s: st.tuples(
        st.just(s),
        st.dictionaries(
            st.sampled_from([*fields[s], "typo"]), _toml_values().filter(lambda v: v is not None), max_size=3
        ),
    )
)


@FAST
@given(st.lists(section_values, max_size=3), st.one_of(st.none(), st.text(max_size=12)))
def test_arbitrary_configs_validate_or_name_a_field(sections, name):
    data: dict = {s: v for s, v in sections}
    if name is not None:
        data["name"] = name
    try:
        cfg = parse_config(data)
    except MemlensError as err:
        assert str(err).startswith("invalid config") and "field '" in str(err)
        return
    assert isinstance(cfg, RunConfig)
    if "output" not in data:
        assert cfg.output_dir().parent == Path("runs")  # whatever the name, the output stays under runs/


@FAST
@given(st.text(max_size=30))
@example("..")
@example("a/../../b")
@example("\u202e")
def test_a_safe_label_is_one_folder_name(name):
    try:
        label = safe_label(name)
    except MemlensError:
        return
    root = Path("/tmp/memlens-root")
    assert (root / label).parent == root and (root / label).name == label


@pytest.mark.parametrize("text", ["\x1b[2J", "\u2028", "\ufeff"])
def test_texts_with_control_characters_are_kept_as_data(text, tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"id": 1, "text": f"before{text}after"}) + "\n")
    assert read_texts(path)[0].text == f"before{text}after"
