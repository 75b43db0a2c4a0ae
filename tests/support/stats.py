"""Percentiles of measured samples."""

from __future__ import annotations

from typing import TypeVar

N = TypeVar("N", int, float)


def percentile(values: list[N], q: float) -> N:
    """The ``q`` quantile (0..1) of ``values``: the sorted value at index ``int(q * n)``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
