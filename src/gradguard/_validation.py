"""One place for argument checks, so every optimizer and policy words its errors the same way.

Each message names the argument as spelled in the signature and the value it got, e.g.
``Invalid lr (learning rate): -0.1; must be >= 0``.
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
            raise ValueError(f"Invalid {name}: a tensor {name} must have one element, got shape "
                             f"{tuple(value.shape)}")
        return float(value.detach().cpu())
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"Invalid {name}: expected a number, got {value!r}")
    return float(value)


def check_nonneg(name: str, value: Any, what: str = "") -> None:
    """Raise ValueError unless ``value`` is a finite number >= 0."""
    v = _as_float(name, value)
    label = f"{name} ({what})" if what else name
    if not math.isfinite(v) or v < 0.0:
        raise ValueError(f"Invalid {label}: {value}; must be a finite number >= 0")


def check_positive(name: str, value: Any, what: str = "") -> None:
    """Raise ValueError unless ``value`` is a finite number > 0."""
    v = _as_float(name, value)
    label = f"{name} ({what})" if what else name
    if not math.isfinite(v) or v <= 0.0:
        raise ValueError(f"Invalid {label}: {value}; must be a finite number > 0")


def check_unit_interval(name: str, value: Any, *, closed_right: bool = False) -> None:
    """Raise ValueError unless ``0 <= value < 1`` (``<= 1`` when ``closed_right``)."""
    v = _as_float(name, value)
    ok = 0.0 <= v <= 1.0 if closed_right else 0.0 <= v < 1.0
    if not ok:
        bound = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"Invalid {name}: {value}; must be in {bound}")


def check_betas(value: Any, name: str = "betas") -> tuple[Any, Any]:
    """Validate a pair of decay rates, each in [0, 1)."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise ValueError(f"Invalid {name}: {value!r}; must be a pair (beta1, beta2)")
    for i, b in enumerate(value):
        v = _as_float(f"{name}[{i}]", b)
        if not 0.0 <= v < 1.0:
            raise ValueError(
                f"Invalid beta parameter at index {i} ({name}[{i}]): {b}; must be in [0, 1)"
            )
    return value[0], value[1]


def check_lr(lr: Any) -> None:
    check_nonneg("lr", lr, "learning rate")


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
