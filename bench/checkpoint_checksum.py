"""What the CRC-32 of a checkpoint's file list costs against writing it, at the paper U-Net's size.

    python bench/checkpoint_checksum.py                 # the paper U-Net, one rank's share of 8 (ZeRO-2)
    python bench/checkpoint_checksum.py --small         # a tiny U-Net, any machine

A rank of a ZeRO-2 job writes its share of the fp32 masters and both Adam moments (3 × 4 bytes per
parameter ÷ ranks); rank 0 also writes the module (4 bytes per parameter). Both files are written with
``torch.save``, as DeepSpeed writes them, then described as the trainer describes them for its file list:
read back through :func:`fmboost.training.checkpoint_files.crc32_of`, then fsynced (the checkpoint is
declared complete only once its files are on stable storage). The baseline is the write and its fsync, in
the same run: the ratio says what share of a durable checkpoint's time the checksums add.
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
from bench_output import report

from fmboost.atomic_files import fsync_file
from fmboost.config_loading import load_config
from fmboost.models.unet import parameter_count
from fmboost.training.checkpoint_files import crc32_of


def timed(call, *args) -> float:
    started = time.perf_counter()
    call(*args)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/cfm_1k.yaml", help="whose U-Net sets the size")
    parser.add_argument("--ranks", type=int, default=8, help="ranks the optimizer state is split over")
    parser.add_argument("--small", action="store_true", help="the demo's tiny U-Net instead")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/checkpoint_checksum.json"))
    args = parser.parse_args()
    config = "configs/demo/tiny_cpu.yaml" if args.small else args.config
    parameters = parameter_count(load_config(config).model)
    share = 3 * parameters // args.ranks
    files = {
        "optimizer_share": {"fp32_and_moments": torch.randn(share)},
        "module": {"module": torch.randn(parameters)},
    }
    results = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        for name, tensors in files.items():
            path = Path(folder) / f"{name}.pt"
            save_s = timed(torch.save, tensors, path)
            checksum_s = timed(crc32_of, path)
            fsync_s = timed(fsync_file, path)
            size = path.stat().st_size
            results[name] = {
                "bytes": size,
                "save_s": round(save_s, 3),
                "fsync_s": round(fsync_s, 3),
                "crc32_s": round(checksum_s, 3),
                "save_gb_per_s": round(size / (save_s + fsync_s) / 1e9, 2),
                "crc32_gb_per_s": round(size / checksum_s / 1e9, 2),
                "crc32_vs_save": round(checksum_s / (save_s + fsync_s), 3),
            }
    report(
        {
            "config": config,
            "parameters": parameters,
            "ranks": args.ranks,
            "torch": torch.__version__,
            **results,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
