"""The ``foreach`` backend: the update rule called once per bucket of tensors with
:class:`~gradguard.optim.backends._tensorlist.TensorList` arguments, so every operation is one
multi-tensor ``torch._foreach_*`` call (or a loop where torch has none). Needs no compiler.

:func:`update_foreach` groups a param group's tensors into buckets that one call of the rule
can take (same device, dtype, rank and state layout), clips the gradients into new tensors,
calls the rule once per bucket and commits the results (or, on a skipped step, keeps every
old value) with ``torch._foreach_copy_``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ...rules import Update
from ._tensorlist import TensorList

# Elements per call of the rule. The rules are pure, so a call holds each intermediate result
# for all of its tensors at once (about ten for Adam): calls over at most this many elements
# bound that extra memory (one tensor larger than this gets a call of its own).
MAX_NUMEL = 1 << 24


def _bucket_key(p: Tensor, g: Tensor, state: dict[str, Tensor], scale: Tensor | None,
                fresh: Tensor | None) -> tuple[Any, ...]:
    """What must be the same for tensors to share one call of the rule."""
    layout = tuple(sorted((k, v.dtype, v.device) for k, v in state.items()))
    return (p.device, p.dtype, p.dim(), g.device, g.dtype, layout, scale is None, fresh is None)


def _scaled(grads: list[Tensor], scales: list[Tensor]) -> list[Tensor]:
    """``g * s`` for every gradient (the same products as the reference's ``g * s.to(g.dtype)``):
    one shared 0-d scale (global clipping) goes in as a single tensor, per-tensor and unit-wise
    (AGC) scales as a list, each broadcast against its gradient."""
    s0 = scales[0]
    if s0.dim() == 0 and s0.device == grads[0].device and all(s is s0 for s in scales):
        return list(torch._foreach_mul(grads, s0.to(grads[0].dtype)))
    return list(torch._foreach_mul(grads, [s.to(g.dtype) for s, g in zip(scales, grads,
                                                                          strict=True)]))


def clipped_grads(grads: list[Tensor], scales: list[Tensor | None],
                  clamp: float | None) -> list[Tensor]:
    """The gradients clipped as the reference does it, ``(g * s).clamp(-clamp, clamp)``, into
    new tensors (``.grad`` is never written): multi-tensor ops, bitwise the per-tensor values.
    ``scales`` are all None or all tensors."""
    if scales[0] is not None:
        grads = _scaled(grads, [s for s in scales if s is not None])
    if clamp is not None:  # clamp(-c, c) == clamp_max(clamp_min(., -c), c), NaN kept
        grads = list(torch._foreach_clamp_min(grads, -clamp))
        torch._foreach_clamp_max_(grads, clamp)
    return grads


def _results(value: Any, n: int, what: str) -> TensorList:
    """``value`` (what the rule returned for ``what``), checked to be ``n`` tensors."""
    if not isinstance(value, TensorList) or len(value) != n:
        raise TypeError(f"the update rule returned {type(value).__name__} for {what}; expected "
                        f"a TensorList of {n} tensors")
    return value


def update_foreach(
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
    """:func:`~gradguard.optim.backends.eager.update_tensors` as multi-tensor ops: the same rule,
    called once per bucket of tensors (same device, dtype, rank, state layout; whether scaled,
    whether ``fresh``; at most :data:`MAX_NUMEL` elements) with :class:`TensorList`
    arguments. Gradients are scaled and clamped into new tensors (``.grad`` is never written);
    parameters and state are committed with ``torch._foreach_copy_``, or left bitwise unchanged
    where ``skip`` is true."""
    buckets: dict[tuple[Any, ...], list[list[int]]] = {}
    filled: dict[tuple[Any, ...], int] = {}  # elements in the bucket's last chunk
    for i in range(len(params)):
        key = _bucket_key(params[i], grads[i], states[i], scales[i], fresh[i])
        chunks = buckets.setdefault(key, [[]])
        numel = params[i].numel()
        if chunks[-1] and filled[key] + numel > MAX_NUMEL:
            chunks.append([])
            filled[key] = 0
        chunks[-1].append(i)
        filled[key] = filled.get(key, 0) + numel
    for idx in (chunk for chunks in buckets.values() for chunk in chunks):
        ps = [params[i] for i in idx]
        gs = [grads[i] for i in idx]
        sts = [states[i] for i in idx]
        scale = [scales[i] for i in idx]
        gs = clipped_grads(gs, scale, clamp)
        state_tl = {k: TensorList([st[k] for st in sts]) for k in sts[0]}
        fr = [fresh[i] for i in idx]
        fresh_tl = TensorList([f for f in fr if f is not None]) if fr[0] is not None else None
        new_p, new_state = rule(TensorList(ps), TensorList(gs), state_tl, lr=lr,
                                fresh=fresh_tl, **hparams)
        if skip is None:
            dst = list(ps)
            src = list(_results(new_p, len(idx), "the parameters").items)
            for name, value in new_state.items():
                dst += [st[name] for st in sts]
                src += _results(value, len(idx), f"state {name!r}").items
            torch._foreach_copy_(dst, src)
        else:
            _commit_unless(skip, ps, new_p, "the parameters")
            for name, value in new_state.items():
                _commit_unless(skip, [st[name] for st in sts], value, f"state {name!r}")


def _commit_unless(skip: Tensor, dst: list[Tensor], value: Any, what: str) -> None:
    """As :func:`gradguard.optim.backends.eager.commit`: ``dst`` takes ``value``'s tensors, or
    keeps its old values, bit for bit (NaN or not), where ``skip`` is true. In place where the
    shapes and dtypes agree; 0-d state (step counts) held as one vector goes through one
    ``where``. The rules return new tensors, never another destination, so committing one list
    before the next cannot change a value still to be read."""
    src = _results(value, len(dst), what)
    vec = src._vector() if dst[0].dim() == 0 else None
    if vec is not None and all(d.dim() == 0 and d.dtype == vec.dtype for d in dst):
        kept = torch.where(skip, torch.stack(dst), vec)
        torch._foreach_copy_(dst, list(kept.unbind(0)))
        return
    for d, s in zip(dst, src.items, strict=True):
        if d.dtype == s.dtype and d.shape == s.shape:
            torch.where(skip, d, s, out=d)  # in place: no temporary, no second pass
        else:
            d.copy_(torch.where(skip, d, s))
