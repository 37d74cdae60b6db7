"""Every command: a user's mistake is one line naming the command's own flag, exit code 2."""

import gc
import subprocess
import sys
from pathlib import Path

import pytest

from fmboost.cli import exit_without_collecting, report_errors
from fmboost.errors import ConfigError, FMBoostError
from tests.conftest import REPO_ROOT

BIN = Path(sys.executable).parent
COMMANDS = [
    "fmboost-encode",
    "fmboost-train",
    "fmboost-submit",
    "fmboost-generate",
    "fmboost-app",
    "fmboost-eval",
    "fmboost-experiment",
]


def test_library_errors_name_the_parameter_and_the_command_names_its_flag(capsys):
    @report_errors({"image": "--input-image"})
    def main(argv):
        raise FMBoostError("photo.png is not a readable image", "image")

    assert main([]) == 2
    assert capsys.readouterr().err == "error: --input-image: photo.png is not a readable image\n"


def test_parameters_without_a_flag_keep_their_name_and_plain_messages_stay_plain(capsys):
    @report_errors({"image": "--input-image"})
    def main(argv):
        raise ConfigError(argv[0], "train.lr" if len(argv) > 1 else None)

    assert main(["must be positive", "keyed"]) == 2 and main(["something is wrong"]) == 2
    assert capsys.readouterr().err == "error: train.lr: must be positive\nerror: something is wrong\n"


def test_errors_keep_their_parameter_across_processes():
    import pickle

    error = pickle.loads(pickle.dumps(ConfigError("must be positive", "train.lr")))
    assert isinstance(error, ConfigError) and str(error) == "train.lr: must be positive"


SCRIPTS = ("cluster/submit.py", "evaluation/run_benchmarks.py")
MISTAKE = (BIN / "fmboost-train", "configs/cfm_1k.yaml", "train.lrr=1")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict[tuple, subprocess.CompletedProcess]:
    """Every command these tests run, started at once (each spends seconds importing, on its own core
    where there is one), by its argument list. The script forms run from a folder outside the repo."""
    outside = tmp_path_factory.mktemp("outside")
    commands = {(BIN / command, "--help"): REPO_ROOT for command in COMMANDS}
    commands |= {(sys.executable, REPO_ROOT / script, "--help"): outside for script in SCRIPTS}
    commands[MISTAKE] = REPO_ROOT
    started = {
        argv: subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for argv, cwd in commands.items()
    }
    outputs = {argv: process.communicate(timeout=120) for argv, process in started.items()}
    return {
        argv: subprocess.CompletedProcess(argv, started[argv].returncode, *output)
        for argv, output in outputs.items()
    }


@pytest.mark.parametrize("command", COMMANDS)
def test_each_console_script_is_installed_and_explains_itself(command, finished):
    result = finished[(BIN / command, "--help")]
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_the_documented_script_forms_run_without_editing_sys_path(finished):
    for script in SCRIPTS:
        assert "sys.path.insert" not in (REPO_ROOT / script).read_text()
        result = finished[(sys.executable, REPO_ROOT / script, "--help")]
        assert result.returncode == 0, result.stderr


def test_a_cli_mistake_is_one_line_on_stderr_and_exit_code_two(finished):
    result = finished[MISTAKE]
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: command line: train.lrr: Key 'lrr' not in 'TrainConfig'. Did you mean: 'lr'?"
    )


def test_a_command_exits_with_its_code_and_its_heap_frozen_so_shutdown_skips_collecting_it():
    gc.unfreeze()  # the suite freezes each module's heap (tests/conftest.py): start from none frozen
    try:
        assert gc.get_freeze_count() == 0
        with pytest.raises(SystemExit) as exited:
            exit_without_collecting(3)
        assert exited.value.code == 3 and gc.get_freeze_count() > 0
    finally:
        gc.freeze()
