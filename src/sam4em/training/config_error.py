"""`ConfigError`: a training config that cannot be used (its own module, so that the config, the
presets and the checks can all raise it without importing each other)."""

from __future__ import annotations

__all__ = ["ConfigChanged", "ConfigError"]


class ConfigError(ValueError):
    """A config that cannot be used: unknown key, wrong type, missing file."""


class ConfigChanged(ConfigError):
    """A resume with a config that differs from the run's in `fields` (dotted keys)."""

    def __init__(self, message: str, fields: list[str]) -> None:
        super().__init__(message)
        self.fields = fields
