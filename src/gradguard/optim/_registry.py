"""The optimizer registry: one entry per name a sweep, the benchmark, the CLI and the tests
know, declared beside its class with :func:`register`.

An entry is a class with fixed keyword arguments (``"nesterov"`` is :class:`SGD` with
``momentum=0.9, nesterov=True``), what it is in words, the learning rates a sweep tries by
default (a task may name its own), and, for ``gradguard bench``, its settings there, the bytes
per parameter its clipped step must move, and the third-party class it is timed against
where torch has none.

>>> from gradguard.optim import REGISTRY
>>> REGISTRY["nesterov"].kwargs
{'momentum': 0.9, 'nesterov': True}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T", bound=type)


def log_grid(lo: float, hi: float, n: int) -> tuple[float, ...]:
    """``n`` log-spaced values from ``lo`` to ``hi``, rounded to 3 significant digits.

    >>> log_grid(1e-3, 1e-1, 5)
    (0.001, 0.00316, 0.01, 0.0316, 0.1)
    """
    if n == 1:
        return (lo,)
    step = (math.log10(hi) - math.log10(lo)) / (n - 1)
    return tuple(float(f"{10 ** (math.log10(lo) + i * step):.3g}") for i in range(n))


@dataclass(frozen=True)
class Entry:
    """One registered optimizer (see the module docstring). ``cls`` is filled in by
    :func:`register`."""

    name: str
    description: str
    lrs: tuple[float, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    bench: Mapping[str, Any] | None = None  # settings in `gradguard bench` (None: not there)
    step_bytes: int = 0  # float32 bytes per parameter a clipped step reads and writes
    third_party: str | None = None  # pytorch_optimizer's class, where torch.optim has none
    cls: Any = None

    def make(self, params: Any, **kwargs: Any) -> Any:
        """The optimizer: ``cls(params, **self.kwargs, **kwargs)``."""
        return self.cls(params, **{**self.kwargs, **kwargs})


REGISTRY: dict[str, Entry] = {}


def variant(name: str, description: str, *, lrs: tuple[float, ...],
            bench: Mapping[str, Any] | None = None, step_bytes: int = 0,
            third_party: str | None = None, **kwargs: Any) -> Entry:
    """An entry for :func:`register`; ``kwargs`` are the class's fixed arguments."""
    return Entry(name, description, lrs, dict(kwargs), bench, step_bytes, third_party)


def register(*entries: Entry) -> Callable[[T], T]:
    """A class decorator adding ``entries`` (in order) to :data:`REGISTRY` for the class."""
    def add(cls: T) -> T:
        for e in entries:
            if e.name in REGISTRY:
                raise ValueError(f"optimizer name {e.name!r} is registered twice "
                                 f"({REGISTRY[e.name].cls.__name__} and {cls.__name__})")
            REGISTRY[e.name] = dataclasses.replace(e, cls=cls)
        return cls
    return add
