"""A client in another language, written from client/PROTOCOL.md alone: tests/conformance/client.c
(libzmq + msgpack-c; Debian packages libzmq3-dev and libmsgpack-dev, installed by .ci/run), built
here with ``cc`` and run against a real daemon process; the MLflow SQLite store is then read back.
A missing compiler or header skips the test with the install command (fails it with CI=true).

The scenario: two runs, metrics with NaN and ±inf, params, tags, an experiment tag, a staged
artifact, a flush; then the daemon is stopped (SIGSTOP) while the client sends five frames, killed
(-9) so those are lost unacknowledged, the client sends five more with no daemon running, the
daemon is restarted, and the client's reconnect (hello with acked_floor, resend after the welcome)
brings all ten in; the client also resends its first frame, which the killed daemon had committed.
Then flush, end FINISHED and FAILED, and a find-or-create by name that resumes the first run.
Every point must be stored exactly once."""

from __future__ import annotations

import math
import queue
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.support.daemon import REPO, running_daemon
from tests.support.prereq import require
from tests.unit.client.wire.test_protocol import VALID_VECTORS

pytestmark = pytest.mark.integration

SOURCE = REPO / "tests" / "conformance" / "client.c"


APT = "apt-get install -y --no-install-recommends"


def _has_header(cc: str, header: str) -> bool:
    """Whether ``cc`` finds ``header`` (preprocesses an #include of it)."""
    probe = subprocess.run(
        [cc, "-E", "-x", "c", "-o", "/dev/null", "-"],
        input=f"#include <{header}>\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    return probe.returncode == 0


@pytest.fixture(scope="module")
def client_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc")
    require("C compiler (cc)", cc is not None, f"{APT} gcc libc6-dev")
    assert cc is not None
    for header, package in (("zmq.h", "libzmq3-dev"), ("msgpack.h", "libmsgpack-dev")):
        require(header, _has_header(cc, header), f"{APT} {package}")
    out = tmp_path_factory.mktemp("conformance") / "client"
    build = subprocess.run(
        [cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-o", str(out), str(SOURCE)]
        + ["-lzmq", "-lmsgpackc"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, (
        "building tests/conformance/client.c failed (needs libzmq3-dev and libmsgpack-dev):\n"
        + build.stderr
    )
    return out


class Lines:
    """The client's stdout, line by line, with deadlines."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._q: queue.Queue[str | None] = queue.Queue()
        self._proc = proc
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def expect(self, word: str, timeout: float) -> list[str]:
        while True:
            try:
                line = self._q.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"no {word} line from the C client within {timeout} s"
                ) from None
            assert line is not None, f"the C client exited before {word}"
            if line.split()[0] == word:
                return line.split()[1:]
            assert not line.startswith("FAILURE"), line


@pytest.mark.timeout(60)
def test_the_c_encoder_reproduces_the_spec_vectors(client_binary: Path) -> None:
    out = subprocess.run(
        [str(client_binary), "vectors"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    got = {
        line.split()[0]: bytes.fromhex("".join(line.split()[1:]))
        for line in out.stdout.splitlines()
    }
    names = ["hello", "start_run_by_name", "data_nan_dataset", "artifact", "flush_all", "end_run"]
    assert sorted(got) == sorted(names)
    for name in names:
        assert got[name] == VALID_VECTORS[name], name


@pytest.mark.timeout(180)
def test_the_c_client_against_a_daemon_killed_and_restarted(
    client_binary: Path, tmp_path: Path
) -> None:
    with running_daemon(tmp_path) as d:
        with subprocess.Popen(
            [str(client_binary), "run", d.address, "conformance"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            try:
                lines = Lines(proc)
                run_a, run_b, failures = lines.expect("READY", 60)
                assert failures == "0"
                assert proc.stdin is not None and d.proc is not None
                d.proc.send_signal(signal.SIGSTOP)  # frames reach its socket, nothing reads them
                proc.stdin.write("stopped\n")
                proc.stdin.flush()
                sent, _, unacked = lines.expect("SENT", 30)
                assert (sent, unacked) == ("8", "5")  # seqs 4..8: sent, never acknowledged
                d.kill()  # -9: seqs 4..8 are lost with the connection
                proc.stdin.write("killed\n")
                proc.stdin.flush()
                sent, _, unacked = lines.expect("SENT", 30)
                assert (sent, unacked) == ("13", "10")  # seqs 9..13: no daemon to take them
                d.start()  # the client says hello, then resends 4..13, then seq 1 again
                resumed, failures = lines.expect("DONE", 120)
                assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
            finally:
                if proc.poll() is None:  # a failed step: do not wait for it forever
                    proc.kill()
        status = d.status()
    assert failures == "0" and resumed == run_a
    assert status["failed"] == 0
    assert status["duplicate_frames"] == 1  # the resent seq 1; seqs 4..13 arrived once

    client = MlflowClient(tracking_uri=d.backend_uri)
    exp = client.get_experiment_by_name("conformance")
    assert exp is not None and exp.tags == {"client": "conformance-c"}
    a, b = client.get_run(run_a), client.get_run(run_b)
    assert (a.info.run_name, a.info.status) == ("c-finished", "FINISHED")
    assert (b.info.run_name, b.info.status) == ("c-failed", "FAILED")
    assert a.info.experiment_id == b.info.experiment_id == exp.experiment_id
    assert a.data.params == {"lr": "0.01", "batch_size": "32"}
    assert b.data.params == {"lr": "0.1"}
    assert {k: v for k, v in a.data.tags.items() if not k.startswith("mlflow.")} == {
        "lang": "c",
        "phase": "train",
    }

    def history(run_id: str) -> list[tuple[int, float]]:
        points = client.get_metric_history(run_id, "loss")
        return sorted((m.step, m.value) for m in points)

    got_a = history(run_a)  # every point exactly once, across the kill and the resend
    assert [s for s, _ in got_a] == [0, 1, 2, 3, *range(10, 20)]
    assert got_a[0] == (0, 0.5) and math.isnan(got_a[1][1])
    big = sys.float_info.max  # MLflow's SQL store saves ±inf as ±max float
    assert got_a[2] == (2, big) and got_a[3] == (3, -big)
    assert got_a[4:] == [(s, s / 100.0) for s in range(10, 20)]
    assert history(run_b) == [(0, 1.0)] + [(s, float(-s)) for s in range(10, 20)]

    local = Path(client.download_artifacts(run_a, "", str(tmp_path / "dl")))
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert files == ["docs/notes.txt"]
    assert (local / "docs" / "notes.txt").read_text() == "logged from C\n"
    staging = d.state_dir / "staging"
    assert [list(c.iterdir()) for c in staging.iterdir()] == [[]]  # the slot was removed
