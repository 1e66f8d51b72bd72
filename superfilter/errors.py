"""Error types whose message is shown to users as one line, without a traceback."""

EXIT_USER_ERROR = 2  # the exit status of `superfilter` and `python run.py` for anything the user can fix


class UserError(Exception):
    """A problem with the user's configuration, data or environment that they can fix."""


class ConfigError(UserError):
    """A configuration value that is missing, unknown or out of range."""


class DataError(UserError):
    """A malformed or unusable data file; the message names file, line and field."""
