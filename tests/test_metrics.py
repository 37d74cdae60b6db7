import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from fmboost.metrics import gaussian_kernel, psnr, ssim, valid_blur_matrix


def as_numpy(image: torch.Tensor):
    return ((image + 1) / 2).permute(1, 2, 0).double().numpy()


@pytest.fixture
def pair():
    torch.manual_seed(0)
    truth = torch.rand(2, 3, 48, 40) * 2 - 1
    noisy = (truth + 0.15 * torch.randn_like(truth)).clamp(-1, 1)
    return noisy, truth


def test_psnr_matches_scikit_image(pair):
    noisy, truth = pair
    expected = [
        peak_signal_noise_ratio(as_numpy(t), as_numpy(n), data_range=1.0)
        for n, t in zip(noisy, truth, strict=True)
    ]
    torch.testing.assert_close(
        psnr(noisy, truth), torch.tensor(expected, dtype=torch.float32), rtol=1e-5, atol=1e-4
    )


def test_ssim_matches_scikit_image_with_gaussian_weights(pair):
    noisy, truth = pair
    expected = [
        structural_similarity(
            as_numpy(t),
            as_numpy(n),
            channel_axis=2,
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        for n, t in zip(noisy, truth, strict=True)
    ]
    torch.testing.assert_close(
        ssim(noisy, truth), torch.tensor(expected, dtype=torch.float32), rtol=1e-5, atol=1e-5
    )


def test_a_valid_blur_matrix_correlates_on_valid_positions_only():
    kernel = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    signal = torch.tensor([1.0, 0.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    # by hand: 1·1 + 2·0 + 3·2, 1·0 + 2·2 + 3·1, 1·2 + 2·1 + 3·0
    torch.testing.assert_close(valid_blur_matrix(5, kernel) @ signal, torch.tensor([7.0, 7.0, 4.0]).double())


def test_the_separable_blur_equals_the_11x11_gaussian_window():
    image = torch.rand(2, 3, 20, 33, dtype=torch.float64)
    kernel = gaussian_kernel()
    window = torch.outer(kernel, kernel)[None, None].repeat(3, 1, 1, 1)
    blurred = valid_blur_matrix(20, kernel) @ image @ valid_blur_matrix(33, kernel).T
    torch.testing.assert_close(blurred, F.conv2d(image, window, groups=3))


def test_identical_images_are_perfect():
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    assert ssim(image, image).item() == pytest.approx(1.0)
    assert psnr(image, image).item() > 100
