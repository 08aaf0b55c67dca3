"""The decide stage: each param group's clip policy decides for its gradients (one policy
shared by several groups decides once, for all of them); GradScaler's inverse scale is folded
into the clip scale."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..clip import ClipPolicy, GradStats


def buckets(owners: list[int], param_groups: list[dict[str, Any]],
            policy_of: Callable[[dict[str, Any]], ClipPolicy | None]
            ) -> list[tuple[ClipPolicy, list[int]]]:
    """The gradients (by index) each policy decides for, in order of first appearance."""
    out: dict[int, tuple[ClipPolicy, list[int]]] = {}
    for k, gi in enumerate(owners):
        policy = policy_of(param_groups[gi])
        if policy is not None:
            out.setdefault(id(policy), (policy, []))[1].append(k)
    return list(out.values())


def decide(groups: list[tuple[ClipPolicy, list[int]]], stats: GradStats, n: int,
           skip: Tensor | None, multiplier: Tensor | None, device: torch.device
           ) -> tuple[list[Tensor | None], list[float | None], list[Tensor], list[Tensor]]:
    """Per gradient: its scale (None: unscaled) and clamp; per policy: the smallest scale it
    applied and whether its threshold was exceeded. A policy's history is not updated where
    ``skip`` is true."""
    scales: list[Tensor | None] = [None] * n
    clamps: list[float | None] = [None] * n
    mins: list[Tensor] = []
    binding: list[Tensor] = []
    for policy, idx in groups:
        decision = policy.decide(stats, idx, skip)
        for k, s in zip(idx, decision.scales, strict=True):
            scales[k] = s
            clamps[k] = decision.clamp
        mins.append(decision.min_scale.to(torch.float32))
        binding.append(decision.binding.to(device=device))
    if multiplier is not None:  # fold GradScaler's unscale into the clip scale
        folded: dict[int, Tensor] = {}
        for k, s in enumerate(scales):
            key = id(s)
            if key not in folded:
                folded[key] = multiplier if s is None else s * multiplier.to(s.dtype)
            scales[k] = folded[key]
    return scales, clamps, mins, binding
