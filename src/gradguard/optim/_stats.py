"""The statistics stage: which gradients a step has, what the backward hooks must measure for
the clip policies, and the step's :class:`~gradguard.clip.GradStats` (norms measured during
backward where the hooks have them, else computed once here)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from ..clip import ClipPolicy, GradHooks, GradStats, StatNeeds
from ..clip._dist import any_dtensor
from ..clip._stats import Laid


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
    the 2-norm always (the guard and the record need it), and what each policy declares in
    its ``needs`` (other norm orders, unit-wise norms)."""
    needs = StatNeeds.merge(p.needs for p in policies if p is not None)
    params = [p for g in param_groups for p in g["params"]]
    return GradHooks(params, norm_types={2.0, *needs.norm_types}, units=needs.units)


def measure(params: list[Tensor], grads: list[Tensor], hooks: GradHooks | None,
            multiplier: Tensor | None,
            buckets: Iterable[tuple[ClipPolicy, list[int]]],
            laid: Iterable[Laid] = ()) -> GradStats:
    """The step's statistics. Sharded gradients: the vector parameter norms a policy needs
    (AGC's) join the one all-reduce of the norms. ``laid``: gradients already copied into flat
    buffers (see :class:`~gradguard.clip.GradStats`)."""
    param_norms = [k for policy, idx in buckets if policy.needs.param_norms
                   for k in idx] if any_dtensor(grads) else []
    return GradStats(params, grads, hooks, multiplier, param_norms, laid)
