"""System metrics as figures (pure: readings and time come in as arguments, records go out).

Once per ``system_metrics_interval_s`` the sampling loop (system_metrics.py) reads the host and,
for each open run that asked for it (``start_run.system_metrics``), the processes of the run's
clients and their descendants; this module turns two successive readings into MLflow records:

* host-wide figures under the names MLflow's own system metrics use (``system/...``, so the MLflow
  UI's system-metrics tab shows them), for every sampled run;
* the run's own processes under ``system/process/...``: CPU (% of one core and % of the machine),
  RSS, read/write bytes per second, threads, process count; with NVML, GPU memory of those
  processes and the utilisation of the GPUs they use.

Attribution is exact or absent: a run whose clients the kernel named (ipc: SO_PEERCRED pid) gets
its processes' figures; one whose clients it did not (tcp, CURVE: the hello's pid is a claim) gets
the host-wide figures only, and a client on another host nothing from this host. Why is said once,
in the run's tag ``tracker.system_metrics`` (:func:`attribution_tag`). A rate (CPU, I/O) needs two
readings of the same process (pid and start time): the first sample of a run gives none; a process
that exited between two samples takes its last interval's CPU with it (absent, not guessed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tracker_client import protocol as p

__all__ = [
    "HOST_METRICS",
    "PROCESS_PREFIX",
    "TAG",
    "GpuReading",
    "HostReading",
    "ProcReading",
    "RunTarget",
    "Sampler",
    "attribution_tag",
    "host_figures",
    "process_figures",
]

TAG = "tracker.system_metrics"  # how the run's figures are attributed (set once per run)
PROCESS_PREFIX = "system/process/"
MB = 1_000_000  # MLflow reports megabytes of 10^6 bytes

# MLflow's names (mlflow/system_metrics/metrics/*.py, with the monitor's "system/" prefix)
HOST_METRICS = (
    "system/cpu_utilization_percentage",
    "system/system_memory_usage_megabytes",
    "system/system_memory_usage_percentage",
    "system/disk_usage_percentage",
    "system/disk_usage_megabytes",
    "system/disk_available_megabytes",
    "system/network_receive_megabytes",
    "system/network_transmit_megabytes",
)


@dataclass(frozen=True, slots=True)
class ProcReading:
    """One process at one instant. ``read_bytes``/``write_bytes`` are None when the kernel does
    not let the daemon read them (``/proc/PID/io`` of another user)."""

    pid: int
    create_time: float  # with pid: the same process in two readings
    cpu_s: float  # user + system seconds since it started
    rss_bytes: int
    threads: int
    read_bytes: int | None = None
    write_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One GPU (NVML): its utilisation and, per pid, the memory that process holds on it."""

    index: int
    utilization_pct: float
    memory_used_bytes: int
    memory_total_bytes: int
    process_memory: Mapping[int, int] = field(default_factory=dict)  # pid -> bytes


@dataclass(frozen=True, slots=True)
class HostReading:
    cpu_busy_s: float  # all cpus: non-idle seconds since boot
    cpu_total_s: float  # all cpus: seconds since boot
    cpus: int
    memory_used_bytes: int
    memory_total_bytes: int
    disk_used_bytes: int
    disk_free_bytes: int
    disk_total_bytes: int
    net_recv_bytes: int
    net_sent_bytes: int
    gpus: tuple[GpuReading, ...] = ()


@dataclass(frozen=True, slots=True)
class RunTarget:
    """What the daemon knows of one sampled run now: the kernel-proven pids of its clients
    (empty: not attributable) and, when not attributable, why."""

    run_id: str
    pids: frozenset[int]
    reason: str = ""  # why it has no per-process figures ("" when pids is not empty)
    local: bool = True  # False: its clients run on another host (no figures from this host)


def host_figures(
    prev: HostReading | None, cur: HostReading, net_base: HostReading
) -> dict[str, float]:
    """MLflow's host-wide system metrics. CPU needs a previous reading; network is counted from
    ``net_base`` (the first reading), as MLflow's monitor counts from its start."""
    out: dict[str, float] = {}
    if prev is not None and cur.cpu_total_s > prev.cpu_total_s:
        busy = (cur.cpu_busy_s - prev.cpu_busy_s) / (cur.cpu_total_s - prev.cpu_total_s)
        out["system/cpu_utilization_percentage"] = round(100 * min(max(busy, 0.0), 1.0), 2)
    out["system/system_memory_usage_megabytes"] = round(cur.memory_used_bytes / MB, 2)
    if cur.memory_total_bytes:
        out["system/system_memory_usage_percentage"] = round(
            100 * cur.memory_used_bytes / cur.memory_total_bytes, 2
        )
    if cur.disk_total_bytes:
        out["system/disk_usage_percentage"] = round(
            100 * cur.disk_used_bytes / cur.disk_total_bytes, 2
        )
    out["system/disk_usage_megabytes"] = round(cur.disk_used_bytes / MB, 2)
    out["system/disk_available_megabytes"] = round(cur.disk_free_bytes / MB, 2)
    out["system/network_receive_megabytes"] = round(
        max(0, cur.net_recv_bytes - net_base.net_recv_bytes) / MB, 4
    )
    out["system/network_transmit_megabytes"] = round(
        max(0, cur.net_sent_bytes - net_base.net_sent_bytes) / MB, 4
    )
    for gpu in cur.gpus:
        name = f"system/gpu_{gpu.index}"
        out[f"{name}_utilization_percentage"] = gpu.utilization_pct
        out[f"{name}_memory_usage_megabytes"] = round(gpu.memory_used_bytes / MB, 2)
        if gpu.memory_total_bytes:
            out[f"{name}_memory_usage_percentage"] = round(
                100 * gpu.memory_used_bytes / gpu.memory_total_bytes, 2
            )
    return out


def process_figures(
    prev: Mapping[int, ProcReading] | None,
    cur: Mapping[int, ProcReading],
    elapsed_s: float,
    cpus: int,
    gpus: Iterable[GpuReading] = (),
) -> dict[str, float]:
    """The figures of one run's processes (``cur``: pid -> reading, the clients and their
    descendants) against the previous reading ``prev`` of the same run, ``elapsed_s`` apart.
    Rates cover only the processes present in both readings (same pid and start time)."""
    out: dict[str, float] = {
        f"{PROCESS_PREFIX}rss_megabytes": round(sum(r.rss_bytes for r in cur.values()) / MB, 2),
        f"{PROCESS_PREFIX}threads": float(sum(r.threads for r in cur.values())),
        f"{PROCESS_PREFIX}count": float(len(cur)),
    }
    if prev is not None and elapsed_s > 0:
        same = [
            (prev[pid], r)
            for pid, r in cur.items()
            if pid in prev and prev[pid].create_time == r.create_time
        ]
        cpu_s = sum(max(0.0, r.cpu_s - old.cpu_s) for old, r in same)
        core_pct = 100 * cpu_s / elapsed_s
        out[f"{PROCESS_PREFIX}cpu_percentage"] = round(core_pct, 2)
        out[f"{PROCESS_PREFIX}cpu_machine_percentage"] = round(core_pct / max(1, cpus), 2)
        for what in ("read", "write"):
            pairs = [
                (getattr(old, f"{what}_bytes"), getattr(r, f"{what}_bytes")) for old, r in same
            ]
            known = [(a, b) for a, b in pairs if a is not None and b is not None]
            if known and len(known) == len(pairs):  # exact or absent: every process readable
                moved = sum(max(0, b - a) for a, b in known)
                out[f"{PROCESS_PREFIX}{what}_bytes_per_second"] = round(moved / elapsed_s, 1)
    used = [g for g in gpus if any(pid in cur for pid in g.process_memory)]
    if used:
        held = sum(b for g in used for pid, b in g.process_memory.items() if pid in cur)
        out[f"{PROCESS_PREFIX}gpu_memory_megabytes"] = round(held / MB, 2)
        util = sum(g.utilization_pct for g in used) / len(used)
        out[f"{PROCESS_PREFIX}gpu_utilization_percentage"] = round(util, 2)
    return out


def attribution_tag(target: RunTarget, hostname: str) -> str:
    """The value of the run's ``tracker.system_metrics`` tag."""
    if not target.local:
        return (
            f"none: its client runs on another host; the daemon on {hostname} samples only "
            "its own host"
        )
    if target.pids:
        return f"per-process: pids {sorted(target.pids)} and their descendants, on {hostname}"
    return f"host-wide only ({hostname}): {target.reason}"


@dataclass(slots=True)
class _RunState:
    step: int = 0
    procs: dict[int, ProcReading] | None = None
    at: float = 0.0
    tag: str = ""


class Sampler:
    """The per-run state between samples. :meth:`records` is called once per tick with the
    host reading, each run's processes and the monotonic time; runs no longer listed are
    forgotten (bounded by the open runs)."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self._runs: dict[str, _RunState] = {}
        self._host: HostReading | None = None
        self._net_base: HostReading | None = None

    @property
    def runs(self) -> int:
        return len(self._runs)

    def records(
        self,
        host: HostReading,
        targets: Iterable[RunTarget],
        procs: Mapping[str, Mapping[int, ProcReading]],
        now: float,
        wall_ms: int,
    ) -> tuple[list[p.Metric | p.Tag], list[RunTarget]]:
        """Records for this tick, and the runs whose attribution changed (to log once)."""
        if self._net_base is None:
            self._net_base = host
        common = host_figures(self._host, host, self._net_base)
        self._host = host
        out: list[p.Metric | p.Tag] = []
        changed: list[RunTarget] = []
        seen: set[str] = set()
        for target in targets:
            seen.add(target.run_id)
            state = self._runs.setdefault(target.run_id, _RunState())
            tag = attribution_tag(target, self.hostname)
            if tag != state.tag:
                state.tag = tag
                out.append(p.Tag(target.run_id, TAG, tag))
                changed.append(target)
            if not target.local:
                continue
            figures = dict(common)
            if target.pids:
                cur = dict(procs.get(target.run_id, {}))
                elapsed = now - state.at
                figures.update(process_figures(state.procs, cur, elapsed, host.cpus, host.gpus))
                state.procs, state.at = cur, now
            run_id, step = target.run_id, state.step
            out.extend(p.Metric(run_id, k, float(v), wall_ms, step) for k, v in figures.items())
            state.step += 1
        for gone in set(self._runs) - seen:
            del self._runs[gone]
        return out, changed
