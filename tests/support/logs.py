"""The daemon's log line format."""

from __future__ import annotations

import re

LOG_LINE = re.compile(r"^ts=\S+ level=[A-Z]+ logger=\S+ event=[a-z_]+( \S.*)?$")
