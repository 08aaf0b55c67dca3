"""The optimizers users construct. The math lives in :mod:`gradguard.rules`.

Where torch.optim has the optimizer, the constructor takes the same arguments with the same
defaults, param groups carry the same keys and the state the same entries, so checkpoints move
between ``torch.optim.X`` and ``gradguard.X`` both ways. Every optimizer also takes:

``clip``
    a :mod:`gradguard.clip` policy, a spec string (``"global_norm:1"``, ``"agc:0.01"``, ...) or
    None. A param group may carry its own ``"clip"`` (None there: do not clip that group).
``nonfinite``
    ``"skip"`` (default): a step whose gradients hold NaN or Inf changes nothing and is counted;
    after ``max_consecutive_skips`` such steps in a row the step raises
    :class:`gradguard.NonFiniteGradientError`. ``"raise"``: raise at the first bad step (this
    reads one flag on the host per step). ``"off"``: no check.
``backend``
    ``"auto"`` (default, or the ``GRADGUARD_BACKEND`` environment variable): param groups
    of at most 2^20 elements step flat (``"flat"`` forces it for any size where the tensors
    allow: one call per step over flat buffers of the group's state, see
    :mod:`gradguard.optim.backends.flat`); larger ones take torch's native
    fused kernel where one is exact for the step (Adam, AdamW, SGD, Adagrad on contiguous
    tensors; a clipped step in groups too small to compile gives it gradients clipped into
    temporaries), else the ``torch.compile``'d update, else (no compiler) the multi-tensor
    eager path with a warning. No path writes ``.grad``. torch's ``foreach=``/``fused=``
    flags, where set to True or False, choose the path instead (see ``docs/design.md``).
    ``"native"``, ``"compiled"``, ``"foreach"`` (the rule run once over lists of
    tensors with torch's ``_foreach_*`` ops, no compiler needed) or ``"eager"`` (the readable
    per-tensor reference) force a path (``"native"`` falls back to compiled where no native
    kernel fits, ``"native"`` and ``"compiled"`` to foreach where nothing compiles).
``measure_in_backward``
    measure gradient norms during backward with per-parameter hooks (default), so the clip
    needs no extra pass over the gradients at the step. Records are checked against the
    gradient's identity and version counter before use; turn this off for code that edits
    gradients through ``.data``, which bypasses the version counter.
"""

# ruff: noqa: I001, F403  (the star imports' order is the registry's: sgd ... adamax, rmsprop ...)
from __future__ import annotations

from ._sgd_adam import *
from ._accumulators import *
from ._papers import *
from . import _accumulators, _papers, _sgd_adam

# Every optimizer class: a new one joins by being in its own file's __all__.
__all__ = []
__all__ += _sgd_adam.__all__
__all__ += _accumulators.__all__
__all__ += _papers.__all__
