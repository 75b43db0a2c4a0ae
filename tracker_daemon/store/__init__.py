"""Store: the only writer to MLflow — the sink, the SQL writer (sqlwriter, sqlrules, sqlschema),
the SQLite store checks, experiments, and the store calls of tracker:// clients (calls, mlflow2).
May use: ops, errors."""
