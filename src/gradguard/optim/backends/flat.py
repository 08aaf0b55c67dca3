"""The ``flat`` layout: a small param group's step as a handful of calls, whatever its number
of tensors.

A param group's optimizer state lives in flat buffers, one per state entry (``exp_avg``,
``exp_avg_sq``, ...), and every parameter's entry in ``optimizer.state`` is a view of its
segment, so the state dict keeps torch's layout (per-parameter tensors, torch's keys). The
0-d entries (``step``, NAdam's ``mu_product``) of a flat group are equal by construction (the
flat step advances all of them together) and share one 0-d tensor. Each step:

1. the gradients and the parameters are copied into flat buffers before the step's plan (two
   ``_foreach_copy_`` calls; the plan's norms of whole groups, AGC's unit-wise ones included,
   are then reductions over the buffers, see :class:`~gradguard.clip._stats.Laid`).
   Parameters are not moved into the buffer: ``model.to()``, ``load_state_dict`` and
   ``p.data`` writes keep working as they do with torch.optim;
2. the clip decision becomes one scale for the buffer (the global scale as it is; per-tensor
   and per-unit scales expanded over their segments by one index);
3. the update rule runs once over the buffers: torch's fused kernel where it is exact, the
   rule compiled into one kernel for groups of at least :func:`compile_min_numel` elements,
   else the rule's eager operations, each one call over the whole buffer. Rules with
   per-tensor reductions (LARS's and LAMB's trust ratios) take :class:`Segments` and reduce per
   segment;
4. the parameters take the buffer back (one ``_foreach_copy_``); a skipped step writes them
   their own values.

:meth:`FlatGroup.matches` checks, every step and without a host read, that the group is the
one the buffers were built for: the same parameter objects with gradients, shapes, dtypes
and devices, and every state entry still the view it was given (a ``load_state_dict``, a
replaced state tensor, a parameter moved to another dtype, a frozen parameter all fail it).
The buffers are then rebuilt from the per-parameter state, which is what the user sees and
what every other path reads. Building reads the 0-d entries once on the host to check that
they are equal; where they are not (a checkpoint whose parameters took different numbers of
steps), the group takes the per-tensor paths.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..._validation import env_count
from ...clip._apply import apply_clip, kept
from ...clip._stats import FlatLayout, Laid, segment_ids
from ...rules import Rule, State
from . import _select, compiled, native

# Largest param group (in elements) that ``backend="auto"`` steps flat: above it the compiled
# per-tensor path already runs at the memory floor, and the copies in and out of the buffer
# would cost more than the calls they save.
MAX_NUMEL = 1 << 20
# Smallest flat group the rule is compiled for (else its eager operations run, one call
# each over the buffer): measured with benchmarks/small_model.py and `gradguard bench
# --sizes 0.2 --width 64` on the 2-core CPU.
COMPILE_MIN_NUMEL = 1 << 17


def max_numel() -> int:
    """``GRADGUARD_FLAT_MAX_NUMEL`` if set (an integer >= 0), else :data:`MAX_NUMEL`."""
    return env_count("GRADGUARD_FLAT_MAX_NUMEL", MAX_NUMEL)


def compile_min_numel() -> int:
    """``GRADGUARD_FLAT_COMPILE_MIN_NUMEL`` if set (an integer >= 0), else
    :data:`COMPILE_MIN_NUMEL`."""
    return env_count("GRADGUARD_FLAT_COMPILE_MIN_NUMEL", COMPILE_MIN_NUMEL)


_meta = operator.attrgetter("shape", "dtype", "device")


class Segments:
    """Where each tensor of a flat buffer lies, for the rules that reduce per tensor: they
    take per-tensor quantities from :meth:`norm` (one value per segment), compute with them
    per segment, and :meth:`expand` the result over the elements once.

    >>> seg = Segments([torch.Size([2, 2]), torch.Size([3])], torch.device("cpu"))
    >>> seg.norm(torch.tensor([3.0, 0.0, 0.0, 4.0, 1.0, 2.0, 2.0]))
    tensor([5., 3.])
    >>> seg.expand(torch.tensor([10.0, 20.0]))
    tensor([10., 10., 10., 10., 20., 20., 20.])
    >>> seg.vectors
    tensor([False, False, False, False,  True,  True,  True])
    """

    def __init__(self, shapes: list[torch.Size], device: torch.device) -> None:
        self.shapes = shapes
        self.sizes = [s.numel() for s in shapes]
        self.ids = segment_ids(self.sizes, device)
        # Elements of tensors with at most one dimension (biases, norm weights).
        self.vectors = self.expand(torch.tensor([len(s) <= 1 for s in shapes], device=device))

    def norm(self, x: Tensor) -> Tensor:
        """The 2-norm of each segment of ``x``: the per-tensor norms
        ``torch.linalg.vector_norm`` gives, in one multi-tensor call."""
        return torch.stack(torch._foreach_norm(list(x.split(self.sizes)), 2.0))

    def expand(self, values: Tensor) -> Tensor:
        """One value per segment, repeated over the segment's elements."""
        return values.index_select(0, self.ids)


def _scalar_keys(rule: Rule, group: Mapping[str, Any], like: Tensor) -> frozenset[str]:
    """The rule's 0-d state entries (for a parameter with two dimensions, so a full-size entry
    is never 0-d)."""
    meta = torch.empty((2, 2), dtype=like.dtype, device="meta")
    return frozenset(k for k, v in rule.init(meta, group).items() if v.dim() == 0)


class FlatGroup:
    """One param group's flat buffers (see the module docstring). Built by :meth:`build`."""

    def __init__(self) -> None:
        self.params: tuple[Tensor, ...] = ()
        self.shapes: list[torch.Size] = []
        self.sizes: list[int] = []
        self.dtype = torch.float32
        self.device = torch.device("cpu")
        self.numel = 0
        self.p_buf = torch.empty(0)
        self.g_buf = torch.empty(0)
        self.p_views: list[Tensor] = []
        self.g_views: list[Tensor] = []
        self.state: State = {}
        self.entries: list[tuple[dict[str, Tensor], dict[str, Tensor]]] = []
        self.fresh: Tensor | None = None
        self.segments: Segments | None = None
        self.layout = FlatLayout([], self.device)
        self._ids: Tensor | None = None
        self._units: dict[tuple[int, ...], Tensor] = {}
        self._metas: list[tuple[torch.Size, torch.dtype, torch.device]] = []
        self._dicts: list[dict[str, Tensor]] = []
        self._lens: list[int] = []
        self._owners: list[dict[str, Tensor]] = []
        self._keys: list[str] = []
        self._views: list[Tensor] = []

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def build(cls, rule: Rule, group: Mapping[str, Any], params: list[Tensor],
              states: list[dict[str, Tensor]], fresh: list[Tensor | None],
              new_state: bool) -> FlatGroup | None:
        """The buffers for ``params`` (each with its state dict, already initialised, in
        ``states``, which are changed to hold views of the buffers), or None where the state
        cannot be held flat: entries that differ in keys, dtype or device between parameters,
        or 0-d entries (steps) that are not all equal. ``new_state``: every state was just
        initialised (equal by construction: no host read). Full-size entries must have the
        parameters' dtype (not so after ``model.double()``: the per-tensor paths take it)."""
        p0 = params[0]
        self = cls()
        self.params = tuple(params)
        self.shapes = [p.shape for p in params]
        self.dtype, self.device = p0.dtype, p0.device
        sizes = self.sizes = [p.numel() for p in params]
        self.numel = sum(sizes)
        keys = list(states[0])
        scalar = _scalar_keys(rule, group, p0)
        for st in states:
            if list(st) != keys:
                return None
        flat: State = {}
        for key in keys:
            values = [st[key] for st in states]
            v0 = values[0]
            if any(v.dtype != v0.dtype or v.device != v0.device for v in values):
                return None
            if key in scalar:
                if any(v.dim() != 0 for v in values):
                    return None
                if not new_state and len(values) > 1 and not bool(
                        (torch.stack(values) == v0).all()):
                    return None  # different step counts: not one counter
                flat[key] = v0.clone()
            else:
                if v0.dtype != p0.dtype or any(v.shape != p.shape for v, p in
                                               zip(values, params, strict=True)):
                    return None  # (state of another dtype: after model.double(), say)
                flat[key] = torch.cat([v.reshape(-1) for v in values])
        if any(f is not None for f in fresh):
            if any(f is None for f in fresh):
                return None
            flags = [f for f in fresh if f is not None]
            if not new_state and len(flags) > 1 and not bool(
                    (torch.stack(flags) == flags[0]).all()):
                return None
            self.fresh = flags[0].clone()
        self.state = flat
        # Hand every parameter views of its segments.
        views: dict[str, list[Tensor]] = {}
        for key, buf in flat.items():
            if key in scalar:
                views[key] = [buf.view(()) for _ in params]
            else:
                views[key] = [v.view(shape) for v, shape in
                              zip(buf.split(sizes), self.shapes, strict=True)]
        for i, st in enumerate(states):
            mine = {key: views[key][i] for key in keys}
            st.update(mine)
            self.entries.append((st, mine))
        self.p_buf = torch.empty(self.numel, dtype=self.dtype, device=self.device)
        self.g_buf = torch.empty_like(self.p_buf)
        self.p_views = [v.view(s) for v, s in zip(self.p_buf.split(sizes), self.shapes,
                                                   strict=True)]
        self.g_views = [v.view(s) for v, s in zip(self.g_buf.split(sizes), self.shapes,
                                                   strict=True)]
        self.layout = FlatLayout(self.shapes, self.device)
        if rule.per_tensor:
            self.segments = Segments(self.shapes, self.device)
        self._cache_checks()
        return self

    def _cache_checks(self) -> None:
        """The flat lists :meth:`matches` compares against."""
        self._metas = [_meta(p) for p in self.params]
        self._dicts = [st for st, _ in self.entries]
        self._lens = [len(mine) for _, mine in self.entries]
        triples = [(st, k, v) for st, mine in self.entries for k, v in mine.items()]
        self._owners = [t[0] for t in triples]
        self._keys = [t[1] for t in triples]
        self._views = [t[2] for t in triples]

    def matches(self, params: list[Tensor], state: Mapping[Tensor, Any]) -> bool:
        """Whether these buffers still hold ``params``' state: the same parameter objects
        (with the same shapes, dtype and device) and every state entry still the view it was
        given. No host read; every check is one pass in C over cached lists."""
        if len(params) != len(self.params) or not all(map(operator.is_, params, self.params)):
            return False
        if list(map(_meta, params)) != self._metas:
            return False
        if not self._views:  # stateless (SGD without momentum): torch keeps no entry either
            return not any(map(state.get, params))
        sts = self._dicts
        return (all(map(operator.is_, map(state.get, params), sts))
                and list(map(len, sts)) == self._lens
                and all(map(operator.is_, map(dict.get, self._owners, self._keys),
                            self._views)))

    def release(self) -> None:
        """Give every parameter 0-d state entries of its own again (the per-tensor paths
        advance steps one parameter at a time); full-size entries stay views, whose segments
        do not overlap. Entries the user has replaced are left alone."""
        for st, mine in self.entries:
            for key, view in mine.items():
                if view.dim() == 0 and st.get(key) is view:
                    st[key] = view.clone()
        self.entries = []
        self.params = ()  # matches nothing from here on

    # -- a step -----------------------------------------------------------------------------
    def _scale(self, scales: list[Tensor | None]) -> Tensor | None:
        """One scale for the buffer: None, the shared 0-d scale, or one value per element
        (per-tensor scales, and AGC's per-unit ones, expanded over their segments)."""
        s0 = scales[0]
        if s0 is not None and s0.dim() == 0 and all(s is s0 for s in scales):
            return s0
        if all(s is None for s in scales):
            return None
        if all(s is not None and s.dim() == 0 for s in scales):
            if self._ids is None:
                self._ids = segment_ids(self.sizes, self.device)
            stacked = torch.stack([s for s in scales if s is not None]).to(self.device)
            return stacked.index_select(0, self._ids)
        parts = [torch.ones((), device=self.device) if s is None else s for s in scales]
        counts = [s.numel() for s in parts]
        if counts == self.layout.counts:
            ids = self.layout.unit_ids()
        else:
            # unit j of tensor i covers numel_i / units_i consecutive elements
            key = tuple(counts)
            if key not in self._units:
                self._units[key] = self.layout._ids_for(counts)
            ids = self._units[key]
        joined = _joined(parts)
        units = torch.cat([s.reshape(-1) for s in parts]) if joined is None else joined
        return units.index_select(0, ids)

    def _eager(self, rule: Rule, scale: Tensor | None, clamp: float | None,
               skip: Tensor | None, lr: float | Tensor, hparams: dict[str, Any]) -> None:
        """The reference update (:func:`.eager.update_tensors`) on the one flat tensor, each
        result committed in place: one ``where`` per buffer on a step that may be skipped."""
        if isinstance(lr, Tensor) and lr.dim() > 0:
            lr = lr.reshape(())
        g = apply_clip(self.g_buf, scale, clamp)
        new_p, new_state = rule.update(self.p_buf, g, self.state, lr=lr, fresh=self.fresh,
                                       **hparams)
        _commit(self.p_buf, new_p, skip)
        for key, value in new_state.items():
            _commit(self.state[key], value, skip)

    def laid(self, start: int) -> Laid:
        """The loaded buffers as the plan's statistics take them, this group's gradients
        being the step's ``start``-th and on."""
        return Laid(start, start + len(self.params), self.g_buf, self.p_buf, self.layout)

    def load(self, params: list[Tensor], grads: list[Tensor]) -> None:
        """Copy the step's parameters and gradients into their buffers (before the plan,
        whose norms are then taken over the buffers)."""
        torch._foreach_copy_(self.g_views, grads)
        torch._foreach_copy_(self.p_views, params)

    def step(self, rule: Rule, group: Mapping[str, Any], params: list[Tensor],
             scales: list[Tensor | None], clamp: float | None, skip: Tensor | None,
             lr: float | Tensor, hparams: dict[str, Any]) -> str:
        """Take the group's step over the buffers :meth:`load` filled; returns the path the
        update took (``"native"``, ``"compiled"`` or ``"eager"``)."""
        scale = self._scale(scales)
        p, g, st = [self.p_buf], [self.g_buf], [self.state]
        how = native.plan(rule.name, group, p, g, st, [scale], clamp)
        if how != "none":
            _select.run(_select.Choice("native", prescaled=how == "prescaled"), rule, group,
                        p, g, st, [scale], clamp, [self.fresh], skip, lr, hparams)
            path = "native"
        else:
            args = (rule.update, p, g, st, [scale], clamp, [self.fresh], skip, lr)
            if (self.segments is None and self.numel >= compile_min_numel()
                    and compiled.run_compiled(*args, hparams)):
                path = "compiled"
            else:
                if self.segments is not None:
                    hparams = {**hparams, "segments": self.segments}
                self._eager(rule, scale, clamp, skip, lr, hparams)
                path = "eager"
        torch._foreach_copy_(list(params), self.p_views)
        if self.fresh is not None:
            self.fresh = (self.fresh & skip if skip is not None
                          else torch.zeros_like(self.fresh))
        return path


def _joined(parts: list[Tensor]) -> Tensor | None:
    """The vector ``parts`` were cut from, where they are consecutive views of one (AGC's
    scales of a whole group, decided at once), else None."""
    base = parts[0]._base
    if base is None or base.dim() != 1 or base.dtype != parts[0].dtype:
        return None
    offset = start = parts[0].storage_offset()
    for part in parts:
        if part._base is not base or part.storage_offset() != offset \
                or not part.is_contiguous():
            return None
        offset += part.numel()
    lo = start - base.storage_offset()
    return base.narrow(0, lo, offset - start)


def _commit(dst: Tensor, new: Tensor, skip: Tensor | None) -> None:
    """``dst`` takes ``new``, or keeps its value where ``skip`` is true (as
    :func:`.eager.commit`), in place where the shapes and dtypes agree."""
    if skip is None:
        dst.copy_(new)
    elif dst.dtype == new.dtype and dst.shape == new.shape:
        torch.where(skip, dst, new, out=dst)
    else:
        dst.copy_(kept(dst, new, skip))


def _flags_allow(backend: str, group: Mapping[str, Any]) -> bool:
    """The backend and the group's settings allow the flat layout (the tensors aside)."""
    return (backend in ("auto", "flat") and not torch.is_grad_enabled()
            and not group.get("differentiable") and not group.get("fused")
            and group.get("foreach") is None)


_grad_meta = operator.attrgetter("dtype", "device", "layout")


def _grads_fit(grads: list[Tensor], dtype: torch.dtype, device: torch.device) -> bool:
    want = (dtype, device, torch.strided)
    return all(m == want for m in map(_grad_meta, grads))


def wanted(backend: str, group: Mapping[str, Any], params: list[Tensor],
           grads: list[Tensor]) -> bool:
    """Whether this group's step runs flat: ``backend="flat"``, or ``"auto"`` for a group of
    at most :func:`max_numel` elements; not where torch's ``fused``/``foreach`` flags or a
    differentiable step choose a path; every parameter a dense, real, floating tensor (no
    shard) of one dtype and device, its gradient dense and of the same dtype."""
    if not _flags_allow(backend, group):
        return False
    p0 = params[0]
    dtype, device = p0.dtype, p0.device
    if not dtype.is_floating_point:
        return False
    if not all(type(p) in (Tensor, torch.nn.Parameter) and p.dtype == dtype
               and p.device == device for p in params) or not _grads_fit(grads, dtype, device):
        return False
    if backend == "auto":
        return sum(p.numel() for p in params) <= max_numel()
    return True


def still_wanted(flat: FlatGroup, backend: str, group: Mapping[str, Any],
                 grads: list[Tensor]) -> bool:
    """:func:`wanted` for a group whose parameters :meth:`FlatGroup.matches` has checked: only
    the settings and the gradients can have changed."""
    return (_flags_allow(backend, group) and _grads_fit(grads, flat.dtype, flat.device)
            and (backend == "flat" or flat.numel <= max_numel()))


__all__ = ["COMPILE_MIN_NUMEL", "MAX_NUMEL", "FlatGroup", "Segments", "compile_min_numel",
           "max_numel", "still_wanted", "wanted"]

