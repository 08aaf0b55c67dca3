"""What the framework integrations share: which optimizers are gradguard's, and what they
clip with."""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer

# What to do when the framework's own clip and a gradguard clip are both set.
DOUBLE_CLIP = ("error", "disable_framework")


def is_guarded(optimizer: object) -> bool:
    """Whether ``optimizer`` is one of gradguard's (or wrapped with ``gradguard.guard``)."""
    return isinstance(optimizer, Optimizer) and hasattr(optimizer, "_core")


def unwrap(optimizer: object) -> Any:
    """The gradguard optimizer inside a framework's wrapper (accelerate's
    ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``: each keeps it as
    ``.optimizer``), or None where there is none."""
    seen = 0
    while optimizer is not None and not is_guarded(optimizer) and seen < 8:
        optimizer = getattr(optimizer, "optimizer", None)
        seen += 1
    return optimizer if is_guarded(optimizer) else None


def clip_specs(optimizer: Any) -> list[str]:
    """The clip policies a gradguard optimizer applies (its own and its param groups'), as
    specs."""
    core = optimizer._core
    specs = [] if core.clip is None else [core.clip.spec]
    for group in optimizer.param_groups:
        policy = group.get("clip")
        if policy is not None and policy.spec not in specs:
            specs.append(policy.spec)
    return specs
