"""Errors raised at build time, before any compute is spent, and when a job's numbers stop being numbers.

Every dlm error derives from ``DlmError``, so an entry point can print any of them as one line
(the message names the key or path and the fix) without catching unrelated exceptions.
"""


class DlmError(Exception):
    """Base of dlm's own errors: an input the user can fix, described in one line."""


class ConfigError(DlmError, ValueError):
    """A setting is invalid or inconsistent; the message names the key and the fix."""


class OfflineError(DlmError, RuntimeError):
    """A hub resource was requested while the network is unavailable."""


class CheckpointError(DlmError, FileNotFoundError):
    """A checkpoint or model directory is missing or corrupt; the message names the path."""


class NonFiniteError(DlmError, ArithmeticError):
    """A model produced NaN or inf (weights, logits, a loss or a score); the message names which, and
    the job stops without writing its output."""
