r"""Noise augmentation of the ODE start point (paper Sec. 3, "noise augmentation").

The schedule is the cosine schedule with :math:`N = 1000` discrete steps:

.. math::
    t_k = k / (N - 1), \qquad
    \bar\alpha(k) = \operatorname{sigmoid}\bigl(-2 \ln(\tan(\pi t_k / 2) + 10^{-5})\bigr)

(the released code's reference size 64 gives zero log-SNR shift). Augmenting the upsampled latent
:math:`z_{up}` with step :math:`k` gives

.. math::
    x_0 = \sqrt{\bar\alpha(k)}\, z_{up} + \sqrt{1 - \bar\alpha(k)}\, \varepsilon,
    \qquad \varepsilon \sim \mathcal N(0, I).

The default :math:`k = 400` gives :math:`\bar\alpha \approx 0.654`.
"""

import math

import torch

from fmboost.randomness import randn_like

NUM_STEPS = 1000


def alpha_bar(step: int) -> float:
    """Signal fraction :math:`\\bar\\alpha(k)` of the cosine schedule at integer step ``k``."""
    if not 0 <= step < NUM_STEPS:
        raise ValueError(f"noise step must lie in [0, {NUM_STEPS - 1}], got {step}")
    t = step / (NUM_STEPS - 1)
    log_snr = -2.0 * math.log(math.tan(math.pi * t / 2.0) + 1e-5)
    return 1.0 / (1.0 + math.exp(-log_snr))


def noise_augment(z: torch.Tensor, step: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return ``sqrt(a) * z + sqrt(1 - a) * eps`` with ``a = alpha_bar(step)``."""
    a = alpha_bar(step)
    return math.sqrt(a) * z + math.sqrt(1.0 - a) * randn_like(z, generator)
