"""``gradguard.guard``: gradguard's clipping and non-finite guard for any torch optimizer."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..clip import ClipPolicy, resolve
from ..clip._apply import apply_clip_
from ._base import GuardedOptimizer, _not_traced
from ._core import GuardCore, GuardReadouts
from ._extras import attach_extras, detach_extras, export_groups, restore_group_clips
from ._record import StepPlan
from .backends import native


class Guarded(GuardReadouts, Optimizer):
    """A torch optimizer wrapped with a clip policy and the non-finite guard.

    Made by :func:`guard`. It is an ``Optimizer`` itself: ``param_groups`` and ``state`` are the
    wrapped optimizer's, so LR schedulers and checkpoints work on it as on the original.
    """

    # GradScaler hands over its scale and found-inf flag; the step folds them into the clip.
    _step_supports_amp_scaling = True

    def __init__(self, optimizer: Optimizer, clip: ClipPolicy | str | None, nonfinite: str,
                 max_consecutive_skips: int) -> None:
        # Deliberately not calling Optimizer.__init__: the parameters belong to `optimizer`.
        self.optimizer = optimizer
        self._core = GuardCore(clip, nonfinite, max_consecutive_skips)
        self.defaults = optimizer.defaults
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()
        for group in optimizer.param_groups:
            if "clip" in group:
                group["clip"] = resolve(group["clip"], "param group clip")
        self._hooks = self._core.make_hooks(optimizer.param_groups)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self) -> Any:
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    def __repr__(self) -> str:
        return f"guard({self.optimizer!r}, clip={self.clip!r}, nonfinite={self._core.nonfinite!r})"

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "clip" in param_group:
            param_group["clip"] = resolve(param_group["clip"], "param group clip")
        self.optimizer.add_param_group(param_group)
        self._hooks.remove()
        self._hooks = self._core.make_hooks(self.param_groups)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def _fold_into_amp_kernel(self, plan: StepPlan) -> Tensor | None:
        """The one scale to hand the wrapped optimizer's fused kernel (torch's AMP arguments),
        when :func:`~gradguard.optim.backends.native.fold_scale` finds that exact."""
        if not getattr(self.optimizer, "_step_supports_amp_scaling", False):
            return None
        return native.fold_scale(plan.grads, plan.scales, plan.clamps)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Clip, then step the wrapped optimizer unless the gradients are not finite.

        For torch's fused optimizers (``fused=True``) the clip scale and the skip are handed
        to the fused kernel (as GradScaler does), so there is no extra pass and no host read.
        Otherwise the gradients are scaled in place, and deciding to skip reads one flag.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._untraced_step()
        return loss

    @_not_traced
    def _untraced_step(self) -> None:
        """The guarded step (a call torch.compile does not trace, as gradguard's own
        optimizers' step)."""
        # Set by torch.amp.GradScaler.step (we declare _step_supports_amp_scaling).
        plan = self._core.plan(self.param_groups, self._hooks,
                               getattr(self, "grad_scale", None), getattr(self, "found_inf", None))
        if plan is None:
            self.optimizer.step()
            return
        scale = self._fold_into_amp_kernel(plan)
        if scale is not None:
            found_inf = (plan.skip if plan.skip is not None
                         else torch.zeros((), dtype=torch.bool, device=scale.device))
            opt: Any = self.optimizer
            opt.grad_scale = 1.0 / scale
            opt.found_inf = found_inf.to(torch.float32)
            try:
                self.optimizer.step()
            finally:
                del opt.grad_scale, opt.found_inf
            # The fused kernel wrote grad / grad_scale back without a version bump.
            self._hooks.forget(plan.params)
        else:
            for g, s, c in zip(plan.grads, plan.scales, plan.clamps, strict=True):
                apply_clip_(g, s, c)
            # A third-party optimizer cannot skip on a device flag: one host read per step.
            # (A step that can change nothing still runs: it creates the optimizer's state.)
            if plan.nonfinite is None or not bool(plan.nonfinite):
                self.optimizer.step()
        self._core.finish(plan, self.param_groups)

    def state_dict(self) -> dict[str, Any]:
        sd = self.optimizer.state_dict()
        export_groups(sd["param_groups"])
        attach_extras(sd, self._core.state_dict(self.param_groups))
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict, extra = detach_extras(state_dict)
        before = [("clip" in g, g.get("clip")) for g in self.param_groups]
        self.optimizer.load_state_dict(state_dict)
        restore_group_clips(self.param_groups, before)
        self._core.load_state_dict(extra, self.param_groups)


def guard(
    optimizer: Optimizer,
    clip: ClipPolicy | str | None = None,
    nonfinite: str = "skip",
    max_consecutive_skips: int = 10,
) -> Guarded:
    """Give any ``torch.optim.Optimizer`` gradguard's clipping and non-finite guard.

    >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    >>> opt = guard(torch.optim.SGD([w], lr=0.1), clip="global_norm:1")
    >>> w.grad = torch.tensor([30.0, 40.0])
    >>> opt.step(); w.detach()
    tensor([0.9400, 1.9200])
    >>> w.grad = torch.tensor([float("inf"), 0.0])
    >>> opt.step(); w.detach(), opt.skipped_steps
    (tensor([0.9400, 1.9200]), tensor(1))
    """
    if isinstance(optimizer, GuardedOptimizer | Guarded):
        raise ValueError(f"Invalid optimizer: {type(optimizer).__name__} is already guarded; "
                         "pass clip= and nonfinite= to it directly")
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"Invalid optimizer: expected a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    return Guarded(optimizer, clip, nonfinite, max_consecutive_skips)
