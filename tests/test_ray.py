"""Sweeps on a real local Ray cluster (started here with `ray start --head` on 127.0.0.1, 2 CPUs): end to end
from the CLI, a worker killed mid-trial, the driver killed mid-sweep, and the errors."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import tomli_w
from helpers import assert_one_line_error, invoke, tiny_config

RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node with 2 CPUs and token authentication (Ray's default for local clusters) in a temporary folder
    of its own; yields the address and the environment a driver needs to join it. Stopped by killing its own
    processes: `ray stop` would stop every Ray cluster on the machine, a user's long sweep included."""
    global _OWN
    env = os.environ | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "OMP_NUM_THREADS": "1"}
    env.pop("MEMLENS_CACHE", None)  # the cluster's own processes do not know the driver's cache
    port = _free_port()
    _OWN = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths must stay under 108 bytes
    start = [str(RAY), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2"]
    subprocess.run(
        [*start, f"--temp-dir={_OWN}", "--include-dashboard=false", "--disable-usage-stats"],
        env=env,
        check=True,
        capture_output=True,
    )
    try:  # the driver's environment: its MEMLENS_CACHE must reach the workers through memlens
        yield f"127.0.0.1:{port}", env | {"MEMLENS_CACHE": str(tmp_path_factory.mktemp("ray-cache"))}
    finally:
        procs = _cluster_processes()
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        _, alive = psutil.wait_procs(procs, timeout=15)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        shutil.rmtree(_OWN, ignore_errors=True)


_OWN = Path("/nonexistent")  # the temporary folder of the cluster this module started


def _cluster_processes() -> list[psutil.Process]:
    """The processes of the cluster this module started: those named after its temporary folder (head, raylet,
    agents) and their descendants (the workers, which rename themselves ``ray::…``)."""
    own = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(_OWN) in arg for arg in proc.info["cmdline"] or []):
            own.append(proc)
            with contextlib.suppress(psutil.Error):
                own.extend(proc.children(recursive=True))
    return list({p.pid: p for p in own}.values())


def _trial_processes() -> list[int]:
    """This cluster's workers running a trial now (Ray names a busy worker's process after its task)."""
    found = []
    for proc in _cluster_processes():
        with contextlib.suppress(psutil.Error):
            if " ".join(proc.cmdline()).startswith("ray::run_trial"):
                found.append(proc.pid)
    return found


def _sweep(tiny_dir: Path, folder: Path, lrs: list[float], epochs: int = 2, failing: bool = False) -> Path:
    base = tiny_config(tiny_dir, "unused", training={"epochs": epochs})
    base.pop("output")
    base.pop("name")
    variants: list[dict] = [{"label": f"lr={lr:g}", "lr": lr} for lr in lrs]
    if failing:  # one more trial, whose data folder does not exist: it raises in its worker
        variants.append({"label": "no data", "data.dir": str(folder / "missing")})
    spec = {"name": "on-ray", "base": base, "variants": variants, "resources": {"cpus": 1, "memory_gb": 0.5}}
    path = folder / "sweep.toml"
    path.write_text(tomli_w.dumps(spec))
    return path


def _driver(sweep: Path, store: Path, address: str, env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "memlens", "sweep", str(sweep), "--dir", str(store), "--backend", "ray"]
    return subprocess.Popen([*cmd, "--address", address, "--quiet"], env=env, stderr=subprocess.PIPE, text=True)


def _rows(store: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(f"file:{store / 'results.db'}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def _rows_once_there(store: Path, sql: str) -> list[tuple]:
    """:func:`_rows`, or none while the store's file or its tables are still being created."""
    if not (store / "results.db").exists():
        return []
    try:
        return _rows(store, sql)
    except sqlite3.OperationalError as err:  # "no such table": the driver has created the file, not yet its schema
        if "no such table" in str(err):
            return []
        raise


def _wait(check, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if got := check():
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _assert_complete(store: Path, n: int) -> None:
    assert dict(_rows(store, "SELECT status, COUNT(*) FROM trials GROUP BY status"))["done"] == n
    per_trial = dict(_rows(store, "SELECT trial, COUNT(*) FROM results GROUP BY trial"))
    assert len(per_trial) == n
    for (trial,) in _rows(store, "SELECT id FROM trials WHERE status = 'done'"):
        folder = store / "trials" / f"trial-{trial:04d}"
        assert (folder / "scores.csv").is_file()
        assert per_trial[trial] == len(json.loads((folder / "results.json").read_text())["records"])  # stored once
        assert f'dir = "{folder}"' in (folder / "config.toml").read_text()  # not the worker's temporary folder


def test_a_sweep_on_ray_survives_a_worker_killed_mid_trial(cluster, tiny_dir, tmp_path):
    address, env = cluster
    sweep, store = _sweep(tiny_dir, tmp_path, [1e-3, 3e-3, 1e-2], failing=True), tmp_path / "store"
    driver = _driver(sweep, store, address, env)
    victim = _wait(_trial_processes, 120, "a trial to start on a Ray worker")[0]
    os.kill(victim, signal.SIGKILL)
    _, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, err
    _assert_complete(store, 3)  # Ray ran the killed trial again; it was stored once
    [(label, error)] = _rows(store, "SELECT label, error FROM trials WHERE status = 'failed'")
    assert label == "no data" and error.startswith("MemlensError: data directory not found")
    assert any(Path(env["MEMLENS_CACHE"]).rglob("*")), "the driver's MEMLENS_CACHE did not reach the workers"


def test_a_killed_driver_resumes_without_rerunning_finished_trials(cluster, tiny_dir, tmp_path):
    address, env = cluster
    sweep, store = _sweep(tiny_dir, tmp_path, [1e-3, 2e-3, 3e-3, 1e-2], epochs=3), tmp_path / "store"
    driver = _driver(sweep, store, address, env)
    done = "SELECT id, finished FROM trials WHERE status = 'done'"
    first = _wait(lambda: _rows_once_there(store, done), 300, "a first finished trial")
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    if len(first) == 4:
        pytest.fail("every trial finished before the driver was killed: nothing left to resume")
    again = _driver(sweep, store, address, env)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    _assert_complete(store, 4)
    finished = dict(_rows(store, "SELECT id, finished FROM trials"))
    assert all(finished[i] == t for i, t in first)  # finished before the kill: not run again


def test_ray_dry_run_shows_the_placement(cluster, tiny_dir, tmp_path):
    address, env = cluster
    sweep = _sweep(tiny_dir, tmp_path, [1e-3, 3e-3, 1e-2])
    out = subprocess.run(
        [sys.executable, "-m", "memlens", "sweep", str(sweep), "--dry-run", "--backend", "ray", "--address", address],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "each of 3 trials asks Ray for 1 CPU, 0 GPU, 0.5 GB" in out.stdout and "runs 2 at once" in out.stdout
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


def test_ray_errors_are_one_line(tiny_dir, tmp_path, monkeypatch):
    sweep = _sweep(tiny_dir, tmp_path, [1e-3])
    result = invoke("sweep", sweep, "--dir", tmp_path / "s", "--address", "auto")
    assert_one_line_error(result, "--address names a Ray cluster")
    assert_one_line_error(invoke("sweep", sweep, "--backend", "spark"), "--backend must be local or ray")
    text = sweep.read_text().replace("cpus = 1", "cpus = -1")
    (tmp_path / "bad.toml").write_text(text)
    assert_one_line_error(invoke("sweep", tmp_path / "bad.toml", "--dry-run"), r"\[resources\] cpus must be")
    (tmp_path / "bad2.toml").write_text(sweep.read_text().replace("cpus = 1", "gpu = 1"))
    assert_one_line_error(invoke("sweep", tmp_path / "bad2.toml", "--dry-run"), r"unknown \[resources\] key")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    result = invoke("sweep", sweep, "--dir", tmp_path / "s2", "--backend", "ray")
    assert_one_line_error(result, r"needs Ray, which is not installed: pip install 'memlens\[ray\]'")
    assert not (tmp_path / "s2").exists()  # refused before the store was made


def test_trial_resources_follow_the_sweep_file_and_the_device():
    from memlens.errors import MemlensError
    from memlens.experiments.distributed import Resources, resources

    assert resources(None) == Resources(1.0, None, None)
    auto = resources({})
    assert auto.for_trial({"device": "cuda"}, cluster_gpus=0).gpus == 1.0  # needs CUDA: asks for a GPU
    assert auto.for_trial({"device": "auto", "quantization": "4bit"}, cluster_gpus=0).gpus == 1.0
    assert auto.for_trial({"device": "auto"}, cluster_gpus=0).gpus == 0.0  # a CPU cluster: none
    assert auto.for_trial({"device": "auto"}, cluster_gpus=4).gpus == 1.0  # else Ray would hide the GPUs
    assert auto.for_trial({"device": "cpu"}, cluster_gpus=4).gpus == 0.0
    with pytest.raises(MemlensError, match="gpus = 0, but a trial needs CUDA"):
        resources({"gpus": 0}).for_trial({"device": "cuda"}, cluster_gpus=4)
    ask = resources({"gpus": 0.5, "cpus": 4, "memory_gb": 2}).for_trial({"device": "cuda"}, cluster_gpus=1)
    assert ask.options() == {"num_cpus": 4.0, "num_gpus": 0.5, "memory": 2 * 2**30}
    assert ask.fits({"CPU": 8, "GPU": 1, "memory": 2**34}) and not ask.fits({"CPU": 8, "GPU": 0, "memory": 2**34})
    for bad in (float("nan"), float("inf"), -1):
        with pytest.raises(MemlensError, match="must be a non-negative number"):
            resources({"memory_gb": bad})


def test_a_preset_runs_on_ray_from_reproduce(cluster, tmp_path, monkeypatch):
    address, env = cluster
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "memlens",
            "reproduce",
            "hou2025",
            "--dry-run",
            "--backend",
            "ray",
            "--address",
            address,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "9 trials" in out.stdout and "placement: each of 9 trials asks Ray for 1 CPU" in out.stdout, out.stdout
    assert "runs 2 at once" in out.stdout, out.stdout
    import memlens.experiments.sweep as sweep_module

    calls = []

    def recorded(sweep, folder, **kwargs):  # the run itself is the sweep's, tested above on a real cluster
        calls.append((sweep.name, folder, kwargs))
        raise sweep_module.MemlensError("recorded")

    monkeypatch.setattr(sweep_module, "run_sweep", recorded)
    run = invoke("reproduce", "hou2025", "--dir", tmp_path / "h", "--backend", "ray", "--address", address)
    assert_one_line_error(run, "recorded")
    assert calls == [("hou2025-tiny", tmp_path / "h", {"retry_failed": False, "backend": "ray", "address": address})]


def test_reproduce_backend_errors_are_one_line(tmp_path):
    for dry in ([], ["--dry-run"]):  # refused before a run and before a plan
        bad = invoke("reproduce", "hou2025", *dry, "--address", "auto")
        assert_one_line_error(bad, "--address names a Ray cluster")
        assert_one_line_error(
            invoke("reproduce", "hou2025", *dry, "--backend", "spark"), "--backend must be local or ray"
        )
    for option in (["--backend", "ray"], ["--address", "auto"], ["--retry-failed"]):
        only = invoke("reproduce", "hou2025", "--findings-only", "--dir", tmp_path, *option)
        assert_one_line_error(only, "--findings-only runs nothing: --retry-failed, --backend and --address")
