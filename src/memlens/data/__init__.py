"""Step 1 of the pipeline: member, non-member and validation texts."""

from memlens.data.sources import Text, download_phee, read_csv, read_jsonl, read_phee, read_texts
from memlens.data.splits import Splits, load_splits, overlap, sample

__all__ = [
    "Splits",
    "Text",
    "download_phee",
    "load_splits",
    "overlap",
    "read_csv",
    "read_jsonl",
    "read_phee",
    "read_texts",
    "sample",
]
