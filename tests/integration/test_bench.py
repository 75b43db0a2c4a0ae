"""``tracker-daemon bench``: runs for real (small sizes) and reports a well-formed, verified
document. Structure and sanity only, never speed: the machine may be busy."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.support.daemon import REPO, daemon_env

pytestmark = pytest.mark.integration

FIGURES = {
    "client": {
        "log_metric_p50_ns",
        "log_metric_p99_ns",
        "log_metric_max_ns",
        "log_metric_timed_mean_ns",
        "log_metric_mean_ns",
        "import_ms",
        "import_env_ms",
    },
    "throughput": {
        "daemon_metrics_per_s",
        "ceiling_metrics_per_s",
        "direct_metrics_per_s",
        "direct_errors",
        "daemon_vs_ceiling",
        "daemon_vs_direct",
        "worker_loop_s",
        "sink_batch_p50_ms",
        "metrics_per_batch",
        "ceiling_batch_ms",
        "main_cpu_us_per_record",
    },
    "drain": {"burst_log_ms", "end_s"},
}
CAN_BE_ZERO = {"direct_errors"}


def bench(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracker_daemon.cli", "bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=daemon_env(),
    )


@pytest.mark.timeout(900)
def test_bench_client_throughput_drain_json() -> None:
    proc = bench(
        "client",
        "throughput",
        "drain",
        "--json",
        "--repeat",
        "1",
        "--quick",
        "--workers",
        "2",
        "--metrics",
        "200",
        "--keys",
        "10",
        timeout=840,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    assert doc["ok"] is True
    assert doc["repeat"] == 1
    assert doc["scenarios_run"] == ["client", "throughput", "drain"]
    assert set(doc["scenarios"]) == set(FIGURES)
    assert "verdict: OK" in proc.stderr  # the table goes to stderr with --json

    for scen, names in FIGURES.items():
        res = doc["scenarios"][scen]
        assert "error" not in res, res
        assert set(res["figures"]) == names, scen
        for name, fig in res["figures"].items():
            assert set(fig) >= {"label", "unit", "values", "min", "median", "max", "target", "pass"}
            assert len(fig["values"]) == 1
            assert fig["min"] <= fig["median"] <= fig["max"]
            if name in CAN_BE_ZERO:
                assert fig["min"] >= 0, (scen, name, fig)
            else:
                assert fig["min"] > 0, (scen, name, fig)
            if fig["target"] is not None:
                assert fig["target"].split()[0] in ("<=", ">=")
                assert isinstance(fig["pass"], bool)

    # every count the bench made in the store equals what was sent, and it says how it counted
    checks = {
        (s, c["what"], c["method"]): c
        for s in FIGURES
        for c in doc["scenarios"][s].get("checks", [])
    }
    assert set(checks) == {
        ("throughput", "daemon", "sql-count"),
        ("throughput", "daemon", "status.committed"),
        ("throughput", "ceiling", "sql-count"),
        ("throughput", "direct", "sql-count"),
        ("drain", "daemon", "sql-count"),
    }
    for check in checks.values():
        assert check["ok"] is True and check["committed"] == check["sent"] > 0, check
    assert checks[("throughput", "daemon", "sql-count")]["sent"] == 2 * 200 * 10
    assert checks[("throughput", "ceiling", "sql-count")]["sent"] == 2 * 200 * 10
    assert checks[("drain", "daemon", "sql-count")]["sent"] == 10_000

    tput = doc["scenarios"]["throughput"]["figures"]
    assert tput["daemon_vs_ceiling"]["target"] == ">= 0.95"
    ratio = tput["daemon_metrics_per_s"]["median"] / tput["ceiling_metrics_per_s"]["median"]
    assert tput["daemon_vs_ceiling"]["median"] == pytest.approx(ratio)


@pytest.mark.timeout(60)
def test_bench_rejects_unknown_scenario() -> None:
    proc = bench("warp-speed", timeout=50)
    assert proc.returncode == 2
    assert "client, throughput, latency, drain, memory" in proc.stderr
