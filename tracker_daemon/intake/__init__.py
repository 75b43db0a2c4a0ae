"""Intake: the socket and what arrives on it — frames decoded and checked (server, intake),
the client table and its limits (clients, limits, request_slots) and client liveness. May use:
journal, artifacts, commit, store, ops, errors (never runs, the daemon or the CLI)."""
