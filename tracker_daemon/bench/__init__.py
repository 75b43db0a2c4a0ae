"""``tracker-daemon bench``: benchmark the client, the daemon and the MLflow backend.

Each repeat of a scenario starts its own daemon on a fresh temporary state dir (removed unless
``--keep``) and SQLite store (or ``--backend-store-uri``). Figures are min / median / max over
``--repeat`` repeats; targets are judged on the median. Committed metrics are counted in the store
(SQL on SQLite, else ``get_metric_history``); the bench fails unless committed == sent.

  client      cost of Run.log_metric in a tight loop (own process); import tracker_client
  throughput  N workers through the daemon, vs. the ceiling (1 process, MlflowClient.log_batch of
              1,000 metrics) and direct (N processes calling mlflow.log_metric, time-capped)
  latency     log -> visible in the store at an offered load (default: half the ceiling)
  drain       Run.end() after a burst of 10k metrics
  memory      daemon RSS and CPU/record while a 5M-record backlog is held with the sink paused
              (another process holds an exclusive lock on the SQLite store)

Exit status 0 when every scenario ran and every count matched (a missed target is reported, not
fatal), else 1. ``--json``: the JSON document on stdout, the table on stderr.
"""

from .command import add_parser, run_bench

__all__ = ["add_parser", "run_bench"]
