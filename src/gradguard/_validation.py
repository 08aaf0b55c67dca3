"""One place for argument checks, so every optimizer and policy words its errors the same way.

Each message starts as torch.optim's does for the same argument (``Invalid learning rate:
-0.1``, ``Invalid weight_decay value: -1``, ``Invalid beta parameter at index 0: 1.0``), so
code and tests that match torch's errors match ours, then names the argument as spelled in the
signature and what was expected: ``Invalid learning rate: -0.1; lr must be a finite number
>= 0``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element, got shape {tuple(value.shape)}")
        return float(value.detach().cpu())
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"Invalid {name}: expected a number, got {value!r}")
    return float(value)


def _label(name: str, what: str) -> str:
    """torch.optim's wording: ``learning rate``, ``epsilon value``, ``weight_decay value``."""
    return what if what else f"{name} value"


def check_nonneg(name: str, value: Any, what: str = "") -> None:
    """Raise ValueError unless ``value`` is a finite number >= 0."""
    v = _as_float(name, value)
    if not math.isfinite(v) or v < 0.0:
        raise ValueError(f"Invalid {_label(name, what)}: {value}; {name} must be a finite "
                         "number >= 0")


def check_positive(name: str, value: Any, what: str = "") -> None:
    """Raise ValueError unless ``value`` is a finite number > 0."""
    v = _as_float(name, value)
    if not math.isfinite(v) or v <= 0.0:
        raise ValueError(f"Invalid {_label(name, what)}: {value}; {name} must be a finite "
                         "number > 0")


def check_unit_interval(name: str, value: Any, *, closed_right: bool = False) -> None:
    """Raise ValueError unless ``0 <= value < 1`` (``<= 1`` when ``closed_right``)."""
    v = _as_float(name, value)
    ok = 0.0 <= v <= 1.0 if closed_right else 0.0 <= v < 1.0
    if not ok:
        bound = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"Invalid {name} value: {value}; {name} must be in {bound}")


def check_betas(value: Any, name: str = "betas") -> tuple[Any, Any]:
    """Validate a pair of decay rates, each in [0, 1)."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise ValueError(f"Invalid {name}: {value!r}; must be a pair (beta1, beta2)")
    for i, b in enumerate(value):
        v = _as_float(f"{name}[{i}]", b)
        if not 0.0 <= v < 1.0:
            raise ValueError(
                f"Invalid beta parameter at index {i}: {b}; {name}[{i}] must be in [0, 1)"
            )
    return value[0], value[1]


def check_lr(lr: Any) -> None:
    check_nonneg("lr", lr, "learning rate")


def check_tensor_hparams(lr: Any, betas: Any, foreach: bool | None, capturable: bool) -> None:
    """torch.optim.Adam's rules for tensor ``lr`` and ``betas``: one element each, betas both
    numbers or both tensors, and none of them a tensor with ``foreach=True`` unless
    ``capturable``."""
    if isinstance(lr, torch.Tensor) and foreach and not capturable:
        raise ValueError("lr as a Tensor is not supported for capturable=False and "
                         "foreach=True")
    if not isinstance(betas, Sequence) or isinstance(betas, str) or len(betas) != 2:
        return  # check_betas words this one
    kinds = {isinstance(b, torch.Tensor) for b in betas}
    if len(kinds) != 1:
        raise ValueError(f"betas must be either both floats or both Tensors, got {betas!r}")
    for i, b in enumerate(betas):
        if isinstance(b, torch.Tensor):
            if foreach and not capturable:
                raise ValueError(f"betas[{i}] as a Tensor is not supported for "
                                 "capturable=False and foreach=True")
            if b.numel() != 1:
                raise ValueError(f"Tensor betas[{i}] must be 1-element, got shape "
                                 f"{tuple(b.shape)}")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise ValueError(f"Invalid {name}: {value!r}; valid choices are {valid}")


def env_count(name: str, default: int) -> int:
    """The environment variable ``name`` as an integer >= 0, or ``default`` when it is unset;
    anything else is a ``ValueError`` naming the variable and its value."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"Invalid {name}: {text!r}; must be an integer >= 0")
    return value
