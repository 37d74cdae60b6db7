"""The networks: a CFM stage (:class:`FMBoostModel`), its ADM-style U-Net and the EMA of its weights."""

from fmboost.models.ema import EMA
from fmboost.models.fmboost_model import FMBoostModel, find_export
from fmboost.models.unet import UNet

__all__ = ["EMA", "FMBoostModel", "UNet", "find_export"]
