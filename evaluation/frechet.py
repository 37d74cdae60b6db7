r"""Mergeable feature statistics and the Fréchet distance between two Gaussians.

.. math::
    d^2 = \lVert \mu_1 - \mu_2 \rVert^2
          + \operatorname{Tr}\bigl(\Sigma_1 + \Sigma_2 - 2 (\Sigma_1 \Sigma_2)^{1/2}\bigr)

Shards of an evaluation keep only ``(n, Σx, Σxxᵀ)`` in float64, which add exactly, so features from
several GPUs or array tasks merge into the statistics of the whole set before the distance is taken.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cleanfid.fid import frechet_distance as clean_fid_frechet_distance


@dataclass
class FeatureStatistics:
    count: int
    total: np.ndarray
    outer: np.ndarray

    @classmethod
    def empty(cls, dimension: int) -> "FeatureStatistics":
        return cls(0, np.zeros(dimension), np.zeros((dimension, dimension)))

    @classmethod
    def of(cls, features: np.ndarray) -> "FeatureStatistics":
        features = np.asarray(features, dtype=np.float64)
        return cls(len(features), features.sum(0), features.T @ features)

    def add(self, features: np.ndarray) -> "FeatureStatistics":
        return self.merge(FeatureStatistics.of(features))

    def merge(self, other: "FeatureStatistics") -> "FeatureStatistics":
        return FeatureStatistics(self.count + other.count, self.total + other.total, self.outer + other.outer)

    @property
    def mean(self) -> np.ndarray:
        return self.total / self.count

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased (``ddof=1``), as ``np.cov`` and clean-fid compute it."""
        mean = self.mean
        return (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)

    def save(self, path: Path) -> None:
        np.savez(path, count=np.array(self.count), total=self.total, outer=self.outer)

    @classmethod
    def load(cls, path: Path) -> "FeatureStatistics":
        with np.load(path, allow_pickle=False) as data:
            return cls(int(data["count"]), data["total"], data["outer"])


def frechet_distance(a: FeatureStatistics, b: FeatureStatistics) -> float:
    """FID-style distance between the Gaussians fitted to two feature sets (clean-fid's implementation)."""
    if min(a.count, b.count) < 2:
        raise ValueError("the Fréchet distance needs at least 2 samples per set")
    return float(clean_fid_frechet_distance(a.mean, a.covariance, b.mean, b.covariance))
