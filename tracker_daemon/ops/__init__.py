"""Operations: status counters and document, Prometheus metrics, sd_notify, task supervision,
call statistics, progress lines, log throttles and the `mlflow ui` hint. May use: errors only
(the bottom layer, beside errors)."""
