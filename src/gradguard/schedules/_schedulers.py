r"""``torch.optim.lr_scheduler.LRScheduler`` classes for the schedules torch lacks, and
:class:`Warmup`, which puts a warm-up in front of any torch scheduler, ReduceLROnPlateau
included.

The closed-form schedulers evaluate a pure function of :mod:`._functions` at ``last_epoch``
for each param group, from that group's base LR (``initial_lr``). Like ``LambdaLR`` they set
the LR rather than multiply the current one, so a change made to ``group["lr"]`` from outside
lasts one step. They work with any ``torch.optim.Optimizer`` and have torch's
``state_dict``/``load_state_dict``/``get_last_lr``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, SupportsFloat

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from .._validation import check_choice, check_positive
from ._functions import (
    WARMUP_MODES,
    Schedule,
    _start_factor,
    check_finite,
    check_int,
    exponential_decay,
    inverse_time_decay,
    polynomial_decay,
    warmup_factor,
    warmup_stable_decay,
)

__all__ = [
    "ExponentialDecayLR",
    "InverseTimeDecayLR",
    "PolynomialDecayLR",
    "Warmup",
    "WarmupStableDecayLR",
]


def _per_group(name: str, value: float | Sequence[float], optimizer: Optimizer) -> list[float]:
    """One value per param group: a number for all of them, or a sequence of one each."""
    n = len(optimizer.param_groups)
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != n:
            raise ValueError(f"Invalid {name}: {list(value)!r}; expected one value per param "
                             f"group ({n}) or a single number")
        return [check_finite(f"{name}[{i}]", v) for i, v in enumerate(value)]
    return [check_finite(name, value)] * n


def set_lr(group: dict[str, Any], value: float) -> None:
    """Set a group's LR in place when it is a tensor (capturable/fused optimizers), as torch's
    schedulers do."""
    if isinstance(group["lr"], Tensor):
        group["lr"].fill_(value)
    else:
        group["lr"] = value


class _ClosedFormLR(LRScheduler):
    """Base of the closed-form schedulers: group ``i`` gets ``self._schedule(base_lr_i, i)(t)``
    at step ``t`` (``last_epoch``). Subclasses set their hyperparameters before calling
    ``super().__init__``, which applies step 0."""

    def _schedule(self, base_lr: float, index: int) -> Schedule:
        raise TypeError(f"{type(self).__name__} must define _schedule()")

    def get_lr(self) -> list[float | Tensor]:
        """The LR of every param group at ``last_epoch``."""
        return [self._schedule(float(base), i)(self.last_epoch)
                for i, base in enumerate(self.base_lrs)]

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        return self.get_lr()


class ExponentialDecayLR(_ClosedFormLR):
    r"""Exponential decay with a time scale and an optional staircase (Keras/optax).

    .. math::
        \eta_t = \eta_0 \, r^{\,t / T} \qquad
        \left(\eta_0 \, r^{\lfloor t / T \rfloor} \text{ with } \texttt{staircase}\right)

    per param group, :math:`\eta_0` being its base LR. ``decay_steps = 1`` is torch's
    ``ExponentialLR``; this adds the time scale :math:`T` and the staircase.
    See :func:`gradguard.schedules.exponential_decay`.

    >>> import torch
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    >>> sched = ExponentialDecayLR(opt, decay_rate=0.5, decay_steps=2, staircase=True)
    >>> lrs = []
    >>> for _ in range(5):
    ...     lrs.append(opt.param_groups[0]["lr"]); opt.step(); sched.step()
    >>> lrs
    [0.1, 0.1, 0.05, 0.05, 0.025]
    """

    def __init__(self, optimizer: Optimizer, decay_rate: float, decay_steps: float = 1,
                 staircase: bool = False, last_epoch: int = -1) -> None:
        exponential_decay(1.0, decay_rate, decay_steps, staircase)  # validates the arguments
        self.decay_rate = float(decay_rate)
        self.decay_steps = float(decay_steps)
        self.staircase = bool(staircase)
        super().__init__(optimizer, last_epoch)

    def _schedule(self, base_lr: float, index: int) -> Schedule:
        return exponential_decay(base_lr, self.decay_rate, self.decay_steps, self.staircase)


class InverseTimeDecayLR(_ClosedFormLR):
    r"""Inverse-time decay (Keras' ``InverseTimeDecay``; Keras 2's optimizer ``decay=r`` is
    ``decay_steps = 1``).

    .. math::
        \eta_t = \frac{\eta_0}{1 + r\, t / T} \qquad
        \left(\frac{\eta_0}{1 + r \lfloor t / T \rfloor} \text{ with } \texttt{staircase}\right)

    See :func:`gradguard.schedules.inverse_time_decay`.

    >>> import torch
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    >>> sched = InverseTimeDecayLR(opt, decay_rate=1.0)
    >>> for _ in range(3):
    ...     opt.step(); sched.step()
    >>> sched.get_last_lr()
    [0.025]
    """

    def __init__(self, optimizer: Optimizer, decay_rate: float, decay_steps: float = 1,
                 staircase: bool = False, last_epoch: int = -1) -> None:
        inverse_time_decay(1.0, decay_rate, decay_steps, staircase)
        self.decay_rate = float(decay_rate)
        self.decay_steps = float(decay_steps)
        self.staircase = bool(staircase)
        super().__init__(optimizer, last_epoch)

    def _schedule(self, base_lr: float, index: int) -> Schedule:
        return inverse_time_decay(base_lr, self.decay_rate, self.decay_steps, self.staircase)


class PolynomialDecayLR(_ClosedFormLR):
    r"""Polynomial decay to an end LR (Keras' ``PolynomialDecay``).

    .. math::
        \eta_t = (\eta_0 - \eta_{end}) \left(1 - \frac{\min(t, T)}{T}\right)^{p} + \eta_{end}

    ``end_lr`` is an LR (one for all groups, or one per group), as torch's ``eta_min``;
    ``end_lr = 0`` is torch's ``PolynomialLR``. See :func:`gradguard.schedules.polynomial_decay`.

    >>> import torch
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> sched = PolynomialDecayLR(opt, decay_steps=4, end_lr=0.2, power=2.0)
    >>> lrs = []
    >>> for _ in range(6):
    ...     lrs.append(round(opt.param_groups[0]["lr"], 4)); opt.step(); sched.step()
    >>> lrs
    [1.0, 0.65, 0.4, 0.25, 0.2, 0.2]
    """

    def __init__(self, optimizer: Optimizer, decay_steps: int, end_lr: float | Sequence[float]
                 = 0.0, power: float = 1.0, last_epoch: int = -1) -> None:
        self.decay_steps = check_int("decay_steps", decay_steps, 1)
        self.end_lrs = _per_group("end_lr", end_lr, optimizer)
        check_positive("power", power)
        self.power = float(power)
        super().__init__(optimizer, last_epoch)

    def _schedule(self, base_lr: float, index: int) -> Schedule:
        return polynomial_decay(base_lr, self.decay_steps, self.end_lrs[index], self.power)


class WarmupStableDecayLR(_ClosedFormLR):
    r"""Warmup-stable-decay (Hu et al. 2024; Hägele et al. 2024): a linear warm-up from 0, the
    base LR, then a decay over the last ``decay_steps`` of ``total_steps`` to ``end_lr``.

    See :func:`gradguard.schedules.warmup_stable_decay` for the math; ``decay_steps`` defaults
    to 20% of ``total_steps``, ``shape`` is ``"linear"``, ``"cosine"`` or ``"sqrt"``
    (:math:`1 - \sqrt{u}`).

    >>> import torch
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> sched = WarmupStableDecayLR(opt, total_steps=6, warmup_steps=2, decay_steps=2)
    >>> lrs = []
    >>> for _ in range(7):
    ...     lrs.append(opt.param_groups[0]["lr"]); opt.step(); sched.step()
    >>> lrs
    [0.0, 0.5, 1.0, 1.0, 1.0, 0.5, 0.0]
    """

    def __init__(self, optimizer: Optimizer, total_steps: int, warmup_steps: int = 0,
                 decay_steps: int | None = None, end_lr: float | Sequence[float] = 0.0,
                 shape: str = "linear", last_epoch: int = -1) -> None:
        warmup_stable_decay(1.0, total_steps, warmup_steps, decay_steps, 0.0, shape)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = round(0.2 * total_steps) if decay_steps is None else int(decay_steps)
        self.end_lrs = _per_group("end_lr", end_lr, optimizer)
        self.shape = shape
        super().__init__(optimizer, last_epoch)

    def _schedule(self, base_lr: float, index: int) -> Schedule:
        return warmup_stable_decay(base_lr, self.total_steps, self.warmup_steps,
                                   self.decay_steps, self.end_lrs[index], self.shape)


class Warmup(LRScheduler):
    r"""A warm-up in front of any torch LR scheduler, ``ReduceLROnPlateau`` included.

    Semantics, with :math:`W` = ``warmup_steps`` and :math:`t` the number of ``step()`` calls:

    - The target of the warm-up is each group's LR when the ``Warmup`` is made, which is where
      the wrapped scheduler starts (its step 0; for most schedulers the base LR).
    - For :math:`t < W` the LR is :math:`w(t) \cdot` target, :math:`w` =
      :func:`gradguard.schedules.warmup_factor` (linear from ``start_factor``, default 0, or
      exponential from ``start_factor``, default 0.01). The wrapped scheduler does not act:
      it is not stepped and sees no metric.
    - At :math:`t = W` the LR is the target again and the wrapped scheduler takes over at its
      own step 0; each later ``step()`` steps it once, so the LR at :math:`t \ge W` is the
      wrapped schedule's LR at :math:`t - W`. A schedule with a length (``T_max``,
      ``total_steps``) should be given the run's length minus :math:`W`.
    - ``ReduceLROnPlateau``: call ``step(metric)`` every time. Metrics given during the
      warm-up, and the one given at :math:`t = W` (measured at a warm-up LR), are dropped; from
      :math:`t = W + 1` on each metric is passed to the plateau scheduler, so its patience
      counts only what was measured at LRs it controls. A plateau after the warm-up needs the
      metric (``TypeError`` without it); other schedulers take no metric.
    - ``None`` (give ``optimizer=``) or an optimizer instead of a scheduler: a warm-up to the
      constant base LR.

    ``state_dict()`` holds the warm-up's state and the wrapped scheduler's (under
    ``"scheduler"``); ``load_state_dict()`` restores both.

    >>> import torch
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    >>> sched = Warmup(plateau, warmup_steps=2)
    >>> lrs = []
    >>> for loss in [9.0, 9.0, 9.0, 1.0, 2.0]:  # the first two are dropped, 2.0 is worse
    ...     lrs.append(opt.param_groups[0]["lr"]); opt.step(); sched.step(loss)
    >>> lrs + [opt.param_groups[0]["lr"]]
    [0.0, 0.5, 1.0, 1.0, 1.0, 0.5]
    """

    def __init__(self, scheduler: LRScheduler | Optimizer | None, warmup_steps: int,
                 mode: str = "linear", start_factor: float | None = None, *,
                 optimizer: Optimizer | None = None) -> None:
        if isinstance(scheduler, Optimizer):
            if optimizer is not None and optimizer is not scheduler:
                raise ValueError("Invalid optimizer: two different optimizers given")
            scheduler, optimizer = None, scheduler
        if scheduler is None:
            if optimizer is None:
                raise TypeError("Invalid scheduler: None needs optimizer= (the optimizer to "
                                "warm up)")
        elif not isinstance(scheduler, LRScheduler):
            raise TypeError(f"Invalid scheduler: expected a torch.optim.lr_scheduler scheduler, "
                            f"an optimizer or None, got {type(scheduler).__name__}")
        elif optimizer is not None and optimizer is not scheduler.optimizer:
            raise ValueError("Invalid optimizer: not the optimizer of the wrapped scheduler")
        else:
            optimizer = scheduler.optimizer
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"Invalid optimizer: expected a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        self.warmup_steps = check_int("warmup_steps", warmup_steps, 0)
        check_choice("mode", mode, WARMUP_MODES)
        self.mode = mode
        self.start_factor = _start_factor(mode, start_factor)
        self.optimizer = optimizer
        self.scheduler = scheduler
        for group in optimizer.param_groups:  # as torch's schedulers do on a fresh start
            initial = group["lr"]
            group.setdefault("initial_lr", initial.clone() if isinstance(initial, Tensor)
                             else initial)
        self.base_lrs: list[float | Tensor] = [float(g["lr"]) for g in optimizer.param_groups]
        self.last_epoch = 0
        self._step_count = 1
        self._apply_warmup()

    @property
    def takes_metrics(self) -> bool:
        """Whether ``step`` needs a metric (the wrapped scheduler is a ReduceLROnPlateau)."""
        return isinstance(self.scheduler, ReduceLROnPlateau)

    def _apply_warmup(self) -> None:
        t = self.last_epoch
        if t <= self.warmup_steps:
            f = warmup_factor(t, self.warmup_steps, self.mode, self.start_factor)
            for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
                set_lr(group, f * float(base))
        self._last_lr: list[float | Tensor] = [
            g["lr"].clone() if isinstance(g["lr"], Tensor) else g["lr"]
            for g in self.optimizer.param_groups]

    def get_lr(self) -> list[float | Tensor]:
        """The LR of every group after the last ``step()``."""
        return list(self._last_lr)

    def step(self, metrics: SupportsFloat | None = None) -> None:
        """Advance one step; ``metrics`` goes to a wrapped ReduceLROnPlateau after the warm-up."""
        if metrics is not None and not self.takes_metrics:
            raise TypeError(f"Invalid metrics: {metrics!r}; only a warm-up around "
                            "ReduceLROnPlateau takes a metric")
        self._step_count += 1
        self.last_epoch += 1
        if self.last_epoch > self.warmup_steps and self.scheduler is not None:
            if isinstance(self.scheduler, ReduceLROnPlateau):
                if metrics is None:
                    raise TypeError("Invalid metrics: None; the wrapped ReduceLROnPlateau needs "
                                    "the metric at every step after the warm-up")
                self.scheduler.step(metrics)
            else:
                self.scheduler.step()
        self._apply_warmup()

    def state_dict(self) -> dict[str, Any]:
        """The warm-up's state, with the wrapped scheduler's under ``"scheduler"``."""
        return {
            "warmup_steps": self.warmup_steps,
            "mode": self.mode,
            "start_factor": self.start_factor,
            "base_lrs": list(self.base_lrs),
            "last_epoch": self.last_epoch,
            "_step_count": self._step_count,
            "_last_lr": list(self._last_lr),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the wrapped scheduler's state included)."""
        state_dict = dict(state_dict)
        inner = state_dict.pop("scheduler", None)
        if (inner is None) != (self.scheduler is None):
            raise ValueError("Invalid state_dict: it was saved from a Warmup "
                             f"{'without' if inner is None else 'with'} a wrapped scheduler")
        self.__dict__.update(state_dict)
        if self.scheduler is not None:
            self.scheduler.load_state_dict(inner)
