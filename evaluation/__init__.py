"""Benchmarks: FID, p-FID, CLIP score, SSIM/PSNR and NFE sweeps (``python evaluation/run_benchmarks.py``)."""
