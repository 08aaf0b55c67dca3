"""Which backend takes a param group's update: one function, :func:`select`, returning an
explicit :class:`Choice`, and :func:`run`, which carries it out.

The cases, in order (the first that applies decides):

1. ``differentiable=True``, or autograd recording the step: ``eager`` (the reference is the
   path autograd can differentiate through).
2. torch's flags where the group sets them: ``fused=True`` the native kernel (else as
   ``native``); ``foreach=True`` ``foreach``; ``foreach=False`` ``eager`` (torch's for-loop);
   ``fused=False`` no native kernel (``native`` then means ``auto``).
3. the optimizer's ``backend``: ``eager`` and ``foreach`` as named; ``native`` and ``auto`` a
   native kernel where :func:`.native.plan` finds one exact (``"direct"``), or, for a clipped
   step, on gradients clipped into temporaries (``"prescaled"``) where the multi-tensor path
   would otherwise run (``native``, a group smaller than :func:`compile_min_numel` under
   ``auto``, or no compiler); then ``compiled``, unless the group is small under ``auto`` or
   compiling has failed in this process, which give ``foreach``.

``flat`` (and ``auto`` for small groups) is decided before this, by
:func:`.flat.wanted`; a group it does not take comes here with ``flat`` read as ``auto``.

Strided tensors never reach a native kernel (:func:`.native.plan` requires contiguity); the
compiled path flattens only contiguous tensors; complex tensors arrive as real views and
sparse gradients take the optimizer's sparse update before any of this (see
:meth:`gradguard.optim.GuardedOptimizer.step`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..._validation import env_count
from ...rules import Rule, State
from . import compiled, eager, foreach, native

BACKENDS = ("auto", "flat", "native", "compiled", "foreach", "eager")
PATHS = ("eager", "foreach", "compiled", "native")

# Smallest param group (in elements) that ``auto`` compiles. Below it a compiled call's fixed
# cost (guards, chunking) exceeds the work: on the 2-core CPU the compiled update of a 50k
# parameter MLP took longer than the multi-tensor eager one, and 12.6M parameters ran 8x faster
# compiled. Small models also skip the first step's compile.
COMPILE_MIN_NUMEL = 1 << 20


def default_backend() -> str:
    """``GRADGUARD_BACKEND`` if set (one of :data:`BACKENDS`), else ``"auto"``."""
    value = os.environ.get("GRADGUARD_BACKEND", "auto")
    if value not in BACKENDS:
        raise ValueError(f"Invalid GRADGUARD_BACKEND: {value!r}; valid choices are "
                         + ", ".join(repr(b) for b in BACKENDS))
    return value


def compile_min_numel() -> int:
    """``GRADGUARD_COMPILE_MIN_NUMEL`` if set (an integer >= 0), else
    :data:`COMPILE_MIN_NUMEL`: param groups with fewer elements run ``foreach`` under
    ``backend="auto"``."""
    return env_count("GRADGUARD_COMPILE_MIN_NUMEL", COMPILE_MIN_NUMEL)


@dataclass(frozen=True)
class Choice:
    """The path one group's update takes: ``path`` one of :data:`PATHS`; for ``native``,
    ``prescaled`` says the kernel runs on gradients clipped into temporaries; ``why`` in
    words."""

    path: str
    prescaled: bool = False
    why: str = ""


def select(backend: str, rule: Rule, group: Mapping[str, Any], params: list[Tensor],
           grads: list[Tensor], states: list[State], scales: list[Tensor | None],
           clamp: float | None) -> Choice:
    """The path for one param group's update (see the module docstring for the cases).

    >>> import torch
    >>> from gradguard.rules import RULES
    >>> p = torch.zeros(3)
    >>> with torch.no_grad():
    ...     select("auto", RULES["adam"], {"foreach": False}, [p], [p], [{}], [None], None)
    Choice(path='eager', prescaled=False, why='foreach=False: the per-tensor reference')
    """
    if backend == "flat":  # a group the flat layout cannot take (see .flat.wanted)
        backend = "auto"
    if group.get("differentiable"):
        return Choice("eager", why="differentiable=True: the reference, recorded by autograd")
    if torch.is_grad_enabled():
        return Choice("eager", why="autograd is recording the step: the reference")
    fused, flag = group.get("fused"), group.get("foreach")
    native_ok = True
    if fused:
        backend = "native"
    elif flag is not None:
        return (Choice("foreach", why="foreach=True") if flag
                else Choice("eager", why="foreach=False: the per-tensor reference"))
    elif fused is False:
        backend, native_ok = ("auto" if backend == "native" else backend), False
    if backend == "eager":
        return Choice("eager", why="backend='eager'")
    if backend == "foreach":
        return Choice("foreach", why="backend='foreach'")
    how = (native.plan(rule.name, group, params, grads, states, scales, clamp)
           if native_ok and backend in ("auto", "native") else "none")
    if how == "direct":
        return Choice("native", why="a fused kernel is exact for this step")
    small = backend == "auto" and sum(p.numel() for p in params) < compile_min_numel()
    if how == "prescaled" and (backend == "native" or small or not compiled.compile_available()):
        # Where the multi-tensor path would run: the fused kernel on gradients clipped into
        # temporaries costs one extra pass; the rule's multi-tensor ops, many. (Large groups
        # compile instead: full-size temporaries each step cost more than the compiled
        # kernel's slower bytes, 30-48 ms against 18-23 ms for AdamW at 25M.)
        return Choice("native", prescaled=True,
                      why="a fused kernel on gradients clipped into temporaries")
    if small:
        return Choice("foreach", why="group below compile_min_numel() elements under 'auto'")
    if not compiled.compile_available():
        return Choice("foreach", why="compiling failed in this process")
    return Choice("compiled", why=f"backend={backend!r}")


def run(choice: Choice, rule: Rule, group: Mapping[str, Any], params: list[Tensor],
        grads: list[Tensor], states: list[State], scales: list[Tensor | None],
        clamp: float | None, fresh: list[Tensor | None], skip: Tensor | None,
        lr: float | Tensor, hparams: dict[str, Any]) -> None:
    """Take the step on the chosen path (the compiled one falls back to ``foreach``, once and
    with a warning, where compiling fails)."""
    args = (rule.update, params, grads, states, scales, clamp, fresh, skip, lr, hparams)
    if choice.path == "eager":
        eager.update_tensors(*args)
    elif choice.path == "native":
        kernel = native.KERNELS[rule.name]
        kernel.run(group, params, foreach.clipped_grads(grads, scales, clamp)
                   if choice.prescaled else grads, states, skip)
    elif choice.path == "foreach" or not compiled.run_compiled(*args):
        foreach.update_foreach(*args)
