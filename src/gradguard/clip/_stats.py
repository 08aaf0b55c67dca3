"""Gradient statistics for one step, gathered once and shared by every clip policy and the guard.

Everything stays a tensor on the gradients' device: nothing here reads a value on the host.
Sharded gradients (FSDP2's DTensors) are measured on their local shards, and the norms of the
whole tensors come from one all-reduce of a small vector (see :mod:`gradguard.clip._dist`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ._dist import Groups, is_dtensor, local, reduce_norms, rows_whole, shard_groups

if TYPE_CHECKING:
    from ._hooks import GradHooks


def _norm_dtype(t: Tensor) -> torch.dtype:
    """Norms of low-precision gradients are accumulated in float32, float64 stays float64."""
    return torch.float64 if t.dtype in (torch.float64, torch.complex128) else torch.float32


def vector_norm(t: Tensor, ord: float = 2.0, **kwargs: Any) -> Tensor:
    """``torch.linalg.vector_norm`` in the precision of :func:`_norm_dtype`: a complex tensor's
    norm is that of its moduli (torch takes no real ``dtype`` for a complex input), and a
    sparse tensor's that of its coalesced values."""
    if t.layout != torch.strided:
        t = t.coalesce()._values()
    if t.is_complex():
        return torch.linalg.vector_norm(t, ord, **kwargs)
    return torch.linalg.vector_norm(t, ord, dtype=_norm_dtype(t), **kwargs)


def unitwise_norm(t: Tensor) -> Tensor:
    """Norm per unit as in Brock et al. 2021: the whole tensor for ndim <= 1, else per slice of
    dim 0 (one output unit / filter), shaped to broadcast against ``t``."""
    if t.layout != torch.strided:
        t = t.to_dense()
    if t.dim() <= 1:
        return vector_norm(t)
    return vector_norm(t, dim=tuple(range(1, t.dim())), keepdim=True)


# Gradient dtypes whose squares overflow float32 once GradScaler's scale reaches about 2**64.
_OVERFLOWING = (torch.float32, torch.bfloat16)

_DOT_MIN = 1 << 16  # elements from which a CPU 2-norm uses torch.dot
# Most elements whose unit-wise norms are measured all at once (GradStats.units_together).
_TOGETHER_MAX_NUMEL = 1 << 20


def measure(tensors: list[Tensor], norm_type: float) -> list[Tensor]:
    """The ``norm_type``-norm of each tensor (all of one device and dtype): one multi-tensor
    kernel where torch has it, so a norm measured in a backward hook and one measured at the step
    are the same arithmetic."""
    if not tensors:
        return []
    dtype = tensors[0].dtype
    if (dtype not in (torch.float32, torch.float64) or norm_type not in (1.0, 2.0, math.inf)
            or tensors[0].layout != torch.strided or tensors[0].requires_grad):
        # (Gradients that require grad come from differentiable steps: the per-tensor op has
        # a derivative.)
        return [vector_norm(t, norm_type) for t in tensors]
    if norm_type != 2.0 or tensors[0].device.type != "cpu":
        return list(torch._foreach_norm(tensors, norm_type))
    # On the CPU, BLAS's dot reads a large tensor faster than the norm kernel does.
    out: list[Tensor | None] = [None] * len(tensors)
    small = [i for i, t in enumerate(tensors) if t.numel() < _DOT_MIN or not t.is_contiguous()]
    if small:
        norms = torch._foreach_norm([tensors[i] for i in small], 2.0)
        for i, n in zip(small, norms, strict=True):
            out[i] = n
    for i, t in enumerate(tensors):
        if out[i] is None:
            flat = t.view(-1)
            out[i] = torch.dot(flat, flat).sqrt()
    return [n for n in out if n is not None]


def combine_norms(norms: list[Tensor], norm_type: float) -> Tensor:
    """The norm of a concatenation, from the norms of its parts (as clip_grad_norm_ does it)."""
    if not norms:
        return torch.zeros(())
    dtype = torch.float64 if any(n.dtype == torch.float64 for n in norms) else torch.float32
    stacked = torch.stack([n if n.dtype == dtype else n.to(dtype) for n in norms])
    return torch.linalg.vector_norm(stacked, norm_type)


@dataclass(frozen=True)
class StatNeeds:
    """The statistics a clip policy will ask :class:`GradStats` for (its ``needs``), so that
    the backward hooks measure them and a sharded step all-reduces them at once, without
    anyone testing the policy's type.

    ``norm_types``: per-tensor gradient norms of these orders (the 2-norm is measured in any
    case: the guard and the step record need it); ``units``: unit-wise gradient norms
    (:meth:`GradStats.unit_norms`); ``param_norms``: unit-wise parameter norms
    (:meth:`GradStats.param_unit_norms`), which for sharded vectors ride in the all-reduce of
    the gradient norms.

    >>> StatNeeds.merge([StatNeeds(frozenset({math.inf})), StatNeeds(units=True)])
    StatNeeds(norm_types=frozenset({inf}), units=True, param_norms=False)
    """

    norm_types: frozenset[float] = frozenset()
    units: bool = False
    param_norms: bool = False

    @staticmethod
    def merge(needs: Iterable[StatNeeds]) -> StatNeeds:
        """Everything any of ``needs`` asks for."""
        norm_types: set[float] = set()
        units = param_norms = False
        for n in needs:
            norm_types |= n.norm_types
            units = units or n.units
            param_norms = param_norms or n.param_norms
        return StatNeeds(frozenset(norm_types), units, param_norms)


def segment_ids(sizes: list[int], device: torch.device) -> Tensor:
    """For every element of a flat buffer of consecutive segments of ``sizes``, its segment's
    index.

    >>> segment_ids([2, 0, 3], torch.device("cpu"))
    tensor([0, 0, 2, 2, 2])
    """
    return torch.repeat_interleave(torch.arange(len(sizes), device=device),
                                   torch.tensor(sizes, dtype=torch.int64, device=device))


class FlatLayout:
    """Where the tensors of a flat buffer lie (a param group stepped flat): their shapes, and
    for unit-wise norms their units (:func:`unitwise_norm`'s: the whole tensor for ndim <= 1,
    else the slices of dim 0), each a run of consecutive elements.

    >>> lay = FlatLayout([torch.Size([2, 2]), torch.Size([3])], torch.device("cpu"))
    >>> lay.counts, lay.unit_shapes, lay.unit_ids()
    ([2, 1], [(2, 1), ()], tensor([0, 0, 1, 1, 2, 2, 2]))
    """

    def __init__(self, shapes: list[torch.Size], device: torch.device) -> None:
        self.shapes = shapes
        self.device = device
        self.counts = [1 if len(s) <= 1 else s[0] for s in shapes]
        self.unit_shapes = [() if len(s) <= 1 else (s[0],) + (1,) * (len(s) - 1)
                            for s in shapes]
        self.units = sum(self.counts)
        self._unit_ids: Tensor | None = None
        # Maximal runs of consecutive tensors whose units have one length: (first element,
        # number of units, unit length); each run is a matrix of its units' rows.
        self.runs: list[tuple[int, int, int]] = []
        at = 0
        for shape, count in zip(shapes, self.counts, strict=True):
            numel = math.prod(shape)
            length = numel // count if count else 0
            if count:
                if self.runs and self.runs[-1][2] == length:
                    first, units, _ = self.runs[-1]
                    self.runs[-1] = (first, units + count, length)
                else:
                    self.runs.append((at, count, length))
            at += numel

    def unit_ids(self) -> Tensor:
        """For every element of the buffer, the index of its unit (built once)."""
        if self._unit_ids is None:
            self._unit_ids = self._ids_for(self.counts)
        return self._unit_ids

    def _ids_for(self, counts: list[int]) -> Tensor:
        """Element-to-unit indices where tensor ``i`` has ``counts[i]`` equal units of
        consecutive elements."""
        return segment_ids([math.prod(s) // c for s, c in zip(self.shapes, counts, strict=True)
                            for _ in range(c)], self.device)

    def unit_norms(self, buf: Tensor) -> Tensor:
        """The 2-norm of every unit of ``buf`` (laid out as described), as one vector, in
        :func:`_norm_dtype`: per run of units of one length, the row norms of one matrix
        (a small model has a few runs, not one per tensor).

        >>> lay = FlatLayout([torch.Size([2, 2]), torch.Size([2]), torch.Size([3])],
        ...                  torch.device("cpu"))
        >>> lay.runs
        [(0, 3, 2), (6, 1, 3)]
        >>> lay.unit_norms(torch.tensor([3.0, 4.0, 0.0, 1.0, 6.0, 8.0, 2.0, 1.0, 2.0]))
        tensor([ 5.,  1., 10.,  3.])
        """
        buf = buf.detach()
        parts = []
        for first, units, length in self.runs:
            if length == 0:
                parts.append(torch.zeros(units, dtype=_norm_dtype(buf), device=buf.device))
            else:
                rows = buf.narrow(0, first, units * length).view(units, length)
                parts.append(vector_norm(rows, dim=1))
        if not parts:
            return torch.zeros(0, dtype=_norm_dtype(buf), device=buf.device)
        return parts[0] if len(parts) == 1 else torch.cat(parts)


@dataclass(frozen=True)
class Laid:
    """Gradients ``start .. stop-1`` of a step lie end to end in the flat buffer ``grads``, and
    their parameters in ``params`` (a param group stepped flat), laid out as ``layout``."""

    start: int
    stop: int
    grads: Tensor
    params: Tensor
    layout: FlatLayout


class GradStats:
    """Per-tensor gradient statistics of one step, computed on first use and cached.

    ``params`` and ``grads`` are aligned lists; policies refer to tensors by index. With
    ``hooks``, norms measured during backward are used where still valid (see
    :class:`gradguard.clip.GradHooks`); only the rest is measured here. ``multiplier`` (a 0-d
    tensor, GradScaler's inverse scale) gives the statistics of ``grad * multiplier``: float16
    and float64 gradients are measured as they are and their norms multiplied; float32 and
    bfloat16 ones are multiplied first, one tensor at a time, since the squares of gradients
    scaled by about 2**64 or more overflow float32 (norms measured in backward are not used).

    Sharded gradients (DTensors) are measured on their local shards and every norm is that of
    the whole tensor: the first call of :meth:`norms` all-reduces the per-shard values of all
    tensors at once (every process must ask for the same statistics in the same order, as the
    optimizers do). ``param_norms`` lists tensors whose parameter norm a policy will ask for
    (AGC's vectors): for sharded ones it rides in that same all-reduce.

    ``laid`` lists runs of gradients that lie end to end in flat buffers (:class:`Laid`: a
    param group stepped flat, see :mod:`gradguard.optim.backends.flat`): the norm of whole
    runs taken together, and their unit-wise norms, are then reductions over the buffers, not
    a few calls per tensor (where no multiplier or backward record changes what is measured).

    >>> g = [torch.tensor([3.0, 4.0]), torch.tensor([0.0])]
    >>> stats = GradStats([torch.zeros(2), torch.zeros(1)], g)
    >>> stats.total_norm([0, 1])
    tensor(5.)
    """

    def __init__(self, params: list[Tensor], grads: list[Tensor],
                 hooks: GradHooks | None = None, multiplier: Tensor | None = None,
                 param_norms: Iterable[int] = (),
                 laid: Iterable[Laid] = ()) -> None:
        self.params = params
        self.grads = grads
        self.hooks = hooks
        self.multiplier = multiplier
        self._norms: dict[float, list[Tensor]] = {}
        self._units: dict[int, Tensor] = {}
        self._totals: dict[tuple[float, tuple[int, ...]], Tensor] = {}
        self._groups: list[Groups] | None = None
        self._want_param_norms = tuple(param_norms)
        self._param_norms: dict[int, Tensor] = {}
        self._laid = {run.start: run for run in laid}

    def shard_groups(self) -> list[Groups]:
        """The process groups each gradient is sharded over (all empty unless DTensors)."""
        if self._groups is None:
            self._groups = [shard_groups(g, f"gradient {i}") if is_dtensor(g) else ()
                            for i, g in enumerate(self.grads)]
        return self._groups

    def norms(self, norm_type: float = 2.0) -> list[Tensor]:
        """The ``norm_type``-norm of every gradient (0-d tensors, float32 or float64)."""
        key = float(norm_type)
        cached = self._norms.get(key)
        if cached is None:
            cached = self._compute_norms(key)
            self._norms[key] = cached
        return cached

    def _prescaled(self, i: int) -> bool:
        """Whether gradient ``i`` is multiplied by ``multiplier`` before it is measured."""
        return self.multiplier is not None and self.grads[i].dtype in _OVERFLOWING

    def _unscaled(self, i: int) -> Tensor:
        g = local(self.grads[i])
        assert self.multiplier is not None
        return g.to(torch.float32) * self.multiplier.to(device=g.device, dtype=torch.float32)

    def _plain(self) -> bool:
        """Nothing to look up or reduce: no multiplier, no norm recorded in backward, every
        gradient a plain strided tensor of one device and dtype (a small model's step)."""
        grads = self.grads
        if self.multiplier is not None or (self.hooks is not None and self.hooks.recorded()):
            return False
        g0 = grads[0]
        dtype, device = g0.dtype, g0.device
        return all(type(g) is Tensor and g.dtype == dtype and g.device == device
                   and g.layout == torch.strided for g in grads)

    def _compute_norms(self, norm_type: float) -> list[Tensor]:
        if self.grads and self._plain():
            return measure(self.grads, norm_type)
        out: list[Tensor | None] = [None] * len(self.grads)
        for i in range(len(self.grads)):
            if self._prescaled(i):
                out[i] = measure([self._unscaled(i)], norm_type)[0]
            elif self.hooks is not None:
                out[i] = self.hooks.lookup(self.params[i], norm_type)
        # The rest: one multi-tensor kernel per (device, dtype, layout) bucket where torch has it.
        buckets: dict[tuple[torch.device, torch.dtype, torch.layout], list[int]] = {}
        for i, g in enumerate(self.grads):
            if out[i] is None:
                buckets.setdefault((g.device, g.dtype, g.layout), []).append(i)
        for idx in buckets.values():
            parts = [local(self.grads[i]) for i in idx]
            for i, n in zip(idx, measure(parts, norm_type), strict=True):
                out[i] = n
        result = [n for n in out if n is not None]
        assert len(result) == len(self.grads)
        groups = self.shard_groups()
        if any(groups):
            result = self._reduce(result, groups, norm_type)
        return [n if self._prescaled(i) else self._scaled(n) for i, n in enumerate(result)]

    def _reduce(self, norms: list[Tensor], groups: list[Groups], norm_type: float) -> list[Tensor]:
        """Whole-tensor norms from shard norms; the 2-norm reduction also carries the
        parameter norms asked for in ``param_norms``."""
        extra: list[int] = []
        if norm_type == 2.0:
            extra = [i for i in self._want_param_norms
                     if i not in self._param_norms and self.params[i].dim() <= 1
                     and shard_groups(self.params[i], f"parameter {i}")]
        local_p = [vector_norm(local(self.params[i].detach())) for i in extra]
        reduced = reduce_norms(norms + local_p,
                               groups + [shard_groups(self.params[i]) for i in extra], norm_type)
        for i, n in zip(extra, reduced[len(norms):], strict=True):
            self._param_norms[i] = n
        return reduced[:len(norms)]

    def _scaled(self, norm: Tensor) -> Tensor:
        return norm if self.multiplier is None else norm * self.multiplier.to(norm.dtype)

    def total_norm(self, idx: list[int], norm_type: float = 2.0) -> Tensor:
        """The ``norm_type``-norm of the gradients at ``idx`` taken together."""
        key = (float(norm_type), tuple(idx))
        total = self._totals.get(key)
        if total is None:
            total = self._laid_total(idx, norm_type)
            if total is None:
                norms = self.norms(norm_type)
                total = combine_norms([norms[i] for i in idx], norm_type)
            self._totals[key] = total
        return total

    def _laid_runs(self, idx: list[int]) -> list[Laid] | None:
        """The runs of ``laid`` that ``idx`` is, in order, where it is a sequence of whole runs
        and the gradients are measured as they are (no multiplier, no norm recorded in
        backward); else None."""
        if (not self._laid or self.multiplier is not None
                or (self.hooks is not None and self.hooks.recorded())):
            return None
        runs: list[Laid] = []
        pos = 0
        while pos < len(idx):
            run = self._laid.get(idx[pos])
            if run is None:
                return None
            n = run.stop - run.start
            if idx[pos:pos + n] != list(range(run.start, run.stop)):
                return None
            runs.append(run)
            pos += n
        return runs

    def _laid_total(self, idx: list[int], norm_type: float) -> Tensor | None:
        """The norm of the gradients at ``idx`` from the flat buffers they lie in (see
        :meth:`_laid_runs`), else None. The same norm as the per-tensor route up to rounding:
        a p-norm of a concatenation is the p-norm of its parts' p-norms."""
        runs = self._laid_runs(idx) if norm_type in (1.0, 2.0, math.inf) else None
        if not runs:
            return None
        parts = [vector_norm(run.grads, norm_type) for run in runs]
        return parts[0] if len(parts) == 1 else combine_norms(parts, norm_type)

    def unit_norms(self, i: int) -> Tensor:
        """Unit-wise gradient norms of tensor ``i`` (see :func:`unitwise_norm`); for a sharded
        gradient, those of its local rows (each row lies whole on one process)."""
        cached = self._units.get(i)
        if cached is None:
            g = self.grads[i]
            if is_dtensor(g) and g.dim() <= 1:
                cached = self.norms(2.0)[i]  # the whole vector is one unit: reduced already
            else:
                if not rows_whole(g):
                    raise NotImplementedError(_split_rows("gradient", i, g))
                if self._prescaled(i):
                    cached = unitwise_norm(self._unscaled(i))
                else:
                    raw = (self.hooks.lookup_units(self.params[i]) if self.hooks is not None
                           else None)
                    if raw is None:
                        raw = unitwise_norm(local(g))
                    cached = self._scaled(raw)
            self._units[i] = cached
        return cached

    def units_together(self, idx: list[int]) -> tuple[Tensor, Tensor, list[int],
                                                      list[tuple[int, ...]]] | None:
        """The unit-wise norms (see :func:`unitwise_norm`) of the gradients and of the
        parameters at ``idx``, all at once: ``(grad_norms, param_norms, counts, shapes)``, two
        vectors of one value per unit (tensor by tensor, units in order), each tensor's number
        of units and the shape of its unit norms. One segmented reduction each (squares summed
        per unit over the tensors laid end to end) instead of a few operations per tensor.

        None where the tensors are measured one by one: more than :data:`_TOGETHER_MAX_NUMEL`
        elements (laid end to end they would be copied; per tensor, the calls' fixed costs
        are small beside the work), sharded, sparse or complex ones, mixed devices or dtypes,
        GradScaler's multiplier, unit norms measured in backward, a differentiable step, or
        no units at all.

        >>> g = [torch.tensor([[3.0, 4.0], [0.0, 1.0]]), torch.tensor([2.0])]
        >>> units = GradStats([torch.ones(2, 2), torch.ones(1)], g).units_together([0, 1])
        >>> units[0], units[2], units[3]
        (tensor([5., 1., 2.]), [2, 1], [(2, 1), ()])
        """
        if self.multiplier is not None or not idx:
            return None
        runs = self._laid_runs(idx)
        if runs:
            counts = [c for run in runs for c in run.layout.counts]
            if not sum(counts):
                return None
            g_parts = [run.layout.unit_norms(run.grads) for run in runs]
            p_parts = [run.layout.unit_norms(run.params) for run in runs]
            return (g_parts[0] if len(runs) == 1 else torch.cat(g_parts),
                    p_parts[0] if len(runs) == 1 else torch.cat(p_parts), counts,
                    [u for run in runs for u in run.layout.unit_shapes])
        grads = [self.grads[i] for i in idx]
        params = [self.params[i] for i in idx]
        if torch.is_grad_enabled() and any(t.requires_grad for t in grads + params):
            return None  # a differentiable step: the per-tensor norms stay in the graph
        g0 = grads[0]
        if sum(g.numel() for g in grads) > _TOGETHER_MAX_NUMEL:
            return None
        for g, p in zip(grads, params, strict=True):
            if (is_dtensor(g) or is_dtensor(p) or g.layout != torch.strided or g.is_complex()
                    or p.is_complex() or g.dtype != g0.dtype or g.device != g0.device
                    or p.device != g0.device):
                return None
        if self.hooks is not None and any(self.hooks.lookup_units(p) is not None
                                          for p in params):
            return None
        counts = [1 if g.dim() <= 1 else g.shape[0] for g in grads]
        shapes = [() if g.dim() <= 1 else (g.shape[0],) + (1,) * (g.dim() - 1) for g in grads]
        if not sum(counts):
            return None
        dtype = _norm_dtype(g0)
        return (_norms_together(grads, dtype), _norms_together(params, dtype), counts, shapes)

    def param_unit_norms(self, i: int) -> Tensor:
        """Unit-wise norms of parameter ``i`` (see :func:`unitwise_norm`), shaped like
        :meth:`unit_norms`; a sharded vector's norm is that of the whole vector."""
        cached = self._param_norms.get(i)
        if cached is not None:
            return cached
        # In a differentiable step the norm stays in the graph, on a copy: the step then
        # writes the parameter itself, which backward must not find changed.
        p = self.params[i].clone() if torch.is_grad_enabled() else self.params[i].detach()
        if not is_dtensor(p):
            return unitwise_norm(p)
        if not rows_whole(p):
            raise NotImplementedError(_split_rows("parameter", i, p))
        if p.dim() > 1:
            return unitwise_norm(local(p))
        groups = shard_groups(p, f"parameter {i}")
        norm = vector_norm(local(p))
        cached = reduce_norms([norm], [groups], 2.0)[0] if groups else norm
        self._param_norms[i] = cached
        return cached


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    t = t.detach()
    return t if t.dtype == dtype else t.to(dtype)


def _norms_together(tensors: list[Tensor], dtype: torch.dtype) -> Tensor:
    """The unit-wise 2-norms of ``tensors`` as one vector, tensor by tensor: every vector's
    norm in one multi-tensor call, and the rows of all matrices (and higher) of one row length
    stacked into one matrix whose row norms are one call."""
    pieces: list[Tensor | None] = [None] * len(tensors)
    vectors = [i for i, t in enumerate(tensors) if t.dim() <= 1]
    if vectors:
        norms = torch._foreach_norm([_as(tensors[i], dtype) for i in vectors], 2.0)
        for i, n in zip(vectors, norms, strict=True):
            pieces[i] = n.reshape(1)
    by_length: dict[int, list[int]] = {}
    for i, t in enumerate(tensors):
        if t.dim() > 1:
            by_length.setdefault(math.prod(t.shape[1:]), []).append(i)
    for length, idx in by_length.items():
        if length == 0:
            for i in idx:
                pieces[i] = torch.zeros(tensors[i].shape[0], dtype=dtype,
                                        device=tensors[i].device)
            continue
        rows = torch.cat([_as(tensors[i], dtype).reshape(-1, length) for i in idx])
        norms = torch.linalg.vector_norm(rows, dim=1)
        for i, part in zip(idx, norms.split([tensors[i].shape[0] for i in idx]), strict=True):
            pieces[i] = part
    return torch.cat([p for p in pieces if p is not None])


def _split_rows(what: str, i: int, t: Tensor) -> str:
    return (f"Invalid {what} {i} for unit-wise (AGC) norms: placements "
            f"{tuple(t.placements)} split its rows across processes; "  # type: ignore[attr-defined]
            "shard it along dim 0 (FSDP2's default) or use another clip policy")
