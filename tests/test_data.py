import json
import re

import pytest
from helpers import PHEE, write_jsonl

from memlens.config import DataConfig
from memlens.data import download_phee, load_splits, read_csv, read_jsonl
from memlens.errors import MemlensError


def files_cfg(tmp_path, members, nonmembers, validation=("a valid sentence",), **kw):
    return DataConfig(
        source="files",
        members=write_jsonl(tmp_path / "m.jsonl", list(members)),
        nonmembers=write_jsonl(tmp_path / "n.jsonl", list(nonmembers)),
        validation=write_jsonl(tmp_path / "v.jsonl", list(validation)),
        **kw,
    )


def test_phee_splits_are_sampled_deterministically():
    cfg = DataConfig(dir=PHEE, n_members=50, n_nonmembers=40, n_validation=0, seed=7)
    a, b = load_splits(cfg), load_splits(cfg)
    assert [t.id for t in a.members] == [t.id for t in b.members]
    assert len(a.members) == 50 and len(a.nonmembers) == 40 and len(a.validation) == 961
    assert a.info["available"] == {"members": 2898, "nonmembers": 968, "validation": 961}
    c = load_splits(cfg.model_copy(update={"seed": 8}))
    assert [t.id for t in a.members] != [t.id for t in c.members]


def test_malformed_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "ok"}\n\n{"text": "broken"\n')
    with pytest.raises(MemlensError, match=r"bad\.jsonl:3: malformed JSON"):
        read_jsonl(p)


def test_missing_field_and_wrong_type(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps({"body": "hi"}) + "\n")
    with pytest.raises(
        MemlensError, match=r"x\.jsonl:1: no field 'text', 'messages' or 'prompt' \+ 'completion' \(fields: body\)"
    ):
        read_jsonl(p)
    p.write_text(json.dumps({"text": 3}) + "\n")
    with pytest.raises(MemlensError, match="is int, not a string"):
        read_jsonl(p)


def test_csv_reader_and_missing_column(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text('id,body\n1,"hello, world"\n2,second\n')
    assert [t.text for t in read_csv(p, "body")] == ["hello, world", "second"]
    with pytest.raises(MemlensError, match="no column 'text'"):
        read_csv(p)


def test_missing_dir_and_file(tmp_path):
    with pytest.raises(MemlensError, match="data directory not found"):
        load_splits(DataConfig(dir=tmp_path / "nope"))
    with pytest.raises(MemlensError, match="PHEE file not found"):
        load_splits(DataConfig(dir=tmp_path))
    with pytest.raises(MemlensError, match="data file not found"):
        load_splits(
            DataConfig(
                source="files",
                members=tmp_path / "m.jsonl",
                nonmembers=tmp_path / "n.jsonl",
                validation=tmp_path / "v.jsonl",
            )
        )


def test_empty_member_set_is_refused(tmp_path):
    with pytest.raises(MemlensError, match="members set is empty"):
        load_splits(files_cfg(tmp_path, ["  "], ["one sentence"]))


def test_overlap_refused_unless_allowed(tmp_path):
    cfg = files_cfg(tmp_path, ["The same  text.", "only member"], ["the other", "The same text."])
    with pytest.raises(MemlensError, match=r"1 text\(s\) appear in both .*\(ids t0=t1\)"):
        load_splits(cfg)
    assert load_splits(cfg.model_copy(update={"allow_overlap": True})).info["member_nonmember_overlap"] == 1


def test_download_checks_sha256_and_writes_nothing_on_mismatch(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for split in ("train", "dev", "test"):
        (src / f"{split}.json").write_bytes((PHEE / f"{split}.jsonl").read_bytes())
    dest = download_phee(tmp_path / "ok", url=src.as_uri() + "/{split}.json")
    assert sorted(p.name for p in dest.iterdir()) == ["dev.jsonl", "test.jsonl", "train.jsonl"]
    (src / "train.json").write_text("tampered\n")
    with pytest.raises(MemlensError, match="sha256 mismatch"):
        download_phee(tmp_path / "bad", url=src.as_uri() + "/{split}.json")
    assert list((tmp_path / "bad").iterdir()) == []


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_phee_shipped_inside_memlens_equals_the_original_files(split):
    from memlens.data.sources import read_phee

    assert read_phee(None, split) == read_phee(PHEE, split)


def test_sotu_is_shipped_split_disjoint_and_sized():
    """The second packaged dataset: three disjoint sets of distinct, mid-length English sentences."""
    splits = load_splits(DataConfig(source="sotu", n_members=0, n_nonmembers=0, n_validation=0))
    sets = [splits.members, splits.nonmembers, splits.validation]
    assert [len(s) for s in sets] == [3000, 1000, 1000] and splits.info["member_nonmember_overlap"] == 0
    texts = [t.text for s in sets for t in s]
    assert len(set(texts)) == len(texts) and all(12 <= len(t.split()) <= 60 for t in texts)
    assert all(re.fullmatch(r"\d{4}_\w+-\d+", t.id) and int(t.id[:4]) >= 1946 for s in sets for t in s)
    with pytest.raises(MemlensError, match="sotu texts are in field 'text'"):
        load_splits(DataConfig(source="sotu", text_field="sentence"))


def test_phee_needs_no_data_folder(monkeypatch):
    monkeypatch.delenv("MEMLENS_DATA_DIR", raising=False)
    splits = load_splits(DataConfig(n_members=30, n_nonmembers=20, n_validation=10, seed=3))
    assert (len(splits.members), len(splits.nonmembers), len(splits.validation)) == (30, 20, 10)
    assert splits == load_splits(DataConfig(dir=PHEE, n_members=30, n_nonmembers=20, n_validation=10, seed=3))


def test_gzip_compressed_files_are_read_and_a_broken_one_is_one_error(tmp_path):
    import gzip

    from memlens.data.sources import read_texts

    plain = write_jsonl(tmp_path / "a.jsonl", ["first text", "second text"])
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    assert [t.text for t in read_texts(tmp_path / "a.jsonl.gz")] == ["first text", "second text"]
    (tmp_path / "b.csv.gz").write_bytes(gzip.compress(b"id,text\n1,hello\n"))
    assert [t.text for t in read_texts(tmp_path / "b.csv.gz")] == ["hello"]
    (tmp_path / "c.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(MemlensError, match=r"cannot read data file .*c\.jsonl\.gz: "):
        read_texts(tmp_path / "c.jsonl.gz")
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes())[:-12])
    with pytest.raises(MemlensError, match=r"cannot read data file .*d\.jsonl\.gz"):
        read_texts(tmp_path / "d.jsonl.gz")


def _arrow_table(texts, ids=None):
    import pyarrow as pa

    columns = {"text": texts, "label": list(range(len(texts)))}
    return pa.table(({"id": ids} if ids else {}) | columns)


def save_to_disk_like(folder, table, chunks=2):
    """The layout `datasets.Dataset.save_to_disk` writes: Arrow stream files named in state.json."""
    import pyarrow as pa

    folder.mkdir(parents=True)
    names = []
    step = -(-table.num_rows // chunks)
    for k in range(chunks):
        name = f"data-{k:05d}-of-{chunks:05d}.arrow"
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table.slice(k * step, step))
        names.append({"filename": name})
    (folder / "state.json").write_text(json.dumps({"_data_files": names, "_split": "train"}))
    (folder / "dataset_info.json").write_text("{}")
    return folder


def test_parquet_files_and_hugging_face_dataset_folders(tmp_path):
    import pyarrow.parquet as pq

    from memlens.data.sources import read_texts

    texts = ["alpha beta", "gamma delta", "epsilon"]
    pq.write_table(_arrow_table(texts, ["a", "b", "c"]), tmp_path / "with_ids.parquet")
    pq.write_table(_arrow_table(texts), tmp_path / "no_ids.parquet")
    assert [(t.id, t.text) for t in read_texts(tmp_path / "with_ids.parquet")] == list(zip("abc", texts, strict=True))
    assert [t.id for t in read_texts(tmp_path / "no_ids.parquet")] == [f"no_ids.parquet:{i}" for i in (1, 2, 3)]
    folder = save_to_disk_like(tmp_path / "ds" / "train", _arrow_table(texts, ["a", "b", "c"]))
    assert [t.text for t in read_texts(folder)] == texts
    with pytest.raises(MemlensError, match="holds the splits train: name one of those folders"):
        read_texts(tmp_path / "ds")
    with pytest.raises(
        MemlensError, match=r"no column 'body', 'messages' or 'prompt' \+ 'completion' \(columns: id, text, label"
    ):
        read_texts(folder, "body")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(MemlensError, match="cannot read Parquet file"):
        read_texts(tmp_path / "bad.parquet")


def test_a_run_reads_parquet_and_dataset_folders(tmp_path):
    import pyarrow.parquet as pq
    from helpers import phee_texts

    pq.write_table(_arrow_table(phee_texts("train", 30)), tmp_path / "m.parquet")
    save_to_disk_like(tmp_path / "n", _arrow_table(phee_texts("test", 30)))
    write_jsonl(tmp_path / "v.jsonl", phee_texts("dev", 10))
    cfg = DataConfig(
        source="files", members=tmp_path / "m.parquet", nonmembers=tmp_path / "n", validation=tmp_path / "v.jsonl"
    )
    splits = load_splits(cfg)
    assert (len(splits.members), len(splits.nonmembers)) == (30, 30)


def test_a_folder_written_by_datasets_save_to_disk_is_read(tmp_path):
    """The real `datasets` library (installed with the dev extras, through TRL) writes the folders."""
    from datasets import Dataset, DatasetDict

    from memlens.data.sources import read_texts

    texts = ["first sentence", "second sentence", "third sentence"]
    Dataset.from_dict({"id": ["a", "b", "c"], "text": texts}).save_to_disk(str(tmp_path / "one"))
    assert [(t.id, t.text) for t in read_texts(tmp_path / "one")] == list(zip("abc", texts, strict=True))
    splits = DatasetDict({"train": Dataset.from_dict({"text": texts}), "test": Dataset.from_dict({"text": texts[:1]})})
    splits.save_to_disk(str(tmp_path / "dict"))
    assert [t.text for t in read_texts(tmp_path / "dict" / "test")] == texts[:1]
    with pytest.raises(MemlensError, match="holds the splits test, train"):
        read_texts(tmp_path / "dict")
