"""``python -m tracker_daemon.cli``: the ``tracker-daemon`` command."""

from .cli import main

__all__: list[str] = []

main()
