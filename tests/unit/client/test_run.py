"""A Run against a recording RunLink (tracker_client.run), no transport: what each call puts on
the link, in wire form, and that the inlined metric of the hot path is protocol.metric_wire's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tracker_client import protocol as p
from tracker_client.run import Run

RUN = "a1b2c3d4e5f60718293a4b5c6d7e8f90"


class Link:
    """Records every call a Run makes on its link (the RunLink protocol)."""

    def __init__(self) -> None:
        self.records: list[list[Any]] = []
        self.calls: list[tuple[Any, ...]] = []
        self.open = {RUN}

    @property
    def put(self) -> Any:
        return self.records.append

    def stage(self, run_id: str, src: Path, artifact_path: str | None, *, is_dir: bool) -> None:
        self.calls.append(("stage", run_id, src.name, artifact_path, is_dir))

    def barrier(self, run_id: str | None, timeout: float) -> None:
        self.calls.append(("barrier", run_id, timeout))

    def end(self, run_id: str, status: str, timeout: float) -> None:
        self.calls.append(("end", run_id, status))
        self.open.discard(run_id)

    def is_open(self, run_id: str) -> bool:
        return run_id in self.open

    def renamed(self, old_id: str, new_id: str) -> None:
        self.calls.append(("renamed", old_id, new_id))


def test_metrics_are_protocol_metric_wire_records() -> None:
    link = Link()
    run = Run(link, RUN, "0", "", "x")
    run.log_metric("loss", 0.5, step=3, timestamp=1_700_000_000_000)
    run.log_metric("n", 2, step=4, timestamp=5)  # an int value becomes a float
    run.log_metrics({"a": 1.5, "b": 2.5}, step=7, timestamp=9)
    run.log_metric("acc", 0.9, 1, 10, model_id="m-1", dataset_name="d", dataset_digest="x1")
    assert link.records == [
        p.metric_wire(RUN, "loss", 0.5, 1_700_000_000_000, 3),
        p.metric_wire(RUN, "n", 2.0, 5, 4),
        p.metric_wire(RUN, "a", 1.5, 9, 7),
        p.metric_wire(RUN, "b", 2.5, 9, 7),
        p.metric_wire(RUN, "acc", 0.9, 10, 1, "m-1", "d", "x1"),
    ]
    assert type(link.records[1][3]) is float
    # and every record decodes as the metric it is
    frame = p.encode_data("c" * 32, 1, link.records)
    data = p.decode(frame)
    assert isinstance(data, p.Data) and len(data.records) == 5
    assert data.records[4] == p.Metric(RUN, "acc", 0.9, 10, 1, "m-1", "d", "x1")


def test_params_tags_and_bad_input() -> None:
    link = Link()
    run = Run(link, RUN, "0", "", "x")
    run.log_param("lr", 0.1)
    run.log_params({"batch": 64})
    run.set_tag("t", "v")
    run.set_tags({"u": 1})
    assert link.records == [
        ["p", RUN, "lr", "0.1"],
        ["p", RUN, "batch", "64"],
        ["t", RUN, "t", "v"],
        ["t", RUN, "u", "1"],
    ]
    with pytest.raises(ValueError, match="acc//top1"):
        run.log_metric("acc//top1", 1.0)
    assert len(link.records) == 4  # nothing put for a refused call


def test_artifacts_barriers_and_end_go_through_the_link(tmp_path: Path) -> None:
    link = Link()
    run = Run(link, RUN, "0", "", "x")
    f = tmp_path / "model.bin"
    f.write_bytes(b"x")
    run.log_artifact(f, "models")
    run.log_artifacts(tmp_path)
    run.flush(timeout=3.0)
    with run:
        pass
    assert link.calls == [
        ("stage", RUN, "model.bin", "models", False),
        ("stage", RUN, tmp_path.name, None, True),
        ("barrier", RUN, 3.0),
        ("end", RUN, "FINISHED"),
    ]
    with pytest.raises(FileNotFoundError):
        run.log_artifact(tmp_path / "missing")


@pytest.mark.parametrize(
    ("exc", "status"), [(RuntimeError, "FAILED"), (KeyboardInterrupt, "KILLED")]
)
def test_leaving_the_block_on_an_exception(exc: type[BaseException], status: str) -> None:
    link = Link()
    with pytest.raises(exc), Run(link, RUN, "0", "", "x"):
        raise exc()
    assert link.calls == [("end", RUN, status)]


def test_an_ended_run_is_not_ended_again() -> None:
    link = Link()
    link.open.clear()
    with Run(link, RUN, "0", "", "x"):
        pass
    assert link.calls == []
