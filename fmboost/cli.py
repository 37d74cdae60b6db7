"""What every command-line entry point shares: a user's mistake is one line on stderr and exit code 2.

    @report_errors(flags={"base": "--base", "image": "--input-image"})
    def main(argv: list[str] | None = None) -> int: ...

``flags`` translates the library's parameter names into the command's flags, so the library never has
to know how a command spells them.
"""

import functools
import sys
from collections.abc import Callable

from fmboost.errors import FMBoostError

Main = Callable[[list[str] | None], int]


def describe(error: FMBoostError, flags: dict[str, str]) -> str:
    """The error's message, its parameter named as this command's flag when it has one."""
    if error.parameter is None:
        return error.message
    return f"{flags.get(error.parameter, error.parameter)}: {error.message}"


def report_errors(flags: dict[str, str] | None = None) -> Callable[[Main], Main]:
    """Turn :class:`FMBoostError` raised by ``main`` into ``error: ...`` on stderr and exit code 2."""

    def decorate(main: Main) -> Main:
        @functools.wraps(main)
        def wrapper(argv: list[str] | None = None) -> int:
            try:
                return main(argv)
            except FMBoostError as error:
                print(f"error: {describe(error, flags or {})}", file=sys.stderr)
                return 2

        return wrapper

    return decorate
