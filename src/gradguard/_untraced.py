"""Calls that ``torch.compile`` does not trace, without importing dynamo at import time.

``torch.compiler.disable`` imports ``torch._dynamo`` (and with it ``torch.distributed.tensor``):
about a second that ``import gradguard`` must not add for programs that never compile. So the
function is marked lazily: outside compiled code it is called as it is; inside a traced frame
the call goes through ``torch.compiler.disable``, which dynamo turns into one graph break with
nothing guarded on what the function reads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


def not_traced(reason: str) -> Callable[[F], F]:
    """Decorate a function so that torch.compile calls it untraced (``reason`` says why, in
    dynamo's graph-break report).

    >>> @not_traced("an example")
    ... def double(x):
    ...     return 2 * x
    >>> double(torch.ones(2))
    tensor([2., 2.])
    """

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if not torch.compiler.is_compiling():
                return fn(*args, **kwargs)
            return torch.compiler.disable(fn, reason=reason)(*args, **kwargs)

        return call  # type: ignore[return-value]

    return wrap
