"""User-facing errors.

Command-line entry points catch :class:`FMBoostError` and print its message as one line, so every
mistake a user can make (a typo in a config key, a weights path that does not exist) is reported
without a traceback. Programming errors keep raising the usual Python exceptions.
"""


class FMBoostError(Exception):
    """A problem the user can fix; the message says what is wrong and where."""


class ConfigError(FMBoostError):
    """A configuration key is unknown, has the wrong type or an invalid value."""


class WeightsError(FMBoostError):
    """Model weights are missing, unreadable or do not fit the architecture."""
