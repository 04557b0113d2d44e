"""Fused TensorFlow ops for the BP-MLL ranking loss and correlation losses."""

__version__ = "0.1.0"

from . import reference
from ._loader import PURE_TF_ENV, build_info, load_ops, use_pure_tf
from .bpmll import BPMLLLoss, bpmll_loss
from .correlation import CCCLoss, CorrelationLoss, ccc_loss, correlation_loss

__all__ = [
    "BPMLLLoss",
    "CCCLoss",
    "CorrelationLoss",
    "PURE_TF_ENV",
    "bpmll_loss",
    "ccc_loss",
    "correlation_loss",
    "build_info",
    "load_ops",
    "reference",
    "use_pure_tf",
]
