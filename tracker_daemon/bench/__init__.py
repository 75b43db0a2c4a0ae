"""``tracker-daemon bench``: benchmark the client, the daemon and the MLflow backend.

Each repeat of a scenario starts its own daemon on a fresh temporary state dir (removed unless
``--keep``) and SQLite store (or ``--backend-store-uri``). Figures are min / median / max over
``--repeat`` repeats; targets are judged on the median. Committed metrics are counted in the store
(SQL on SQLite, else ``get_metric_history``); the bench fails unless committed == sent.

  client      cost of Run.log_metric in a tight loop (own process); import tracker_client
  throughput  N workers through the daemon (default sink) and through the daemon with
              --sink mlflow, same workload and repeat, vs. the raw ceiling (plain sqlite3
              executemany into a fresh MLflow-schema db, 16k rows per transaction), MLflow's
              log_batch (1 process, 1,000 metrics per call) and direct (N processes calling
              mlflow.log_metric, time-capped); daemon CPU per committed record (all threads)
  latency     log -> visible in the store at an offered load (default: half the default
              daemon's committed/s)
  everyday    paced workers at fixed total rates (--rates, default 1k, 5k, 20k points/s), the
              default sink and --sink mlflow: daemon CPU per point and share of a core,
              log -> visible p50/p99, fsyncs/s, frames/s; a daemon with 50 idle clients: CPU
  drain       Run.end() after a burst of 100k metrics
  memory      daemon RSS and CPU/record while a 5M-record backlog is held with the sink paused
              (another process holds an exclusive lock on the SQLite store)
  rest        mlflow server on the daemon's SQLite file, read over REST every 100 ms: p99 idle
              vs. while the daemon writes at full rate; WAL and rollback journal, same repeat
  postgres    2 daemons -> a private PostgreSQL directly vs. 2 daemons -> mlflow server on it
              (skipped, with the reason, without PostgreSQL or a driver)
  sampler     the system-metrics sampler at 100 open runs that asked for it: its CPU as a share
              of a core (sampling every 1 s, and scaled to the default 10 s), the daemon's
              CPU, one sample's time, records/s

Exit status 0 when every scenario ran (or was skipped) and every count matched (a missed target
is reported, not fatal), else 1. ``--json``: the JSON document on stdout (its "targets": every
judged figure, met or not), the table on stderr.
"""

from .command import add_parser, run_bench

__all__ = ["add_parser", "run_bench"]
