"""Learning-rate schedules: what ``torch.optim.lr_scheduler`` lacks, a warm-up that composes
with any scheduler (ReduceLROnPlateau included), spec strings, and pure ``step -> lr``
functions.

- Pure functions (the math, closed forms): :func:`exponential_decay`,
  :func:`inverse_time_decay`, :func:`polynomial_decay`, :func:`warmup_stable_decay`,
  :func:`warmup_factor`, :func:`join_warmup`, :func:`constant_schedule`.
- Schedulers for any torch optimizer, backed by those functions: :class:`ExponentialDecayLR`,
  :class:`InverseTimeDecayLR`, :class:`PolynomialDecayLR`, :class:`WarmupStableDecayLR`, and
  :class:`Warmup` around any torch scheduler.
- Specs: :func:`parse` (``"warmup:500+cosine"`` -> a scheduler), :func:`lr_curve` and
  :func:`lr_at` (the LR a spec gives at each step, for plots and tests).

Step, multi-step, exponential, polynomial, cosine (with restarts), cyclic, one-cycle and
plateau schedules are torch's own: :func:`parse` builds them, nothing here re-implements them.
"""

from ._functions import (
    WARMUP_MODES,
    WSD_SHAPES,
    Schedule,
    constant_schedule,
    exponential_decay,
    inverse_time_decay,
    join_warmup,
    polynomial_decay,
    warmup_factor,
    warmup_stable_decay,
)
from ._schedulers import (
    ExponentialDecayLR,
    InverseTimeDecayLR,
    PolynomialDecayLR,
    Warmup,
    WarmupStableDecayLR,
)
from ._spec import VALID_FORMS, lr_at, lr_curve, parse

__all__ = [
    "VALID_FORMS",
    "WARMUP_MODES",
    "WSD_SHAPES",
    "ExponentialDecayLR",
    "InverseTimeDecayLR",
    "PolynomialDecayLR",
    "Schedule",
    "Warmup",
    "WarmupStableDecayLR",
    "constant_schedule",
    "exponential_decay",
    "inverse_time_decay",
    "join_warmup",
    "lr_at",
    "lr_curve",
    "parse",
    "polynomial_decay",
    "warmup_factor",
    "warmup_stable_decay",
]
