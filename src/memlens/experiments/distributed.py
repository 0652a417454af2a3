"""Sweeps on Ray: every trial a Ray task, placed by Ray's scheduler; the driver alone writes the results store.

``memlens sweep FILE --backend ray [--address auto|HOST:PORT]`` hands each unfinished trial to Ray as a task
that asks for the sweep's ``[resources]`` (``cpus``, ``gpus``, ``memory_gb``). A worker runs the trial into a
temporary folder of its own node and returns its records, its info and the folder's files; the driver (the
one process that writes SQLite) stores them and publishes the files into ``DIR/trials/<id>`` as a local run
would. So no folder need be shared between nodes; only the score cache is worth sharing (``MEMLENS_CACHE`` on
a shared path, forwarded to the workers with every other ``MEMLENS_*`` variable of the driver).

Crash safety is the local backend's: a trial's rows are written in one transaction when it finishes; a killed
driver leaves its trials ``running`` and the next ``memlens sweep`` resets them to ``pending`` and resumes; a
worker that dies mid-trial (killed, out of memory, node lost) is retried by Ray up to :data:`MAX_RETRIES`
times, and since the driver stores a trial once, from the one attempt that returned, no row is duplicated.
A trial that raises (bad config, data error) is not retried: it is stored as failed with its error.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memlens import progress
from memlens.errors import MemlensError

MAX_RETRIES = 2  # re-runs of a trial whose worker died (Ray's system-failure retries; exceptions are not retried)
INSTALL = "pip install 'memlens[ray]'"


@dataclass(frozen=True)
class Resources:
    """What one trial asks Ray for. ``gpus`` defaults to 1 when the base config puts the model on CUDA."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory_gb: float | None = None  # None: no memory request (Ray then places by CPUs and GPUs only)

    def options(self) -> dict[str, Any]:
        """The keyword arguments of ``ray.remote(...).options``."""
        out: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus}
        if self.memory_gb:
            out["memory"] = int(self.memory_gb * 2**30)
        return out

    def describe(self) -> str:
        mem = f", {self.memory_gb:g} GB" if self.memory_gb else ""
        return f"{self.cpus:g} CPU, {self.gpus:g} GPU{mem}"


def resources(spec: dict | None, device: str, source: str = "sweep") -> Resources:
    """The sweep file's ``[resources]`` table checked (unknown keys, negative or non-numeric values refused)."""
    spec = dict(spec or {})
    unknown = set(spec) - {"cpus", "gpus", "memory_gb"}
    if unknown:
        raise MemlensError(f"{source}: unknown [resources] key(s) {sorted(unknown)} (expected cpus, gpus, memory_gb)")
    for key, value in spec.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise MemlensError(f"{source}: [resources] {key} must be a non-negative number (got {value!r})")
    gpus = float(spec.get("gpus", 1.0 if device.startswith("cuda") else 0.0))
    cpus = float(spec.get("cpus", 1.0))
    if cpus == 0 and gpus == 0:
        raise MemlensError(f"{source}: [resources] asks for no CPU and no GPU; a trial needs one of them")
    return Resources(cpus, gpus, float(spec["memory_gb"]) if spec.get("memory_gb") else None)


def require_ray():
    try:
        import ray
    except ImportError:
        raise MemlensError(f"--backend ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


def connect(address: str | None):
    """``ray.init`` on ``address`` (None: a new local Ray instance on this machine's cores; ``auto``: the
    cluster this machine belongs to), with the driver's ``MEMLENS_*`` variables forwarded to every worker."""
    ray = require_ray()
    env = {k: v for k, v in os.environ.items() if k.startswith("MEMLENS_")}
    try:
        ray.init(
            address=address,
            runtime_env={"env_vars": env} if env else None,
            include_dashboard=False,
            log_to_driver=False,  # workers' progress bars stay in Ray's logs
            configure_logging=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = address or "a local instance"
        raise MemlensError(f"cannot start or reach the Ray cluster at {where}: {str(err).splitlines()[0]}") from None
    return ray


def run_trial(config: dict, output_dir: str) -> dict[str, Any]:
    """Worker side: run one trial (a config as JSON) into a temporary folder; return what the driver stores —
    ``records``, ``info``, ``seconds`` — and ``files``, the output folder's files as {relative path: bytes},
    its ``config.toml`` naming ``output_dir`` (the trial's folder beside the driver's store) as a local run's does."""
    from memlens.config import parse_config, with_overrides
    from memlens.experiments import run
    from memlens.experiments.store import stored

    folder = Path(tempfile.mkdtemp(prefix="memlens-trial-"))
    try:
        cfg = with_overrides(parse_config(config), {"output.dir": str(folder / "out"), "output.overwrite": True})
        t0 = time.perf_counter()
        with progress.quiet():
            results = run(cfg)
        seconds = time.perf_counter() - t0
        out = folder / "out"
        files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
        files["config.toml"] = with_overrides(cfg, {"output.dir": output_dir}).to_toml().encode()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    records, info = stored(results)
    return {"records": records, "info": info, "seconds": seconds, "files": files}


def publish_files(target: Path, files: dict[str, bytes]) -> None:
    """Write a trial's returned files into ``target`` the way a local run publishes its folder (staged, then
    moved into place in one rename)."""
    from memlens.experiments.outputs import Output

    out = Output.open(target, overwrite=True)
    try:
        for rel, data in files.items():
            path = out.staging / rel
            if ".." in Path(rel).parts or Path(rel).is_absolute():
                raise MemlensError(f"a worker returned a file outside its trial folder: {rel!r}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    except BaseException:
        out.discard()
        raise
    out.publish()


def failure(err: BaseException) -> tuple[str, str]:
    """(stored error, one-line message) for a trial that raised in its worker or whose worker died too often."""
    cause = getattr(err, "cause", None)  # RayTaskError wraps the trial's own exception
    if isinstance(cause, BaseException):
        err = cause
    text = str(err).strip() or type(err).__name__
    return f"{type(err).__name__}: {text}", text.splitlines()[0]


def run_on_ray(store, sweep_name: str, todo: list[tuple[int, str, dict]], need: Resources, address: str | None):
    """Submit every trial of ``todo`` to Ray and store each as it finishes (the caller holds the store's lock)."""
    ray = connect(address)
    try:
        task = ray.remote(max_retries=MAX_RETRIES)(run_trial).options(**need.options())
        pending: dict[Any, tuple[int, str, float]] = {}  # task -> (trial id, label, when submitted)
        for trial_id, label, config in todo:
            store.start(trial_id)
            ref = task.remote(config, str(store.trial_dir(trial_id)))
            pending[ref] = (trial_id, label, time.perf_counter())
        with progress.bar(f"sweep {sweep_name} on Ray", len(todo), "trials") as bar:
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                trial_id, label, submitted = pending.pop(ref)
                try:
                    out = ray.get(ref)
                except Exception as err:  # the trial raised, or its worker died MAX_RETRIES + 1 times
                    error, line = failure(err)
                    store.fail(trial_id, error, time.perf_counter() - submitted)  # queueing included
                    progress.info(f"trial {label!r} failed: {line}")
                else:
                    publish_files(store.trial_dir(trial_id), out["files"])
                    store.finish(trial_id, out["records"], out["info"], out["seconds"])
                bar.note(label)
                bar.advance(1)
    finally:
        ray.shutdown()


def placement(need: Resources, address: str | None, n_trials: int) -> str:
    """The dry run's placement plan: what each trial asks for and, with ``address``, how many fit at once."""
    line = f"placement: each of {n_trials} trials asks Ray for {need.describe()}"
    if address is None:
        return line + " (give --address to see how many run at once on that cluster)"
    ray = connect(address)
    try:
        have = ray.cluster_resources()
    finally:
        ray.shutdown()
    fits = [have.get("CPU", 0) / need.cpus if need.cpus else float("inf")]
    if need.gpus:
        fits.append(have.get("GPU", 0) / need.gpus)
    if need.memory_gb:
        fits.append(have.get("memory", 0) / (need.memory_gb * 2**30))
    at_once = int(min(fits))
    total = f"{have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs, {have.get('memory', 0) / 2**30:.0f} GB"
    if at_once < 1:
        return f"{line}; the cluster at {address} ({total}) cannot place one: no trial would start"
    return f"{line}; the cluster at {address} ({total}) runs {min(at_once, n_trials)} at once"
