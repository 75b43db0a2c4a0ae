"""``start_run``'s options for clients without ``call`` (client/PROTOCOL.md, section 5.4) and
artifact failures reported under their run (section 8), end to end: a real daemon process, the
Python client, a real MLflow SQLite store read back with MlflowClient."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mlflow import MlflowClient

import tracker_client
from tests.support.daemon import running_daemon
from tracker_client import CommitError

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_experiment_tags_location_and_find_or_create_by_name(tmp_path: Path) -> None:
    location = tmp_path / "elsewhere" / "nightly-art"
    # a location outside the default root must be below a configured artifact root
    with running_daemon(tmp_path, "--artifact-roots", str(tmp_path / "elsewhere")) as d:
        t = tracker_client.connect(d.address)
        opts = {"run_name": "nightly", "resume_by_name": True}
        first = t.start_run(
            "nightly",
            experiment_tags={"owner": "vision", "mlflow.note.content": "resnet nightly"},
            artifact_location=str(location),
            **opts,  # type: ignore[arg-type]
        )
        first.log_metric("loss", 1.0, step=0)
        first.end("FINISHED")
        again = t.start_run("nightly", experiment_tags={"owner": "vision-2"}, **opts)  # type: ignore[arg-type]
        again.log_metric("loss", 0.5, step=1)
        again.end("FINISHED")
        other = t.start_run("nightly", run_name="nightly")  # not by name: a second run
        other.end("KILLED")
        latest = t.start_run("nightly", **opts)  # type: ignore[arg-type]
        latest.log_param("resumed", "yes")
        latest.end("FINISHED")
        t.close()

    client = MlflowClient(tracking_uri=d.backend_uri)
    exp = client.get_experiment_by_name("nightly")
    assert exp is not None and exp.experiment_id == first.experiment_id
    assert exp.artifact_location == str(location)  # a local root: a bare path, as MLflow stores it
    assert exp.tags == {"owner": "vision-2", "mlflow.note.content": "resnet nightly"}
    assert again.run_id == first.run_id != other.run_id
    assert latest.run_id == other.run_id  # the latest run of that name
    assert first.artifact_uri == f"{location}/{first.run_id}/artifacts"
    resumed = client.get_run(first.run_id)
    assert resumed.info.status == "FINISHED" and resumed.info.run_name == "nightly"
    got = sorted((m.step, m.value) for m in client.get_metric_history(first.run_id, "loss"))
    assert got == [(0, 1.0), (1, 0.5)]
    second = client.get_run(other.run_id)
    assert second.info.status == "FINISHED" and second.data.params == {"resumed": "yes"}
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted({first.run_id, other.run_id})


@pytest.mark.timeout(120)
def test_an_artifact_failure_is_reported_under_its_run_and_its_slot_removed(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / ".artifact.uploading.x").write_text("reserved by MLflow")
    with running_daemon(tmp_path) as d:
        t = tracker_client.connect(d.address)
        a = t.start_run("artifact-failures", run_name="a")
        b = t.start_run("artifact-failures", run_name="b")
        a.log_artifacts(bad, artifact_path="bad")
        b.log_metric("m", 1.0, step=0)
        b.flush()  # another run's barrier: the failure stays pending (no CommitError)
        with pytest.raises(CommitError) as info:
            a.flush()
        t.flush()  # reported once: nothing is left for the client-wide barrier
        a.end()
        b.end()
        staging = Path(d.state_dir) / "staging" / t.client_id
        slots = os.listdir(staging)
        t.close()
    (failure,) = info.value.failures
    assert failure.record is None and failure.code == "INVALID_PARAMETER_VALUE"
    assert failure.message == (
        "artifact 'bad': staged entry 'bad/.artifact.uploading.x': names starting with "
        "'.artifact.uploading.' are MLflow's"
    )
    assert slots == []  # the daemon removed the refused slot of this client


@pytest.mark.timeout(60)
def test_experiments_against_a_real_mlflow_store(tmp_path: Path) -> None:
    """tracker_daemon.store.experiments on MLflow's SQLite store (no daemon): names are matched
    exactly (quotes, no LIKE wildcards), the latest live run wins, locations and tags."""
    from mlflow.tracking._tracking_service.utils import _get_store

    from tracker_daemon.errors import PermanentSinkError
    from tracker_daemon.store.experiments import Experiments

    store = _get_store(f"sqlite:///{tmp_path / 'm.db'}", str(tmp_path / "art"))
    ex = Experiments(lambda: store)
    assert ex.find("e") is None
    eid = ex.get_or_create("e", str(tmp_path / "loc"))
    assert ex.get_or_create("e", "/elsewhere") == eid  # exists: keeps its location
    assert ex.find("e") == eid and ex.find("E") is None and ex.find("e%") is None
    assert store.get_experiment(eid).artifact_location == str(tmp_path / "loc")
    ex.set_tags(eid, {"a": "1", "b": "2"})
    ex.set_tags(eid, {"a": "3"})
    assert store.get_experiment(eid).tags == {"a": "3", "b": "2"}

    def run(name: str, start: int) -> str:
        return str(store.create_run(eid, "u", start, [], name).info.run_id)

    names = ["it's", 'say "hi"', "a%b_c"]
    ids = {name: run(name, 10) for name in names}
    for name in names:
        assert ex.latest_run_named(eid, name) == ids[name]
    assert ex.latest_run_named(eid, "a_b_c") is None and ex.latest_run_named(eid, "it") is None
    old, new = run("n", 100), run("n", 200)
    assert ex.latest_run_named(eid, "n") == new
    store.delete_run(new)
    assert ex.latest_run_named(eid, "n") == old  # a deleted run is not resumed
    with pytest.raises(PermanentSinkError, match="both ' and"):
        ex.latest_run_named(eid, 'it\'s "x"')
    store.delete_experiment(eid)
    with pytest.raises(PermanentSinkError, match="is deleted") as info:
        ex.get_or_create("e", None)
    assert info.value.code == "INVALID_PARAMETER_VALUE"
    assert ex.find("e") is None  # deleted: not found (start_run then says it is deleted)
    store.restore_experiment(eid)
    store.rename_experiment(eid, "e-old")
    assert ex.find("e") is None and ex.find("e-old") == eid
