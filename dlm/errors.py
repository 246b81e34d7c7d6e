"""Errors raised at build time, before any compute is spent."""


class ConfigError(ValueError):
    """A setting is invalid or inconsistent; the message names the key and the fix."""


class OfflineError(RuntimeError):
    """A hub resource was requested while the network is unavailable."""


class CheckpointError(FileNotFoundError):
    """A checkpoint or model directory is missing or corrupt; the message names the path."""
