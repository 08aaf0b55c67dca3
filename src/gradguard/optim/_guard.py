"""The guard stage: whether a step is skipped (a non-finite gradient norm, GradScaler's
found-inf, or a step that can change nothing), the counters, and the error after too many bad
steps in a row — read from a host mirror of the device counter that never blocks a step.

(The :func:`gradguard.guard` wrapper around other optimizers is :mod:`._wrap`.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._validation import check_choice
from ..clip import GradStats
from ..errors import NonFiniteGradientError

NONFINITE_MODES = ("skip", "raise", "off")


def check_options(nonfinite: str, max_consecutive_skips: int) -> None:
    """The guard's arguments, checked where they enter."""
    check_choice("nonfinite", nonfinite, NONFINITE_MODES)
    if (isinstance(max_consecutive_skips, bool) or not isinstance(max_consecutive_skips, int)
            or max_consecutive_skips < 1):
        raise ValueError(f"Invalid max_consecutive_skips: {max_consecutive_skips!r}; must be "
                         "an integer >= 1")


def skip_of(grad_norm: Tensor, nonfinite_mode: str, param_groups: list[dict[str, Any]],
            grad_scale: Tensor | None, found_inf: Tensor | None
            ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(skip, nonfinite, blame)`` for a step (see :class:`~gradguard.optim._record.StepPlan`).

    GradScaler's found-inf, where given, is the skip: it has checked every entry, and every
    skipped step must reach it so that its scale backs off. Its steps count towards the error
    only while its scale is at most 1 (above, it recovers by itself; after ``unscale_`` the
    scale is unknown here: never)."""
    nonfinite = None if nonfinite_mode == "off" else ~torch.isfinite(grad_norm)
    blame = nonfinite
    if found_inf is not None:
        nonfinite = found_inf.to(device=grad_norm.device, dtype=torch.bool)
        if grad_scale is None:
            blame = torch.zeros_like(nonfinite)
        else:
            blame = nonfinite & (grad_scale.to(grad_norm.device) <= 1)
    skip = nonfinite
    if all(isinstance(g.get("lr"), float | int) and g["lr"] == 0 for g in param_groups):
        # A step that can change nothing (lr 0, zero gradients: what torch's distributed
        # checkpoint runs to create optimizer state) enters no clip history.
        idle = grad_norm == 0
        skip = idle if skip is None else skip | idle
    return skip, nonfinite, blame


class HostMirror:
    """A host copy of a small device counter, refreshed without waiting for the device.

    On CUDA the copy goes to pinned memory with ``non_blocking=True`` and is read only once its
    event has completed; on the CPU the copy is complete when it returns. Either way, reading it
    never blocks a step.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.host = torch.zeros((), dtype=torch.int64, pin_memory=device.type == "cuda")
        self.event: Any = None
        self.fresh = False

    def push(self, value: Tensor) -> None:
        self.host.copy_(value.detach(), non_blocking=True)
        if self.device.type == "cuda":
            self.event = torch.cuda.Event()
            self.event.record()
        self.fresh = True

    def peek(self) -> int | None:
        """The last pushed value if its copy has completed, else None."""
        if not self.fresh or (self.event is not None and not self.event.query()):
            return None
        self.fresh = False
        return int(self.host.numpy())


def counted(counters: tuple[Tensor, Tensor, Tensor], clipped: Tensor, skipped: Tensor,
            blame: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(clipped_steps, skipped_steps, consecutive_skips)`` after a step. A step GradScaler is
    recovering from (skipped, not blamed) neither adds to the run of bad steps nor resets it."""
    clipped_steps, skipped_steps, consecutive = counters
    # (an int64 count plus a bool is an int64 count)
    return (clipped_steps + clipped, skipped_steps + skipped,
            torch.where(blame, consecutive + 1, torch.where(skipped, consecutive, 0)))


def param_names(param_groups: list[dict[str, Any]]) -> dict[int, str]:
    """Names by ``id(param)``: the names given with ``named_parameters()``, else positions."""
    names: dict[int, str] = {}
    for gi, group in enumerate(param_groups):
        given = group.get("param_names")
        for pi, p in enumerate(group["params"]):
            if given is not None and pi < len(given):
                names[id(p)] = str(given[pi])
            else:
                names[id(p)] = f"param_groups[{gi}]['params'][{pi}] (shape {tuple(p.shape)})"
    return names


def error(params: list[Tensor], stats: GradStats, param_groups: list[dict[str, Any]],
          count: int, reason: str) -> NonFiniteGradientError:
    """The error naming the parameters whose gradients are not finite."""
    names = param_names(param_groups)
    bad = torch.stack([~torch.isfinite(n) for n in stats.norms()]).cpu().tolist()
    return NonFiniteGradientError(
        [names[id(p)] for p, b in zip(params, bad, strict=True) if b], count, reason)
