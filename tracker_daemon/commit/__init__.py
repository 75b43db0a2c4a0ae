"""Commit: per-run batching (batcher, lanes: pure), per-client seq bookkeeping (ledger: pure),
barriers, pacing, offline-id verdicts and the committer loops over the backend. May use: store,
ops, errors."""
