"""Boolean environment variables, parsed one way across psr (no torch import: the CLI uses it)."""

from __future__ import annotations

import os

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def env_flag(name: str, default: bool = False) -> bool:
    """A boolean environment variable: 1/true/yes/on or 0/false/no/off (any case); unset: ``default``.

    Any other value raises a ValueError naming the variable, rather than guessing.
    """
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"environment variable {name} must be one of 1/true/yes/on or 0/false/no/off, got {raw!r}")
