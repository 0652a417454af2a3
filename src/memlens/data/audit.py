"""Split audit before any attack: exact and near-duplicate texts within and across the sets of an experiment.

A text that is (nearly) both a member and a non-member has no meaningful membership label, and duplicates inside
the member set are memorised more; either inflates or muddles every attack's AUC.

- **exact**: equal after :func:`normalize` (similarity 1.0).
- **near**: not exact, and the Jaccard similarity of the two texts' :func:`shingles` is ≥ the threshold. Candidates
  come from MinHash + LSH banding and are then verified by exact Jaccard, so every reported pair is real; a pair at
  the threshold is found with probability ≥ 99.9% (more similar pairs: more likely still).

Pairs are oriented by the order of the sets given (``members/nonmembers``, not ``nonmembers/members``) and, within
one set, by the order of its texts. Reports hold ids and similarities only, never text.
"""

from __future__ import annotations

import unicodedata
import zlib
from dataclasses import dataclass
from itertools import combinations
from typing import NamedTuple

import numpy as np

from memlens.data.sources import Text

KINDS = ("exact", "near")
_PRIME = 2**31 - 1  # the universal hashes are (a·x + b) mod _PRIME on 31-bit x: exact in uint64
_RECALL = 0.999  # banding is chosen so a pair exactly at the threshold becomes a candidate this often
_BLOCK = 2**24  # hash values computed at once (128 MiB of uint64)


class DuplicatePair(NamedTuple):
    """Two texts that duplicate each other; ``kind`` is ``"exact"`` or ``"near"``, ``similarity`` the Jaccard."""

    set_a: str
    id_a: str
    set_b: str
    id_b: str
    kind: str
    similarity: float

    @property
    def key(self) -> str:
        return f"{self.set_a}/{self.set_b}"


@dataclass(frozen=True)
class AuditReport:
    """What :func:`find_duplicates` found. ``sizes`` maps each set name (in the order given) to its text count;
    ``pairs`` are sorted by set pair, exact before near, most similar first."""

    sizes: dict[str, int]
    pairs: list[DuplicatePair]
    near_threshold: float
    ngram: int

    @property
    def exact(self) -> list[DuplicatePair]:
        return [p for p in self.pairs if p.kind == "exact"]

    @property
    def near(self) -> list[DuplicatePair]:
        return [p for p in self.pairs if p.kind == "near"]

    def keys(self) -> list[str]:
        """Every set pair, within and across sets: ``members/members``, ``members/nonmembers``, …"""
        names = list(self.sizes)
        return [f"{a}/{b}" for i, a in enumerate(names) for b in names[i:]]

    def counts(self) -> dict[str, dict[str, int]]:
        """Number of pairs per set pair and kind, zeros included."""
        out = {key: dict.fromkeys(KINDS, 0) for key in self.keys()}
        for p in self.pairs:
            out[p.key][p.kind] += 1
        return out

    def to_dict(self, show_examples: int = 5) -> dict:
        """Counts plus up to ``show_examples`` pairs per set pair and kind, as ids and similarity (never text)."""
        examples: dict[str, dict[str, list]] = {key: {kind: [] for kind in KINDS} for key in self.keys()}
        for p in self.pairs:
            shown = examples[p.key][p.kind]
            if len(shown) < show_examples:
                shown.append({"ids": [p.id_a, p.id_b], "similarity": round(p.similarity, 4)})
        return {
            "sets": dict(self.sizes),
            "near_threshold": self.near_threshold,
            "ngram": self.ngram,
            "counts": self.counts(),
            "examples": examples,
        }


def normalize(text: str) -> str:
    """NFKC, lowercase, punctuation (Unicode category P*) replaced by spaces, whitespace collapsed.

    ``"The rash, again."`` → ``"the rash again"``; ``"TNF-alpha"`` → ``"tnf alpha"``.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join("".join(" " if unicodedata.category(c)[0] == "P" else c for c in text).split())


def shingles(text: str, n: int = 5) -> set[str]:
    """The set of ``n``-character substrings of ``normalize(text)``; the whole text if shorter, empty if empty."""
    return _shingle(normalize(text), n)


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b| (0.0 for two empty sets)."""
    inter = len(a & b)
    union = len(a) + len(b) - inter
    return inter / union if union else 0.0


def find_duplicates(
    sets: dict[str, list[Text]],
    *,
    near_threshold: float = 0.8,
    ngram: int = 5,
    num_perm: int = 64,
    seed: int = 0,
) -> AuditReport:
    """Exact and near-duplicate pairs within and across ``sets`` (set name → texts), see the module docstring.

    Near-duplicates use ``ngram``-character shingles, ``num_perm`` MinHash functions drawn with ``seed``.
    """
    if not 0 < near_threshold <= 1:
        raise ValueError(f"near_threshold must be in (0, 1], got {near_threshold}")
    if ngram < 1 or num_perm < 1:
        raise ValueError(f"ngram and num_perm must be ≥ 1, got {ngram} and {num_perm}")
    tagged = [(name, t) for name, texts in sets.items() for t in texts]  # global index = position here
    groups: dict[str, list[int]] = {}
    for i, (_, t) in enumerate(tagged):
        groups.setdefault(normalize(t.text), []).append(i)
    copies = list(groups.values())  # texts sharing one normalised form, in global order
    found = [(i, j, "exact", 1.0) for group in copies for i, j in combinations(group, 2)]
    shingled = [_shingle(norm, ngram) for norm in groups]
    for a, b, sim in _near(shingled, near_threshold, num_perm, seed):
        found += [(min(i, j), max(i, j), "near", sim) for i in copies[a] for j in copies[b]]
    set_of = {name: k for k, name in enumerate(sets)}
    found.sort(key=lambda f: (set_of[tagged[f[0]][0]], set_of[tagged[f[1]][0]], f[2] != "exact", -f[3], f[0], f[1]))
    pairs = [DuplicatePair(tagged[i][0], tagged[i][1].id, tagged[j][0], tagged[j][1].id, k, s) for i, j, k, s in found]
    return AuditReport({name: len(texts) for name, texts in sets.items()}, pairs, near_threshold, ngram)


def duplicate_clusters(texts: list[str]) -> np.ndarray:
    """``(N,)`` cluster ids: texts joined by an exact or near-duplicate pair (the split audit's definition,
    :func:`memlens.data.audit.find_duplicates`) share an id, transitively."""
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    report = find_duplicates({"all": [Text(str(i), t) for i, t in enumerate(texts)]})
    for p in report.pairs:
        parent[root(int(p.id_a))] = root(int(p.id_b))
    return np.array([root(i) for i in range(len(texts))])


def _shingle(norm: str, n: int) -> set[str]:
    return {norm[i : i + n] for i in range(len(norm) - n + 1)} or ({norm} if norm else set())


def _near(shingled: list[set[str]], threshold: float, num_perm: int, seed: int) -> list[tuple[int, int, float]]:
    """Pairs ``(a, b, jaccard)`` with ``a < b`` among ``shingled`` whose verified Jaccard is ≥ ``threshold``."""
    keep = [k for k, s in enumerate(shingled) if s]
    if len(keep) < 2:
        return []
    sig = _minhash([shingled[k] for k in keep], num_perm, seed)
    out = []
    for x, y in _candidates(sig, _rows_per_band(num_perm, threshold)):
        a, b = keep[x], keep[y]
        sim = jaccard(shingled[a], shingled[b])
        if sim >= threshold:
            out.append((a, b, sim))
    return out


def _minhash(shingled: list[set[str]], num_perm: int, seed: int) -> np.ndarray:
    """``(len(shingled), num_perm)`` signatures: per hash function, the minimum over a text's shingles."""
    lengths = np.fromiter(map(len, shingled), np.int64, len(shingled))
    x = np.fromiter((zlib.crc32(s.encode()) for ss in shingled for s in ss), np.uint64, int(lengths.sum())) % _PRIME
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    rng = np.random.default_rng(seed)
    a = rng.integers(1, _PRIME, num_perm, dtype=np.uint64)[:, None]
    b = rng.integers(0, _PRIME, num_perm, dtype=np.uint64)[:, None]
    sig = np.empty((num_perm, len(shingled)), np.uint64)
    step = max(1, _BLOCK // len(x))
    for k in range(0, num_perm, step):
        sig[k : k + step] = np.minimum.reduceat((a[k : k + step] * x + b[k : k + step]) % _PRIME, starts, axis=1)
    return sig.T


def _rows_per_band(num_perm: int, threshold: float) -> int:
    """The most rows per band (fewest false candidates) that still make a pair at ``threshold`` a candidate with
    probability ≥ ``_RECALL``: P = 1 − (1 − t^rows)^bands, bands = num_perm // rows."""
    ok = [r for r in range(1, num_perm + 1) if 1 - (1 - threshold**r) ** (num_perm // r) >= _RECALL]
    return max(ok, default=1)


def _candidates(sig: np.ndarray, rows: int) -> np.ndarray:
    """Unique ``(x, y)`` row pairs, ``x < y``, whose signatures agree on all rows of at least one band."""
    found = [np.empty((0, 2), np.int64)]
    for start in range(0, sig.shape[1] - rows + 1, rows):
        _, key = np.unique(sig[:, start : start + rows], axis=0, return_inverse=True)
        found.append(_pairs_sharing(key.ravel()))
    return np.unique(np.concatenate(found), axis=0)


def _pairs_sharing(key: np.ndarray) -> np.ndarray:
    """All ``(x, y)`` index pairs, ``x < y``, with ``key[x] == key[y]``."""
    counts = np.bincount(key)
    shared = np.flatnonzero(counts[key] > 1)
    order = shared[np.argsort(key[shared], kind="stable")]
    groups = np.split(order, np.flatnonzero(np.diff(key[order])) + 1) if len(order) else []
    return np.array([p for g in groups for p in combinations(g, 2)], np.int64).reshape(-1, 2)
