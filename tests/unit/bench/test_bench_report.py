"""The bench report: a target is met or missed on the median of the repeats, every judged figure
is in the document's ``targets``, and the table says which were missed, skipped or noted."""

from __future__ import annotations

from typing import Any

import pytest

from tracker_daemon.bench.report import FIGURES, figure, judge, summarize, table, verdicts


@pytest.mark.parametrize(
    ("op", "target", "value", "met"),
    [
        ("<=", 20, 19.99, True),
        ("<=", 20, 20, True),
        ("<=", 20, 20.01, False),
        (">=", 0.33, 0.33, True),
        (">=", 0.33, 0.329, False),
        (">=", 4, 4.5, True),
        ("", 0, 123.0, None),
    ],
)
def test_judge(op: str, target: float, value: float, met: bool | None) -> None:
    assert judge(op, target, value) is met


def test_targets_of_the_issue() -> None:
    assert FIGURES["throughput/daemon_vs_raw"][2:] == (">=", 0.33)
    assert FIGURES["throughput/daemon_vs_mlflow_sink"][2:] == (">=", 4)
    assert FIGURES["throughput/cpu_us_per_record"][2:] == ("<=", 20)
    assert FIGURES["drain/end_s"][2:] == ("<=", 2)
    assert FIGURES["latency/visible_p99_ms"][2:] == ("<=", 100)
    assert FIGURES["rest/load_vs_idle_wal"][2:] == ("<=", 1.5)
    assert FIGURES["rest/load_vs_idle_rollback"][2:] == ("<=", 1.5)


def test_summarize_judges_the_median_not_the_best_repeat() -> None:
    met = summarize("throughput/daemon_vs_raw", [0.1, 0.5, 0.4])
    assert (met["min"], met["median"], met["max"]) == (0.1, 0.4, 0.5)
    assert met["target"] == ">= 0.33" and met["pass"] is True
    missed = summarize("throughput/daemon_vs_raw", [0.5, 0.2, 0.3])
    assert missed["median"] == 0.3 and missed["pass"] is False
    cpu = summarize("throughput/cpu_us_per_record", [25.0, 18.0, 19.0])
    assert cpu["median"] == 19.0 and cpu["pass"] is True
    info = summarize("throughput/raw_metrics_per_s", [150_000.0])
    assert info["target"] is None and info["pass"] is None


def document() -> dict[str, Any]:
    tput = {
        "daemon_metrics_per_s": summarize("throughput/daemon_metrics_per_s", [50_000.0]),
        "daemon_vs_raw": summarize("throughput/daemon_vs_raw", [0.35]),
        "daemon_vs_mlflow_sink": summarize("throughput/daemon_vs_mlflow_sink", [3.5]),
        "cpu_us_per_record": summarize("throughput/cpu_us_per_record", [21.0]),
    }
    return {
        "version": "0",
        "python": "3",
        "cpus": 2,
        "repeat": 1,
        "backend": "sqlite",
        "elapsed_s": 1.0,
        "loadavg_start": [0.0, 0.0, 0.0],
        "loadavg_end": [0.0, 0.0, 0.0],
        "ok": True,
        "scenarios": {
            "throughput": {"figures": tput},
            "postgres": {"figures": {}, "skipped": "PostgreSQL is not installed"},
            "rest": {"figures": {}, "notes": ["a note"]},
        },
    }


def test_verdicts_and_table_from_given_figures() -> None:
    doc = document()
    doc["targets"] = verdicts(doc)
    assert [(t["figure"], t["target"], t["met"]) for t in doc["targets"]] == [
        ("throughput/daemon_vs_raw", ">= 0.33", True),
        ("throughput/daemon_vs_mlflow_sink", ">= 4", False),
        ("throughput/cpu_us_per_record", "<= 20", False),
    ]
    assert doc["targets"][1]["median"] == 3.5 and doc["targets"][2]["unit"] == "us"
    text = table(doc)
    assert "targets (on the median): 1/3 met" in text
    assert "MISSED throughput/daemon_vs_mlflow_sink 3.500 ratio (target >= 4)" in text
    assert "MISSED throughput/cpu_us_per_record 21.0 us (target <= 20)" in text
    assert "MISSED throughput/daemon_vs_raw" not in text
    assert "postgres   skipped: PostgreSQL is not installed" in text
    assert "rest       note: a note" in text
    lines = text.splitlines()
    assert any("daemon / raw" in line and line.endswith("PASS") for line in lines)
    assert any("daemon / daemon --sink mlflow" in line and line.endswith("MISS") for line in lines)


def test_everyday_targets_of_the_issue() -> None:
    """At 5,000 points/s: the writer <= 20 us/point and <= 10 % of a core, the log_batch path
    <= half a core; log -> visible p99 <= 1 s at every everyday rate; idle < 1 % of a core."""
    assert FIGURES["everyday/cpu_us_per_point_5k"][2:] == ("<=", 20)
    assert FIGURES["everyday/core_pct_5k"][2:] == ("<=", 10)
    assert FIGURES["everyday/mlflow_sink_core_pct_5k"][2:] == ("<=", 50)
    for label in ("1k", "5k", "20k"):
        assert FIGURES[f"everyday/visible_p99_ms_{label}"][2:] == ("<=", 1000)
    assert FIGURES["everyday/cpu_us_per_point_1k"][2] == ""  # informational off 5k
    assert FIGURES["everyday/core_pct_20k"][2] == ""
    assert FIGURES["everyday/idle_core_pct"][2:] == ("<=", 1)


def test_everyday_figures_at_any_rate() -> None:
    """--rates 2500: its figures are made for that rate, informational but for visibility."""
    assert "everyday/core_pct_2.5k" not in FIGURES
    fig = summarize("everyday/core_pct_2.5k", [3.0, 4.0, 5.0])
    assert fig["label"].startswith("2.5k/s writer") and fig["target"] is None
    p99 = summarize("everyday/mlflow_sink_visible_p99_ms_800", [900.0])
    assert p99["label"].startswith("800/s --sink mlflow") and p99["target"] is None
    assert summarize("everyday/visible_p99_ms_800", [1200.0])["pass"] is False
    assert figure("everyday/cpu_us_per_point_5k") == FIGURES["everyday/cpu_us_per_point_5k"]
