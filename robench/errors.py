"""Errors every layer may raise: a configuration that cannot run is reported before anything runs."""


class ConfigError(ValueError):
    """A grid or run that cannot run as configured; raised before any cell starts."""
