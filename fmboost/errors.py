"""User-facing errors.

The library raises :class:`FMBoostError` naming the *parameter* that is wrong (``base``, ``image``,
``first_stage.path``); each command-line entry point reports it as one line in terms of its own flags
(see :mod:`fmboost.cli`), so every mistake a user can make is reported without a traceback.
Programming errors keep raising the usual Python exceptions.
"""


class FMBoostError(Exception):
    """A problem the user can fix; the message says what is wrong, ``parameter`` where."""

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.message, self.parameter = message, parameter

    def __str__(self) -> str:
        return f"{self.parameter}: {self.message}" if self.parameter else self.message

    def __reduce__(self):  # keep the parameter when the error crosses processes (submitit pickles it)
        return type(self), (self.message, self.parameter)


class ConfigError(FMBoostError):
    """A configuration key is unknown, has the wrong type or an invalid value."""


class WeightsError(FMBoostError):
    """Model weights are missing, unreadable or do not fit the architecture."""
