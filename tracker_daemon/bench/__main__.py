"""A child process of the bench: ``python -m tracker_daemon.bench MODE SPEC``."""

from __future__ import annotations

import json
import sys

from .children import CHILDREN

CHILDREN[sys.argv[1]](json.loads(sys.argv[2]))
