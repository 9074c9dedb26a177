"""Argument checks shared across psr (no torch import)."""

from __future__ import annotations

import operator

import numpy as np


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


def channel_axis_arg(channel_axis: object) -> int | str | None:
    """``channel_axis`` as given if it is ``"auto"``, None or an integer (numpy integers too, not
    bools), else a ValueError naming the three forms."""
    if channel_axis is None or (isinstance(channel_axis, str) and channel_axis == "auto"):
        return channel_axis
    if isinstance(channel_axis, (int, np.integer)) and not isinstance(channel_axis, (bool, np.bool_)):
        return channel_axis
    raise ValueError(f"channel_axis must be 'auto', None or an integer, got {channel_axis!r}")


def channel_axis_index(channel_axis: int, shape: tuple[int, ...]) -> int:
    """An integer ``channel_axis`` of an image of ``shape`` as a non-negative axis index.

    The image needs the channel axis plus two spatial axes; a ValueError names the argument.
    """
    ndim = len(shape)
    if not -ndim <= channel_axis < ndim:
        raise ValueError(f"channel_axis={channel_axis} is out of range for an image of shape {shape}")
    if ndim < 3:
        raise ValueError(f"channel_axis={channel_axis} needs an image with 3 or more dimensions, got shape {shape}")
    return int(channel_axis) % ndim
