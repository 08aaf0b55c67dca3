"""The exact restore: :class:`_Snapshot` copies, before the sweep, everything the sweep
changes (the model's parameters, buffers, gradients and train/eval modes; the optimizer's
state_dict and the attributes its steps set; a gradguard optimizer's guard core and clip
policies, through their own ``snapshot()``/``restore()``; a scheduler; the torch, CUDA, numpy
and ``random`` RNG states) and puts it all back afterwards.
"""

from __future__ import annotations

import copy
import random
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ..clip import ClipPolicy

if TYPE_CHECKING:
    from ..optim._core import GuardCore

# Attributes that the optimizer's own load_state_dict restores (replacing the objects).
_LOADED_ATTRS = frozenset({"state", "param_groups", "_fresh"})


class _Snapshot:
    """Everything the sweep changes, copied in memory, and put back by :meth:`restore`."""

    def __init__(self, model: nn.Module, optimizer: Optimizer,
                 scheduler: LRScheduler | None, params: list[Tensor]) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.model_state = copy.deepcopy(model.state_dict())
        self.modes = [(m, m.training) for m in model.modules()]
        self.grads = [(p, p.grad) for p in params]
        self.opt_state = copy.deepcopy(optimizer.state_dict())
        self.attrs = [(o, dict(vars(o))) for o in _optimizer_objects(optimizer)]
        self.core = _core_snapshot(optimizer)
        self.sched_state = None if scheduler is None else copy.deepcopy(scheduler.state_dict())
        self.cuda_rng = (torch.cuda.get_rng_state_all()
                         if torch.cuda.is_available() and torch.cuda.is_initialized() else None)
        self.torch_rng = torch.get_rng_state()
        self.numpy_rng = np.random.get_state()
        self.python_rng = random.getstate()

    def restore(self) -> None:
        self.model.load_state_dict(self.model_state)
        for m, training in self.modes:
            m.training = training
        for p, g in self.grads:
            p.grad = g
        self.optimizer.load_state_dict(self.opt_state)
        if self.core is not None:
            core, core_saved, policies = self.core
            for policy, saved in policies:
                policy.restore(saved)
            core.restore(core_saved)
        for obj, saved_attrs in self.attrs:  # what the steps set on the optimizer object itself
            current = vars(obj)
            for key in [k for k in current if k not in saved_attrs]:
                delattr(obj, key)
            for key, value in saved_attrs.items():
                if key not in _LOADED_ATTRS and current.get(key) is not value:
                    setattr(obj, key, value)
        if self.scheduler is not None and self.sched_state is not None:
            self.scheduler.load_state_dict(self.sched_state)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        torch.set_rng_state(self.torch_rng)
        np.random.set_state(self.numpy_rng)
        random.setstate(self.python_rng)


def _optimizer_objects(optimizer: Optimizer) -> list[Any]:
    """The optimizer, and the torch optimizer inside a :func:`gradguard.guard` wrapper."""
    inner = getattr(optimizer, "optimizer", None)
    return [optimizer] if not isinstance(inner, Optimizer) else [optimizer, inner]


def _core_snapshot(
        optimizer: Optimizer,
) -> tuple[GuardCore, dict[str, Any], list[tuple[ClipPolicy, dict[str, Any]]]] | None:
    """A gradguard optimizer's guard state beyond its state_dict: the core's
    :meth:`~gradguard.optim._core.GuardCore.snapshot` (the last step record, the counters, its
    own clip policy's bookkeeping), and the :meth:`ClipPolicy.snapshot` of each param group's
    own policy (the core restores nothing of those)."""
    core: GuardCore | None = getattr(optimizer, "_core", None)
    if core is None:
        return None
    policies: list[ClipPolicy] = []
    for p in (g.get("clip") for g in optimizer.param_groups):
        if (isinstance(p, ClipPolicy) and p is not core.clip
                and all(p is not q for q in policies)):
            policies.append(p)
    return core, core.snapshot(), [(p, p.snapshot()) for p in policies]
