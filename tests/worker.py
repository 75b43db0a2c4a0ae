"""A training-process stand-in for the tests: ``python worker.py SPEC_JSON OUT_JSON``.

SPEC keys (all optional): experiment, run_name, params {k: v}, tags {k: v}, keys [str],
steps (int), artifact {"name":..., "content":..., "rewrite": str|None}, end ("FINISHED" |
"FAILED" | "exit" (no end call) | "raise" (exception inside the run's with-block)),
wait_stdin (bool: block until a line arrives, to start many workers at one moment),
resume_run_id, parent_run_id, flush_timeout, pace [every_n_steps, sleep_s] (log at a set rate),
wait_after_start / wait_before_end (bool: print "started" / "logged" on stdout, then block until
a line arrives: after start_run / before ending).
OUT: {"run_id", "experiment_id", "sent": {key: [[step, value, ts], ...]}, "per_call_ns": [...],
"ended": what run.end() returned (True: committed; False: held by the daemon or kept)}.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import tracker_client


def main() -> None:
    spec = json.loads(sys.argv[1])
    out = Path(sys.argv[2])
    if spec.get("wait_stdin"):
        sys.stdin.readline()
    tracker = tracker_client.connect()
    run = tracker.start_run(
        spec.get("experiment"),
        run_name=spec.get("run_name"),
        tags=spec.get("tags"),
        run_id=spec.get("resume_run_id"),
        parent_run_id=spec.get("parent_run_id"),
    )
    result = {"run_id": run.run_id, "experiment_id": run.experiment_id, "sent": {}}
    out.write_text(json.dumps(result))  # the run id is known even if we die later
    if spec.get("wait_after_start"):
        print("started", flush=True)
        sys.stdin.readline()
    if spec.get("params"):
        run.log_params(spec["params"])
    keys = spec.get("keys", [])
    sent: dict[str, list[list[float]]] = {k: [] for k in keys}
    costs = []
    every, pause = spec.get("pace") or (0, 0.0)
    for step in range(spec.get("steps", 0)):
        if every and step and step % every == 0:
            time.sleep(pause)
        for i, key in enumerate(keys):
            value = step * 0.5 + i + (os.getpid() % 7) / 10
            ts = 1_700_000_000_000 + step
            t0 = time.perf_counter_ns()
            run.log_metric(key, value, step=step, timestamp=ts)
            costs.append(time.perf_counter_ns() - t0)
            sent[key].append([step, value, ts])
    art = spec.get("artifact")
    if art:
        path = out.parent / f"{out.stem}-{art['name']}"
        path.write_text(art["content"])
        run.log_artifact(str(path), art.get("artifact_path"))
        if art.get("rewrite") is not None:
            path.write_text(art["rewrite"])
        else:
            path.unlink()
    result.update(sent=sent, per_call_ns=costs)
    out.write_text(json.dumps(result))
    if spec.get("hold_before_end"):  # stay alive, run open, until the test says "go" again
        sys.stdin.readline()
    end = spec.get("end", "FINISHED")
    if spec.get("wait_before_end"):
        print("logged", flush=True)
        sys.stdin.readline()
    if end == "exit":
        return  # the client's exit handler must flush and end the run
    if end == "raise":
        with run:
            raise RuntimeError("training diverged")
    result["ended"] = run.end(end, timeout=spec.get("flush_timeout", 120))
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as exc:
        if "training diverged" not in str(exc):
            raise
