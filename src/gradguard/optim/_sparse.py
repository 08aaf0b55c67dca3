"""Sparse gradients (``nn.Embedding(sparse=True)``) for SGD and Adagrad, as torch.optim takes
them: only the rows present in the gradient are read and written.

The clip scale (a 0-d tensor), a value clamp and ``maximize`` apply to the gradient's coalesced
values; on a skipped step the values are zeroed, which leaves every parameter and state entry
as it was (``x + 0`` is exact), and the step count is kept.

>>> import torch
>>> p = torch.zeros(4, 2)
>>> g = torch.sparse_coo_tensor([[1, 3, 1]], torch.ones(3, 2), (4, 2),  # row 1 twice
...                             check_invariants=True)
>>> sgd_sparse(p, g, lr=0.5, scale=None, clamp=None, skip=None, maximize=False)
>>> p
tensor([[ 0.0000,  0.0000],
        [-1.0000, -1.0000],
        [ 0.0000,  0.0000],
        [-0.5000, -0.5000]])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _values(g: Tensor, scale: Tensor | None, clamp: float | None, skip: Tensor | None,
            maximize: bool) -> tuple[Tensor, Tensor]:
    """The coalesced gradient and its values, clipped, negated for ``maximize``, and zeroed on
    a skipped step."""
    g = g.coalesce()
    v = g._values()
    if scale is not None:
        v = v * scale.to(device=v.device, dtype=v.dtype)
    if clamp is not None:
        v = v.clamp(-clamp, clamp)
    if maximize:
        v = -v
    if skip is not None:
        v = torch.where(skip.to(v.device), torch.zeros_like(v), v)
    return g, v


def _like(g: Tensor, values: Tensor) -> Tensor:
    return torch.sparse_coo_tensor(g._indices(), values, g.shape, is_coalesced=True,
                                   check_invariants=False)  # indices of a coalesced tensor


def _times(values: Tensor, factor: Any) -> Tensor:
    if isinstance(factor, Tensor):
        factor = factor.to(device=values.device, dtype=values.dtype)
    return values * factor


def sgd_sparse(p: Tensor, g: Tensor, *, lr: float | Tensor, scale: Tensor | None,
               clamp: float | None, skip: Tensor | None, maximize: bool) -> None:
    r"""Plain SGD (no momentum, no weight decay) with a sparse gradient:
    :math:`\theta_i \leftarrow \theta_i - \eta g_i` for the rows :math:`i` present in ``g``."""
    g, v = _values(g, scale, clamp, skip, maximize)
    p.add_(_like(g, _times(v, -lr)))


def adagrad_sparse(p: Tensor, g: Tensor, state: dict[str, Tensor], *, lr: float | Tensor,
                   lr_decay: float, eps: float, scale: Tensor | None, clamp: float | None,
                   skip: Tensor | None, maximize: bool) -> None:
    r"""Adagrad with a sparse gradient, as torch.optim.Adagrad computes it:
    :math:`s_i \leftarrow s_i + g_i^2`, :math:`\theta_i \leftarrow \theta_i -
    \frac{\eta}{1+(t-1)\delta} \frac{g_i}{\sqrt{s_i}+\epsilon}` for the rows present in ``g``."""
    g, v = _values(g, scale, clamp, skip, maximize)
    step = state["step"]
    new_step = step + 1
    t = new_step.to(torch.float64)
    clr = lr / (1 + (t - 1) * lr_decay)
    state_sum = state["sum"]
    state_sum.add_(_like(g, v * v))
    std = state_sum.sparse_mask(g)._values().sqrt().add_(eps)
    update = v / std
    if skip is not None:
        update = torch.where(skip.to(v.device), torch.zeros_like(update), update)
    p.add_(_like(g, _times(update, -clr)))
    step.copy_(new_step if skip is None else torch.where(skip.to(step.device), step, new_step))
