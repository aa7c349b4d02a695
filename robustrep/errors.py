"""Errors that end a run with a one-paragraph message instead of a traceback.

Everything raised as a :class:`RobustRepError` is caught by :func:`robustrep.cli.main`, which prints
the message (what went wrong and how to fix it) and exits with status 2.
"""

from __future__ import annotations


class RobustRepError(Exception):
    """Base class for user-facing errors: the message names the problem and the fix."""


class DataNotFoundError(RobustRepError, FileNotFoundError):
    """A dataset root or file is missing; the message names the file and the expected layout."""


class CorruptDataError(RobustRepError):
    """A data file exists but cannot be read (e.g. a truncated JPEG); the message names the file."""


class NonFiniteLossError(RobustRepError):
    """A loss became NaN or infinite; the message names the loss term and the global step."""


class ConfigError(RobustRepError, ValueError):
    """A configuration value is inconsistent with the data or the method."""


def check_choice(owner: str, name: str, value: object, choices: tuple) -> None:
    """Raise a :class:`ConfigError` naming the accepted values unless ``value`` is one of
    ``choices``.
    """
    if value not in choices:
        raise ConfigError(
            f"{owner}: {name} must be one of {', '.join(map(str, choices))}, got {value!r}"
        )
