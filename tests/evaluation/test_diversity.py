"""Diversity over seeds: zero for a model that ignores its noise, the pixel spread otherwise."""

import torch

from evaluation.recorder import diversity


def test_identical_samples_have_no_diversity_and_opposite_ones_half_the_range():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(diversity([images, images]), torch.zeros(2))
    black, white = (
        torch.zeros(1, 3, 4, 4, dtype=torch.uint8),
        torch.full((1, 3, 4, 4), 255, dtype=torch.uint8),
    )
    torch.testing.assert_close(diversity([black, white]), torch.tensor([0.5]))
