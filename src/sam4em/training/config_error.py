"""`ConfigError`: a training config that cannot be used (its own module, so that the config, the
presets and the checks can all raise it without importing each other)."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A config that cannot be used: unknown key, wrong type, missing file."""
