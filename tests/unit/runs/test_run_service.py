"""The run service (no MLflow: a fake sink and write, a real runs.log in tmp_path): creation keys
and idempotent starts, offline ids reserved and resolved, end, plugin-call bookkeeping."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import anyio
import pytest

from tests.support.run_fakes import Wiring
from tracker_client import protocol as p
from tracker_daemon.commit.offline_ids import Waiting
from tracker_daemon.errors import PermanentSinkError, RunGone
from tracker_daemon.intake.clients import ClientInfo
from tracker_daemon.runs.run_service import creation_key
from tracker_daemon.runs.runs import RunBook

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_creation_key_is_the_one_spelling_of_runs_log_keys() -> None:
    assert creation_key("c1", 7) == "c1:7"
    assert creation_key(offline_id="offline-ab") == "offline:offline-ab"
    assert creation_key("c1", 7, offline_id="offline-ab") == "offline:offline-ab"


async def test_a_resent_start_run_gets_the_run_it_created(tmp_path: Path) -> None:
    w = Wiring(tmp_path)
    msg = p.StartRun(req=3, client_id="c1", experiment_name="e", run_name="r")
    first = await w.runs.start(msg)
    again = await w.runs.start(msg)
    assert again == first and first.run_id == "run-1"
    assert len(w.sink.named("create_run")) == 1
    assert len(w.sink.named("get_or_create_experiment")) == 1  # cached after the first
    assert ("create_run", 5.0) in w.write.log
    book = RunBook(tmp_path / "runs.log")  # persisted: holds across a restart
    book.load()
    assert book.created[creation_key("c1", 3)].run_id == "run-1"
    assert "c1" in book.open["run-1"].owners
    assert not w.runs.starts_new_run(msg)
    assert w.runs.starts_new_run(p.StartRun(req=4, client_id="c1"))


async def test_another_request_creates_another_run(tmp_path: Path) -> None:
    w = Wiring(tmp_path)
    a = await w.runs.start(p.StartRun(req=1, client_id="c1"))
    b = await w.runs.start(p.StartRun(req=2, client_id="c1"))
    assert (a.run_id, b.run_id) == ("run-1", "run-2")
    assert w.runs.open_runs_of("c1") == 2 and w.runs.status() == {"open_runs": 2}


async def test_an_offline_run_is_created_once_whoever_sends_it(tmp_path: Path) -> None:
    w = Wiring(tmp_path)
    live = p.StartRun(req=1, client_id="c1", offline_id="offline-x1")
    imported = p.StartRun(req=9, client_id="import", offline_id="offline-x1")
    a = await w.runs.start(live)
    b = await w.runs.start(imported)
    assert a == b and len(w.sink.named("create_run")) == 1
    assert w.sink.named("create_run")[0][2] == {}  # no tag of the daemon's own
    assert await w.runs.resolve("offline-x1") == a.run_id
    assert await w.runs.resolve("plain-run-id") == "plain-run-id"


async def test_records_of_a_reserved_offline_run_wait_for_its_start(tmp_path: Path) -> None:
    w = Wiring(tmp_path)
    msg = p.StartRun(req=1, client_id="c1", offline_id="offline-x2")
    w.runs.reserve(msg)
    assert not w.runs.starts_new_run(msg)  # reserved: a second one is not a new run
    resolved: list[str] = []
    async with anyio.create_task_group() as tg:

        async def resolve() -> None:
            resolved.append(await w.runs.resolve("offline-x2"))

        tg.start_soon(resolve)
        await anyio.wait_all_tasks_blocked()
        assert resolved == []  # waiting for the start_run
        handle = await w.runs.start(msg)
    assert resolved == [handle.run_id]


async def test_an_offline_run_whose_creation_failed_is_gone(tmp_path: Path) -> None:
    w = Wiring(tmp_path)
    w.sink.fail_create = PermanentSinkError("INVALID_PARAMETER_VALUE", "bad name")
    msg = p.StartRun(req=1, client_id="c1", offline_id="offline-x3")
    w.runs.reserve(msg)
    with pytest.raises(PermanentSinkError):
        await w.runs.start(msg)
    with anyio.fail_after(1):  # no wait: the failure is known
        with pytest.raises(
            RunGone, match="offline run offline-x3 was never created: bad name"
        ) as e:
            await w.runs.resolve("offline-x3")
    assert isinstance(e.value, RunGone) and e.value.code == "RESOURCE_DOES_NOT_EXIST"


async def test_an_offline_run_never_started_is_gone_at_once(tmp_path: Path) -> None:
    w = Wiring(tmp_path)  # the default wait (30 s) is not waited: nothing could start it
    with anyio.fail_after(1), pytest.raises(RunGone, match="its start_run did not reach the"):
        await w.runs.resolve("offline-x4")
    assert isinstance(w.runs.lookup("offline-x4"), RunGone)  # remembered


async def test_a_replayed_end_of_an_unknown_offline_run_waits_for_a_resent_start(
    tmp_path: Path,
) -> None:
    handled: list[str] = []
    w = Wiring(tmp_path, on_offline=handled.append)
    w.runs.serving()
    assert isinstance(w.runs.lookup("offline-x5", True), Waiting)
    resolved: list[str] = []
    async with anyio.create_task_group() as tg:

        async def resolve() -> None:
            resolved.append(await w.runs.resolve("offline-x5", replayed=True))

        tg.start_soon(resolve)
        await anyio.wait_all_tasks_blocked()
        assert resolved == []  # its client may resend the start_run after the restart
        msg = p.StartRun(req=1, client_id="c1", offline_id="offline-x5")
        w.runs.reserve(msg)
        handle = await w.runs.start(msg)
    assert resolved == [handle.run_id] and handled == ["offline-x5"]


async def test_a_replayed_record_of_an_unknown_offline_run_waits_a_bounded_time(
    tmp_path: Path,
) -> None:
    w = Wiring(tmp_path, resolve_wait_s=0.05)
    w.runs.serving()
    with anyio.fail_after(5), pytest.raises(RunGone, match="did not reach the daemon"):
        await w.runs.resolve("offline-x6", replayed=True)


async def test_a_child_of_an_offline_run_gets_the_resolved_parent(tmp_path: Path) -> None:
    w = Wiring(tmp_path)
    parent = await w.runs.start(p.StartRun(req=1, client_id="c1", offline_id="offline-p"))
    await w.runs.start(p.StartRun(req=2, client_id="c1", parent_run_id="offline-p"))
    assert w.sink.named("create_run")[1][4] == parent.run_id


async def test_resume_seeds_params_and_end_releases_the_run(tmp_path: Path) -> None:
    w = Wiring(tmp_path)
    w.sink.params["r9"] = {"lr": "0.1"}
    handle = await w.runs.start(p.StartRun(req=1, client_id="c1", run_id="r9"))
    assert handle.run_id == "r9" and w.seeded == [("r9", {"lr": "0.1"})]
    assert not w.runs.starts_new_run(p.StartRun(req=2, client_id="c1", run_id="r9"))  # owned
    assert w.runs.starts_new_run(p.StartRun(req=2, client_id="c2", run_id="r9"))
    await w.runs.end("r9", "FINISHED", 123)
    assert w.sink.named("end_run") == [("r9", "FINISHED", 123)]
    assert w.released == ["r9"] and "r9" not in w.runbook.open
    assert ("end_run", 30.0) in w.write.log


async def test_a_run_of_a_client_already_gone_is_handed_to_the_orphans(tmp_path: Path) -> None:
    w = Wiring(tmp_path)
    w.clients["c1"] = ClientInfo("c1", pid=4242, host="h", gone=True)
    await w.runs.start(p.StartRun(req=1, client_id="c1"))
    assert w.gone == ["c1"]
    assert w.runbook.owners["c1"] == (4242, "h")


async def test_plugin_calls_keep_the_run_bookkeeping(tmp_path: Path) -> None:
    w = Wiring(tmp_path)
    w.clients["c1"] = ClientInfo("c1")
    info = SimpleNamespace(
        run_id="m1", experiment_id=5, artifact_uri="s3://a/m1", run_name="n", status="RUNNING"
    )
    create = p.Call(4, "c1", 0, "tracking", "create_run", b"", b"")
    await w.runs.after_call(create, SimpleNamespace(info=info))
    assert w.runs.created(creation_key("c1", 4)) is not None
    assert "c1" in w.runbook.open["m1"].owners and w.clients["c1"].runs == {"m1"}
    assert not w.runs.starts_new_run(create)  # resent: answered from the run book
    assert w.runs.starts_new_run(p.Call(5, "c1", 0, "tracking", "create_run", b"", b""))
    assert not w.runs.starts_new_run(p.Call(6, "c1", 0, "tracking", "get_run", b"", b""))
    info.status = "FINISHED"
    await w.runs.after_call(p.Call(7, "c1", 0, "tracking", "update_run_info", b"", b""), info)
    assert "m1" not in w.runbook.open
    await w.runs.after_call(p.Call(8, "c1", 0, "registry", "create_run", b"", b""), info)
    assert w.runs.created(creation_key("c1", 8)) is None  # not the tracking store: untouched


async def test_artifact_uri_of_a_known_run_and_of_one_started_elsewhere(tmp_path: Path) -> None:
    w = Wiring(tmp_path)
    handle = await w.runs.start(p.StartRun(req=1, client_id="c1", offline_id="offline-a"))
    assert await w.runs.artifact_uri("offline-a") == handle.artifact_uri
    assert w.sink.named("run_info") == []
    assert await w.runs.artifact_uri("other") == "file:///elsewhere/other"
    assert await w.runs.artifact_uri("other") == "file:///elsewhere/other"
    assert w.sink.named("run_info") == [("other",)]  # read once, then remembered


async def test_experiment_tags_and_location_are_used_for_the_experiment(tmp_path: Path) -> None:
    w = Wiring(tmp_path)
    msg = p.StartRun(
        req=1,
        client_id="c1",
        experiment_name="e",
        experiment_tags={"owner": "vision"},
        artifact_location="/data/art/e",
    )
    handle = await w.runs.start(msg)
    assert handle.experiment_id == "exp-e"
    assert w.sink.named("experiments.get_or_create") == [("e", "/data/art/e")]
    assert w.sink.named("get_or_create_experiment") == []  # the location needs the other path
    assert w.experiments.tags == {"exp-e": {"owner": "vision"}}
    # by id: the tags are set on that experiment, no experiment is created
    await w.runs.start(
        p.StartRun(req=2, client_id="c1", experiment_id="7", experiment_tags={"a": "b"})
    )
    assert w.experiments.tags["7"] == {"a": "b"}
    assert w.sink.named("create_run")[1][0] == "7"
    assert ("set_tags", 5.0) in w.write.log and ("get_or_create", 5.0) in w.write.log


async def test_resume_by_name_resumes_the_latest_run_of_that_name(tmp_path: Path) -> None:
    w = Wiring(tmp_path)
    w.experiments.named[("exp-e", "nightly")] = "r-old"
    w.sink.params["r-old"] = {"lr": "0.1"}
    msg = p.StartRun(
        req=1,
        client_id="c1",
        experiment_name="e",
        run_name="nightly",
        resume="by_name",
        offline_id="offline-n1",
    )
    handle = await w.runs.start(msg)
    assert handle.run_id == "r-old" and w.sink.named("create_run") == []
    assert w.sink.named("resume_run") == [("r-old",)] and w.seeded == [("r-old", {"lr": "0.1"})]
    assert await w.runs.resolve("offline-n1") == "r-old"  # the offline id maps to it
    assert "c1" in w.runbook.open["r-old"].owners
    assert await w.runs.start(msg) == handle  # replayed: answered from the run book
    assert w.sink.named("experiments.latest_run_named") == [("exp-e", "nightly")]


async def test_resume_by_name_creates_the_run_when_there_is_none(tmp_path: Path) -> None:
    w = Wiring(tmp_path)
    msg = p.StartRun(req=1, client_id="c1", experiment_id="3", run_name="fresh", resume="by_name")
    handle = await w.runs.start(msg)
    assert handle.run_id == "run-1" and w.sink.named("resume_run") == []
    assert w.sink.named("create_run")[0][3] == "fresh"
    assert w.sink.named("experiments.latest_run_named") == [("3", "fresh")]


@pytest.mark.parametrize(
    ("msg", "fragment"),
    [
        (p.StartRun(req=1, client_id="c1", resume="by_name"), "needs a run_name"),
        (p.StartRun(req=1, client_id="c1", run_name="x", resume="latest"), "is not nil or"),
        (p.StartRun(req=1, client_id="c1", artifact_location="/a"), "needs an experiment_name"),
    ],
)
async def test_start_options_that_cannot_be_performed_are_refused(
    tmp_path: Path, msg: p.StartRun, fragment: str
) -> None:
    w = Wiring(tmp_path)
    with pytest.raises(PermanentSinkError, match=fragment) as e:
        await w.runs.start(msg)
    assert e.value.code == "INVALID_PARAMETER_VALUE"
    assert w.sink.calls == []  # refused before any MLflow call


async def test_the_experiment_name_is_looked_up_in_the_store_at_each_start(
    tmp_path: Path,
) -> None:
    w = Wiring(tmp_path)
    first = await w.runs.start(p.StartRun(req=1, client_id="c1", experiment_name="x"))
    assert first.experiment_id == "exp-x" and len(w.sink.named("get_or_create_experiment")) == 1
    again = await w.runs.start(p.StartRun(req=2, client_id="c1", experiment_name="x"))
    assert again.experiment_id == "exp-x"  # found: no write
    assert len(w.sink.named("get_or_create_experiment")) == 1
    w.experiments.current["x"] = "7"  # renamed away, and a new "x" (7) made elsewhere
    third = await w.runs.start(p.StartRun(req=3, client_id="c1", experiment_name="x"))
    assert third.experiment_id == "7"
    w.experiments.current["x"] = None  # renamed away or deleted: get-or-create decides
    await w.runs.start(p.StartRun(req=4, client_id="c1", experiment_name="x"))
    assert len(w.sink.named("get_or_create_experiment")) == 2
    assert w.sink.named("experiments.find") == [("x",)] * 4
