"""The ``eager`` backend: the readable reference. The rule applied tensor by tensor, each
result committed (or, on a skipped step, not) with ``torch.where``. Every other backend is
checked against it, and the compiled backend compiles this very function.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ...clip._apply import apply_clip, kept
from ...rules import Update


def commit(dst: Tensor, new: Tensor, skip: Tensor | None) -> None:
    """Write ``new`` into ``dst``, or keep ``dst`` where ``skip`` is true (no host read)."""
    dst.copy_(kept(dst, new, skip))


def update_tensors(
    rule: Update,
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Tensor]],
    scales: list[Tensor | None],
    clamp: float | None,
    fresh: list[Tensor | None],
    skip: Tensor | None,
    lr: float | Tensor,
    hparams: dict[str, Any],
) -> None:
    """Apply ``rule`` to every tensor: clip the gradient in registers (scale, then clamp),
    update, and commit parameters and state unless ``skip``. The reference every fast path is
    checked against, and the function the compiled path compiles."""
    if isinstance(lr, Tensor) and lr.dim() > 0:
        lr = lr.reshape(())
    for i in range(len(params)):
        g = apply_clip(grads[i], scales[i], clamp)
        p_in, st_in = params[i], states[i]
        if torch.is_grad_enabled():
            # A differentiable step: the rule reads copies, so that what backward saved (the
            # old max of AMSGrad, say) is not the tensor the commit writes.
            p_in, st_in = p_in.clone(), {k: v.clone() for k, v in st_in.items()}
        new_p, new_state = rule(p_in, g, st_in, lr=lr, fresh=fresh[i], **hparams)
        commit(params[i], new_p, skip)
        for key, value in new_state.items():
            commit(states[i][key], value, skip)
