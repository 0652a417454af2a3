"""Reference models for RMIA and LiRA: ``attacks.reference_models`` fine-tunes with the target's own recipe
(method, training settings, DP) on population texts, scored on the target's texts and cached.

The population (``attacks.population``: the members' split's unused texts by default) never holds a scored
text. ``population_size`` of it are set aside first as RMIA's population samples z, on which no model trains;
reference k then trains on a random sample of the rest as large as the target's training set (a half of the
rest when it is smaller than twice that). With two or more references, RMIA's offline ``a`` is tuned as the
paper does: reference 0 attacked by the others, on texts only it trained on against texts none trained on.
A reference's statistics are cached under its recipe and data (not its weights), so a sweep or a rerun
trains each one once.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import time
from dataclasses import dataclass

import numpy as np

from memlens import progress
from memlens.attacks.references import LIRA_PER_EXAMPLE, OFFLINE_A, ReferenceSignals, probability, tune_offline_a
from memlens.config import RunConfig
from memlens.data import Text
from memlens.errors import MemlensError
from memlens.tokens import Encoded, encode_records

POPULATION_SIZE = 500  # RMIA's population samples z by default
TUNE_TEXTS = 200  # at most this many texts in, and as many out of, reference 0 for tuning a
SEED_OFFSET = 7_919  # reference k trains with seed attacks.seed + SEED_OFFSET + k (apart from target seeds)


@dataclass
class PopulationPlan:
    """Which population texts each model sees: ``z`` (no model trains on them), ``train[k]`` (reference k's
    training texts), ``tune_in`` / ``tune_out`` (texts only reference 0 / no reference trained on)."""

    z: list[Text]
    train: list[list[Text]]
    tune_in: list[Text]
    tune_out: list[Text]
    pool_size: int


def plan_population(cfg: RunConfig, splits, n_train: int) -> PopulationPlan:
    """Split the population for ``cfg.attacks.reference_models`` references, each to train on ``n_train``
    texts like the target (fewer, with a warning, when the pool is too small). Seeded by ``attacks.seed``."""
    from memlens.data.audit import normalize
    from memlens.data.splits import texts_from

    source, k = cfg.attacks.population or "pool", cfg.attacks.reference_models or 0
    scored = {normalize(t.text) for t in splits.members + splits.nonmembers}
    pool, seen = [], set(scored)
    for t in texts_from(source, cfg.data, splits, "attacks.population"):
        key = normalize(t.text)
        if t.text.strip() and key not in seen:  # never a scored text, each distinct text once
            seen.add(key)
            pool.append(t)
    rng = np.random.default_rng(cfg.attacks.seed)
    order = [pool[i] for i in rng.permutation(len(pool))]
    n_z = min(cfg.attacks.population_size or POPULATION_SIZE, len(pool) // 2)
    n_t = min(TUNE_TEXTS, (len(pool) - n_z) // 4)
    tune_out, rest = order[n_z : n_z + n_t], order[n_z + n_t :]
    m = min(n_train, len(rest) // 2)
    if n_z < 10 or m < 2:
        raise MemlensError(
            f"attacks.population {source!r} holds {len(pool)} texts that are not scored: too few for reference "
            f"models (at least {2 * n_train + 10} for references as large as the target's {n_train} texts)"
        )
    if m < n_train:
        progress.warn(
            f"each reference model trains on {m} population texts, the target on {n_train}: a larger "
            "attacks.population would match the target's recipe"
        )
    # reference 0 first; the first of its texts are the tuning texts it alone trains on (the others never
    # draw them), so every reference's data (and cache key) is the same whatever the number of references
    first = rng.choice(len(rest), m, replace=False)
    tune_in = first[: min(n_t, m // 2)]
    others = np.setdiff1d(np.arange(len(rest)), tune_in)
    picks = [first] + [rng.choice(others, min(m, len(others)), replace=False) for _ in range(k - 1)]
    train = [[rest[i] for i in np.sort(p)] for p in picks]
    return PopulationPlan(order[:n_z], train, [rest[i] for i in tune_in], tune_out[: len(tune_in)], len(pool))


def recipe_key(cfg: RunConfig, base: str, k: int, train: Encoded, scored: list[list[int]], starts) -> str:
    """The cache key of reference ``k``'s statistics: the base weights' fingerprint, the recipe (tuning,
    training with the reference's seed, DP), the token ids it trains on and those it scores."""
    from memlens.scoring import cache

    evaluation_only = {"eval_every", "eval_at", "save_checkpoints"}  # when the target is measured, not how trained
    training = cfg.training.model_dump(mode="json", exclude_none=True, exclude=evaluation_only)
    recipe = {  # unset (None) fields left out, so a new optional setting keeps every cached reference
        "tuning": cfg.tuning.model_dump(mode="json", exclude_none=True),
        "training": training | {"seed": reference_seed(cfg, k)},
        "privacy": cfg.privacy.model_dump(mode="json", exclude_none=True) if cfg.privacy is not None else None,
    }
    h = hashlib.sha256(f"{base}|{json.dumps(recipe, sort_keys=True)}|".encode())
    for s, first in zip(train.ids, train.first, strict=True):
        h.update(np.asarray([first, *s], dtype=np.int64).tobytes() + b"|")
    return cache.cache_key(h.hexdigest()[:24], scored, starts=starts, extra="reference model")


def reference_seed(cfg: RunConfig, k: int) -> int:
    return cfg.attacks.seed + SEED_OFFSET + k


def reference_signals(
    cfg: RunConfig, plan: PopulationPlan, model, tok, identity: str, target: Encoded, pad_id: int
) -> tuple[ReferenceSignals, Encoded, dict]:
    """Train (or read from the cache) the reference models of ``plan`` from the pre-trained ``model`` (left
    untouched: each reference starts from a copy, released after scoring) and return their signals on the
    ``target`` texts and the population samples z, z's token ids (the target scores them too) and what was
    done (``results.json``'s ``reference_models``; counts and settings, never text)."""
    import torch

    from memlens.scoring import cache, score_ids
    from memlens.tuning import DEFAULT_LR, apply_method, train

    n = cfg.data.max_tokens
    z = encode_records(tok, plan.z, n)
    tune = encode_records(tok, plan.tune_in + plan.tune_out, n)
    ids, starts = target.ids + z.ids + tune.ids, target.first + z.first + tune.first
    base = cache.weights_fingerprint(model, identity)
    lr = cfg.training.lr or DEFAULT_LR[cfg.tuning.method]
    stats, seconds, cached = [], [], []
    n_refs = len(plan.train)
    for k, texts in enumerate(plan.train):
        t0 = time.perf_counter()
        enc = encode_records(tok, texts, n)
        key = recipe_key(cfg, base, k, enc, ids, starts)
        hit = cache.load(key) if cfg.scoring.cache else None
        cached.append(hit is not None)
        if hit is not None:
            progress.info(f"reference model {k + 1}/{n_refs}: statistics read from the cache (not retrained)")
        else:
            progress.info(f"reference model {k + 1}/{n_refs}: fine-tuning on {len(texts)} population texts")
            seed = reference_seed(cfg, k)
            ref = copy.deepcopy(model)
            torch.manual_seed(seed)
            ref, _ = apply_method(ref, cfg.tuning, tok)
            training = cfg.training.model_copy(update={"seed": seed})
            train(ref, enc.ids, pad_id, training, lr=lr, starts=enc.first, privacy=cfg.privacy)
            hit = score_ids(
                ref, ids, pad_id, starts=starts, batch_size=cfg.scoring.batch_size,
                desc=f"scoring, reference model {k + 1}/{n_refs}",
            )  # fmt: skip
            if cfg.scoring.cache:
                cache.store(key, hit)
            del ref
            gc.collect()
        stats.append(hit.nll())
        seconds.append(round(time.perf_counter() - t0, 2))
    nll = np.stack(stats)  # (K, N + Z + T)
    n_x, n_z = len(target.ids), len(z.ids)
    signals = ReferenceSignals(nll[:, :n_x], nll[:, n_x : n_x + n_z], gamma=cfg.attacks.rmia_gamma or 1.0)
    a, how, curve = offline_a(cfg, signals, nll[:, n_x + n_z :], len(plan.tune_in))
    signals = ReferenceSignals(signals.nll, signals.population, offline_a=a, gamma=signals.gamma)
    info = {
        "k": n_refs,
        "population": cfg.attacks.population or "pool",
        "population_texts": plan.pool_size,
        "population_samples": n_z,
        "texts_per_model": len(plan.train[0]),
        "seeds": [reference_seed(cfg, k) for k in range(n_refs)],
        "seconds": seconds,
        "cached": cached,
        "rmia_a": a,
        "rmia_a_from": how,
        "rmia_a_curve": [{"a": x, "auc": y} for x, y in curve],
        "tune_texts": len(plan.tune_in),
        "rmia_gamma": signals.gamma,
        "lira_variance": "per text" if n_refs >= LIRA_PER_EXAMPLE else "shared",
    }
    return signals, z, info


def offline_a(cfg: RunConfig, signals: ReferenceSignals, tune_nll: np.ndarray, n_in: int):
    """RMIA's ``a``, where it came from (``set``, ``tuned``, ``default``) and the tuning curve."""
    if cfg.attacks.rmia_a is not None:
        return cfg.attacks.rmia_a, "set", []
    if len(signals.nll) < 2 or n_in < 2:
        return OFFLINE_A, "default", []  # one reference: nothing to tune on
    p, pz = probability(tune_nll), probability(signals.population)  # (K, 2T), (K, Z)
    a, curve = tune_offline_a(p[0, :n_in], p[0, n_in:], p[1:, :n_in], p[1:, n_in:], pz[0], pz[1:], gamma=signals.gamma)
    return a, "tuned", curve
