"""The package's user-facing error type."""


class NSEError(ValueError):
    """Bad input or an impossible request; the message is one line meant for the user."""


class Cancelled(RuntimeError):
    """A long computation was stopped by its cancel flag."""
