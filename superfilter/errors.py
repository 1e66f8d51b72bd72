"""Errors shown to users as one line without a traceback, and the small checks that raise them."""

EXIT_USER_ERROR = 2  # the exit status of `superfilter` and `python run.py` for anything the user can fix


class UserError(Exception):
    """A problem with the user's configuration, data or environment that they can fix."""


class ConfigError(UserError):
    """A configuration value that is missing, unknown or out of range."""


class DataError(UserError):
    """A malformed or unusable data file; the message names file, line and field."""


def one_of(name: str, values: list[str], allowed: tuple[str, ...]) -> None:
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ConfigError(f"{name}: unknown {unknown}; choose from {list(allowed)}")


def check_limit(name: str, value: int) -> None:
    if value < 0:
        raise ConfigError(f"{name} must be >= 0 (0 = no limit), got {value}")
