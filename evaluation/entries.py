"""The rows of an evaluation: which models and baselines run with which solver and NFE budget."""

import zlib
from dataclasses import dataclass
from pathlib import Path

from evaluation.config import EvalRunConfig
from fmboost.flow.sampling import ADAPTIVE_SOLVERS, is_valid_nfe


@dataclass(frozen=True)
class Entry:
    """One row of the results: a model (or baseline) with a solver and an NFE budget."""

    model: str
    solver: str = "-"
    nfe: int = 0

    @property
    def key(self) -> str:
        return f"{self.model}|{self.solver}|{self.nfe}"

    @property
    def is_baseline(self) -> bool:
        return self.solver == "-"

    @property
    def label(self) -> str:
        return self.model if self.is_baseline else f"{self.model} {self.solver} {self.nfe}"


def model_labels(paths: list[str]) -> list[str]:
    """Short names for results: ``runs/demo/checkpoints/step_N/export`` → ``demo``; duplicates numbered."""
    labels = []
    for path in paths:
        parts = [
            p for p in Path(path).parts if p not in ("export", "checkpoints") and not p.startswith("step_")
        ]
        label = parts[-1] if parts else str(path)
        labels.append(label if label not in labels else f"{label}_{len(labels)}")
    return labels


def sweep_entries(config: EvalRunConfig, labels: list[str]) -> list[Entry]:
    """Baselines, then every model × solver × NFE the solver can spend exactly (dopri5 once, adaptive);
    a model's ``extra_nfe`` join the sweep's NFE list for it alone."""
    entries = [Entry(name) for name in config.baselines]
    for label in labels:
        budgets = sorted({*config.nfe, *config.extra_nfe.get(label, [])})
        for solver in config.solvers:
            if solver in ADAPTIVE_SOLVERS:
                entries.append(Entry(label, solver, 0))
                continue
            entries += [Entry(label, solver, nfe) for nfe in budgets if is_valid_nfe(solver, nfe)]
    return entries


def variant_seed(seed: int, variant: int) -> int:
    """The seed of the ``variant``-th extra sample of a batch (diversity over seeds)."""
    return zlib.crc32(f"{seed}:variant:{variant}".encode())


def batch_seed(seed: int, keys: list[str]) -> int:
    """Noise and crops depend on the samples, not on how the work was split into tasks or batches."""
    return zlib.crc32(f"{seed}:{keys[0]}".encode())
