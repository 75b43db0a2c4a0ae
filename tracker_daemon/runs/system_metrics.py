"""The system-metrics sampler's shell: which runs to sample and which processes are theirs, the
psutil (and NVML) readings, and the loop that turns them into records (sampler.py) and hands them
to the data path like a client's DATA frame — journaled, acknowledged, batched and committed with
everything else, under a client id of the daemon's own (``emit``).

    every interval: targets (open runs that asked; their clients' kernel pids) ─► read (worker
    thread: one scan of the process table, each run's clients and their descendants, the host)
    ─► Sampler.records ─► emit (a DATA frame through intake)

A run is sampled from its ``start_run`` with ``system_metrics`` until it is no longer open; the
set is kept in memory only: after a daemon restart, runs that asked are no longer sampled (their
clients would have to start or resume them again). The sampler's own cost (CPU seconds of its
reads and of building the records) is in the status document under ``system_metrics``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anyio

from tracker_client import protocol as p

from ..intake.clients import ClientInfo
from .runs import OpenRun
from .sampler import GpuReading, HostReading, ProcReading, RunTarget, Sampler

__all__ = ["ProcessReader", "SystemMetrics", "targets_of"]

log = logging.getLogger("tracker_daemon")

MAX_WANTED = 100_000  # runs that asked (each also an open run: bounded by the run book)


def targets_of(
    wanted: Iterable[str],
    open_runs: Mapping[str, OpenRun],
    clients: Mapping[str, ClientInfo],
    hostname: str,
) -> list[RunTarget]:
    """The runs to sample now: each open run of ``wanted``, with the pids the kernel reported
    for its live clients (ipc: SO_PEERCRED). A client bound by a CURVE key or a tcp connection
    proves no pid (the hello's is a claim): its run gets host-wide figures only, or none when
    the hello names another host."""
    out = []
    for run_id in wanted:
        run = open_runs.get(run_id)
        if run is None:
            continue
        pids: set[int] = set()
        reasons: list[str] = []
        local = False
        for cid in sorted(run.owners):
            info = clients.get(cid)
            if info is None or info.gone:
                continue
            owner = info.owner
            pid = owner[2] if owner is not None and owner[0] == "pid" and len(owner) == 3 else None
            if isinstance(pid, int):
                pids.add(pid)
                local = True
            elif info.host and info.host != hostname:
                reasons.append(f"client {cid[:8]} is on host {info.host[:64]!r}")
            else:
                local = True
                reasons.append(
                    f"client {cid[:8]} is not on ipc (tcp/CURVE): the kernel names no pid for "
                    "it and its hello's pid is a claim"
                )
        reason = "; ".join(reasons) if not pids else ""
        if not pids and not reasons:
            reason, local = "no live client process", True
        out.append(RunTarget(run_id, frozenset(pids), reason, local))
    return out


class ProcessReader:
    """Readings through psutil (imported here: the daemon's only user of it) and, with
    ``gpu``, NVML (nvidia-ml-py, optional: absent or failing, the GPU part is off, said once)."""

    def __init__(self, *, gpu: bool, disk_path: str = "/") -> None:
        import psutil

        self.psutil = psutil
        self.disk_path = disk_path
        self.cpus = psutil.cpu_count() or 1
        self.nvml: Any = None
        self.gpu_problem = "" if gpu else "system_metrics_gpu = off"
        if gpu:
            self._open_nvml()

    def _open_nvml(self) -> None:
        try:
            import pynvml  # type: ignore[import-not-found,unused-ignore]

            pynvml.nvmlInit()
            self.nvml = pynvml
        except Exception as exc:  # not installed, no driver, no GPU: the GPU part is off
            self.gpu_problem = f"NVML unavailable: {type(exc).__name__}: {str(exc)[:200]}"

    def read(
        self, roots: Mapping[str, frozenset[int]]
    ) -> tuple[HostReading, dict[str, dict[int, ProcReading]]]:
        """The host and, per run, its root pids with their descendants (blocking)."""
        ps = self.psutil
        procs: dict[str, dict[int, ProcReading]] = {}
        if any(roots.values()):
            children: dict[int, list[int]] = {}
            for proc in ps.process_iter(["ppid"]):
                children.setdefault(proc.info["ppid"] or 0, []).append(proc.pid)
            cache: dict[int, ProcReading | None] = {}
            for run_id, pids in roots.items():
                tree: dict[int, ProcReading] = {}
                todo = sorted(pids)
                while todo:
                    pid = todo.pop()
                    if pid in tree:
                        continue
                    if pid not in cache:
                        cache[pid] = self._process(pid)
                    reading = cache[pid]
                    if reading is None:
                        continue
                    tree[pid] = reading
                    todo.extend(children.get(pid, ()))
                procs[run_id] = tree
        return self._host(), procs

    def _process(self, pid: int) -> ProcReading | None:
        ps = self.psutil
        try:
            proc = ps.Process(pid)
            with proc.oneshot():
                times = proc.cpu_times()
                reading = ProcReading(
                    pid,
                    proc.create_time(),
                    times.user + times.system,
                    proc.memory_info().rss,
                    proc.num_threads(),
                )
            try:
                io = proc.io_counters()
            except (ps.AccessDenied, AttributeError):  # another user's /proc/PID/io
                return reading
            return ProcReading(
                *(reading.pid, reading.create_time, reading.cpu_s, reading.rss_bytes),
                reading.threads,
                io.read_bytes,
                io.write_bytes,
            )
        except (ps.NoSuchProcess, ps.ZombieProcess, ps.AccessDenied):
            return None

    def _host(self) -> HostReading:
        ps = self.psutil
        cpu = ps.cpu_times()
        total = sum(cpu)
        idle = cpu.idle + getattr(cpu, "iowait", 0.0)
        mem = ps.virtual_memory()
        disk = ps.disk_usage(self.disk_path)
        net = ps.net_io_counters()
        return HostReading(
            total - idle,
            total,
            self.cpus,
            mem.total - mem.available,
            mem.total,
            disk.used,
            disk.free,
            disk.total,
            net.bytes_recv if net else 0,
            net.bytes_sent if net else 0,
            self._gpus(),
        )

    def _gpus(self) -> tuple[GpuReading, ...]:
        nv = self.nvml
        if nv is None:
            return ()
        out = []
        try:
            for i in range(nv.nvmlDeviceGetCount()):
                handle = nv.nvmlDeviceGetHandleByIndex(i)
                util = nv.nvmlDeviceGetUtilizationRates(handle)
                mem = nv.nvmlDeviceGetMemoryInfo(handle)
                held: dict[int, int] = {}
                for proc in nv.nvmlDeviceGetComputeRunningProcesses(handle):
                    used = proc.usedGpuMemory
                    if isinstance(used, int):
                        held[proc.pid] = held.get(proc.pid, 0) + used
                out.append(GpuReading(i, float(util.gpu), int(mem.used), int(mem.total), held))
        except Exception as exc:  # a driver error: the GPU part is off from now (said once)
            self.gpu_problem = f"NVML failed: {type(exc).__name__}: {str(exc)[:200]}"
            self.nvml = None
            log.warning("event=system_metrics_gpu_off reason=%r", self.gpu_problem)
            return ()
        return tuple(out)


class SystemMetrics:
    """The sampling loop. ``want(run_id)`` on a ``start_run`` that asked; ``targets()`` the runs
    to sample now (:func:`targets_of` over the daemon's tables); ``emit(records)`` hands records
    to the data path; ``reader`` is made on first use (None: the sampler is off)."""

    def __init__(
        self,
        interval_s: float,
        hostname: str,
        *,
        targets: Callable[[Iterable[str]], list[RunTarget]],
        emit: Callable[[list[p.Metric | p.Tag]], None],
        reader: Callable[[], ProcessReader],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self.hostname = hostname
        self._targets = targets
        self._emit = emit
        self._make_reader = reader
        self._reader: ProcessReader | None = None
        self._clock = clock
        self.sampler = Sampler(hostname)
        self.wanted: dict[str, None] = {}  # run ids that asked, in order
        self.samples = 0  # ticks that sampled at least one run
        self.records = 0
        self.cpu_s = 0.0  # the sampler's own CPU time (reads + records)
        self.last_tick_ms = 0.0
        self._since = clock()
        self._said_off: set[str] = set()

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    def want(self, run_id: str) -> None:
        """A ``start_run`` asked for system metrics of ``run_id`` (its run is open now)."""
        if not self.enabled:
            if run_id not in self._said_off and len(self._said_off) < MAX_WANTED:
                self._said_off.add(run_id)
                tag = "off: system_metrics_interval_s = 0 in the daemon's configuration"
                self._emit([p.Tag(run_id, "tracker.system_metrics", tag)])
            return
        if len(self.wanted) >= MAX_WANTED:
            self.wanted.pop(next(iter(self.wanted)))
        self.wanted[run_id] = None

    async def run(self) -> None:
        if not self.enabled:
            await anyio.sleep_forever()
        while True:
            await anyio.sleep(self.interval_s)
            await self.tick()

    async def tick(self) -> None:
        """One sample of every run that asked and is still open."""
        targets = self._targets(self.wanted)
        open_now = {t.run_id for t in targets}
        for gone in [r for r in self.wanted if r not in open_now]:
            del self.wanted[gone]  # ended: no longer sampled
        if not targets:
            return
        started, cpu0 = time.perf_counter(), time.thread_time()
        if self._reader is None:
            self._reader = await anyio.to_thread.run_sync(self._open_reader)
        roots = {t.run_id: t.pids for t in targets if t.local}
        host, procs, read_cpu = await anyio.to_thread.run_sync(self._read, self._reader, roots)
        records, changed = self.sampler.records(
            host, targets, procs, self._clock(), time.time_ns() // 1_000_000
        )
        for target in changed:
            how = "per_process" if target.pids else ("host_only" if target.local else "none")
            log.info(
                "event=system_metrics_attribution run=%s attribution=%s reason=%r",
                target.run_id,
                how,
                target.reason,
            )
        self._emit(records)
        self.samples += 1
        self.records += len(records)
        self.cpu_s += read_cpu + time.thread_time() - cpu0
        self.last_tick_ms = (time.perf_counter() - started) * 1000

    def _open_reader(self) -> ProcessReader:
        reader = self._make_reader()
        if reader.gpu_problem:
            log.info("event=system_metrics_gpu_off reason=%r", reader.gpu_problem)
        return reader

    @staticmethod
    def _read(
        reader: ProcessReader, roots: Mapping[str, frozenset[int]]
    ) -> tuple[HostReading, dict[str, dict[int, ProcReading]], float]:
        cpu0 = time.thread_time()
        host, procs = reader.read(roots)
        return host, procs, time.thread_time() - cpu0

    def status(self) -> dict[str, Any]:
        elapsed = max(1e-9, self._clock() - self._since)
        return {
            "system_metrics": {
                "interval_s": self.interval_s,
                "runs": len(self.wanted),
                "samples": self.samples,
                "records": self.records,
                "cpu_s": round(self.cpu_s, 4),
                "core_pct": round(100 * self.cpu_s / elapsed, 4),
                "last_tick_ms": round(self.last_tick_ms, 3),
                "gpu": "" if self._reader is None else (self._reader.gpu_problem or "nvml"),
            }
        }
