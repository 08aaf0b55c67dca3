"""gradguard: fast, stable neural-network training for PyTorch.

Optimizers that clip and guard inside their step (``gradguard.Adam(params, clip="global_norm:1")``),
clip policies (:mod:`gradguard.clip`), :func:`guard` for any other torch optimizer, learning-rate
schedules (:mod:`gradguard.schedules`) and a clip-aware LR range test (:func:`find_lr`).
"""

from . import clip, monitor, rules, schedules, tasks
from .errors import NonFiniteGradientError
from .lr_finder import LRFinderResult, find_lr
from .monitor import Monitor
from .optim import (
    LAMB,
    LARS,
    SGD,
    Adadelta,
    Adagrad,
    Adam,
    Adamax,
    AdamW,
    Guarded,
    GuardedOptimizer,
    Lion,
    NAdam,
    RMSprop,
    StepRecord,
    guard,
)

__version__ = "0.1.0"

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
    "LRFinderResult",
    "Lion",
    "Monitor",
    "NAdam",
    "NonFiniteGradientError",
    "RMSprop",
    "StepRecord",
    "__version__",
    "clip",
    "find_lr",
    "guard",
    "monitor",
    "rules",
    "schedules",
    "tasks",
]
