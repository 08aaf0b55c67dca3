"""The two operations every path of the step shares, each defined once: applying a clip
decision to a gradient, and keeping a value unless the step is skipped.

A decision is a scale (None, a 0-d tensor, or one value per unit for AGC) and an optional
bound ``clamp``; applied, the gradient becomes ``clamp(g * scale, -clamp, clamp)``, in this
order, with the scale cast to the gradient's dtype. :func:`apply_clip` returns a new tensor
(what the update paths read; ``.grad`` is never written), :func:`apply_clip_` writes in place
(for :meth:`ClipPolicy.clip_` and for ``guard()`` around another optimizer). The multi-tensor
path computes the same products with ``torch._foreach_*`` ops
(:func:`gradguard.optim.backends.foreach.clipped_grads`), bit for bit.

:func:`kept` is the skip: the new value, or the old one where ``skip`` (a bool tensor) is
true, chosen on the device with ``torch.where`` (no host read; NaN in the new value is not
kept). The optimizers' commit (:func:`gradguard.optim.backends.eager.commit`) and the stateful
clip policies' history both go through it; the multi-tensor path does the same per list.

>>> import torch
>>> apply_clip(torch.tensor([3.0, -4.0]), torch.tensor(0.5), 1.0)
tensor([ 1., -1.])
>>> kept(torch.tensor(1.0), torch.tensor(float("nan")), torch.tensor(True))
tensor(1.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._dist import local


def apply_clip(g: Tensor, scale: Tensor | None, clamp: float | None) -> Tensor:
    """``clamp(g * scale, -clamp, clamp)`` as a new tensor (``g`` itself where both are None)."""
    if scale is not None:
        g = g * scale.to(g.dtype)
    if clamp is not None:
        g = g.clamp(-clamp, clamp)
    return g


def apply_clip_(g: Tensor, scale: Tensor | None, clamp: float | None) -> None:
    """:func:`apply_clip` in place; a sharded gradient (DTensor) on its local shard, with the
    scales of that shard."""
    part = local(g)
    if scale is not None:
        part.mul_(scale.to(part.dtype))
    if clamp is not None:
        part.clamp_(-clamp, clamp)


def kept(old: Tensor, new: Tensor, skip: Tensor | None) -> Tensor:
    """``new``, or ``old`` where ``skip`` is true (``skip`` None: always ``new``)."""
    return new if skip is None else torch.where(skip, old, new)
