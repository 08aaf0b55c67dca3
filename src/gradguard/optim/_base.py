"""The base class of gradguard's optimizers: torch.optim.Optimizer plus clip and guard."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..clip import ClipPolicy, resolve
from ._core import GuardCore, GuardReadouts, commit, export_groups, restore_group_clips

Rule = Callable[..., tuple[Tensor, dict[str, Tensor]]]

# Group keys that are not hyperparameters of the update rule.
_NOT_HPARAMS = frozenset({"params", "param_names", "clip", "initial_lr"})


class GuardedOptimizer(GuardReadouts, Optimizer):
    """A ``torch.optim.Optimizer`` whose step clips and guards.

    Subclasses name their update rule (a function of :mod:`gradguard.rules`) and how to create
    a parameter's state; everything else — param groups, state_dict, clipping, the non-finite
    guard, ``last_step`` and the counters — lives here.
    """

    _rule: ClassVar[Rule]

    def __init__(
        self,
        params: Iterable[Any],
        defaults: dict[str, Any],
        *,
        clip: ClipPolicy | str | None,
        nonfinite: str,
        max_consecutive_skips: int,
    ) -> None:
        if defaults.get("differentiable"):
            raise ValueError("Invalid differentiable: True; gradguard optimizers do not support "
                             "differentiating through the step")
        self._core = GuardCore(clip, nonfinite, max_consecutive_skips)
        # Momentum buffers that take the first gradient as is (SGD) need to know, without a
        # host read, whether a skipped step left them uninitialised.
        self._fresh: dict[Tensor, Tensor] = {}
        self._hparam_keys = tuple(defaults)
        super().__init__(params, defaults)

    # -- param groups -----------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "clip" in param_group:
            param_group["clip"] = resolve(param_group["clip"], "param group clip")
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # Groups saved by an older version (or by torch) get the defaults of keys they lack.
        for group in self.param_groups:
            for key in getattr(self, "_hparam_keys", ()):
                group.setdefault(key, self.defaults[key])

    # -- state ------------------------------------------------------------------------------
    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """A parameter's state before its first step (torch.optim's keys and dtypes)."""
        raise NotImplementedError  # pragma: no cover - every optimizer defines it

    @staticmethod
    def _step_tensor(p: Tensor) -> Tensor:
        # On the parameter's device (as torch does with capturable=True), so counting a step
        # never needs the host.
        return torch.zeros((), dtype=torch.float32, device=p.device)

    def _state_for(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        state = self.state[p]
        if not state:
            state.update(self._init_state(p, group))
        step = state.get("step")
        if isinstance(step, Tensor) and step.device != p.device:
            state["step"] = step.to(device=p.device, dtype=torch.float32)
        return state

    # -- the step ---------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Clip, guard and update. Returns the closure's loss, if a closure was given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plan = self._core.plan(self.param_groups)
        if plan is None:
            return loss
        rule = type(self)._rule
        hparams = [{k: v for k, v in g.items() if k not in _NOT_HPARAMS}
                   for g in self.param_groups]
        for k, p in enumerate(plan.params):
            group = self.param_groups[plan.owners[k]]
            state = self._state_for(p, group)
            fresh = self._fresh.get(p)
            new_p, new_state = rule(p, plan.effective_grad(k), state, fresh=fresh,
                                    **hparams[plan.owners[k]])
            commit(p, new_p, plan.skip)
            for key, value in new_state.items():
                commit(state[key], value, plan.skip)
            if fresh is not None:
                self._fresh[p] = (fresh & plan.skip if plan.skip is not None
                                  else torch.zeros_like(fresh))
        self._core.finish(plan, self.param_groups)
        return loss

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state_dict (loadable by the torch optimizer of the same name) plus a
        ``"gradguard"`` entry: clip-policy state and the clipped/skipped counters."""
        sd = super().state_dict()
        export_groups(sd["param_groups"])
        extra = self._core.state_dict(self.param_groups)
        index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        extra["fresh"] = {index[id(p)]: t for p, t in self._fresh.items() if id(p) in index}
        sd["gradguard"] = extra
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict of this optimizer or of the torch.optim optimizer of the same name."""
        state_dict = dict(state_dict)
        extra = state_dict.pop("gradguard", None)
        before = [("clip" in g, g.get("clip")) for g in self.param_groups]
        super().load_state_dict(state_dict)
        restore_group_clips(self.param_groups, before)
        self._core.load_state_dict(extra, self.param_groups)
        params = [p for g in self.param_groups for p in g["params"]]
        fresh = (extra or {}).get("fresh", {})
        self._fresh = {params[int(i)]: t.to(params[int(i)].device) for i, t in fresh.items()}
