"""The rows of an evaluation: which models and baselines run with which solver and NFE budget."""

import zlib
from dataclasses import dataclass, replace
from pathlib import Path

from evaluation.config import EvalRunConfig
from fmboost.flow.sampling import ADAPTIVE_SOLVERS, is_valid_nfe


@dataclass(frozen=True)
class Entry:
    """One row of the results: a model (or baseline) with a solver and an NFE budget, and the
    consistency step its output goes through (:mod:`fmboost.consistency`)."""

    model: str
    solver: str = "-"
    nfe: int = 0
    consistency: str = "none"

    @property
    def key(self) -> str:
        key = f"{self.model}|{self.solver}|{self.nfe}"
        return key if self.consistency == "none" else f"{key}|{self.consistency}"

    @property
    def without_consistency(self) -> "Entry":
        """The entry whose raw output this one corrects."""
        return replace(self, consistency="none")

    @property
    def is_baseline(self) -> bool:
        return self.solver == "-"

    @property
    def label(self) -> str:
        label = self.model if self.is_baseline else f"{self.model} {self.solver} {self.nfe}"
        return label if self.consistency == "none" else f"{label} + {self.consistency}"


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
    a model's ``extra_nfe`` join the sweep's NFE list for it alone. Each row comes once per consistency
    step of ``config.consistency``, next to each other."""
    entries = [Entry(name) for name in config.baselines]
    for label in labels:
        budgets = sorted({*config.nfe, *config.extra_nfe.get(label, [])})
        for solver in config.solvers:
            if solver in ADAPTIVE_SOLVERS:
                entries.append(Entry(label, solver, 0))
                continue
            entries += [Entry(label, solver, nfe) for nfe in budgets if is_valid_nfe(solver, nfe)]
    return [replace(entry, consistency=mode) for entry in entries for mode in config.consistency]


def variant_seed(seed: int, variant: int) -> int:
    """The seed of the ``variant``-th extra sample of a batch (diversity over seeds)."""
    return zlib.crc32(f"{seed}:variant:{variant}".encode())


def batch_seed(seed: int, keys: list[str]) -> int:
    """Noise and crops depend on the samples, not on how the work was split into tasks or batches."""
    return zlib.crc32(f"{seed}:{keys[0]}".encode())
