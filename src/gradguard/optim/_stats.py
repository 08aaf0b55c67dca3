"""The statistics stage: which gradients a step has, what the backward hooks must measure for
the clip policies, and the step's :class:`~gradguard.clip.GradStats` (norms measured during
backward where the hooks have them, else computed once here)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from ..clip import AGC, ClipPolicy, GlobalNorm, GradHooks, GradStats, Norm, Value
from ..clip._dist import is_dtensor


def gather(param_groups: list[dict[str, Any]]) -> tuple[list[Tensor], list[Tensor], list[int]]:
    """Every parameter with a gradient, its gradient and its param group's index."""
    params: list[Tensor] = []
    grads: list[Tensor] = []
    owners: list[int] = []
    for gi, group in enumerate(param_groups):
        for p in group["params"]:
            if p.grad is not None:
                params.append(p)
                grads.append(p.grad)
                owners.append(gi)
    return params, grads, owners


def make_hooks(policies: Iterable[ClipPolicy | None],
               param_groups: list[dict[str, Any]]) -> GradHooks:
    """Backward hooks on every parameter, measuring what the clip policies will ask for:
    the 2-norm always (the guard and the record need it), the inf-norm for Value or an
    inf-norm policy, unit-wise norms for AGC."""
    policies = list(policies)
    norm_types = {2.0}
    for p in policies:
        if isinstance(p, Value):
            norm_types.add(float("inf"))
        elif isinstance(p, Norm | GlobalNorm):
            norm_types.add(p.norm_type)
    units = any(isinstance(p, AGC) for p in policies)
    params = [p for g in param_groups for p in g["params"]]
    return GradHooks(params, norm_types=norm_types, units=units)


def measure(params: list[Tensor], grads: list[Tensor], hooks: GradHooks | None,
            multiplier: Tensor | None,
            buckets: Iterable[tuple[ClipPolicy, list[int]]]) -> GradStats:
    """The step's statistics. Sharded gradients: AGC's vector parameter norms join the one
    all-reduce of the norms."""
    param_norms = [k for policy, idx in buckets if isinstance(policy, AGC)
                   for k in idx] if any(is_dtensor(g) for g in grads) else []
    return GradStats(params, grads, hooks, multiplier, param_norms)
