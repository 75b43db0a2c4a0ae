"""What the bench reads of a process in ``/proc``: CPU ticks (whole process or one thread) and
memory figures (``VmRSS``, ``VmHWM``)."""

from __future__ import annotations

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int, tid: int | None = None) -> int:
    """utime + stime (clock ticks) of a process, or of one of its threads."""
    with open(f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def proc_kb(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next((int(x.split()[1]) for x in fh if x.startswith(name + ":")), 0)
