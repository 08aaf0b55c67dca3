"""The ``compiled`` backend: the reference update (:func:`.eager.update_tensors`) through
``torch.compile`` (C++/OpenMP on CPU, Triton on GPU): clip scale, update and commit fuse into
one pass per tensor, so each gradient is read once and never written. Tensors are flattened to
1-D and processed in chunks of :data:`CHUNK` with dynamic shapes, so one compiled kernel
serves every full chunk of a model (two where the rule has a reduction: chunks of small and of
large tensors); the learning rate is a tensor input, so LR schedules and changing clip scales
never recompile. Where compiling fails, :func:`run_compiled` says so (once, with a warning)
and the caller runs ``foreach``.
"""

from __future__ import annotations

import types
import warnings
from typing import Any

import torch
import torch.fx.experimental._config as fx_config
from torch import Tensor

from ...rules import Update
from .eager import update_tensors

CHUNK = 4  # tensors per compiled call: bounds compile time, reused for every chunk
# Inductor lowers a reduction (LARS's and LAMB's norms) differently above this many elements
# and guards on it, so chunks hold only tensors on one side of it: one graph per side.
SMALL_NUMEL = 4096
RECOMPILE_LIMIT = 256

_compiled: dict[Any, Any] = {}  # rule -> its compiled update
_compile_failed: str | None = None


def _lower_scalar() -> None:
    """Teach inductor the coefficient op (``gradguard::scalar``, see :mod:`gradguard.rules`):
    realize its input as a buffer of its own, computed once in the generated kernel. Left to
    the default, inductor calls the op's Python implementation for every coefficient of every
    tensor at every step (about 4 us each, 12 a chunk). Uses inductor's lowering registry, not
    a public API: where it is missing, the op stays an extern call (correct, slower)."""
    try:
        from torch._inductor.lowering import register_lowering
    except ImportError:
        return

    @register_lowering(torch.ops.gradguard.scalar.default, type_promotion_kind=None)
    def _scalar(x: Any) -> Any:
        x.realize()
        return x


def _compiled_update(rule: Update | None = None) -> Any:
    """``update_tensors`` through ``torch.compile``, one compiled function per rule. Each is a
    copy of the function with a code object of its own, since dynamo keeps graphs and guards
    per code object: shared by every rule, a step of one (SGD, whose state has no ``step``)
    after graphs of another (Adam) made torch 2.13 fail while explaining the recompile
    (``KeyError: 'step'`` in its aliasing-guard report), which turned compiling off."""
    fn = _compiled.get(rule)
    if fn is None:
        if not _compiled:
            _lower_scalar()
        name = getattr(rule, "__name__", "rule")
        code = update_tensors.__code__.replace(co_name=f"update_tensors_{name}")
        copy = types.FunctionType(code, update_tensors.__globals__, code.co_name,
                                  update_tensors.__defaults__, update_tensors.__closure__)
        # Recompute rather than store an intermediate that reads many inputs: storing LAMB's
        # update direction (read by its norm and by the update) cost a full-size buffer per
        # tensor, allocated and page-faulted every step on the CPU, and made LAMB 1.4x slower.
        fn = torch.compile(copy, dynamic=True, fullgraph=True,
                           options={"realize_reads_threshold": 16})
        _compiled[rule] = fn
    return fn


def compile_available() -> bool:
    """False once compiling has failed in this process (then the multi-tensor eager path,
    ``foreach``, is used)."""
    return _compile_failed is None


def _flat(t: Tensor, keep_rank: bool = False) -> Tensor:
    """``t`` as one row: 1-D, or ``(1, n)`` for matrices and up when the rule branches on
    ``dim()`` (LARS's ``exclude_bias_and_norm``), so the branch sees the true kind of tensor.

    Always a plain tensor that is not a view: dynamo gives ``nn.Parameter`` inputs static shapes
    and ties a view's size to its base's, and either would specialise the compiled graph to
    one chunk's sizes (a recompile for every chunk of other shapes). The result aliases ``t``'s
    memory, so writes to it update ``t``."""
    if t.dim() == 1 or not t.is_contiguous():
        return t.detach()
    n = t.numel()
    shape, stride = ((1, n), (n, 1)) if keep_rank and t.dim() >= 2 else ((n,), (1,))
    return t.new_empty(0).set_(t.untyped_storage(), t.storage_offset(), shape, stride)


def _flattened(p: Tensor, g: Tensor, state: dict[str, Tensor],
               keep_rank: bool) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """A parameter, its gradient and its state flattened together (see :func:`_flat`), state
    of the parameter's shape included (for a 0-d parameter, its 0-d step too, so every operand
    is a row of one element); where any of them is strided, all of them as they are, since a
    view with gaps, or a gradient whose strides differ from its parameter's, cannot be
    flattened without a copy."""
    full = [v for v in state.values() if v.shape == p.shape]
    if not all(t.is_contiguous() for t in (p, g, *full)):
        return p.detach(), g.detach(), {k: v.detach() for k, v in state.items()}
    return (_flat(p, keep_rank), _flat(g, keep_rank),
            {k: _flat(v, keep_rank) if v.shape == p.shape else v for k, v in state.items()})


def _dynamo_settings() -> dict[str, Any]:
    """Dynamo settings for our calls, under the names this torch has (older releases call the
    recompile limits ``cache_size_limit``): more graphs than dynamo's default of 8 for one
    function, one per (rule, settings, dtype, chunk length); float hyperparameters as
    constants, so tracing does not restart to specialise them."""
    config = torch._dynamo.config
    wanted = {("recompile_limit", "cache_size_limit"): RECOMPILE_LIMIT,
              ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
                  4 * RECOMPILE_LIMIT,
              ("specialize_float",): True}
    settings = {}
    for names, value in wanted.items():
        for name in names:
            if hasattr(config, name):
                settings[name] = value
                break
    return settings


def run_compiled(
    rule: Update,
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Tensor]],
    scales: list[Tensor | None],
    clamp: float | None,
    fresh: list[Tensor | None],
    skip: Tensor | None,
    lr: float | Tensor,
    hparams: dict[str, Any],
) -> bool:
    """The compiled path. Returns False (having changed nothing) if compiling failed; the
    caller then runs the multi-tensor eager path (``foreach``)."""
    global _compile_failed
    if _compile_failed is not None:
        return False
    device = params[0].device
    # One element as a 1-D tensor (update_tensors takes it back to 0-d inside the graph):
    # dynamo treats a 0-d float64 CPU tensor like a Python float and would guard on its value
    # (a host read per step). float64 for float64 parameters, whose step must keep float64's
    # precision (as torch's for-loop, which uses the Python float); else float32.
    dtype = torch.float64 if params[0].dtype == torch.float64 else torch.float32
    lr_t = (lr if isinstance(lr, Tensor) else torch.tensor(lr, dtype=torch.float64)).to(
        device=device, dtype=dtype).reshape(1)
    # Per-tensor scalar scales allow flattening; unit-wise scales (AGC) keep the shapes.
    flatten = all(s is None or s.dim() == 0 for s in scales)
    written = params
    if flatten:
        keep = bool(hparams.get("exclude_bias_and_norm"))
        flat = [_flattened(p, g, st, keep) for p, g, st in zip(params, grads, states,
                                                                strict=True)]
        params, grads = [f[0] for f in flat], [f[1] for f in flat]
        states = [f[2] for f in flat]
    else:  # plain tensors: dynamo would give parameters static shapes
        params = [p.detach() for p in params]
    fn = _compiled_update(rule)
    # Duck sizing off: two tensors of one chunk that happen to have the same size would
    # otherwise share a symbol, and the next chunk would recompile. Settings are switched only
    # around our own calls.
    limits = torch._dynamo.config.patch(**_dynamo_settings())
    no_duck = fx_config.patch(use_duck_shape=False)  # type: ignore[attr-defined]
    small = [i for i, g in enumerate(grads) if g.numel() <= SMALL_NUMEL]
    large = [i for i, g in enumerate(grads) if g.numel() > SMALL_NUMEL]
    chunks = [side[k:k + CHUNK] for side in (small, large) for k in range(0, len(side), CHUNK)]
    with limits, no_duck:  # once per step: entering them costs about 20 us a chunk
        for n, chunk in enumerate(chunks):
            try:
                fn(rule, [params[i] for i in chunk], [grads[i] for i in chunk],
                   [states[i] for i in chunk], [scales[i] for i in chunk], clamp,
                   [fresh[i] for i in chunk], skip, lr_t, hparams)
            except Exception as e:  # compiler missing or broken: fall back, once, loudly
                if n != 0:
                    raise
                _compile_failed = f"{type(e).__name__}: {e}"
                warnings.warn(
                    "gradguard: torch.compile is not available here "
                    f"({_compile_failed.splitlines()[0][:200]}); using the multi-tensor eager "
                    "path (foreach), which is correct but slower. Set GRADGUARD_BACKEND=foreach "
                    "to silence this.",
                    RuntimeWarning, stacklevel=3)
                return False
    # The aliases do not share the parameters' version counters: bump them as any in-place
    # write would, so autograd still catches a step between forward and backward.
    for p in written:
        torch.autograd.graph.increment_version(p)
    return True
