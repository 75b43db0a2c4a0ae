"""The one version number of both distributions, tracker-client and tracker-daemon.

It lives in the plain-text file ``VERSION`` next to this module: setuptools reads that file for
the ``version`` of both pyproject.toml files (``[tool.setuptools.dynamic]``), the client wheel
carries it as package data, and ``tracker_daemon.__version__`` is this value. To release, edit
``VERSION`` and the ``tracker-client==`` pin in the top-level pyproject.toml (a unit test fails
when the two differ).
"""

from __future__ import annotations

from pathlib import Path

__version__ = Path(__file__).with_name("VERSION").read_text(encoding="ascii").strip()
