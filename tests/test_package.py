import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# The project's own code; run outputs (runs/, data/) hold third-party scripts such as DeepSpeed's.
PROJECT_FOLDERS = ("fmboost", "data_pipeline", "cluster", "evaluation", "bench", "tests")


def test_importing_fmboost_prints_nothing_and_imports_no_heavy_backend():
    code = (
        "import sys, fmboost, fmboost.config, fmboost.models; "
        "print(sorted({'diffusers', 'transformers'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout == "[]\n"
    assert result.stderr == ""


def test_every_torch_load_in_the_project_is_weights_only():
    offenders = []
    project_files = [p for folder in PROJECT_FOLDERS for p in (REPO_ROOT / folder).glob("**/*.py")]
    assert len(project_files) > 50
    for path in project_files:
        for line_number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"torch\.load\(", line) and "weights_only=True" not in line:
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{line_number}")
    assert offenders == []


def test_no_user_facing_file_names_the_development_machines_shared_folder():
    """Configs, scripts and the README are what users read; ../shared exists only where we develop."""
    user_facing = [
        *(REPO_ROOT / "configs").glob("**/*.yaml"),
        *(REPO_ROOT / "scripts").glob("*"),
        REPO_ROOT / "README.md",
    ]
    assert [str(p.relative_to(REPO_ROOT)) for p in user_facing if "shared/" in p.read_text()] == []


def test_import_fmboost_is_cheap_and_the_main_names_load_on_first_use():
    code = (
        "import sys, fmboost; cheap = 'torch' not in sys.modules; "
        "from fmboost import FMBoostModel, FMBoostPipeline, build_first_stage, load_config, FMBoostError; "
        "print(cheap, FMBoostModel.__name__, FMBoostPipeline.__name__, callable(build_first_stage))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout == "True FMBoostModel FMBoostPipeline True\n"


def test_the_config_module_imports_no_component_even_inside_a_function():
    import ast

    tree = ast.parse((REPO_ROOT / "fmboost" / "config.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    assert {name for name in imported if name.startswith("fmboost")} == {"fmboost.errors"}


def test_the_config_module_is_a_leaf_that_imports_no_component():
    code = (
        "import sys, fmboost.config; "
        "print(sorted(m for m in sys.modules if m.startswith('fmboost.') or m == 'torch'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout == "['fmboost.config', 'fmboost.errors']\n"
