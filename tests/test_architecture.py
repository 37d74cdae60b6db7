"""The layers of the code base, lowest first: a module imports only from its own layer or the ones below,
and no modules import each other around a circle. Every import counts, inside functions too (a lazy
import is still a dependency). The layer order is written here, once; docs/architecture.md draws it.
"""

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import REPO_ROOT

LAYERS = (  # lowest first: (name, the packages and modules in it)
    (
        "foundations",
        (
            "fmboost.errors",
            "fmboost.config",
            "fmboost.registry",
            "fmboost.atomic_files",
            "fmboost.randomness",
            "fmboost.devices",
            "fmboost.weights_io",
            "fmboost.image_decoding",
            "fmboost.image_processing",
            "fmboost.consistency",
            "fmboost.metrics",
            "fmboost.noise_schedule",
            "fmboost.tiling",
            "fmboost.task_split",
            "fmboost.run_folder",
            "fmboost.sample_photos",
            "fmboost.distributed",
            "fmboost.cli",
            "fmboost.tracking",
            "fmboost.tracking_store",
        ),
    ),
    ("first stages and data", ("fmboost.first_stage", "fmboost.data")),
    ("flow", ("fmboost.flow",)),
    ("objectives", ("fmboost.objectives",)),
    ("models", ("fmboost.models",)),
    ("inference", ("fmboost.inference",)),
    ("training", ("fmboost.training",)),
    ("configuration", ("fmboost.config_loading",)),
    ("front-ends", ("fmboost.generate", "fmboost.folder_boost", "fmboost.app", "fmboost.train")),
    ("the library's names", ("fmboost",)),
    ("data pipeline", ("data_pipeline",)),
    ("evaluation", ("evaluation",)),
    ("cluster", ("cluster",)),
)
PACKAGES = ("fmboost", "data_pipeline", "evaluation", "cluster")


def module_files() -> dict[str, Path]:
    """Every module of the four packages by its dotted name (a package by its ``__init__``)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The module a ``from … import`` names, relative ones resolved against ``module``'s package."""
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[: len(parts) - node.level + 1]
    return ".".join([*parts, node.module] if node.module else parts)


def imported(tree: ast.AST, module: str, modules: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(module imported, line) for every import of one of ``modules`` in ``tree``: ``from package import
    submodule`` imports the submodule, an import of a name imports the module that defines it."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = absolute(node, module, modules[module].name == "__init__.py")
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                yield name, node.lineno


def import_graph() -> dict[str, list[tuple[str, int]]]:
    modules = module_files()
    return {
        module: sorted(set(imported(ast.parse(path.read_text()), module, modules)))
        for module, path in modules.items()
    }


def layer_of(module: str) -> int:
    """The index of the layer whose longest entry prefixes ``module``."""
    best, depth = None, -1
    for index, (_, members) in enumerate(LAYERS):
        for member in members:
            if (module == member or module.startswith(member + ".")) and len(member) > depth:
                best, depth = index, len(member)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def circles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(module: str) -> None:
        index[module] = low[module] = counter[0]
        counter[0] += 1
        stack.append(module)
        on_stack.add(module)
        for target, _ in graph.get(module, []):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_every_module_is_in_a_layer():
    for module in module_files():
        layer_of(module)


def test_no_module_imports_from_a_higher_layer():
    graph, modules = import_graph(), module_files()
    going_up = [
        f"{modules[module].relative_to(REPO_ROOT)}:{line} imports {target} "
        f"({LAYERS[layer_of(module)][0]} → {LAYERS[layer_of(target)][0]})"
        for module, targets in graph.items()
        for target, line in targets
        if layer_of(target) > layer_of(module)
    ]
    assert going_up == [], "\n".join(going_up)


def test_no_modules_import_each_other_around_a_circle():
    assert circles(import_graph()) == []
