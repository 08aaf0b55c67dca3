"""Gradients spread over processes: which tensors are sharded, the part a process holds, and the
one all-reduce that turns per-shard norms into norms of whole tensors.

Under FSDP2 (``fully_shard``) parameters and gradients are DTensors; a process holds one shard of
each (``to_local()``), so a norm measured here is a partial one. Under DDP every process holds
the whole, already averaged gradient: plain tensors are complete and are never reduced, so
nothing is counted twice. Nothing here reads a value on the host.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

# DTensor's class, looked up once its module is imported: a DTensor cannot exist before, and
# importing torch.distributed.tensor costs about a second, which ``import gradguard`` should
# not add to every program (most never shard).
_DTENSOR: type | None = None


def _dtensor_class() -> type | None:
    global _DTENSOR
    if _DTENSOR is None:
        module = sys.modules.get("torch.distributed.tensor")
        _DTENSOR = getattr(module, "DTensor", None) if module is not None else None
    return _DTENSOR

Groups = tuple[Any, ...]  # process groups a tensor is sharded over (empty: complete here)


def is_dtensor(t: object) -> bool:
    """Whether ``t`` is a DTensor (a parameter or gradient of FSDP2, tensor parallelism...)."""
    cls = _DTENSOR if _DTENSOR is not None else _dtensor_class()
    return cls is not None and isinstance(t, cls)


def any_dtensor(ts: Iterable[object]) -> bool:
    """Whether any of ``ts`` is a DTensor (no pass over them before DTensor's module is
    imported: none can be)."""
    cls = _DTENSOR if _DTENSOR is not None else _dtensor_class()
    return cls is not None and any(isinstance(t, cls) for t in ts)


def local(t: Tensor) -> Tensor:
    """The part of ``t`` this process holds: ``t.to_local()`` for a DTensor, else ``t``."""
    if is_dtensor(t):
        part: Tensor = t.to_local()  # type: ignore[attr-defined]
        return part
    return t


def multi_process() -> bool:
    """Whether a default process group with more than one process is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shard_groups(t: Tensor, what: str = "tensor") -> Groups:
    """The process groups of the mesh dimensions ``t`` is sharded over (empty for a plain
    tensor or a replicated DTensor). ``what`` names the tensor in errors."""
    if not is_dtensor(t):
        return ()
    groups = []
    for dim, placement in enumerate(t.placements):  # type: ignore[attr-defined]
        if placement.is_shard():
            groups.append(t.device_mesh.get_group(dim))  # type: ignore[attr-defined]
        elif placement.is_partial():
            raise NotImplementedError(
                f"Invalid {what}: placement {placement} on mesh dimension {dim} is Partial "
                "(a sum not yet reduced); gradguard needs reduced gradients (Shard or Replicate)")
    return tuple(groups)


def rows_whole(t: Tensor) -> bool:
    """Whether every slice ``t[i]`` lies whole on one process (sharded along dim 0 only, or
    not sharded): then unit-wise norms (AGC) of the local shard are exact."""
    if not is_dtensor(t):
        return True
    return all(not p.is_shard() or p.dim == 0 for p in t.placements)  # type: ignore[attr-defined]


def reduce_norms(norms: list[Tensor], groups: list[Groups], norm_type: float) -> list[Tensor]:
    """Norms of whole tensors from the ``norm_type``-norms of their local shards.

    Entry ``i`` is reduced over ``groups[i]``: the sum of p-th powers (the max for the
    inf-norm), in float64. All tensors with the same groups and device go in one all-reduce of
    a stacked vector, one float64 per tensor. A non-finite shard makes the result non-finite
    on every process. Entries with no groups are returned as they are.
    """
    out = list(norms)
    buckets: dict[tuple[Any, ...], list[int]] = {}
    for i, gs in enumerate(groups):
        if gs:
            buckets.setdefault((norms[i].device, *(id(g) for g in gs)), []).append(i)
    inf = math.isinf(norm_type)
    for idx in buckets.values():
        values = torch.stack([norms[i].to(torch.float64) for i in idx])
        if inf:
            values = torch.nan_to_num(values, nan=math.inf)  # MAX may drop a NaN; not an inf
            op = dist.ReduceOp.MAX
        else:
            values = values.pow(norm_type)
            op = dist.ReduceOp.SUM
        for group in groups[idx[0]]:
            dist.all_reduce(values, op=op, group=group)
        if not inf:
            values = values.sqrt() if norm_type == 2.0 else values.pow(1.0 / norm_type)
        for k, i in enumerate(idx):
            out[i] = values[k].to(norms[i].dtype)
    return out
