"""Suite-wide settings: client spools of this test process and its workers go to a private
directory, never to the machine's real spool dir."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TRACKER_SPOOL_DIR", tempfile.mkdtemp(prefix="tracker-test-spool-"))


def pytest_sessionfinish(session: object, exitstatus: int) -> None:
    """Tests leave trackers whose daemon they killed on purpose; close them now, quietly, so the
    interpreter's exit handler does not print about them after pytest's summary line."""
    import logging

    from tracker_client import api

    logging.getLogger("tracker_client").setLevel(logging.CRITICAL)
    for tracker in list(api._TRACKERS):
        tracker._open_runs.clear()
        tracker._transport.close(0.5)
        api._TRACKERS.discard(tracker)
