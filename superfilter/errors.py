"""Error types whose message is shown to users as one line, without a traceback."""


class UserError(Exception):
    """A problem with the user's configuration, data or environment that they can fix."""


class ConfigError(UserError):
    """A configuration value that is missing, unknown or out of range."""


class DataError(UserError):
    """A malformed or unusable data file; the message names file, line and field."""
