"""The ``native`` backend: torch's own fused kernels, where they are exact for the step.

:data:`KERNELS` maps a rule (by name) to its adapter: which settings the kernel is exact for,
and how to call it with the rule's state. :func:`plan` is the one eligibility check (device,
dtype, layout, contiguity, how the step is clipped), used by gradguard's optimizers;
:func:`fold_scale` is the same question for :func:`gradguard.guard` around torch's own fused
optimizers, which take a clip scale as their ``grad_scale``.

A clip scale is never handed to a fused kernel by gradguard's optimizers: the kernel would
write ``grad / grad_scale`` back into ``.grad`` (and in float32, even for float64). A clipped
step runs the kernel on gradients clipped into temporaries instead (``"prescaled"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import _to_scalar

from ..._untraced import not_traced
from ...clip._dist import is_dtensor
from ...rules import State

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
Group = Mapping[str, Any]


def _found_inf(skip: Tensor | None) -> Tensor | None:
    return None if skip is None else skip.to(torch.float32)


def _lr(lr: float | Tensor, device: torch.device) -> float | Tensor:
    """The learning rate as torch's fused wrappers hand it to the kernel: a tensor off the
    CPU moves to the parameters' device, anything else is passed as it is."""
    if isinstance(lr, Tensor) and lr.device.type != "cpu" and lr.device != device:
        return lr.to(device=device, non_blocking=True)
    return lr


# The kernels are called directly, as torch.optim's fused functions call them, for one
# device and dtype (:func:`plan` admits nothing else), without their per-call grouping of
# the tensors by device and dtype: on a flat group that grouping cost more than the kernel.
# Like torch's, they are not traced by torch.compile (a step compiled with the model's
# forward and backward): dynamo cannot functionalize the kernels' in-place updates.
_NOT_TRACED = "a fused optimizer kernel is not traced (as torch.optim's fused functions)"


@not_traced(_NOT_TRACED)
def _sgd(group: Group, params: list[Tensor], grads: list[Tensor], states: list[State],
         skip: Tensor | None) -> None:
    momentum = group["momentum"]
    # Our momentum buffers exist from the first step (zeros, see `fresh`): never torch's
    # "first step" that clones the gradient into a missing buffer.
    buffers = [s["momentum_buffer"] for s in states] if momentum != 0 else []
    torch._fused_sgd_(
        params, grads, buffers, weight_decay=group["weight_decay"], momentum=momentum,
        lr=_lr(group["lr"], params[0].device), dampening=group["dampening"],
        nesterov=group["nesterov"], maximize=group["maximize"], is_first_step=False,
        grad_scale=None, found_inf=_found_inf(skip))


@not_traced(_NOT_TRACED)
def _adam(group: Group, params: list[Tensor], grads: list[Tensor], states: list[State],
          skip: Tensor | None) -> None:
    beta1, beta2 = group["betas"]
    steps = [s["step"] for s in states]
    found_inf = _found_inf(skip)
    torch._foreach_add_(steps, 1)
    kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
    kernel(
        params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
        [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else [], steps,
        amsgrad=group["amsgrad"], lr=_lr(group["lr"], params[0].device),
        beta1=_to_scalar(beta1), beta2=_to_scalar(beta2), weight_decay=group["weight_decay"],
        eps=group["eps"], maximize=group["maximize"], grad_scale=None, found_inf=found_inf)
    if found_inf is not None:
        torch._foreach_sub_(steps, [found_inf] * len(steps))


@not_traced(_NOT_TRACED)
def _adagrad(group: Group, params: list[Tensor], grads: list[Tensor], states: list[State],
             skip: Tensor | None) -> None:
    steps = [s["step"] for s in states]
    found_inf = _found_inf(skip)
    torch._foreach_add_(steps, 1)
    torch._fused_adagrad_(
        params, grads, [s["sum"] for s in states], steps, lr=_lr(group["lr"], params[0].device),
        lr_decay=group["lr_decay"], weight_decay=group["weight_decay"], eps=group["eps"],
        maximize=group["maximize"], grad_scale=None, found_inf=found_inf)
    if found_inf is not None:
        torch._foreach_sub_(steps, [found_inf] * len(steps))


@dataclass(frozen=True)
class Kernel:
    """A fused torch kernel for one rule: ``exact(group)`` says whether it computes the rule
    for these settings, ``run(group, params, grads, states, skip)`` takes the step (``skip``
    as its ``found_inf``)."""

    exact: Callable[[Group], bool]
    run: Callable[[Group, list[Tensor], list[Tensor], list[State], Tensor | None], None]


KERNELS: dict[str, Kernel] = {
    # Our momentum buffers start at zero (see `fresh`); with zero dampening the first update
    # m*0 + g equals torch's clone of g, so the fused kernel is exact.
    "sgd": Kernel(lambda g: g["momentum"] == 0 or g["dampening"] == 0, _sgd),
    "adam": Kernel(lambda g: True, _adam),  # Adam and AdamW (decoupled_weight_decay)
    "adagrad": Kernel(lambda g: True, _adagrad),
}


def plan(rule: str, group: Group, params: list[Tensor], grads: list[Tensor],
         states: list[State], scales: list[Tensor | None], clamp: float | None) -> str:
    """How a native fused kernel can take this step exactly: ``"direct"`` on the gradients
    as they are (no clip scale, no clamp); ``"prescaled"`` on gradients clipped into
    temporaries first; ``"none"`` where it cannot (no kernel for this rule or these settings,
    a device or dtype the kernels lack, mixed devices or dtypes, or any parameter, gradient or
    state tensor that is not contiguous: torch's CPU kernels pair the elements of strided
    tensors wrongly)."""
    kernel = KERNELS.get(rule)
    if kernel is None or not kernel.exact(group):
        return "none"
    p0 = params[0]
    if p0.device.type not in ("cpu", "cuda") or p0.dtype not in DTYPES:
        return "none"
    if any(p.device != p0.device or p.dtype != p0.dtype for p in params):
        return "none"
    if any(g.dtype != p0.dtype or g.layout != torch.strided for g in grads):
        return "none"
    tensors = [*params, *grads, *(v for st in states for v in st.values() if v.dim() > 0)]
    if not all(t.is_contiguous() for t in tensors):
        return "none"
    if clamp is None and all(s is None for s in scales):
        return "direct"
    if any(s is None for s in scales) and any(s is not None for s in scales):
        return "none"
    return "prescaled"


def fold_scale(grads: list[Tensor], scales: list[Tensor | None],
               clamps: list[float | None]) -> Tensor | None:
    """The one scale to hand a torch fused kernel as the inverse of its ``grad_scale``, when
    that is exact: every gradient shares one 0-d scale (or none), no clamp, one device, no
    shards, no float64 (torch's kernels take ``grad_scale`` in float32). None otherwise."""
    if any(c is not None for c in clamps):
        return None
    if len({g.device for g in grads}) != 1 or any(is_dtensor(g) for g in grads):
        return None
    distinct = {id(s) for s in scales if s is not None}
    if len(distinct) > 1 or (distinct and None in scales):
        return None
    shared = next((s for s in scales if s is not None), None)
    if shared is None:
        return torch.ones((), dtype=torch.float32, device=grads[0].device)
    if shared.dim() != 0 or any(g.dtype == torch.float64 for g in grads):
        return None
    return shared.to(torch.float32)
