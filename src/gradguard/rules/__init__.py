"""The update rules: the math of every optimizer, written once, per tensor.

Each rule is a pure function ``rule(param, grad, state, **hparams) -> (new_param, new_state)``.
It reads the parameter, the (already clipped) gradient and the state tensors, and returns new
tensors; it never writes to its inputs. The optimizer commits the results (or keeps the old
values when the step is skipped), and faster paths are derived from these same functions. Rules
know nothing about hooks, clipping policies or logging.

Scalar bookkeeping (bias corrections, step sizes) is done on 0-d tensors, so nothing here
reads a value back to the host. Where torch.optim has the optimizer, the order of operations
follows its single-tensor implementation, so trajectories agree to rounding.

>>> import torch
>>> p, g = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.5])
>>> new_p, new_state = sgd(p, g, {}, lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0,
...                        nesterov=False, maximize=False)
>>> new_p
tensor([ 0.9500, -2.0500])

Each optimizer's rule is one record, :class:`Rule`: ``init`` (a parameter's state before its
first step) beside ``update``, declared where the update is written with the :func:`rule`
decorator; :data:`RULES` holds them by name.

>>> sorted(RULES["adam"].init(torch.zeros(2), {"amsgrad": False}))
['exp_avg', 'exp_avg_sq', 'step']
"""

from __future__ import annotations

from ._accumulators import adadelta, adagrad, rmsprop
from ._adaptive import adam, adamax, lamb, nadam
from ._common import RULES, Init, Rule, Scalar, State, Update, rule
from ._common import _coef as _coef  # (private helpers: the backends and tests use them)
from ._common import _f64 as _f64
from ._common import _materialize as _materialize
from ._momentum import lars, lion, sgd

__all__ = [
    "RULES",
    "Init",
    "Rule",
    "Scalar",
    "State",
    "Update",
    "adadelta",
    "adagrad",
    "adam",
    "adamax",
    "lamb",
    "lars",
    "lion",
    "nadam",
    "rmsprop",
    "rule",
    "sgd",
]
