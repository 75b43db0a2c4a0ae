"""tracker-daemon: one process per host that receives MLflow records from many training processes
over ZeroMQ, batches them and is the only writer to the MLflow tracking backend."""

__version__ = "0.1.0"
