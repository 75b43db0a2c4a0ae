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
        "mlflow_sink_metrics_per_s",
        "raw_metrics_per_s",
        "ceiling_metrics_per_s",
        "direct_metrics_per_s",
        "direct_errors",
        "daemon_vs_raw",
        "daemon_vs_mlflow_sink",
        "mlflow_sink_vs_raw",
        "daemon_vs_ceiling",
        "daemon_vs_direct",
        "cpu_us_per_record",
        "mlflow_sink_cpu_us_per_record",
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
        ("throughput", "daemon --sink mlflow", "sql-count"),
        ("throughput", "daemon --sink mlflow", "status.committed"),
        ("throughput", "raw", "sql-count"),
        ("throughput", "ceiling", "sql-count"),
        ("throughput", "direct", "sql-count"),
        ("drain", "daemon", "sql-count"),
    }
    for check in checks.values():
        assert check["ok"] is True and check["committed"] == check["sent"] > 0, check
    assert checks[("throughput", "daemon", "sql-count")]["sent"] == 2 * 200 * 10
    assert checks[("throughput", "ceiling", "sql-count")]["sent"] == 2 * 200 * 10
    assert checks[("throughput", "daemon --sink mlflow", "sql-count")]["sent"] == 2 * 200 * 10
    assert checks[("throughput", "raw", "sql-count")]["sent"] == 2 * 200 * 10
    assert checks[("drain", "daemon", "sql-count")]["sent"] == 10_000

    notes = doc["scenarios"]["throughput"]["notes"]
    assert "default daemon's sink: sql: many runs per transaction" in notes, notes
    tput = doc["scenarios"]["throughput"]["figures"]
    daemon_rate = tput["daemon_metrics_per_s"]["median"]
    for ratio, base, target in (
        ("daemon_vs_raw", "raw_metrics_per_s", ">= 0.33"),
        ("daemon_vs_mlflow_sink", "mlflow_sink_metrics_per_s", ">= 4"),
        ("daemon_vs_ceiling", "ceiling_metrics_per_s", None),
    ):
        assert tput[ratio]["target"] == target
        assert tput[ratio]["median"] == pytest.approx(daemon_rate / tput[base]["median"])
    assert tput["cpu_us_per_record"]["target"] == "<= 20"
    assert doc["scenarios"]["drain"]["figures"]["end_s"]["target"] == "<= 2"

    # every figure with a target is in the verdicts, judged on its median
    judged = {f"{s}/{n}": f for s in FIGURES for n, f in doc["scenarios"][s]["figures"].items()}
    assert {t["figure"] for t in doc["targets"]} == {
        k for k, f in judged.items() if f["target"] is not None
    }
    for t in doc["targets"]:
        assert t["met"] is judged[t["figure"]]["pass"], t
    assert "targets (on the median):" in proc.stderr


@pytest.mark.timeout(60)
def test_bench_rejects_unknown_scenario() -> None:
    proc = bench("warp-speed", timeout=50)
    assert proc.returncode == 2
    assert "client, throughput, latency, everyday, drain, memory, rest, postgres" in proc.stderr


@pytest.mark.timeout(300)
def test_bench_rest_measures_both_journal_modes_in_one_repeat() -> None:
    proc = bench("rest", "--json", "--repeat", "1", "--quick", timeout=280)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    res = doc["scenarios"]["rest"]
    assert "error" not in res and "skipped" not in res, res
    names = ("idle_p50_ms", "idle_p99_ms", "load_p50_ms", "load_p99_ms", "load_vs_idle")
    names += ("load_reads", "errors", "daemon_metrics_per_s")
    assert set(res["figures"]) == {f"{n}_{m}" for n in names for m in ("wal", "rollback")}
    for mode in ("wal", "rollback"):
        fig = {n: res["figures"][f"{n}_{mode}"]["median"] for n in names}
        assert fig["load_reads"] >= 1 and fig["idle_p99_ms"] > 0 and fig["load_p99_ms"] > 0
        assert fig["load_vs_idle"] == pytest.approx(fig["load_p99_ms"] / fig["idle_p99_ms"])
        assert fig["errors"] == 0  # every REST read answered 200
        assert res["figures"][f"load_vs_idle_{mode}"]["target"] == "<= 1.5"
    # the probe run's points are not counted as the load's: exactly the 2 x 50 x 10 sent
    checks = {(c["what"], c["method"]): c for c in res["checks"]}
    assert set(checks) == {
        (m, k) for m in ("wal", "rollback") for k in ("sql-count", "status.committed")
    }
    for check in checks.values():
        assert check["ok"] is True and check["committed"] == check["sent"] == 2 * 50 * 10


@pytest.mark.timeout(600)
def test_bench_everyday_reports_cost_visibility_and_idle() -> None:
    """Two small rates, both sinks, one repeat: every figure is there and positive where it
    must be, the idle figure is measured, and every point sent was committed once."""
    proc = bench(
        "everyday",
        "--json",
        "--repeat",
        "1",
        "--quick",
        "--rates",
        "400,1500",
        "--duration",
        "1.5",
        "--paced-workers",
        "2",
        "--idle-seconds",
        "1",
        timeout=560,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    res = doc["scenarios"]["everyday"]
    assert doc["ok"] is True and "error" not in res, res
    per_rate = {
        "offered_per_s",
        "cpu_us_per_point",
        "core_pct",
        "visible_p50_ms",
        "visible_p99_ms",
        "fsyncs_per_s",
        "sink_commits_per_s",
        "frames_per_s",
    }
    names = {
        f"{prefix}{name}_{label}"
        for prefix in ("", "mlflow_sink_")
        for name in per_rate
        for label in ("400", "1.5k")
    }
    assert set(res["figures"]) == names | {"idle_core_pct"}
    for name in names:
        fig = res["figures"][name]
        assert fig["min"] > 0, (name, fig)
    for label, rate in (("400", 400), ("1.5k", 1500)):
        offered = res["figures"][f"offered_per_s_{label}"]["median"]
        assert 0.5 * rate < offered < 1.5 * rate, (label, offered)
    assert res["figures"]["visible_p99_ms_1.5k"]["target"] == "<= 1000"
    assert res["figures"]["idle_core_pct"]["min"] >= 0
    assert res["figures"]["idle_core_pct"]["target"] == "<= 1"
    checks = res["checks"]
    assert len(checks) == 2 * 2 * 3  # rates x sinks x (store, status, poller)
    for check in checks:
        assert check["ok"] is True and check["committed"] == check["sent"] > 0, check
    assert {c["method"] for c in checks} == {"sql-count", "status", "poll"}
