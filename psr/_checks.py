"""Argument checks shared across psr (no torch import)."""

from __future__ import annotations

import operator


def int_arg(value: object, name: str, lo: int, hi: int | None, expected: str) -> int:
    """``value`` as an int in ``lo..hi`` (``hi=None``: no upper bound), else a ValueError.

    Accepts ints and numpy integers (``operator.index``), not bools or floats; the error reads
    ``"{name} must be {expected}, got {value!r}"``.
    """
    if not isinstance(value, bool):
        try:
            v = operator.index(value)
        except TypeError:
            pass
        else:
            if v >= lo and (hi is None or v <= hi):
                return v
    raise ValueError(f"{name} must be {expected}, got {value!r}")
