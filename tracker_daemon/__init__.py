"""tracker-daemon: one process per host that receives MLflow records from many training processes
over ZeroMQ, batches them and is the only writer to the MLflow tracking backend."""

# One version for both distributions: the client package holds it (tracker_client/VERSION).
from tracker_client._version import __version__

__all__ = ["__version__"]
