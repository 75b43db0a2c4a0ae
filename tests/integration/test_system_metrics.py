"""System metrics sampled by the daemon (sampler.py, system_metrics.py), end to end: a real daemon
process, real worker processes on ipc (the kernel names their pids), a real MLflow SQLite store
read back with MlflowClient.get_metric_history under MLflow's own names and ``system/process/``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import mean

import pytest
from mlflow import MlflowClient

from tests.support.daemon import Daemon, running_daemon
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

CPU = "system/process/cpu_percentage"
HOST = (
    "system/cpu_utilization_percentage",
    "system/system_memory_usage_megabytes",
    "system/system_memory_usage_percentage",
    "system/disk_usage_percentage",
)

# A worker: start a run with system_metrics, print its id, then spin / sleep / fork a spinning
# child until a line on stdin (at most 60 s), end the run and exit.
WORKER = """
import os, sys, time, threading
import tracker_client
mode = sys.argv[1]
t = tracker_client.connect(sys.argv[2], offline=False)
run = t.start_run("sysmetrics", run_name=mode, system_metrics=True)
print(run.run_id, flush=True)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
def spin():
    end = time.monotonic() + 60
    while not stop.is_set() and time.monotonic() < end:
        for _ in range(100_000):
            pass
if mode == "spin":
    spin()
elif mode == "fork":
    child = os.fork()
    if child == 0:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            pass
        os._exit(0)
    stop.wait(60)
    os.kill(child, 9)
    os.waitpid(child, 0)
else:
    stop.wait(60)
run.end("FINISHED")
t.close()
"""


@contextmanager
def worker(d: Daemon, mode: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, mode, d.address],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        run_id = proc.stdout.readline().strip()
        assert run_id, f"worker {mode} started no run"
        yield run_id, proc
    finally:
        if proc.poll() is None:
            assert proc.stdin is not None
            proc.stdin.write("stop\n")
            proc.stdin.flush()
            proc.wait(30)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def history(client: MlflowClient, run_id: str, key: str) -> list[float]:
    points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
    return [m.value for m in points]


@pytest.mark.timeout(180)
def test_busy_and_idle_runs_get_their_own_cpu_and_a_fork_is_attributed(tmp_path: Path) -> None:
    with running_daemon(tmp_path, "--system-metrics-interval-s", "0.5") as d:
        client = MlflowClient(tracking_uri=d.backend_uri)
        with worker(d, "spin") as (busy, _), worker(d, "sleep") as (idle, _):

            def enough() -> bool:
                return min(len(history(client, r, CPU)) for r in (busy, idle)) >= 8

            wait_for(enough, 90, "8 CPU samples of both runs", interval=0.5)
        busy_cpu = history(client, busy, CPU)
        idle_cpu = history(client, idle, CPU)
        # the mean of the samples after the first (the worker's start-up is in the first)
        assert mean(busy_cpu[1:]) > 80, busy_cpu
        assert mean(idle_cpu[1:]) < 10, idle_cpu
        for run_id in (busy, idle):
            for key in HOST:  # MLflow's names: the UI's system-metrics tab shows them
                assert history(client, run_id, key), f"{key} missing for {run_id}"
            tags = client.get_run(run_id).data.tags
            assert tags["tracker.system_metrics"].startswith("per-process: pids ["), tags
            assert history(client, run_id, "system/process/rss_megabytes")[0] > 5

        with worker(d, "fork") as (forked, _):

            def with_child() -> bool:
                counts = history(client, forked, "system/process/count")
                return len(counts) >= 6 and counts[-1] >= 2

            wait_for(with_child, 60, "samples of the forking worker and its child", interval=0.5)
        counts = history(client, forked, "system/process/count")
        cpu = history(client, forked, CPU)
        assert max(counts) == 2, counts  # the worker and its child
        assert mean(cpu[2:]) > 50, cpu  # the child spins, the parent sleeps

        # ended runs are no longer sampled
        wait_for(lambda: d.status()["system_metrics"]["runs"] == 0, 10, "no run sampled")
        status = d.status()["system_metrics"]
        assert status["samples"] > 0
        assert status["cpu_s"] > 0
    log = d.log()
    assert "event=system_metrics_attribution" in log and "Traceback" not in log


# MLflow code through tracker://: MLflow's own switch hands the run to the daemon's sampler
MLFLOW_WORKER = """
import sys, time
import mlflow
mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_system_metrics_sampling_interval(0.5)
mlflow.set_system_metrics_samples_before_logging(1)
with mlflow.start_run(log_system_metrics=True) as run:
    print(run.info.run_id, flush=True)
    sys.stdin.readline()
"""


@pytest.mark.compat  # MLflow's monitor thread is found by name at runtime: every MLflow
@pytest.mark.timeout(120)
def test_mlflow_log_system_metrics_through_tracker_uri_is_sampled_by_the_daemon(
    tmp_path: Path,
) -> None:
    with running_daemon(tmp_path, "--system-metrics-interval-s", "0.5") as d:
        client = MlflowClient(tracking_uri=d.backend_uri)
        uri = "tracker://" + d.address[len("ipc://") :]
        proc = subprocess.Popen(
            [sys.executable, "-c", MLFLOW_WORKER, uri],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            run_id = proc.stdout.readline().strip()
            assert run_id

            def sampled() -> bool:
                return len(history(client, run_id, "system/process/rss_megabytes")) >= 4

            wait_for(sampled, 60, "the daemon's samples of the MLflow run", interval=0.5)
        finally:
            proc.stdin.write("\n")
            proc.stdin.close()
            proc.wait(30)
            proc.stdout.close()
        assert proc.returncode == 0
        tags = client.get_run(run_id).data.tags
        assert tags["tracker.system_metrics"].startswith("per-process"), tags
        # one writer of the host-wide figures: the daemon (the worker's monitor was stopped),
        # so their steps are the daemon's samples, each once
        steps = [
            m.step for m in client.get_metric_history(run_id, "system/cpu_utilization_percentage")
        ]
        assert steps and len(steps) == len(set(steps)), steps


def _nvml_problem() -> str:
    try:
        import pynvml  # type: ignore[import-not-found,unused-ignore]

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
    except Exception as exc:
        return f"no NVIDIA GPU reachable through NVML (nvidia-ml-py): {type(exc).__name__}: {exc}"
    return "" if count else "NVML reports no GPU"


@pytest.mark.timeout(120)
def test_gpu_figures_through_nvml(tmp_path: Path) -> None:
    problem = _nvml_problem()
    if problem:
        pytest.skip(problem)
    with running_daemon(tmp_path, "--system-metrics-interval-s", "0.5") as d:
        client = MlflowClient(tracking_uri=d.backend_uri)
        with worker(d, "sleep") as (run_id, _):
            key = "system/gpu_0_utilization_percentage"
            wait_for(lambda: len(history(client, run_id, key)) >= 2, 60, "GPU samples", 0.5)
            assert history(client, run_id, "system/gpu_0_memory_usage_megabytes")
        assert d.status()["system_metrics"]["gpu"] == "nvml"
