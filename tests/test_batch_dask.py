"""``deconflow batch`` on a Dask LocalCluster and on a scheduler + worker started here."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from deconflow.batch.task import _worker_gpu
from deconflow.config import DeconvolutionSettings
from deconflow.io import read_tiff

from .test_batch import files_in, gaussian_psf, run_cli, sha256, stack, write_imagej, write_ome


@pytest.fixture(scope="module")
def batch_inputs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Three small stacks, a PSF, and their serial outputs (the reference)."""
    root = tmp_path_factory.mktemp("dask")
    data = root / "data"
    data.mkdir()
    write_imagej(data / "a.tif", stack((8, 32, 32), 0), "ZYX")
    write_imagej(data / "b.tif", stack((8, 2, 24, 24), 1), "ZCYX")
    write_ome(data / "c.ome.tif", stack((2, 6, 24, 24), 2), "TZYX")
    psf = write_imagej(root / "bead.tif", gaussian_psf(1.2), "ZYX")
    serial = root / "serial"
    done = run_cli(data, "--psf", psf, "-o", serial, "--iterations", "2", "-q")
    assert done.returncode == 0, done.stderr
    return data, psf, serial


def assert_same_outputs(reference: Path, other: Path) -> None:
    names = {n for n in files_in(reference) if n.endswith(".ome.tif")}
    assert names == {n for n in files_in(other) if n.endswith(".ome.tif")} and len(names) == 3
    for name in names:
        a, b = read_tiff(reference / name), read_tiff(other / name)
        assert a.axes == b.axes and a.voxel_size_um == b.voxel_size_um
        # worker processes run torch on one thread: sums may differ in the last bits
        np.testing.assert_allclose(b.data, a.data, rtol=1e-5, atol=1e-5)
        record_a = json.loads((reference / name.replace(".ome.tif", ".json")).read_text())
        record_b = json.loads((other / name.replace(".ome.tif", ".json")).read_text())
        assert record_a["settings"] == record_b["settings"]
        assert record_a["resume_key"] == record_b["resume_key"]


def test_workers_on_a_local_cluster_match_serial(batch_inputs, tmp_path):
    data, psf, serial = batch_inputs
    before = {p.name: sha256(p) for p in data.iterdir()}
    out = tmp_path / "parallel"
    done = run_cli(data, "--psf", psf, "-o", out, "--iterations", "2", "--workers", "2")
    assert done.returncode == 0, done.stderr
    assert "3 files: 3 done" in done.stdout
    assert "LocalCluster with 2 workers" in (out / "deconflow-batch.log").read_text()
    assert_same_outputs(serial, out)
    assert {p.name: sha256(p) for p in data.iterdir()} == before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the Dask scheduler exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"the Dask scheduler did not listen on {port} within {timeout} s")


def test_scheduler_address_runs_on_an_existing_cluster(batch_inputs, tmp_path):
    from distributed import Client

    data, psf, serial = batch_inputs
    dask = shutil.which("dask")
    assert dask is not None, "the dask command (distributed) is not installed"
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(
            subprocess.Popen(
                [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        _wait_for_port(port, processes[0], timeout=60)
        worker_command = [dask, "worker", address, "--host", "127.0.0.1", "--nthreads", "1"]
        worker_command += ["--nworkers", "1", "--no-dashboard", "--name", "lab-node-0"]
        processes.append(
            subprocess.Popen(
                worker_command,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(1, timeout=60)
        out = tmp_path / "cluster"
        done = run_cli(data, "--psf", psf, "-o", out, "--iterations", "2", "--scheduler", address)
        assert done.returncode == 0, done.stderr
        assert "3 files: 3 done" in done.stdout
        assert_same_outputs(serial, out)
        with Client(address, timeout="30s") as client:
            prefixes = client.run_on_scheduler(
                lambda dask_scheduler: sorted(dask_scheduler.task_prefixes)
            )
        assert "process_file_on_worker" in prefixes  # the files ran on the cluster's worker
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in reversed(processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_workers_spread_over_gpus(monkeypatch):
    import torch

    auto = DeconvolutionSettings()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert _worker_gpu(auto, 1).device == "auto"  # one GPU: nothing to spread
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [_worker_gpu(auto, name).device for name in (0, 1, 2, "lab-node-3")] == [
        "cuda:0",
        "cuda:1",
        "cuda:0",
        "cuda:1",
    ]
    pinned = DeconvolutionSettings(device="cpu")
    assert _worker_gpu(pinned, 1).device == "cpu"  # an explicit device is respected


def _one_job(batch_inputs, out: Path):
    from deconflow.batch.task import FileJob

    data, psf, _ = batch_inputs
    settings = DeconvolutionSettings.from_options("rl", device="cpu", iterations=3)
    return FileJob(str(data / "a.tif"), str(out / "a.ome.tif"), (str(psf),), settings)


@pytest.fixture
def in_process_client():
    """A Dask client of a one-worker cluster in this process (quick to start)."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def test_a_file_on_a_worker_stops_once_its_batch_sets_the_stop_event(
    batch_inputs, tmp_path, in_process_client
):
    # a worker cannot drop a running task: the task itself must look at the event
    from distributed import Event

    from deconflow.batch.task import process_file_on_worker

    client = in_process_client
    job = _one_job(batch_inputs, tmp_path)
    stop = Event("deconflow-stop-test", client=client)
    stop.set()
    stopped = client.submit(process_file_on_worker, job, stop.name, pure=False).result()
    assert stopped.status == "failed" and "interrupted" in stopped.message
    assert not Path(job.output).exists()  # nothing written for a batch that has gone
    stop.clear()
    done = client.submit(process_file_on_worker, job, stop.name, pure=False).result()
    assert done.status == "done" and Path(job.output).is_file()


def test_an_interrupted_dask_batch_sets_its_stop_event(
    batch_inputs, tmp_path, monkeypatch, in_process_client
):
    import io
    import logging
    from types import SimpleNamespace

    from distributed import Event

    from deconflow.batch import runner

    monkeypatch.setattr(runner, "_stop_event_name", lambda: "deconflow-stop-ctrl-c")

    def ctrl_c(seconds: float) -> None:
        raise KeyboardInterrupt

    client = in_process_client
    job = _one_job(batch_inputs, tmp_path)
    bars = runner._Bars(1, True, io.StringIO())
    done: list = []
    # a batch that ends normally leaves its event alone
    runner._run_dask([job], client, bars, done, logging.getLogger("test").info)
    assert len(done) == 1 and not Event("deconflow-stop-ctrl-c", client=client).is_set()
    # only the runner's poll is interrupted, not the cluster's own sleeps
    monkeypatch.setattr(runner, "time", SimpleNamespace(sleep=ctrl_c))
    with pytest.raises(KeyboardInterrupt):
        runner._run_dask([job], client, bars, [], logging.getLogger("test").info)
    assert Event("deconflow-stop-ctrl-c", client=client).is_set()


def test_a_z_step_alone_is_completed_per_file_on_the_workers(tmp_path, in_process_client):
    # the jobs carry the z step alone to the workers; each completes it with its own file's
    # pixel size, so one batch can mix pixel sizes
    import io
    import logging
    import pickle

    from deconflow.batch import runner
    from deconflow.batch.task import FileJob

    from .test_batch import write_ome_in_plane

    psf = write_imagej(tmp_path / "bead.tif", gaussian_psf(1.2), "ZYX")
    settings = DeconvolutionSettings.from_options("rl", device="cpu", iterations=1)
    pixels = {"fine": (0.1, 0.1), "coarse": (0.2, 0.25)}
    jobs = []
    for seed, (name, pixel) in enumerate(pixels.items()):
        source = write_ome_in_plane(tmp_path / f"{name}.ome.tif", stack((8, 24, 24), seed), pixel)
        output = tmp_path / "out" / f"{name}.ome.tif"
        jobs.append(FileJob(str(source), str(output), (str(psf),), settings, voxel_size_um=(0.4,)))
    assert pickle.loads(pickle.dumps(jobs[0])) == jobs[0]  # as sent to a worker process
    done: list = []
    bars = runner._Bars(len(jobs), True, io.StringIO())
    runner._run_dask(jobs, in_process_client, bars, done, logging.getLogger("test").info)
    assert sorted(o.status for o in done) == ["done", "done"], [o.message for o in done]
    for name, pixel in pixels.items():
        result = read_tiff(tmp_path / "out" / f"{name}.ome.tif")
        np.testing.assert_allclose(result.voxel_size_um, (0.4, *pixel), rtol=1e-6)
