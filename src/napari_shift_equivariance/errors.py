"""The package's user-facing error type, and the cancel flag long computations check."""

from typing import Any


class NSEError(ValueError):
    """Bad input or an impossible request; the message is one line meant for the user."""


class Cancelled(RuntimeError):
    """A long computation was stopped by its cancel flag."""


def is_cancelled(cancel: Any) -> bool:
    """Whether a cancel flag is raised: ``None``, a ``threading.Event`` or a callable."""
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())
