"""gradguard: fast, stable neural-network training for PyTorch.

Optimizers that clip and guard inside their step (``gradguard.Adam(params, clip="global_norm:1")``),
clip policies (:mod:`gradguard.clip`), :func:`guard` for any other torch optimizer, learning-rate
schedules (:mod:`gradguard.schedules`) and a clip-aware LR range test (:func:`find_lr`).
"""

from . import clip, monitor, optim, rules, schedules, tasks
from .errors import NonFiniteGradientError
from .lr_finder import LRFinderResult, find_lr
from .monitor import Monitor
from .optim import Guarded, GuardedOptimizer, StepRecord, guard
from .optim._accumulators import *  # noqa: F403  (every optimizer class, from its file)
from .optim._papers import *  # noqa: F403
from .optim._sgd_adam import *  # noqa: F403

__version__ = "0.1.0"

__all__ = [
    "Guarded",
    "GuardedOptimizer",
    "LRFinderResult",
    "Monitor",
    "NonFiniteGradientError",
    "StepRecord",
    "__version__",
    "clip",
    "find_lr",
    "guard",
    "monitor",
    "optim",
    "rules",
    "schedules",
    "tasks",
]
__all__ += optim._sgd_adam.__all__
__all__ += optim._accumulators.__all__
__all__ += optim._papers.__all__
