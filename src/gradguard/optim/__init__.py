"""Optimizers with built-in clipping and a non-finite guard (drop-ins for torch.optim).

Every optimizer class is exported from its own file's ``__all__`` (a new class is exported by
being listed there); the files are imported in the registry's order.
"""

# ruff: noqa: I001, F403  (the class files' order is the registry's: sgd ... adamax, rmsprop ...)

from ._base import GuardedOptimizer, GuardOptions
from ._sgd_adam import *
from ._accumulators import *
from ._papers import *
from . import _accumulators, _papers, _sgd_adam
from ._record import StepRecord
from ._registry import REGISTRY, Entry, log_grid
from ._wrap import Guarded, guard

__all__ = [
    "REGISTRY",
    "Entry",
    "GuardOptions",
    "Guarded",
    "GuardedOptimizer",
    "StepRecord",
    "guard",
    "log_grid",
]
__all__ += _sgd_adam.__all__
__all__ += _accumulators.__all__
__all__ += _papers.__all__
