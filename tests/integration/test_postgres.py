"""Past one host: two daemons (two "hosts") write through one real mlflow server on PostgreSQL."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from tests.postgres import mlflow_server, postgres
from tests.support.daemon import Daemon, short_tmpdir
from tests.support.workers import finish_workers, start_worker

pytestmark = pytest.mark.integration


@pytest.mark.timeout(600)
def test_two_daemons_eight_workers_each_through_mlflow_server_on_postgres(tmp_path: Path) -> None:
    with postgres() as pg_url, mlflow_server(pg_url, tmp_path / "artifacts") as url:
        daemons = []
        socks = []
        try:
            for host in ("host-a", "host-b"):
                sock_dir = short_tmpdir()
                socks.append(sock_dir)
                d = Daemon(
                    tmp_path / host,
                    f"ipc://{sock_dir / 'd.sock'}",
                    tmp_path / f"{host}.log",
                    ["--backend-store-uri", url],
                )
                daemons.append(d.start())
            procs, outs = [], []
            for h, d in enumerate(daemons):
                for i in range(8):
                    spec = {
                        "experiment": "multi-host",
                        "run_name": f"h{h}-w{i}",
                        "params": {"host": str(h), "worker": str(i)},
                        "keys": ["loss", "acc"],
                        "steps": 500,
                        "artifact": {"name": "a.txt", "content": f"{h}-{i}"},
                    }
                    out = tmp_path / f"h{h}-w{i}.json"
                    outs.append(out)
                    procs.append(start_worker(d.address, spec, out))
            finish_workers(procs, timeout=400)
            statuses = [d.status() for d in daemons]
        finally:
            for d in daemons:
                if d.proc is not None and d.proc.poll() is None:
                    d.stop()
            for s in socks:
                shutil.rmtree(s, ignore_errors=True)
        client = MlflowClient(tracking_uri=url)
        exps = [e for e in client.search_experiments(ViewType.ALL) if e.name == "multi-host"]
        assert len(exps) == 1
        runs = client.search_runs([exps[0].experiment_id], max_results=100)
        assert len(runs) == 16
        for out in outs:
            res = json.loads(out.read_text())
            run = client.get_run(res["run_id"])
            assert run.info.status == "FINISHED"
            for key in ("loss", "acc"):
                got = sorted(
                    (m.step, m.value, m.timestamp)
                    for m in client.get_metric_history(res["run_id"], key)
                )
                want = sorted((s, v, ts) for s, v, ts in res["sent"][key])
                assert got == want  # every point once: nothing missing, nothing twice
            arts = [f.path for f in client.list_artifacts(res["run_id"])]
            assert len(arts) == 1 and arts[0].endswith("a.txt")
        for st in statuses:
            assert st["failed"] == 0
            assert st["committed"] == st["received"] == 8 * (2 + 1000 + 1)
