"""The command line the batch jobs share: ``[CONFIG] [key=value ...] [--print-config]``."""

import argparse
import logging
from collections.abc import Callable
from typing import Any

from fmboost.config import to_yaml


def add_config_arguments(parser: argparse.ArgumentParser, config_help: str) -> None:
    parser.add_argument("config", nargs="?", help=config_help)
    parser.add_argument("overrides", nargs="*", help="config overrides as key=value")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run_from_command_line(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    load: Callable[[str | None, list[str]], Any],
    run: Callable[[Any], Any],
) -> int:
    """Parse ``argv``, load the config (a first argument with ``=`` is an override, not a file), then
    print it (``--print-config``) or run the job; ``--verbose``, where the parser has it, logs debug."""
    args = parser.parse_args(argv)
    config_path, overrides = args.config, list(args.overrides)
    if config_path is not None and "=" in config_path:
        config_path, overrides = None, [config_path, *overrides]
    level = logging.DEBUG if getattr(args, "verbose", False) else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s")
    config = load(config_path, overrides)
    if args.print_config:
        print(to_yaml(config))
        return 0
    run(config)
    return 0
