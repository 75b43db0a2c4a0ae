"""Storms of requests from one hostile peer against a real daemon, while a real client logs and
flushes: (a) thousands of ``flush`` requests for a seq the peer never sends (each one a barrier
the daemon would hold until its timeout), (b) ~100,000 ``status`` requests from a peer that
never reads its replies. The daemon's memory stays bounded, over-cap requests are refused at once
naming the limit, a peer that does not read is dropped (counted, logged once), and ``status`` and
the good client's flush stay fast (the event loop, which also feeds systemd's watchdog, never
stalls) and every one of its points lands."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
import zmq
from mlflow import MlflowClient

import tracker_client
from tests.support.daemon import Daemon, running_daemon
from tests.support.waiting import wait_for
from tracker_client import protocol as p

pytestmark = pytest.mark.integration

BARRIER_TIMEOUT_S = 5.0  # short, so that the storm's barriers expire within the test
STORM_S = 8.0  # how long the flush storm lasts
STORM_FLUSHES = 40_000  # at most this many flushes (the probe: ~2,400 a second)
NEVER = 10**12  # a seq the storming peer never sends
STATUS_FLOOD = 100_000  # status requests of the peer that never reads
# Bounds: generous (a shared, loaded 2-core machine). Before the fix, 45k barriers took the RSS
# from 284 to 597 MB, and their expiry stalled status 21-98 s and a good client's flush 65-179 s.
MAX_RSS_GROWTH_MB = 64
MAX_STATUS_S = 5.0
MAX_FLUSH_S = 5.0


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    assert m
    return int(m.group(1)) / 1024


class GoodClient(threading.Thread):
    """Logs one point and flushes, over and over, timing each flush."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.stop = threading.Event()
        self.flush_s: list[float] = []
        self.logged = 0
        self.run_id = ""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            t = tracker_client.connect(self.address, offline=False)
            run = t.start_run("storm", run_name="good")
            self.run_id = run.run_id
            while not self.stop.is_set():
                run.log_metric("m", float(self.logged), step=self.logged)
                self.logged += 1
                start = time.perf_counter()
                run.flush(timeout=120)
                self.flush_s.append(time.perf_counter() - start)
                time.sleep(0.02)
            run.end()
            t.close()
        except BaseException as exc:  # reported by the test
            self.error = exc


class Watch(threading.Thread):
    """Asks for the status over and over (timing each answer) and samples the daemon's RSS."""

    def __init__(self, d: Daemon) -> None:
        super().__init__(daemon=True)
        assert d.proc is not None
        self.d, self.pid = d, d.proc.pid
        self.stop = threading.Event()
        self.status_s: list[float] = []
        self.rss_before = rss_mb(self.pid)
        self.rss_peak = self.rss_before
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                start = time.perf_counter()
                try:
                    self.d.status(timeout=60)
                except tracker_client.DaemonUnavailable:
                    pass  # counted as 60 s
                self.status_s.append(time.perf_counter() - start)
                self.rss_peak = max(self.rss_peak, rss_mb(self.pid))
                time.sleep(0.1)
        except BaseException as exc:
            self.error = exc

    @property
    def growth(self) -> float:
        return self.rss_peak - self.rss_before


def finish(d: Daemon, good: GoodClient, watch: Watch) -> str:
    good.stop.set()
    good.join(180)
    watch.stop.set()
    watch.join(120)
    figures = (
        f"RSS {watch.rss_before:.0f} -> peak {watch.rss_peak:.0f} MB; "
        f"status max {max(watch.status_s, default=0):.2f} s over {len(watch.status_s)}; "
        f"good flush max {max(good.flush_s, default=0):.2f} s over {len(good.flush_s)}; "
        f"good client error: {good.error!r}"
    )
    print(figures)
    assert good.error is None, figures
    assert watch.error is None, watch.error
    assert d.proc is not None and d.proc.poll() is None, "the daemon died"
    return figures


def points_landed(d: Daemon, good: GoodClient) -> None:
    history = MlflowClient(d.backend_uri).get_metric_history(good.run_id, "m")
    assert len(history) == good.logged, f"{len(history)} of {good.logged} points landed"


@pytest.mark.timeout(120)
def test_flush_storm_is_refused_over_the_cap_and_never_stalls_the_daemon(tmp_path: Path) -> None:
    env = {"TRACKER_DAEMON_BARRIER_TIMEOUT_S": str(BARRIER_TIMEOUT_S)}
    with running_daemon(tmp_path, env=env) as d:
        good = GoodClient(d.address)
        good.start()
        wait_for(lambda: len(good.flush_s) >= 5 or good.error, 60, "the good client's flushes")
        watch = Watch(d)
        watch.start()

        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, 10_000)
        sock.connect(d.address)
        codes: dict[str, int] = {}
        messages: list[str] = []

        def drain() -> None:
            while sock.poll(0, zmq.POLLIN):
                msg = p.decode(sock.recv())
                code = getattr(msg, "code", type(msg).__name__)
                codes[code] = codes.get(code, 0) + 1
                if code == "limit_exceeded" and len(messages) < 3:
                    messages.append(getattr(msg, "message", ""))

        sent = 0
        start = time.monotonic()
        while sent < STORM_FLUSHES and time.monotonic() - start < STORM_S:
            try:
                sock.send(p.encode(p.Flush(sent + 1, "stormer-1", NEVER)))
            except zmq.Again:
                break
            sent += 1
            if sent % 100 == 0:
                drain()
                time.sleep(0.03)  # ~3,000 a second at most
        storm_s = time.monotonic() - start
        # every barrier the daemon took expires within the timeout: watch through that
        deadline = time.monotonic() + BARRIER_TIMEOUT_S + 5
        while time.monotonic() < deadline:
            drain()
            time.sleep(0.05)
        figures = finish(d, good, watch)
        figures += f"; {sent} flushes in {storm_s:.1f} s, replies {codes}"
        status = d.status()
        sock.close(0)
        ctx.term()

        assert codes.get("limit_exceeded", 0) > 0, figures
        assert "max_requests_per_client" in messages[0], messages
        assert status["limit_rejections"]["max_requests_per_client"] > 0, status
        assert watch.growth <= MAX_RSS_GROWTH_MB, figures
        assert max(watch.status_s) <= MAX_STATUS_S, figures
        assert max(good.flush_s) <= MAX_FLUSH_S, figures
        points_landed(d, good)


@pytest.mark.timeout(120)
def test_a_peer_that_never_reads_its_replies_is_dropped(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        good = GoodClient(d.address)
        good.start()
        wait_for(lambda: len(good.flush_s) >= 5 or good.error, 60, "the good client's flushes")
        watch = Watch(d)
        watch.start()

        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 1)
        sock.setsockopt(zmq.SNDTIMEO, 10_000)
        sock.connect(d.address)
        frame = p.encode(p.StatusRequest(1))
        sent = 0
        start = time.monotonic()
        while sent < STATUS_FLOOD and time.monotonic() - start < 20:
            try:
                sock.send(frame)
            except zmq.Again:
                break
            sent += 1
        flood_s = time.monotonic() - start

        def settled() -> bool:  # dropped, or visibly not bounded
            grown = rss_mb(watch.pid) - watch.rss_before > MAX_RSS_GROWTH_MB
            return grown or d.status(timeout=60).get("peers_dropped", 0) >= 1

        wait_for(settled, 30, "the peer dropped (or the RSS past its bound)", interval=0.2)
        time.sleep(1.0)  # a last look at the memory, with the good client still flushing
        figures = finish(d, good, watch)
        figures += f"; {sent} status requests in {flood_s:.1f} s"
        status = d.status()
        sock.close(0)
        ctx.term()

        assert watch.growth <= MAX_RSS_GROWTH_MB, figures
        assert status["peers_dropped"] == 1, status
        assert status["dropped_frames"] > 0, status
        assert d.log().count("event=peer_dropped") == 1, d.log()[-3000:]
        assert max(watch.status_s) <= MAX_STATUS_S, figures
        assert max(good.flush_s) <= MAX_FLUSH_S, figures
        points_landed(d, good)
