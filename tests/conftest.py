"""Suite-wide settings: client spools of this test process and its workers go to a private
directory, never to the machine's real spool dir."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TRACKER_SPOOL_DIR", tempfile.mkdtemp(prefix="tracker-test-spool-"))
