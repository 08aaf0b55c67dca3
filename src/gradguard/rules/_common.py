"""What every rule shares: the record type, scalar coefficients, state constructors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

State = dict[str, Tensor]
Scalar = float | Tensor
# ``update(param, grad, state, *, lr, fresh=None, **hparams) -> (new_param, new_state)``
Update = Callable[..., tuple[Tensor, State]]
# ``init(param, hparams) -> state``: a parameter's state before its first step
Init = Callable[[Tensor, Mapping[str, Any]], State]



def _f64(step: Tensor) -> Tensor:
    """The step count as float64 for scalar math (torch.optim does this math in Python floats)."""
    return step if step.device.type == "mps" else step.to(torch.float64)


# An opaque copy: under torch.compile it makes a 0-d coefficient a buffer computed once,
# instead of an expression (a pow, a sqrt) the fused loop would re-evaluate per vector.
# Registered with the dispatcher directly (not ``torch.library.custom_op``, whose autograd and
# Python layers cost about 10 us per call, several calls per tensor per step).
_LIB = torch.library.Library("gradguard", "DEF")
_LIB.define("scalar(Tensor x) -> Tensor")
_LIB.impl("scalar", lambda x: x.clone(), "CompositeExplicitAutograd")


@torch.library.register_fake("gradguard::scalar", lib=_LIB)
def _(x: Tensor) -> Tensor:
    return torch.empty_like(x)


_materialize = torch.ops.gradguard.scalar


def _coef(x: Scalar, like: Tensor) -> Scalar:
    """A scalar coefficient (possibly computed in float64), cast to the precision the
    elementwise math runs in (float64 for float64 tensors, else float32), as torch.optim's
    kernels do with Python scalars. Keeping float64 out of the elementwise loops lets compiled
    kernels vectorize. Python numbers pass through unchanged; anything else is cast with its
    ``.to`` (a tensor, or the multi-tensor path's list of per-tensor coefficients)."""
    if isinstance(x, int | float):
        return x
    x = x.to(torch.float64 if like.dtype == torch.float64 else torch.float32)
    return _materialize(x) if torch.compiler.is_compiling() else x


def _trust(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where both are positive, else 1 (the LARS/LAMB convention)."""
    ok = (num > 0) & (den > 0)
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.ones_like(num))


def _zeros(p: Tensor) -> Tensor:
    return torch.zeros_like(p, memory_format=torch.preserve_format)


def _step(p: Tensor) -> Tensor:
    """A step count: 0-d float32 on the parameter's device (as torch with ``capturable=True``),
    so counting a step never needs the host."""
    return torch.zeros((), dtype=torch.float32, device=p.device)


@dataclass(frozen=True)
class Rule:
    """An optimizer's math as one record: ``init`` (a parameter's state before its first step,
    torch.optim's keys and dtypes; pure, so it also describes the expected state on the meta
    device) beside ``update`` (the per-tensor step). ``fresh_key`` names the state entry that
    takes the first gradient as is (SGD's momentum buffer), if any. ``per_tensor``: the update
    reduces over whole tensors (LARS's and LAMB's norms), so on a flat buffer holding several
    tensors it must be given their ``segments``
    (:class:`gradguard.optim.backends.flat.Segments`) and reduce per segment.
    """

    name: str
    init: Init
    update: Update
    fresh_key: str | None = None
    per_tensor: bool = False


RULES: dict[str, Rule] = {}
"""Every rule by name (filled by :func:`rule`)."""


def rule(name: str, init: Init, *, fresh_key: str | None = None,
         per_tensor: bool = False) -> Callable[[Update], Update]:
    """Declare ``update`` (the decorated function) with its ``init`` as the rule ``name``."""
    def add(update: Update) -> Update:
        if name in RULES:
            raise ValueError(f"update rule {name!r} is declared twice")
        RULES[name] = Rule(name, init, update, fresh_key, per_tensor)
        return update
    return add
