"""Runs: the run lifecycle — run book (runs.log), run service, durable endings, orphans, the
control requests, spool imports and the system-metrics sampler. May use: intake, journal,
artifacts, commit, store, ops, errors."""
