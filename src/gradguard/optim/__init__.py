"""Optimizers with built-in clipping and a non-finite guard (drop-ins for torch.optim)."""

from ._base import GuardedOptimizer, GuardOptions
from ._optimizers import (
    LAMB,
    LARS,
    SGD,
    Adadelta,
    Adagrad,
    Adam,
    Adamax,
    AdamW,
    Lion,
    NAdam,
    RMSprop,
)
from ._record import StepRecord
from ._registry import REGISTRY, Entry, log_grid
from ._wrap import Guarded, guard

__all__ = [
    "LAMB",
    "LARS",
    "REGISTRY",
    "SGD",
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "Entry",
    "GuardOptions",
    "Guarded",
    "GuardedOptimizer",
    "Lion",
    "NAdam",
    "RMSprop",
    "StepRecord",
    "guard",
    "log_grid",
]
