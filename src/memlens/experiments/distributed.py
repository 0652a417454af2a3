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
An attempt on the node where an earlier one died goes on from that one's last finished epoch (the state is
kept in a working folder of the node, :func:`run_trial`); on another node it starts again.
A trial that raises (bad config, data error) is not retried: it is stored as failed with its error.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from memlens import progress
from memlens.errors import MemlensError

MAX_RETRIES = 2  # re-runs of a trial whose worker died (Ray's system-failure retries; exceptions are not retried)
INSTALL = "pip install 'memlens[ray]'"


@dataclass(frozen=True)
class Resources:
    """What one trial asks Ray for. ``gpus = None``: decided per trial (:meth:`for_trial`)."""

    cpus: float = 1.0
    gpus: float | None = None
    memory_gb: float | None = None  # None: no memory request (Ray then places by CPUs and GPUs only)

    def for_trial(self, model: dict, cluster_gpus: float) -> Resources:
        """The request of a trial whose config's ``[model]`` is ``model`` (as JSON) on a cluster with
        ``cluster_gpus`` GPUs: by default one GPU when the trial needs CUDA (``device = "cuda"``, a quantized
        base or a device map) or may use it (``device = "auto"`` on a cluster that has GPUs — Ray hides the
        GPUs from a task that asked for none); a request of no GPU for a trial that needs CUDA is an error."""
        needs = model.get("device") == "cuda" or bool(model.get("quantization")) or bool(model.get("device_map"))
        if self.gpus is None:
            may = model.get("device", "auto") == "auto" and cluster_gpus > 0
            return replace(self, gpus=1.0 if needs or may else 0.0)
        if needs and self.gpus == 0:
            raise MemlensError(
                "[resources] gpus = 0, but a trial needs CUDA (model.device, quantization or device_map)"
            )
        return self

    def options(self) -> dict[str, Any]:
        """The keyword arguments of ``ray.remote(...).options``."""
        out: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus or 0.0}
        if self.memory_gb:
            out["memory"] = int(self.memory_gb * 2**30)
        return out

    def describe(self) -> str:
        gpus = "GPU as the trial needs" if self.gpus is None else f"{self.gpus:g} GPU"
        mem = f", {self.memory_gb:g} GB" if self.memory_gb else ""
        return f"{self.cpus:g} CPU, {gpus}{mem}"

    def fits(self, node: dict) -> bool:
        """Whether one node (its resources, as ``ray.nodes()`` reports them) can hold the request."""
        memory = (self.memory_gb or 0) * 2**30
        return (
            node.get("CPU", 0) >= self.cpus
            and node.get("GPU", 0) >= (self.gpus or 0)
            and node.get("memory", 0) >= memory
        )


def resources(spec: dict | None, source: str = "sweep") -> Resources:
    """The sweep file's ``[resources]`` table checked (unknown keys, negative, infinite or non-numeric values
    refused)."""
    spec = dict(spec or {})
    unknown = set(spec) - {"cpus", "gpus", "memory_gb"}
    if unknown:
        raise MemlensError(f"{source}: unknown [resources] key(s) {sorted(unknown)} (expected cpus, gpus, memory_gb)")
    for key, value in spec.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
            raise MemlensError(f"{source}: [resources] {key} must be a non-negative number (got {value!r})")
    cpus, gpus = float(spec.get("cpus", 1.0)), spec.get("gpus")
    if cpus == 0 and not gpus:
        raise MemlensError(f"{source}: [resources] asks for no CPU and no GPU; a trial needs one of them")
    return Resources(
        cpus, None if gpus is None else float(gpus), float(spec["memory_gb"]) if spec.get("memory_gb") else None
    )


def require_ray():
    try:
        import ray
    except ImportError:
        raise MemlensError(f"--backend ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


def connect(address: str | None):
    """``ray.init`` on ``address`` (``auto``: the cluster this machine belongs to; None: Ray's own default — the
    cluster named by ``RAY_ADDRESS`` if set, else a new local instance on this machine's cores), with the
    driver's ``MEMLENS_*`` variables forwarded to every worker."""
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


WORK_DIR = "memlens-ray-"  # + the user's uid: the node's private folder (0700) of trials' working folders
OLD_TRIAL_DIR = "memlens-trial-"  # + a worker's pid + "-": where earlier memlens versions ran a trial
STALE_DAYS = 7  # a working folder untouched this long (its sweep abandoned) is removed by the next trial here


def run_trial(config: dict, output_dir: str) -> dict[str, Any]:
    """Worker side: run one trial (a config as JSON) in a working folder of this node; return what the driver
    stores — ``records``, ``info``, ``seconds`` — and ``files``, the results folder's files as {relative path:
    bytes}, its ``config.toml`` naming ``output_dir`` (the trial's folder beside the driver's store) as a local
    run's does.

    The working folder (in :func:`working_root`, named after ``output_dir`` and locked while an attempt uses it)
    keeps the state of the trial's last finished epoch, so the next attempt of the trial on this node goes on
    from it, as a local sweep's trial does, after a killed worker or driver. It is removed when the trial ends,
    finished or failed. While another attempt of the same trial still holds it, this one runs in a private
    folder of its own, from the start. Working folders no attempt touched for :data:`STALE_DAYS` days are
    removed first."""
    import hashlib

    from memlens.config import parse_config, with_overrides
    from memlens.experiments import run
    from memlens.experiments.store import stored
    from memlens.files import lock

    root = working_root()
    key = hashlib.sha1(output_dir.encode()).hexdigest()[:16]
    cfg = parse_config(config)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(lock(root / f"{key}.lock", wait=False))
            folder = root / key
            folder.mkdir(mode=0o700, exist_ok=True)
            os.utime(folder)  # touched: not stale while this attempt runs
        except MemlensError:  # another attempt of this trial still runs here
            folder = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=root))
            cfg = with_overrides(cfg, {"output.resume": False})
        _remove_stale(root)
        cfg = with_overrides(cfg, {"output.dir": str(folder / "out"), "output.overwrite": True})
        try:
            t0 = time.perf_counter()
            with progress.quiet():
                results = run(cfg)
            seconds = time.perf_counter() - t0
            out = folder / "out"
            files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
            files["config.toml"] = with_overrides(cfg, {"output.dir": output_dir}).to_toml().encode()
        except Exception:  # the trial failed (a config or data error, a bug): nothing to go on from
            shutil.rmtree(folder, ignore_errors=True)
            raise
        shutil.rmtree(folder, ignore_errors=True)
    records, info = stored(results)
    return {"records": records, "info": info, "seconds": seconds, "files": files}


def working_root() -> Path:
    """This user's folder for trials' working folders on this node, ``<tmp>/memlens-ray-<uid>``, private
    (0700: they hold weights fine-tuned on the user's data); one that is not is refused."""
    import stat

    root = Path(tempfile.gettempdir()) / f"{WORK_DIR}{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        os.mkdir(root, 0o700)
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise MemlensError(f"{root} is not a private folder of this user (mode 0700): remove it, or set TMPDIR")
    return root


def _remove_stale(root: Path) -> None:
    """Remove the working folders in ``root`` that no attempt holds and none touched for :data:`STALE_DAYS`
    days, and the folders earlier memlens versions named after a worker's pid, once that worker is gone."""
    from memlens.files import lock, pid_alive

    for old in Path(tempfile.gettempdir()).glob(f"{OLD_TRIAL_DIR}*-*"):
        pid = old.name.removeprefix(OLD_TRIAL_DIR).split("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    for old in root.iterdir():
        if not old.is_dir():
            continue
        try:
            newest = max([old.stat().st_mtime, *(p.stat().st_mtime for p in old.rglob("*"))])
            if time.time() - newest <= STALE_DAYS * 86400:
                continue
            with lock(root / f"{old.name.split('-')[0]}.lock", wait=False):  # no attempt holds it
                shutil.rmtree(old, ignore_errors=True)
        except (OSError, MemlensError):  # removed meanwhile, or in use
            continue


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


def _requests(ray, todo: list[tuple[int, str, dict]], need: Resources) -> list[Resources]:
    """Each trial's request on the connected cluster; a request no node can hold is an error (Ray would
    otherwise wait for it for ever)."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    gpus = sum(n.get("GPU", 0) for n in nodes)
    asks = [need.for_trial(config.get("model", {}), gpus) for _, _, config in todo]
    for (_, label, _), ask in zip(todo, asks, strict=True):
        if not any(ask.fits(n) for n in nodes):
            raise MemlensError(f"no node of the Ray cluster can hold trial {label!r}: it asks for {ask.describe()}")
    return asks


def run_on_ray(store, sweep_name: str, todo: list[tuple[int, str, dict]], need: Resources, address: str | None):
    """Submit every trial of ``todo`` to Ray and store each as it finishes (the caller holds the store's lock).
    A trial whose worker raised, died too often or whose results cannot be written is stored as failed."""
    ray = connect(address)
    try:
        asks = _requests(ray, todo, need)
        task = ray.remote(max_retries=MAX_RETRIES)(run_trial)
        pending: dict[Any, tuple[int, str, float]] = {}  # task -> (trial id, label, when submitted)
        for (trial_id, label, config), ask in zip(todo, asks, strict=True):
            store.start(trial_id)
            ref = task.options(**ask.options()).remote(config, str(store.trial_dir(trial_id)))
            pending[ref] = (trial_id, label, time.perf_counter())
        with progress.bar(f"sweep {sweep_name} on Ray", len(todo), "trials") as bar:
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                trial_id, label, submitted = pending.pop(ref)
                try:
                    out = ray.get(ref)
                    publish_files(store.trial_dir(trial_id), out["files"])
                except Exception as err:  # raised in its worker, its worker died too often, or not writable here
                    error, line = failure(err)
                    store.fail(trial_id, error, time.perf_counter() - submitted)  # queueing included
                    progress.info(f"trial {label!r} failed: {line}")
                else:
                    store.finish(trial_id, out["records"], out["info"], out["seconds"])
                bar.note(label)
                bar.advance(1)
    finally:
        ray.shutdown()


def placement(need: Resources, address: str | None, configs: list[dict]) -> str:
    """The dry run's placement plan: what each trial asks for and, with ``address``, how many fit at once."""
    line = f"placement: each of {len(configs)} trials asks Ray for {need.describe()}"
    if address is None:
        return line + " (give --address to see how many run at once on that cluster)"
    ray = connect(address)
    try:
        asks = _requests(ray, [(0, "", c) for c in configs], need)
        have = ray.cluster_resources()
    finally:
        ray.shutdown()
    ask = max(asks, key=lambda a: (a.gpus or 0, a.cpus))  # the largest request bounds how many run at once
    fits = [have.get("CPU", 0) / ask.cpus if ask.cpus else float("inf")]
    if ask.gpus:
        fits.append(have.get("GPU", 0) / ask.gpus)
    if ask.memory_gb:
        fits.append(have.get("memory", 0) / (ask.memory_gb * 2**30))
    total = f"{have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs, {have.get('memory', 0) / 2**30:.0f} GB"
    return (
        f"placement: each of {len(configs)} trials asks Ray for {ask.describe()}; the cluster at {address} "
        f"({total}) runs {min(int(min(fits)), len(configs))} at once"
    )
