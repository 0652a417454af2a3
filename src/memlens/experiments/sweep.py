"""Sweeps: a base run and axes to vary, expanded into trials and run into the results store.

A sweep file is TOML::

    name = "lora-placement"
    [base]                       # a run config, as for `memlens run`
    model.name = "smollm2-135m"
    [grid]                       # axes -> values; every combination is a trial
    targets = [["q"], ["k"], ["v"], ["o"]]
    rank = [1, 2, 4]
    [[variants]]                 # optional explicit variants (combined with the grid)
    label = "prompt tuning"
    method = "prompt"

``seeds = [0, 1, 2]`` (top level) repeats every trial with each training seed (the grid axis ``seed``); the
presets' findings and the report then average each configuration over its seeds and resample the seeds in
their intervals, so that a verdict covers training randomness as well as the sampling of texts.

An axis is a short name (the keys of :data:`AXES`) or any dotted config key
(``"training.warmup_ratio"``). Trials already finished in the store are skipped; a failed trial is recorded
with its error and the sweep goes on.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from memlens import progress
from memlens.config import RunConfig, parse_config, read_toml, with_overrides
from memlens.errors import MemlensError
from memlens.experiments.distributed import resources
from memlens.files import safe_label

AXES = {
    "model": "model.name",
    "dataset": "data.source",
    "data_dir": "data.dir",
    "members": "data.n_members",
    "method": "tuning.method",
    "targets": "tuning.targets",
    "rank": "tuning.rank",
    "alpha": "tuning.alpha",
    "layers": "tuning.layers",
    "virtual_tokens": "tuning.virtual_tokens",
    "prefix_init": "tuning.prefix_init",
    "epochs": "training.epochs",
    "lr": "training.lr",
    "batch_size": "training.batch_size",
    "seed": "training.seed",
}
# rough sustained throughput used only by --dry-run's estimate (measured: benchmarks/README.md). CUDA: what
# SmolLM2-135M sustained on an H100 in bf16 (hou2025 full's first trial, batch 16): small models are
# kernel-launch bound at ~1% of the card's peak; larger models sustain more, so this overstates their time.
FLOPS = {"cpu": 1.0e11, "cuda": 5.0e12}
# batched greedy decoding (extraction), in FLOP/s at 2·P per generated token: SmolLM2-135M at 16 sequences a
# batch made 73 tokens/s on the 2-core CPU (each step reads every weight) and ~350 on the H100 (each step is
# kernel-launch bound): far below the rates above (benchmarks/README.md)
DECODE_FLOPS = {"cpu": 2.0e10, "cuda": 9.5e10}
# a trial's fixed costs: loading the model (seconds; measured 6 s on the CPU, 10.5 s on the H100) and the split
# audit with the blind baseline (seconds per text: 8.8 s for 1,200 texts, 28 s for 4,827, on both machines)
LOAD_SECONDS = {"cpu": 6.0, "cuda": 10.0}
SPLIT_CHECK_SECONDS = 0.007


@functools.lru_cache(maxsize=1)
def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def estimate_device(cfg: RunConfig) -> str:
    """Where a trial would run: ``device = "auto"`` is CUDA when a GPU is visible."""
    device = cfg.model.device
    return ("cuda" if _cuda_available() else "cpu") if device == "auto" else device


def same_precision(info: dict, config: dict, *, here: bool = True) -> bool:
    """Whether a finished trial (its stored ``info``) ran on the device type and dtype that ``config`` (stored
    JSON) gets, ``"auto"`` resolved as a run on this machine would (``here``; on a cluster elsewhere, where it
    cannot be known, a trial with ``device = "auto"`` never matches): a copied trial never brings bf16 into a
    float32 design."""
    model = config.get("model") or {}
    device = model.get("device", "auto")
    if device == "auto" and not here:
        return False
    device = ("cuda" if _cuda_available() else "cpu") if device == "auto" else device
    dtype = model.get("dtype", "auto")
    dtype = ("bfloat16" if device.startswith("cuda") else "float32") if dtype == "auto" else dtype
    ran = info.get("model") or {}
    same_device = str(ran.get("device", "")).split(":")[0] == device.split(":")[0]
    return same_device and str(ran.get("dtype", "")).removeprefix("torch.") == dtype


def throughput_note(sweep: Sweep) -> str:
    """The rate the dry run's estimate assumed, for its summary line."""
    devices = {estimate_device(t.config) for t in sweep.trials}
    rates = ", ".join(f"~{FLOPS[d] / 1e9:,.0f} GFLOP/s on {d.upper()}" for d in sorted(devices))
    return f"FLOPs at {rates}, plus decoding, loading and split checks"


@dataclass
class Trial:
    label: str
    overrides: dict[str, Any]
    config: RunConfig

    @property
    def hash(self) -> str:
        """The config's identity in a store (:meth:`RunConfig.identity`)."""
        return self.config.identity()


@dataclass
class Sweep:
    name: str
    base: RunConfig
    trials: list[Trial]
    spec: dict

    @property
    def resources(self):
        """What each trial asks a Ray cluster for (the sweep file's ``[resources]``; not part of any hash)."""
        return resources(self.spec.get("resources"))

    @property
    def spec_hash(self) -> str:
        return hashlib.sha256(json.dumps([t.hash for t in self.trials]).encode()).hexdigest()[:16]


def config_key(axis: str) -> str:
    """The dotted config key of a sweep axis (``"lr"`` → ``"training.lr"``) or of a dotted key; one that is
    not a config field is a :class:`MemlensError`."""
    key = AXES.get(axis, axis)
    if "." not in key:
        raise MemlensError(f"unknown sweep axis {axis!r}; use one of {', '.join(AXES)} or a dotted config key")
    section, field = key.split(".", 1)
    annotation = RunConfig.model_fields[section].annotation if section in RunConfig.model_fields else None
    # an optional section ([mitigation], [privacy], [distillation]) is annotated ``Section | None``
    section_type = next((t for t in (annotation, *get_args(annotation)) if isinstance(t, type)), None)
    if not (section_type is not None and field in getattr(section_type, "model_fields", {})):
        raise MemlensError(f"unknown sweep axis {axis!r}: {key} is not a config field")
    return key


def _label(overrides: dict[str, Any]) -> str:
    def show(v: Any) -> str:
        return "+".join(map(str, v)) if isinstance(v, list) else str(v)

    return " ".join(f"{k.rsplit('.', 1)[-1]}={show(v)}" for k, v in overrides.items()) or "base"


def expand(spec: dict, source: str = "sweep") -> Sweep:
    """Expand a sweep mapping into validated trials (refusing unknown axes and empty grids)."""
    unknown = set(spec) - {"name", "base", "grid", "variants", "seeds", "resources"}
    if unknown:
        raise MemlensError(
            f"{source}: unknown top-level key(s) {sorted(unknown)} (expected name, base, grid, variants, seeds, "
            "resources)"
        )
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise MemlensError(f'{source}: a sweep needs a name = "..."')
    safe_label(name, f"{source}: sweep name")
    base_spec, grid, variants = spec.get("base", {}), spec.get("grid", {}), spec.get("variants", [{}])
    if not isinstance(base_spec, dict):
        raise MemlensError(f"{source}: [base] must be a table (a run config)")
    if not isinstance(grid, dict) or not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        raise MemlensError(f"{source}: [grid] must be a table and [[variants]] a list of tables")
    labels = [v["label"] for v in variants if "label" in v]
    if not all(isinstance(x, str) and x.strip() for x in labels):
        raise MemlensError(f"{source}: a variant's label must be a non-empty string")
    base = parse_config({"name": name} | base_spec, f"{source} [base]")
    if not isinstance(spec.get("resources", {}), dict):
        raise MemlensError(f"{source}: [resources] must be a table (cpus, gpus, memory_gb)")
    resources(spec.get("resources"), source)  # checked now, used by --backend ray (ignored by local)
    axes = {config_key(a): v for a, v in grid.items()}
    if "seeds" in spec:
        seeds = spec["seeds"]
        if not isinstance(seeds, list) or not seeds or not all(type(x) is int and x >= 0 for x in seeds):
            raise MemlensError(f"{source}: seeds must be a non-empty list of non-negative integers, e.g. [0, 1, 2]")
        if len(set(seeds)) != len(seeds) or AXES["seed"] in axes:
            raise MemlensError(f"{source}: seeds repeat a seed or a grid axis 'seed' is also given; use one of them")
        axes[AXES["seed"]] = seeds
    for a, values in axes.items():
        if not isinstance(values, list) or not values:
            raise MemlensError(f"{source}: grid axis {a!r} needs a non-empty list of values")
    if not variants:
        raise MemlensError(f"{source}: [[variants]] is empty")
    trials: list[Trial] = []
    for variant in variants:
        variant = dict(variant)
        vlabel = variant.pop("label", None)
        vover = {config_key(k): v for k, v in variant.items()}
        for combo in itertools.product(*axes.values()) if axes else [()]:
            over = vover | dict(zip(axes, combo, strict=True))
            parts = (vlabel or (_label(vover) if vover else ""), _label(dict(zip(axes, combo, strict=True))))
            label = " ".join(x for x in parts if x and x != "base")
            cfg = with_overrides(base, over)
            trials.append(Trial(label or _label(over), over, cfg))
    if not trials:
        raise MemlensError(f"{source}: the grid is empty")
    seen: dict[str, str] = {}
    for t in trials:
        if t.hash in seen:
            raise MemlensError(f"{source}: trials {seen[t.hash]!r} and {t.label!r} are the same configuration")
        seen[t.hash] = t.label
    return Sweep(name, base, trials, spec)


def load_sweep(path: str | Path) -> Sweep:
    return expand(read_toml(path, "sweep"), str(path))


def estimate_seconds(
    cfg: RunConfig, params: float, mean_tokens: float = 30.0, *, device: str | None = None
) -> float | None:
    """A rough cost: 2·P FLOPs per scored token, 6·P (full/head) or 4·P (adapters) per trained token at
    :data:`FLOPS`; extraction's generated tokens at 2·P each and :data:`DECODE_FLOPS`; loading the model and the
    split checks (:data:`LOAD_SECONDS`, :data:`SPLIT_CHECK_SECONDS`); reference models (RMIA, LiRA) cost a
    training and a scoring pass each; DynamicCut trains and scores two or three times (the ranking fine-tune,
    the cut one, the random control). ``device`` (``cpu`` or ``cuda``): the rates of that device instead of
    where the trial would run here. ``None`` when the data's size is unknown (a set size of 0, "everything",
    of data that cannot be read here)."""
    from memlens.data.splits import set_sizes
    from memlens.experiments.runner import count_evaluations, passes_needed

    sizes = set_sizes(cfg.data)
    if sizes is None:
        return None
    n_members, n_nonmembers, n_validation = sizes
    scored = (n_members + n_nonmembers) * mean_tokens

    extra = passes_needed(cfg)
    evals = 1 + count_evaluations(cfg)
    copies = (cfg.attacks.neighbours or 8) - 1 if "neighbours" in extra else 0  # the neighbours' pass: m copies
    per_eval = 2 * params * (scored * (1 + len(extra) + copies) + n_validation * mean_tokens)
    train = (6 if cfg.tuning.method in ("full", "head") else 4) * params * n_members * mean_tokens * cfg.training.epochs
    refs = cfg.attacks.reference_models or 0  # each trains like the target and scores texts, z and tuning texts
    z = (cfg.attacks.population_size or 500) * mean_tokens if refs else 0.0
    references = refs * (train + 2 * params * (scored + z + 400 * mean_tokens)) + evals * 2 * params * z
    mit = cfg.mitigation
    runs = 1 + (1 + mit.control if mit is not None and mit.method == "dynamiccut" else 0)  # + ranking, control
    device = device or estimate_device(cfg)
    decode = 2 * params * _generated_tokens(cfg, n_members, n_nonmembers, mean_tokens) / DECODE_FLOPS[device]
    fixed = LOAD_SECONDS[device] + SPLIT_CHECK_SECONDS * (n_members + n_nonmembers + n_validation)
    return (runs * (per_eval * evals + train) + references) / FLOPS[device] + runs * (decode + fixed)


def _generated_tokens(cfg: RunConfig, n_members: int, n_nonmembers: int, mean_tokens: float) -> float:
    """Tokens extraction generates: each extracted text's suffix, once greedily and ``num_samples`` times per
    temperature."""
    e = cfg.extraction
    if not e.enabled:
        return 0.0
    texts = min(e.n_texts, n_members) + min(e.n_texts, n_nonmembers)
    suffix = mean_tokens * (1 - e.prefix) if e.prefix < 1 else max(mean_tokens - e.prefix, 1.0)
    return texts * suffix * (int(e.greedy) + len(e.temperatures) * e.num_samples)


def approx_parameters(spec: str) -> float | None:
    """Parameter count for the cost estimate, without loading the model (None when unknown)."""
    from memlens.models.builtin import BUILTIN_MODELS

    if spec in BUILTIN_MODELS:
        return BUILTIN_MODELS[spec].parameters
    path = Path(spec).expanduser()
    if path.is_dir():
        return sum(f.stat().st_size for f in path.glob("*.safetensors")) / 4 or None  # fp32 bytes → parameters
    return None


def _trial_seconds(t: Trial) -> float | None:
    """A trial's estimated seconds (None: its model's or data's size is unknown here)."""
    params = approx_parameters(t.config.model.name)
    return estimate_seconds(t.config, params) if params else None


def dry_run_table(sweep: Sweep) -> tuple[list[tuple[str, str, str]], float]:
    """Rows (label, overrides, estimated cost) and the total estimated seconds."""
    rows, total = [], 0.0
    for t in sweep.trials:
        secs = _trial_seconds(t)
        total += secs or 0.0
        if secs is not None:
            cost = f"~{secs / 60:.1f} min"
        else:
            cost = "unknown model size" if not approx_parameters(t.config.model.name) else "unknown data size"
        rows.append((t.label, json.dumps(t.overrides), cost))
    return rows, total


def check_backend(backend: str, address: str | None) -> None:
    """A clear error for a backend other than ``local``/``ray``, or an ``address`` without Ray."""
    if backend not in ("local", "ray"):
        raise MemlensError(f"--backend must be local or ray (got {backend!r})")
    if address is not None and backend != "ray":
        raise MemlensError("--address names a Ray cluster: use it with --backend ray")


def store_progress(folder: Path, sweep: Sweep, *, retry_failed: bool = False, address: str | None = None) -> str:
    """A dry run's line on the results store in ``folder``: what is finished there and what a run would do now
    (``retry_failed``: failed trials count as to do; ``address``: of the Ray cluster it would run on, see
    :func:`same_precision`). Reads the store only."""
    from memlens.experiments.store import DB_NAME, Store

    n = len(sweep.trials)
    if not (folder / DB_NAME).is_file():
        return f"{folder}: no results store yet; a run does all {n} trials"
    store = Store(folder, create=False)
    try:
        row = store.db.execute("SELECT spec_hash FROM sweeps WHERE name = ?", (sweep.name,)).fetchone()
        counts = store.counts(sweep.name)
        states = ("pending", "running", "failed") if retry_failed else ("pending", "running")
        stored = store.db.execute("SELECT config_hash, config, status FROM trials WHERE sweep = ?", (sweep.name,))
        if row is None:  # the trials a run would start, and those of them another sweep can stand in for
            starts = [(t.hash, t.config.model_dump(mode="json"), "pending") for t in sweep.trials]
        else:
            starts = [(h, json.loads(c), status) for h, c, status in stored.fetchall() if status in states]
        usable = functools.partial(same_precision, here=address is None)
        found = store.finished_elsewhere(sweep.name, [cfg for _, cfg, _ in starts], usable=usable)
        found = {i: v for i, v in found.items() if starts[i][2] != "failed"}  # a failed trial is run again
    finally:
        store.close()
    copies = f"copies {_copied(Counter(other for _, other in found.values()))} and " if found else ""
    by_hash = {t.hash: t for t in sweep.trials}
    to_run = [by_hash[h] for i, (h, _, _) in enumerate(starts) if i not in found and h in by_hash]
    cost = ""
    if 0 < len(to_run) < n:  # what is left of the estimate for the whole sweep
        each = [_trial_seconds(t) for t in to_run]
        secs = sum(x or 0.0 for x in each)
        rough = f"{secs:.0f} s" if secs < 90 else f"{secs / 60:.0f} min" if secs < 5400 else f"{secs / 3600:.1f} h"
        unknown = sum(x is None for x in each)
        cost = f"; estimated ~{rough} for those {len(to_run)}" + (
            f" ({unknown} of unknown size not counted)" * bool(unknown)
        )
    if row is None:
        return (
            f"{folder}: no trial of sweep {sweep.name!r} yet; a run {copies}does {'all ' * (not found)}"
            f"{n - len(found)}{cost}"
        )
    if row[0] != sweep.spec_hash:
        return (
            f"{folder}: its sweep {sweep.name!r} was created from a different sweep file, so a run would be refused "
            "(results are never mixed: use another --dir)"
        )
    failed, running = counts.get("failed", 0), counts.get("running", 0)
    line = f"{folder}: {counts.get('done', 0)} of {n} trials done; a run now {copies}does {len(to_run)}"
    if failed:
        kept = "retried" if retry_failed else "kept as they are; --retry-failed reruns them"
        line += f" ({failed} failed: {kept})"
    if running:
        line += (
            f"; {running} marked running: by a run in progress (then a second run is refused until it ends) or "
            "by one that stopped (a new run starts them again)"
        )
    return line + cost


def _copied(reused: dict[str, int]) -> str:
    """``N (N from sweep 'S': the same configs, finished there)``: the trials copied from other sweeps."""
    sources = " and ".join(f"{n} from sweep {name!r}" for name, n in sorted(reused.items()))
    return f"{sum(reused.values())} ({sources}: the same configs, finished there)"


def run_sweep(
    sweep: Sweep,
    folder: str | Path,
    *,
    retry_failed: bool = False,
    backend: str = "local",
    address: str | None = None,
) -> dict[str, int]:
    """Run every unfinished trial of ``sweep`` into the store in ``folder``; return the status counts.

    ``backend="ray"`` hands the trials to a Ray cluster (``address``: None starts a local one, ``"auto"`` or
    ``HOST:PORT`` joins one; see :mod:`memlens.experiments.distributed`); this process still writes the store."""
    from memlens.experiments.store import Store

    check_backend(backend, address)
    if backend == "ray":
        from memlens.experiments.distributed import require_ray

        require_ray()  # before anything is written
    store = Store(folder)
    with store.running(sweep.name):
        store.register_sweep(
            sweep.name,
            sweep.spec,
            sweep.spec_hash,
            [(t.hash, t.label, t.config.model_dump(mode="json")) for t in sweep.trials],
        )
        here = backend == "local" or address is None  # a new local Ray instance runs on this machine too
        usable = functools.partial(same_precision, here=here)
        reused = store.reuse_finished(sweep.name, usable=usable)
        todo = store.pending(sweep.name, retry_failed)
        done_before = store.counts(sweep.name).get("done", 0) - sum(reused.values())
        progress.info(
            f"sweep {sweep.name}: {len(sweep.trials)} trials, {done_before} already done, "
            + (f"copied {_copied(reused)}, " if reused else "")
            + f"{len(todo)} to run"
        )
        if backend == "ray" and todo:
            from memlens.experiments.distributed import run_on_ray

            run_on_ray(store, sweep.name, todo, sweep.resources, address)
        elif todo:
            _run_here(store, sweep.name, todo, usable)
    counts = store.counts(sweep.name)
    store.close()
    return counts


def _run_here(store, sweep_name: str, todo: list[tuple[int, str, dict]], usable=None) -> None:
    """The local backend: the trials one after another in this process. Before each, a trial another process
    finished meanwhile in another sweep of the store is copied instead (``usable``: as for
    :meth:`~memlens.experiments.store.Store.reuse_finished`)."""
    from memlens.experiments import run
    from memlens.experiments.store import stored

    with progress.bar(f"sweep {sweep_name}", len(todo), "trials") as bar:
        for trial_id, label, cfg_json in todo:
            bar.note(label)
            copied = store.reuse_finished(sweep_name, usable=usable, only=trial_id)
            if copied:
                progress.info(f"trial {label!r} copied from sweep {next(iter(copied))!r}, which finished it meanwhile")
                bar.advance(1)
                continue
            cfg = parse_config(cfg_json)
            cfg = with_overrides(cfg, {"output.dir": str(store.trial_dir(trial_id)), "output.overwrite": True})
            store.start(trial_id)
            t0 = time.perf_counter()
            try:
                results = run(cfg)
            except (MemlensError, RuntimeError, ValueError, OSError) as err:
                detail = str(err) if isinstance(err, MemlensError) else traceback.format_exc(limit=3)
                store.fail(trial_id, f"{type(err).__name__}: {detail}", time.perf_counter() - t0)
                first = str(err).splitlines()[0] if str(err) else type(err).__name__
                progress.info(f"trial {label!r} failed: {first}")
            else:
                store.finish(trial_id, *stored(results), time.perf_counter() - t0)
            bar.advance(1)
