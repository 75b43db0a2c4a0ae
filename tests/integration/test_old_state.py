"""A state dir written by the daemon before its modules moved into subpackages (the committed
fixture tests/fixtures/old_state.tar.gz, made by tests/fixtures/make_old_state.py from commit
9f6c63c) is replayed by this tree: the journal's records that no commit reached land in MLflow
next to the ones that did, and runs.log is read (the run keeps its id)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.support.daemon import daemon_cli

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).parents[1] / "fixtures" / "old_state.tar.gz"


@pytest.mark.timeout(120)
def test_an_old_state_dir_is_replayed_into_mlflow(tmp_path: Path) -> None:
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    state = tmp_path / "state"
    rid = (state / "run_id").read_text().strip()
    store = MlflowClient(f"sqlite:///{state / 'mlflow.db'}")
    before = store.get_run(rid)
    assert [m.step for m in store.get_metric_history(rid, "m")] == [0, 1, 2]
    assert "replayed" not in before.data.params  # only in the journal so far

    done = daemon_cli("run", "--until-idle", "--state-dir", str(state), timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "event=idle" in done.stderr + done.stdout

    run = store.get_run(rid)
    history = sorted((m.step, m.value) for m in store.get_metric_history(rid, "m"))
    assert history == [(s, float(s)) for s in range(8)]
    assert run.data.params == {"stored": "yes", "replayed": "yes"}
    assert run.data.tags["phase"] == "replayed"
    assert run.info.run_name == "before-the-move"
