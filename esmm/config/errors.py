"""The configuration error every loader, schema check and date parser raises.

Its own module so that :mod:`esmm.util.timeutil`, :mod:`esmm.config.schema` and
:mod:`esmm.config.loader` can all raise it without importing each other.
"""


class ConfigError(ValueError):
    """A configuration key is unknown, has the wrong type, or an impossible value."""


def require(cond: bool, key: str, msg: str) -> None:
    """Raise :class:`ConfigError` ``"<key>: <msg>"`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"{key}: {msg}")
