r"""Learning-rate schedules as pure functions of the step: the one source of their math.

Each factory returns a :data:`Schedule`, a function ``step -> value`` (optax's form): closed
forms that can be plotted, tested and composed without an optimizer. The ``LRScheduler``
classes of :mod:`gradguard.schedules` evaluate these functions at their ``last_epoch``, and the
LR finder sweeps with them. Schedules that ``torch.optim.lr_scheduler`` already has (step,
multi-step, cosine, cyclic, one-cycle, plateau, ...) are not written again here: use torch's
classes, or :func:`gradguard.schedules.lr_curve` to tabulate them.

``step`` counts scheduler steps from 0 (torch's ``last_epoch``): the value at step 0 is the
one the optimizer uses before the first ``scheduler.step()``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

from .._validation import check_choice, check_nonneg, check_positive

__all__ = [
    "WARMUP_MODES",
    "WSD_SHAPES",
    "Schedule",
    "constant_schedule",
    "exponential_decay",
    "inverse_time_decay",
    "join_warmup",
    "polynomial_decay",
    "warmup_factor",
    "warmup_stable_decay",
]

Schedule = Callable[[int], float]
"""A learning-rate schedule: the value at a step (an integer >= 0)."""

WARMUP_MODES = ("linear", "exponential")
WSD_SHAPES = ("linear", "cosine", "sqrt")


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int, or a ValueError naming ``name`` unless it is an integer >= minimum."""
    try:
        as_int = operator.index(value)
    except TypeError:
        raise TypeError(f"Invalid {name}: expected an integer, got {value!r}") from None
    if isinstance(value, bool) or as_int < minimum:
        raise ValueError(f"Invalid {name}: {value!r}; must be an integer >= {minimum}")
    return as_int


def check_finite(name: str, value: Any) -> float:
    """``value`` as a float, or a ValueError naming ``name`` unless it is a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"Invalid {name}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"Invalid {name}: {value}; must be a finite number")
    return float(value)


def _step(step: int) -> int:
    return check_int("step", step, 0)


def constant_schedule(value: float) -> Schedule:
    """The same value at every step.

    >>> constant_schedule(0.1)(1000)
    0.1
    """
    v = check_finite("value", value)

    def schedule(step: int) -> float:
        _step(step)
        return v

    return schedule


def exponential_decay(init_value: float, decay_rate: float, decay_steps: float = 1,
                      staircase: bool = False) -> Schedule:
    r"""Exponential decay with a time scale (Keras' and optax's ``exponential_decay``).

    .. math::
        \eta_t = \eta_0 \, r^{\,t / T} \qquad
        \left(\eta_0 \, r^{\lfloor t / T \rfloor} \text{ with } \texttt{staircase}\right)

    with :math:`r` = ``decay_rate`` and :math:`T` = ``decay_steps``: the value is multiplied by
    :math:`r` every :math:`T` steps. :math:`T = 1` is ``torch.optim.lr_scheduler.ExponentialLR``
    (``gamma = r``). A rate above 1 grows (the LR finder's exponential sweep).

    >>> f = exponential_decay(0.1, decay_rate=0.5, decay_steps=10)
    >>> f(0), f(10), round(f(5), 6)
    (0.1, 0.05, 0.070711)
    >>> exponential_decay(0.1, 0.5, 10, staircase=True)(19)
    0.05
    """
    eta0 = check_finite("init_value", init_value)
    check_positive("decay_rate", decay_rate)
    check_positive("decay_steps", decay_steps)
    rate, period = float(decay_rate), float(decay_steps)

    def schedule(step: int) -> float:
        p = _step(step) / period
        return eta0 * rate ** (math.floor(p) if staircase else p)

    return schedule


def inverse_time_decay(init_value: float, decay_rate: float, decay_steps: float = 1,
                       staircase: bool = False) -> Schedule:
    r"""Inverse-time decay (Keras' ``InverseTimeDecay``; the ``decay`` argument of Keras 2's
    optimizers is ``decay_steps = 1``).

    .. math::
        \eta_t = \frac{\eta_0}{1 + r\, t / T} \qquad
        \left(\frac{\eta_0}{1 + r \lfloor t / T \rfloor} \text{ with } \texttt{staircase}\right)

    >>> f = inverse_time_decay(0.1, decay_rate=1.0, decay_steps=10)
    >>> f(0), f(10), f(30)
    (0.1, 0.05, 0.025)
    """
    eta0 = check_finite("init_value", init_value)
    check_nonneg("decay_rate", decay_rate)
    check_positive("decay_steps", decay_steps)
    rate, period = float(decay_rate), float(decay_steps)

    def schedule(step: int) -> float:
        p = _step(step) / period
        return eta0 / (1.0 + rate * (math.floor(p) if staircase else p))

    return schedule


def polynomial_decay(init_value: float, decay_steps: int, end_value: float = 0.0,
                     power: float = 1.0) -> Schedule:
    r"""Polynomial decay to an end value (Keras' ``PolynomialDecay``, without ``cycle``).

    .. math::
        \eta_t = (\eta_0 - \eta_{end}) \left(1 - \frac{\min(t, T)}{T}\right)^{p} + \eta_{end}

    ``end_value = 0`` is ``torch.optim.lr_scheduler.PolynomialLR`` (``total_iters = T``); with
    ``power = 1`` and ``end_value > init_value`` it is a linear ramp up (the LR finder's linear
    sweep).

    >>> f = polynomial_decay(1.0, decay_steps=4, end_value=0.2, power=2.0)
    >>> [round(f(t), 4) for t in range(6)]
    [1.0, 0.65, 0.4, 0.25, 0.2, 0.2]
    """
    eta0 = check_finite("init_value", init_value)
    end = check_finite("end_value", end_value)
    total = check_int("decay_steps", decay_steps, 1)
    check_positive("power", power)
    p = float(power)

    def schedule(step: int) -> float:
        return (eta0 - end) * (1.0 - min(_step(step), total) / total) ** p + end

    return schedule


def warmup_factor(step: int, warmup_steps: int, mode: str = "linear",
                  start_factor: float | None = None) -> float:
    r"""The factor of the warm-up at ``step``: from ``start_factor`` at step 0 to 1 at
    ``warmup_steps`` (:math:`W`), and 1 from there on.

    .. math::
        \text{linear: } s + (1 - s)\,\frac{t}{W}, \qquad
        \text{exponential: } s^{\,1 - t/W} \quad (t < W)

    ``start_factor`` (:math:`s`) defaults to 0 for linear (as Hugging Face's and optax's
    warm-ups) and 0.01 for exponential (which needs :math:`s > 0`): the exponential form moves
    the LR by the same ratio at every step, the linear one by the same amount.

    >>> [warmup_factor(t, 4) for t in range(6)]
    [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    >>> [round(warmup_factor(t, 2, "exponential", 0.01), 6) for t in range(3)]
    [0.01, 0.1, 1.0]
    """
    t = _step(step)
    w = check_int("warmup_steps", warmup_steps, 0)
    s = _start_factor(mode, start_factor)
    if t >= w:
        return 1.0
    if mode == "linear":
        return s + (1.0 - s) * t / w
    return float(s ** (1.0 - t / w))


def _start_factor(mode: str, start_factor: float | None) -> float:
    check_choice("mode", mode, WARMUP_MODES)
    if start_factor is None:
        return 0.0 if mode == "linear" else 0.01
    s = check_finite("start_factor", start_factor)
    if mode == "linear" and not 0.0 <= s <= 1.0:
        raise ValueError(f"Invalid start_factor: {start_factor}; must be in [0, 1] for a linear "
                         "warm-up")
    if mode == "exponential" and not 0.0 < s <= 1.0:
        raise ValueError(f"Invalid start_factor: {start_factor}; must be in (0, 1] for an "
                         "exponential warm-up")
    return s


def join_warmup(schedule: Schedule, warmup_steps: int, mode: str = "linear",
                start_factor: float | None = None) -> Schedule:
    r"""A warm-up followed by ``schedule``, which starts when the warm-up ends.

    .. math::
        \eta_t = \begin{cases} w(t)\, f(0) & t < W \\ f(t - W) & t \ge W \end{cases}

    with :math:`w` = :func:`warmup_factor`: the warm-up ramps up to where ``schedule`` starts,
    and ``schedule`` does not advance during it. This is the math of
    :class:`gradguard.schedules.Warmup` for closed-form schedules.

    >>> f = join_warmup(exponential_decay(1.0, 0.5), warmup_steps=2)
    >>> [f(t) for t in range(5)]
    [0.0, 0.5, 1.0, 0.5, 0.25]
    """
    w = check_int("warmup_steps", warmup_steps, 0)
    _start_factor(mode, start_factor)

    def joined(step: int) -> float:
        t = _step(step)
        if t < w:
            return warmup_factor(t, w, mode, start_factor) * schedule(0)
        return schedule(t - w)

    return joined


def warmup_stable_decay(init_value: float, total_steps: int, warmup_steps: int = 0,
                        decay_steps: int | None = None, end_value: float = 0.0,
                        shape: str = "linear") -> Schedule:
    r"""Warmup-stable-decay, the 'trapezoid' (Hu et al. 2024, MiniCPM; Hägele et al. 2024).

    A linear warm-up from 0 over :math:`W` steps, the constant :math:`\eta_0` until the decay
    starts at :math:`T - D`, then a decay to ``end_value`` by step :math:`T` (``total_steps``),
    which stays after it. With :math:`u = (t - (T - D)) / D` in the decay phase:

    .. math::
        \eta_t = \eta_{end} + (\eta_0 - \eta_{end})\, d(u), \qquad
        d(u) = \begin{cases} 1 - u & \text{linear} \\ \tfrac12(1 + \cos \pi u) & \text{cosine}
               \\ 1 - \sqrt{u} & \text{sqrt} \end{cases}

    ``decay_steps`` (:math:`D`) defaults to 20% of ``total_steps``: Hägele et al. find that a
    cooldown of that length matches a cosine schedule of the same length, and that the
    ``"sqrt"`` shape does slightly better than the linear one.

    >>> f = warmup_stable_decay(1.0, total_steps=10, warmup_steps=2, decay_steps=4)
    >>> [round(f(t), 3) for t in range(12)]
    [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    """
    eta0 = check_finite("init_value", init_value)
    end = check_finite("end_value", end_value)
    total = check_int("total_steps", total_steps, 1)
    warm = check_int("warmup_steps", warmup_steps, 0)
    decay = round(0.2 * total) if decay_steps is None else check_int("decay_steps",
                                                                       decay_steps, 0)
    check_choice("shape", shape, WSD_SHAPES)
    if warm + decay > total:
        raise ValueError(f"Invalid warmup_steps + decay_steps: {warm} + {decay} > total_steps "
                         f"({total})")
    decay_start = total - decay

    def schedule(step: int) -> float:
        t = _step(step)
        if t < warm:
            return eta0 * t / warm
        if t < decay_start:
            return eta0
        if t >= total:
            return end
        u = (t - decay_start) / decay
        if shape == "linear":
            d = 1.0 - u
        elif shape == "cosine":
            d = 0.5 * (1.0 + math.cos(math.pi * u))
        else:
            d = 1.0 - math.sqrt(u)
        return end + (eta0 - end) * d

    return schedule
