"""The record stage: what a step did, as tensors nobody has to read (:class:`StepRecord`), and
the plan the stages hand each other (:class:`StepPlan`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..clip import GradStats


class StepRecord(NamedTuple):
    """What the last step did, as 0-d tensors that nobody has to read.

    ``grad_norm``: total L2 norm of the gradients before clipping; ``clip_scale``: the smallest
    factor clipping applied to any gradient entry (1 when nothing was clipped); ``clipped``:
    whether clipping changed the gradients of an applied step; ``skipped``: whether the step was
    skipped because a gradient was not finite.
    """

    grad_norm: Tensor
    clip_scale: Tensor
    clipped: Tensor
    skipped: Tensor


@dataclass
class StepPlan:
    """The gradients of one step and what to do with them.

    ``skip``: leave parameters, state and clip history as they are (a non-finite gradient, or
    a step that can change nothing); ``nonfinite``: the part of it that is a bad step, counted
    and reported (None when nothing checks for it); ``blame``: the part of ``nonfinite`` that
    counts towards the error after repeated bad steps, that is, all of it but GradScaler's
    found-inf steps while its scale is above 1 (it backs off and recovers by itself).
    """

    params: list[Tensor]
    grads: list[Tensor]
    owners: list[int]  # param-group index of each entry
    scales: list[Tensor | None]
    clamps: list[float | None]
    skip: Tensor | None
    stats: GradStats
    record: StepRecord
    nonfinite: Tensor | None = None
    blame: Tensor | None = None


def make_record(grad_norm: Tensor, mins: list[Tensor], binding: list[Tensor],
                skip: Tensor | None, nonfinite: Tensor | None) -> StepRecord:
    """The step's record from the norm, the policies' smallest scales and whether any of
    their thresholds was exceeded: a skipped step is not "clipped"."""
    device = grad_norm.device
    clip_scale = torch.stack(mins).min() if mins else torch.ones((), device=device)
    clipped = (torch.stack(binding).any() if binding
               else torch.zeros((), dtype=torch.bool, device=device))
    if skip is not None:
        clipped = clipped & ~skip
    skipped = (nonfinite if nonfinite is not None
               else torch.zeros((), dtype=torch.bool, device=device))
    return StepRecord(grad_norm.to(torch.float32), clip_scale, clipped, skipped)
