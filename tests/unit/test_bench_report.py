"""The bench report: a target is met or missed on the median of the repeats, every judged figure
is in the document's ``targets``, and the table says which were missed, skipped or noted."""

from __future__ import annotations

from typing import Any

import pytest

from tracker_daemon.bench.report import FIGURES, judge, summarize, table, verdicts


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
