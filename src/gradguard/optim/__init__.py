"""Optimizers with built-in clipping and a non-finite guard (drop-ins for torch.optim)."""

from ._base import GuardedOptimizer
from ._core import StepRecord
from ._guard import Guarded, guard
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

__all__ = [
    "LAMB",
    "LARS",
    "SGD",
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "Guarded",
    "GuardedOptimizer",
    "Lion",
    "NAdam",
    "RMSprop",
    "StepRecord",
    "guard",
]
