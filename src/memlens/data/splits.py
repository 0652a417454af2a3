"""Member / non-member / validation sets: sampling and validity checks."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from memlens.config import DataConfig
from memlens.data.sources import PACKAGED, Text, read_hf, read_packaged, read_phee, read_texts
from memlens.errors import MemlensError


@dataclass
class Splits:
    """The three sets of a membership experiment, plus what sampling did."""

    members: list[Text]
    nonmembers: list[Text]
    validation: list[Text]
    info: dict = field(default_factory=dict)


def sample(texts: list[Text], n: int, rng: np.random.Generator) -> list[Text]:
    """``n`` texts without replacement, in the file's order; ``n == 0`` or ``n >= len`` keeps all."""
    if n == 0 or n >= len(texts):
        return list(texts)
    keep = np.sort(rng.choice(len(texts), size=n, replace=False))
    return [texts[i] for i in keep]


def overlap(a: list[Text], b: list[Text]) -> list[tuple[str, str]]:
    """Pairs of ids (from ``a``, from ``b``) whose texts are equal after whitespace normalisation."""
    index: dict[str, str] = {}
    for t in a:
        index.setdefault(_norm(t.text), t.id)
    return [(index[_norm(t.text)], t.id) for t in b if _norm(t.text) in index]


HF_SPLITS = ["train", "test", "validation"]  # source = "hf": members, non-members, validation


def resolve_data_dir(cfg: DataConfig) -> Path | None:
    """``data.dir``, else ``$MEMLENS_DATA_DIR``, else ``None``: PHEE's copy shipped inside memlens."""
    if cfg.dir is not None:
        return cfg.dir
    env = os.environ.get("MEMLENS_DATA_DIR")
    return Path(env) if env else None


def set_sizes(cfg: DataConfig) -> tuple[int, int, int] | None:
    """The members, non-members and validation texts a run of ``cfg`` uses. A count of 0 ("everything") is
    resolved by reading the local files; ``None`` where it cannot be (a hub dataset, files that cannot be read)."""
    counts = (cfg.n_members, cfg.n_nonmembers, cfg.n_validation)
    if all(counts):
        return counts
    if cfg.source == "hf":
        return None
    return _resolved_sizes(cfg.model_dump_json(), os.environ.get("MEMLENS_DATA_DIR"), os.getcwd())


@functools.lru_cache(maxsize=16)
def _resolved_sizes(cfg_json: str, data_dir: str | None, cwd: str) -> tuple[int, int, int] | None:
    """(``data_dir`` and ``cwd`` are part of the cache key: they change which files ``cfg`` names.)"""
    cfg = DataConfig.model_validate_json(cfg_json)
    try:
        used = load_splits(cfg).info["used"]
    except (MemlensError, OSError, ValueError, TypeError):
        return None
    return used["members"], used["nonmembers"], used["validation"]


def load_splits(cfg: DataConfig) -> Splits:
    """Load and sample the three sets described by ``cfg``; refuse empty sets and member/non-member overlap."""
    raw, where = _read_sets(cfg)
    if cfg.source in PACKAGED and cfg.text_field not in (None, PACKAGED[cfg.source]):
        raise MemlensError(f"{cfg.source} texts are in field {PACKAGED[cfg.source]!r}; leave data.text_field unset")
    dropped = {}
    for name, texts in raw.items():
        kept = [t for t in texts if t.text.strip()]
        if not kept:
            raise MemlensError(f"the {name} set is empty ({where})")
        raw[name], dropped[name] = kept, len(texts) - len(kept)
    renamed = sum(unique_ids(texts) for texts in raw.values())
    splits = _sampled(cfg, raw, where)
    splits.info |= {"dropped_empty": dropped, "renamed_duplicate_ids": renamed}
    return splits


def unused_texts(cfg: DataConfig, splits: Splits) -> list[Text]:
    """The texts of the members' split (e.g. PHEE's train) that were not sampled, without any text equal (after
    whitespace normalisation) to a member, non-member or validation text: a population pool that shares the
    members' distribution but none of their texts (e.g. distillation's transfer set)."""
    raw, _ = _read_sets(cfg)
    pool = [t for t in raw["members"] if t.text.strip()]
    unique_ids(pool)
    picked = {t.id for t in splits.members}
    taken = {_norm(t.text) for t in splits.members + splits.nonmembers + splits.validation}
    return [t for t in pool if t.id not in picked and _norm(t.text) not in taken]


def audit_candidates(kind: str, cfg: DataConfig, splits: Splits) -> list[str]:
    """The texts audit canaries of ``kind`` are drawn from: for ``sentences``, every sentence of 40–200
    characters of the shipped SOTU set (all three splits; dev and test only when SOTU is the run's data) that
    equals no member, non-member or validation text after normalisation (``words``: every such sentence,
    whatever its length, for its vocabulary); for ``pool``, :func:`unused_texts`; none for ``records``."""
    if kind == "records":
        return []
    if kind == "pool":
        return [t.text for t in unused_texts(cfg, splits)]
    from memlens.data.sources import read_packaged

    taken = {_norm(t.text) for t in splits.members + splits.nonmembers + splits.validation}
    # with SOTU as the run's own data, its train split is the pool reference models draw on: left alone
    shipped = ("dev", "test") if cfg.source == "sotu" else ("train", "dev", "test")
    sotu = [t.text for split in shipped for t in read_packaged("sotu", split)]
    if kind == "sentences":  # whole sentences of 40–200 characters: neither a fragment nor truncated
        sotu = [t for t in sotu if 40 <= len(t.strip()) <= 200]
    return [t for t in sotu if _norm(t) not in taken]


def texts_from(source: str, cfg: DataConfig, splits: Splits, field: str, also: str = "") -> list[Text]:
    """The texts ``source`` names: ``validation``, ``pool`` (:func:`unused_texts`) or a JSONL/CSV file (``field``:
    the config field, for the error; ``also``: other names it accepts)."""
    if source == "validation":
        return list(splits.validation)
    if source == "pool":
        return unused_texts(cfg, splits)
    path = Path(source).expanduser()
    if not path.is_file():
        raise MemlensError(f"{field} {source!r} is neither {also}validation, pool nor an existing file")
    return read_texts(path, cfg.text_field or "text")


def _read_sets(cfg: DataConfig) -> tuple[dict[str, list[Text]], str]:
    """The three sets as the source holds them (before sampling), and where they came from."""
    if cfg.source == "phee":
        root = resolve_data_dir(cfg)
        if root is not None and not root.is_dir():
            raise MemlensError(f"data directory not found: {root}")
        raw = {
            "members": read_phee(root, "train"),
            "nonmembers": read_phee(root, "test"),
            "validation": read_phee(root, "dev"),
        }
        where = str(root) if root is not None else "PHEE shipped with memlens"
    elif cfg.source == "hf":
        if cfg.dataset is None:
            raise MemlensError("data.source = 'hf' needs data.dataset (a hub id or a save_to_disk folder)")
        names = ("members", "nonmembers", "validation")
        field_name = cfg.text_field or "text"
        splits = cfg.splits or HF_SPLITS
        pairs = zip(names, splits, strict=True)
        raw = {k: read_hf(cfg.dataset, cfg.dataset_config, split, field_name) for k, split in pairs}
        where = f"{cfg.dataset} ({', '.join(splits)})"
    elif cfg.source == "sotu":
        raw = {
            k: read_packaged("sotu", s)
            for k, s in (("members", "train"), ("nonmembers", "test"), ("validation", "dev"))
        }
        where = "SOTU shipped with memlens"
    else:
        missing = [k for k in ("members", "nonmembers", "validation") if getattr(cfg, k) is None]
        if missing:
            raise MemlensError(f"data.source = 'files' needs data.{', data.'.join(missing)}")
        text_field = cfg.text_field or "text"
        raw = {k: read_texts(getattr(cfg, k), text_field) for k in ("members", "nonmembers", "validation")}
        where = ", ".join(str(getattr(cfg, k)) for k in raw)
    return raw, where


def _sampled(cfg: DataConfig, raw: dict[str, list[Text]], where: str) -> Splits:
    """Check the formats and the member/non-member overlap, then sample the three sets."""
    kinds = {k: sorted({t.kind for t in v}) for k, v in raw.items()}
    if len({kind for ks in kinds.values() for kind in ks}) > 1:
        described = ", ".join(f"{k}: {' and '.join(ks)}" for k, ks in kinds.items())
        raise MemlensError(
            f"the three sets mix record formats ({described}); use one of plain text, chat (messages) or "
            "prompt + completion for all of them"
        )
    shared = overlap(raw["members"], raw["nonmembers"])
    if shared and not cfg.allow_overlap:
        ids = ", ".join(f"{m}={n}" for m, n in shared[:3])
        raise MemlensError(
            f"{len(shared)} text(s) appear in both the member and non-member sets (ids {ids}"
            f"{', ...' if len(shared) > 3 else ''}); fix the split or set data.allow_overlap = true (--allow-overlap)"
        )
    rng = np.random.default_rng(cfg.seed)
    counts = {"members": cfg.n_members, "nonmembers": cfg.n_nonmembers, "validation": cfg.n_validation}
    picked = {k: sample(raw[k], counts[k], rng) for k in raw}
    info = {
        "source": cfg.source,
        "format": next(iter(kinds["members"]), "text"),  # text, chat or instruction
        "available": {k: len(v) for k, v in raw.items()},
        "used": {k: len(v) for k, v in picked.items()},
        "member_nonmember_overlap": len(shared),
    }
    return Splits(picked["members"], picked["nonmembers"], picked["validation"], info)


def unique_ids(texts: list[Text]) -> int:
    """Make the ids of one set unique in place: the 2nd, 3rd, ... text with an id becomes ``ID#2``, ``ID#3``,
    ... (skipping names already taken). Returns how many were renamed. (A member and a non-member may share
    an id: ``scores.csv`` tells them apart by its ``member`` column.)"""
    taken = {t.id for t in texts}
    seen: set[str] = set()
    renamed = 0
    for i, t in enumerate(texts):
        if t.id not in seen:
            seen.add(t.id)
            continue
        n = 2
        while f"{t.id}#{n}" in taken:
            n += 1
        texts[i] = replace(t, id=f"{t.id}#{n}")
        taken.add(texts[i].id)
        seen.add(texts[i].id)
        renamed += 1
    return renamed


def _norm(text: str) -> str:
    return " ".join(text.split())
