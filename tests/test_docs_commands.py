"""Every command the README and the docs show runs as written: each ``python …`` and ``fmboost-*``
command names a script or module that exists, and every flag it passes is one its ``--help`` lists;
every ``make`` target exists; every config file it names is in ``configs/``."""

import contextlib
import io
import re
import runpy
import shlex
import sys
import tomllib
from functools import cache

import pytest

from tests.conftest import REPO_ROOT

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("**/*.md"))]
CODE_BLOCK = re.compile(r"^```(?:bash|sh|shell)?\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"(?<!`)`((?:python|fmboost-|make )[^`]*)`(?!`)")
CONSOLE_SCRIPTS = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def commands_in(text: str) -> list[str]:
    """Shell commands of the page's bash code blocks (continuations joined) and inline code spans."""
    found = []
    for block in CODE_BLOCK.findall(text):
        found += [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    found += [span.replace("\n", " ") for span in INLINE_CODE.findall(text)]
    return [
        command
        for command in found
        if command.split()[0] in ("python", "make", "torchrun") or command.startswith("fmboost-")
    ]


def documented_commands() -> list[tuple[str, str]]:
    return [
        (page.relative_to(REPO_ROOT).as_posix(), command)
        for page in PAGES
        for command in commands_in(page.read_text())
    ]


def entry_point(tokens: list[str]) -> tuple[list[str], list[str]] | None:
    """``(the python arguments that run it, its own arguments)`` for a command FMBoost provides."""
    if tokens[0] == "torchrun":
        module = tokens.index("-m")
        return ["-m", tokens[module + 1]], tokens[module + 2 :]
    if tokens[0].startswith("fmboost-"):
        module = CONSOLE_SCRIPTS.get(tokens[0])
        assert module, f"{tokens[0]} is not a console script in pyproject.toml"
        return ["-m", module.split(":")[0]], tokens[1:]
    if tokens[0] == "python" and len(tokens) > 1:
        if tokens[1] == "-m":
            return ["-m", tokens[2]], tokens[3:]
        if tokens[1] != "-c":
            return [tokens[1]], tokens[2:]
    return None


@cache
def help_text(runner: tuple[str, ...]) -> str:
    """What ``python RUNNER --help`` prints, run in this process (``runpy``, as ``python`` runs it): a
    subprocess per command would spend 4 s importing torch, DeepSpeed and diffusers again."""
    module = runner[1] if runner[0] == "-m" else None
    argv, path, output = sys.argv, list(sys.path), io.StringIO()
    sys.argv = [module or runner[0], "--help"]
    sys.path.insert(0, str(REPO_ROOT if module else (REPO_ROOT / runner[0]).parent))
    try:
        with (
            contextlib.chdir(REPO_ROOT),
            contextlib.redirect_stdout(output),
            pytest.raises(SystemExit) as exited,
        ):
            if module:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(str(REPO_ROOT / runner[0]), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = argv, path
    assert exited.value.code in (0, None), f"{' '.join(runner)} --help exited with {exited.value.code}"
    return output.getvalue()


def flags_missing_from_help(runner: list[str], arguments: list[str]) -> list[str]:
    text = help_text(tuple(runner))
    flags = [argument.split("=")[0] for argument in arguments if argument.startswith("--")]
    return [flag for flag in flags if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text)]


@cache
def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (REPO_ROOT / "Makefile").read_text(), re.MULTILINE))


def test_the_pages_show_commands_of_every_kind():
    commands = [command for _, command in documented_commands()]
    for prefix in (
        "python cluster/submit.py",
        "python evaluation/run_benchmarks.py",
        "python -m fmboost.generate",
        "make encode-shards",
        "fmboost-",
    ):
        assert any(command.startswith(prefix) for command in commands), prefix


def test_a_misspelt_flag_is_caught():
    tokens = shlex.split("python cluster/submit.py --node 8 configs/cfm_1k.yaml")
    runner, arguments = entry_point(tokens)
    assert flags_missing_from_help(runner, arguments) == ["--node"]
    assert flags_missing_from_help(runner, ["--nodes", "8"]) == []


@pytest.mark.parametrize(("page", "command"), documented_commands())
def test_a_documented_command_runs_as_written(page, command):
    tokens = shlex.split(command, comments=True)
    if tokens[0] == "make":
        targets = [token for token in tokens[1:] if "=" not in token]
        assert set(targets) <= make_targets(), f"{page}: `{command}` names a target the Makefile lacks"
        return
    runner = entry_point(tokens)
    if runner is None:
        return
    program, arguments = runner
    if program[0] != "-m":
        assert (REPO_ROOT / program[0]).is_file(), f"{page}: `{command}`: no script {program[0]}"
    for argument in arguments:
        if argument.startswith("configs/"):
            assert (REPO_ROOT / argument).is_file(), f"{page}: `{command}`: no config {argument}"
    missing = flags_missing_from_help(program, arguments)
    assert not missing, f"{page}: `{command}` passes {missing}, which --help does not list"
