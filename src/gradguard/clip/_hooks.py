"""Gradient norms measured during backward, while each gradient is still hot in cache.

A post-accumulate-grad hook on every parameter of at least :data:`HOOK_MIN_NUMEL` elements
(smaller gradients are cheaper to measure at the step, all at once) records the norms of its
gradient together with the identity and version counter of the gradient tensor it measured. At
the step a recorded norm is used only if ``p.grad`` is still that same tensor at that same
version; anything that changed the gradient after the hook fired (gradient accumulation, an
in-place edit, DDP's all-reduce, a replaced ``.grad``) changes one of the two, and the norm is
measured again.

Two writers do not bump the version counter, and are handled by protocol instead: GradScaler's
``unscale_`` (the optimizer sees ``found_inf`` without ``grad_scale`` and measures again) and
torch's fused kernels writing ``grad / grad_scale`` back (``gradguard.guard`` around a fused torch
optimizer calls :meth:`forget`).
One cannot be seen at all: an edit through ``.data`` (``p.grad.data.mul_(2)``) bypasses the
version counter by design; code that does that should create the optimizer with
``measure_in_backward=False``, or edit ``p.grad`` itself.

Across processes (``torch.distributed`` initialized with more than one process) the hooks
measure only sharded gradients (DTensors): FSDP2 runs a sharded parameter's hooks after the
reduce-scatter, on the reduced shard, so the record is of the final local shard. A plain
gradient's hook fires before DDP's bucket all-reduce (the staleness check would then reject the
record: DDP replaces or rewrites the gradient after the hook), so plain gradients are not
measured in backward there; the step measures them once, after the reduction.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._untraced import not_traced
from .._validation import env_count
from ._dist import is_dtensor, local, multi_process, rows_whole
from ._stats import measure, unitwise_norm

# Gradients smaller than this are not measured in backward: re-reading them at the step, all
# in one multi-tensor norm, costs less than a Python hook call each (about 8 us). On the digits
# MLP (24 tensors, 46k parameters, all below it) that took gradguard's unclipped step from
# 1.34x to 1.16x torch's fused Adam; a 256 KB gradient is also still in a 2 MB L2 at the step.
HOOK_MIN_NUMEL = 1 << 16


def hook_min_numel() -> int:
    """``GRADGUARD_HOOK_MIN_NUMEL`` if set (an integer >= 0), else :data:`HOOK_MIN_NUMEL`:
    the fewest elements (of the local shard) a parameter needs for a backward hook."""
    return env_count("GRADGUARD_HOOK_MIN_NUMEL", HOOK_MIN_NUMEL)


@dataclass
class _Record:
    grad: weakref.ref[Tensor]
    version: int
    norms: dict[float, Tensor] = field(default_factory=dict)
    units: Tensor | None = None


class GradHooks:
    """Per-parameter hooks that measure gradient norms during backward.

    ``norm_types`` are the norms measured for every gradient (2 for the total norm the guard
    and most policies use; ``inf`` for Value's clip scale), ``units`` whether unit-wise norms are
    measured too (AGC). Only parameters of at least ``min_numel`` elements get a hook (default
    :func:`hook_min_numel`); smaller gradients are measured at the step, all in one
    multi-tensor norm. :meth:`lookup` returns a recorded norm only while it is still valid.

    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> hooks = GradHooks([w], min_numel=0)
    >>> (w * 2.0).sum().backward()
    >>> hooks.lookup(w, 2.0)
    tensor(3.4641)
    >>> w.grad.mul_(0.5)  # an edit after the hook: the record is no longer trusted
    tensor([1., 1., 1.])
    >>> hooks.lookup(w, 2.0) is None
    True
    """

    def __init__(self, params: Iterable[Tensor], norm_types: Iterable[float] = (2.0,),
                 units: bool = False, min_numel: int | None = None) -> None:
        self.norm_types = tuple(sorted({float(t) for t in norm_types}))
        self.units = units
        self.hits = 0  # norm lookups answered from a hook (for tests and benchmarks)
        self.misses = 0
        self._records: dict[int, _Record] = {}
        self._handles = []
        floor = hook_min_numel() if min_numel is None else min_numel
        for p in params:
            if (isinstance(p, Tensor) and p.requires_grad and p.is_leaf
                    and local(p).numel() >= floor):
                self._handles.append(p.register_post_accumulate_grad_hook(self._hook))

    # Not traced by torch.compile (a backward run from compiled code calls it once per
    # parameter, and each parameter would be a guard of its own: a recompile per parameter).
    @not_traced("gradguard's backward hooks measure each gradient eagerly")
    def _hook(self, p: Tensor) -> None:
        g = p.grad
        if g is None or g.is_sparse:
            return
        sharded = is_dtensor(g)
        if not sharded and multi_process():
            return  # DDP reduces this gradient after the hook: measured at the step instead
        with torch.no_grad():
            part = local(g)  # a sharded gradient: the local shard; its norms are partial
            rec = _Record(weakref.ref(g), part._version)
            for t in self.norm_types:
                rec.norms[t] = measure([part], t)[0]
            if self.units and (not sharded or (part.dim() > 1 and rows_whole(g))):
                rec.units = unitwise_norm(part)
        self._records[id(p)] = rec

    def recorded(self) -> bool:
        """Whether any norm has been recorded (none is, for parameters below
        :func:`hook_min_numel`)."""
        return bool(self._records)

    def _valid(self, p: Tensor) -> _Record | None:
        rec = self._records.get(id(p))
        g = p.grad
        if rec is None or g is None or rec.grad() is not g or local(g)._version != rec.version:
            return None
        return rec

    def lookup(self, p: Tensor, norm_type: float) -> Tensor | None:
        """The recorded ``norm_type``-norm of ``p.grad`` (of its local shard, for a DTensor),
        or None if there is no valid one."""
        rec = self._valid(p)
        value = None if rec is None else rec.norms.get(float(norm_type))
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def lookup_units(self, p: Tensor) -> Tensor | None:
        """The recorded unit-wise norms of ``p.grad`` (see ``unitwise_norm``), or None."""
        rec = self._valid(p)
        return None if rec is None else rec.units

    def forget(self, params: Iterable[Tensor]) -> None:
        """Drop the records of ``params`` (their gradients were changed in a way the version
        counter does not show, e.g. written by a fused kernel)."""
        for p in params:
            self._records.pop(id(p), None)

    def remove(self) -> None:
        """Remove the hooks and forget every record."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._records.clear()
