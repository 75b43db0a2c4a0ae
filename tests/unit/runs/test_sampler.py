"""sampler.py: figures from readings (pure, no psutil), and system_metrics.targets_of."""

from __future__ import annotations

import pytest

from tracker_client import protocol as p
from tracker_daemon.intake.clients import ClientInfo
from tracker_daemon.runs.runs import OpenRun
from tracker_daemon.runs.sampler import (
    TAG,
    GpuReading,
    HostReading,
    ProcReading,
    RunTarget,
    Sampler,
    process_figures,
)
from tracker_daemon.runs.system_metrics import targets_of
from tracker_daemon.store.sink import RunHandle


def host(busy: float, total: float, gpus: tuple[GpuReading, ...] = ()) -> HostReading:
    return HostReading(
        busy, total, 4, 2_000_000, 8_000_000, 1_000_000, 3_000_000, 4_000_000, 0, 0, gpus
    )


def proc(pid: int, cpu: float, *, start: float = 1.0, io: int | None = 0) -> ProcReading:
    return ProcReading(pid, start, cpu, 50_000_000, 3, io, io)


def test_cpu_is_the_delta_of_processes_seen_twice() -> None:
    prev = {1: proc(1, 10.0), 2: proc(2, 5.0)}
    cur = {1: proc(1, 11.8), 2: proc(2, 5.1), 3: proc(3, 99.0)}  # 3 is new: no baseline
    figs = process_figures(prev, cur, 2.0, 4)
    assert figs["system/process/cpu_percentage"] == pytest.approx(95.0)
    assert figs["system/process/cpu_machine_percentage"] == pytest.approx(23.75)
    assert figs["system/process/count"] == 3 and figs["system/process/threads"] == 9
    assert figs["system/process/rss_megabytes"] == 150.0


def test_a_reused_pid_is_not_the_same_process() -> None:
    figs = process_figures({1: proc(1, 50.0)}, {1: proc(1, 1.0, start=2.0)}, 1.0, 1)
    assert figs["system/process/cpu_percentage"] == 0.0


def test_io_is_absent_when_one_process_is_unreadable() -> None:
    prev = {1: proc(1, 0.0, io=0), 2: proc(2, 0.0, io=None)}
    cur = {1: proc(1, 0.0, io=1000), 2: proc(2, 0.0, io=None)}
    figs = process_figures(prev, cur, 1.0, 1)
    assert "system/process/read_bytes_per_second" not in figs
    figs = process_figures({1: prev[1]}, {1: cur[1]}, 2.0, 1)
    assert figs["system/process/read_bytes_per_second"] == 500.0


def test_gpu_figures_only_of_gpus_the_run_uses() -> None:
    gpus = [GpuReading(0, 80.0, 0, 1, {7: 2_000_000}), GpuReading(1, 10.0, 0, 1, {9: 1})]
    figs = process_figures(None, {7: proc(7, 0.0)}, 1.0, 1, gpus)
    assert figs["system/process/gpu_memory_megabytes"] == 2.0
    assert figs["system/process/gpu_utilization_percentage"] == 80.0
    assert "system/process/cpu_percentage" not in figs  # the first sample: no rate


def test_sampler_tags_once_host_figures_and_forgets_ended_runs() -> None:
    s = Sampler("h1")
    runs = [
        RunTarget("a", frozenset({1})),
        RunTarget("b", frozenset(), "over tcp"),
        RunTarget("c", frozenset(), "on host x", local=False),
    ]
    recs, changed = s.records(host(10, 100), runs, {"a": {1: proc(1, 1.0)}}, 0.0, 1000)
    assert [t.run_id for t in changed] == ["a", "b", "c"]
    tags = {r.run_id: r.value for r in recs if isinstance(r, p.Tag)}
    assert tags["a"].startswith("per-process") and "over tcp" in tags["b"]
    assert tags["c"].startswith("none") and all(r.key == TAG for r in recs if isinstance(r, p.Tag))
    assert not [r for r in recs if r.run_id == "c" and isinstance(r, p.Metric)]
    recs, changed = s.records(host(60, 200), runs[:2], {"a": {1: proc(1, 1.5)}}, 1.0, 2000)
    assert changed == [] and s.runs == 2
    m = {(r.run_id, r.key): r for r in recs if isinstance(r, p.Metric)}
    assert m[("a", "system/cpu_utilization_percentage")].value == 50.0
    assert (
        m[("a", "system/process/cpu_percentage")].value == 50.0
        and m[("a", "system/process/cpu_percentage")].step == 1
    )
    assert ("b", "system/cpu_utilization_percentage") in m
    assert ("b", "system/process/cpu_percentage") not in m  # host-wide only


def test_targets_only_kernel_pids_count() -> None:
    handle = RunHandle("r", "0", "", "", {})
    runs = {"r": OpenRun(handle, {"ipc", "tcp"}), "s": OpenRun(handle, {"far"})}
    clients = {
        "ipc": ClientInfo("ipc", pid=11, owner=("pid", 1000, 11)),
        "tcp": ClientInfo("tcp", pid=12, host="h1", owner=("conn", b"x")),
        "far": ClientInfo("far", pid=13, host="h2", owner=("key", "k")),
    }
    got = {t.run_id: t for t in targets_of(["r", "s", "ended"], runs, clients, "h1")}
    assert set(got) == {"r", "s"}
    assert got["r"].pids == {11} and got["r"].local  # the tcp client's claimed 12 is not used
    assert got["s"].pids == frozenset() and not got["s"].local and "h2" in got["s"].reason
