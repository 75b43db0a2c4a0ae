"""What the tests share: the daemon process (``daemon``), condition waits (``waiting``), worker
processes (``workers``), raw ZeroMQ peers and ports (``net``), the MLflow store (``store``),
small filesystems (``disk``) and percentiles (``stats``)."""
