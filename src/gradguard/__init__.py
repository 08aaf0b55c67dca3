"""gradguard: fast, stable neural-network training for PyTorch.

Optimizers that clip and guard inside their step (``gradguard.Adam(params, clip="global_norm:1")``),
clip policies (:mod:`gradguard.clip`), and :func:`guard` for any other torch optimizer.
"""

from . import clip, rules
from .errors import NonFiniteGradientError
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
    "Lion",
    "NAdam",
    "NonFiniteGradientError",
    "RMSprop",
    "StepRecord",
    "__version__",
    "clip",
    "guard",
    "rules",
]
