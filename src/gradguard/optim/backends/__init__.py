"""How an update rule runs over a param group: one definition, four executions.

- :mod:`.eager`: the readable reference, the rule tensor by tensor;
- :mod:`.foreach`: the same rule once per bucket of tensors, as multi-tensor ops;
- :mod:`.compiled`: the reference through ``torch.compile``, one fused pass per tensor;
- :mod:`.native`: torch's fused kernels, a table from rule to adapter, where exact;
- :mod:`.flat`: a layout, not a fifth execution: a small group's state in flat buffers, so
  one of the above runs once over the whole group.

:func:`select` makes the choice (an explicit, testable :class:`Choice`), :func:`run` carries
it out. ``auto`` steps small groups flat; on others it tries native, then compiled, then
foreach.
"""

from __future__ import annotations

from . import flat
from ._select import (
    BACKENDS,
    COMPILE_MIN_NUMEL,
    PATHS,
    Choice,
    compile_min_numel,
    default_backend,
    run,
    select,
)
from .compiled import CHUNK, compile_available
from .flat import FlatGroup

__all__ = ["BACKENDS", "CHUNK", "COMPILE_MIN_NUMEL", "PATHS", "Choice", "FlatGroup",
           "compile_available", "compile_min_numel", "default_backend", "flat", "run", "select"]
