"""Checkpoint extras: gradguard's entry in a torch state_dict (clip-policy state, counters),
carried where torch's distributed checkpoint utilities keep it, and clip policies in param
groups saved as their spec strings."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from torch import Tensor

from ..clip import ClipPolicy, resolve

EXTRAS_KEY = "gradguard"


def _to_cpu(tree: Any) -> Any:
    if isinstance(tree, Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: _to_cpu(v) for k, v in tree.items()}
    return tree


def attach_extras(sd: dict[str, Any], extra: dict[str, Any]) -> None:
    """Put gradguard's entry (clip state, counters) into a packed state_dict under
    ``"gradguard"``. Where ``torch.distributed`` is initialized, also as a CPU copy in
    ``param_groups[0]["gradguard"]``, wrapped in a 1-tuple: torch's distributed checkpoint
    utilities (``get_optimizer_state_dict``, ``set_optimizer_state_dict``) keep only ``state``
    and ``param_groups``, and DCP saves a tuple as one opaque object, so the entry survives
    whatever shapes its tensors have. (Not in single-process state_dicts, whose param groups
    hold hyperparameters only.)"""
    sd[EXTRAS_KEY] = extra
    if sd["param_groups"] and dist.is_available() and dist.is_initialized():
        sd["param_groups"][0][EXTRAS_KEY] = (_to_cpu(extra),)


def detach_extras(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The state_dict without gradguard's entry (the caller's dict is not changed), and that
    entry: the top-level one, else the copy carried in the param groups."""
    state_dict = dict(state_dict)
    extra = state_dict.pop(EXTRAS_KEY, None)
    groups = state_dict.get("param_groups")
    if isinstance(groups, list) and any(EXTRAS_KEY in g for g in groups):
        carried = [g[EXTRAS_KEY] for g in groups if EXTRAS_KEY in g]
        state_dict["param_groups"] = [{k: v for k, v in g.items() if k != EXTRAS_KEY}
                                      for g in groups]
        if extra is None and isinstance(carried[0], tuple | list) and carried[0]:
            extra = carried[0][0]
    return state_dict, extra


def export_groups(groups: list[dict[str, Any]]) -> None:
    """Replace clip policy objects in packed param groups by their spec strings (in place)."""
    for g in groups:
        if "clip" in g and isinstance(g["clip"], ClipPolicy):
            g["clip"] = g["clip"].spec


def restore_group_clips(param_groups: list[dict[str, Any]],
                        before: list[tuple[bool, ClipPolicy | None]]) -> None:
    """After torch's load_state_dict replaced our groups: keep the policy objects the user gave
    (their state is loaded separately), and parse saved specs for groups that had none."""
    for group, (had, policy) in zip(param_groups, before, strict=True):
        if had:
            group["clip"] = policy
        elif "clip" in group:
            group["clip"] = resolve(group["clip"], "param group clip")
