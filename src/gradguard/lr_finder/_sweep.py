"""The sweep and its public entry point, :func:`find_lr`: the arguments checked, the LR set
each step, forward, backward and the optimizer's step (with accumulation, autocast and
GradScaler), the clip policies simulated, the per-step numbers averaged over ranks, the stop
at divergence, and the restore (:mod:`._restore`) whatever happens.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from .._validation import check_choice, check_positive
from ..clip import ClipPolicy, GradStats, parse
from ..errors import NonFiniteGradientError
from ..schedules import exponential_decay, polynomial_decay
from ..schedules._functions import check_int
from ..schedules._schedulers import set_lr
from ._curve import RULES, _DivergenceMonitor, check_beta
from ._restore import _Snapshot
from ._result import LRFinderResult

SWEEP_MODES = ("exp", "linear")


def _mean_over_ranks(values: Tensor) -> Tensor:
    """The mean of ``values`` over the ranks of the default process group (all-reduce), so
    every rank sees the same numbers and takes the same decisions; ``values`` itself when
    ``torch.distributed`` is not initialized."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return values
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def _batches(data: Iterable[Any] | Callable[[], Any]) -> Iterator[Any]:
    if callable(data) and not hasattr(data, "__iter__"):
        while True:
            yield data()
    count = 0
    while True:
        before = count
        for batch in data:
            count += 1
            yield batch
        if count == before:
            raise ValueError(f"Invalid data: it ran out after {count} batches; pass a list, a "
                             "DataLoader (anything iterable more than once) or a callable")


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, tuple | list):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _amp_dtype(amp: bool | torch.dtype, device: torch.device) -> torch.dtype | None:
    if amp is False:
        return None
    if amp is True:
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    if isinstance(amp, torch.dtype) and amp in (torch.float16, torch.bfloat16):
        return amp
    raise ValueError(f"Invalid amp: {amp!r}; must be False, True, torch.float16 or "
                     "torch.bfloat16")


def _policies(specs: Iterable[ClipPolicy | str]) -> dict[str, ClipPolicy]:
    if isinstance(specs, str | ClipPolicy):
        specs = [specs]
    out: dict[str, ClipPolicy] = {}
    for s in specs:
        if isinstance(s, str):
            try:
                policy = parse(s)
            except ValueError as e:
                raise ValueError(f"Invalid clip_policies: {e}") from None
        elif isinstance(s, ClipPolicy):
            policy = copy.deepcopy(s)
            policy.load_state_dict({})  # a fresh copy: no history from earlier training
        else:
            raise TypeError(f"Invalid clip_policies: {s!r}; expected spec strings or policies")
        if policy.spec in out:
            raise ValueError(f"Invalid clip_policies: {policy.spec!r} given twice")
        out[policy.spec] = policy
    return out


def find_lr(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    data: Iterable[Any] | Callable[[], Any],
    optimizer: Optimizer,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    mode: str = "exp",
    smooth: float = 0.98,
    diverge_threshold: float = 4.0,
    accumulation_steps: int = 1,
    amp: bool | torch.dtype = False,
    clip_policies: Iterable[ClipPolicy | str] = ("global_norm:1", "auto:10", "zclip:2.5"),
    clip_percentile: float = 90.0,
    rule: str = "minimum",
    device: torch.device | str | None = None,
    scheduler: LRScheduler | None = None,
    output_dir: str | os.PathLike[str] | None = None,
) -> LRFinderResult:
    r"""Run the LR range test (Smith 2017) and suggest an LR and a clip threshold.

    For ``t = 0 .. num_steps - 1`` the LR is set to :math:`\eta_t`, exponential
    :math:`\eta_s (\eta_e / \eta_s)^{t/(N-1)}` (``mode="exp"``) or linear
    :math:`\eta_s + (\eta_e - \eta_s)\,t/(N-1)`, in every param group with the groups' ratios to
    the first group's current LR kept; then ``accumulation_steps`` batches go forward and
    backward (``loss_fn(model(inputs), targets)``, scaled by ``1/accumulation_steps``) and the
    optimizer steps. The sweep stops early when the loss diverges or is not finite (see the
    docstring of :mod:`gradguard.lr_finder` for the smoothing, the divergence test and the
    suggestions).

    Args:
        start_lr, end_lr, num_steps, mode: the sweep (``end_lr > start_lr > 0``, at least 2
            steps, ``"exp"`` or ``"linear"``).
        smooth: the EMA's :math:`\beta` for the smoothed loss.
        diverge_threshold: stop when the smoothed loss exceeds this multiple of its best.
        clip_percentile: the percentile of the stable region's gradient norms suggested as the
            clip threshold.
        rule: which suggestion is ``suggestion``: ``"minimum"`` (the default: a tenth of the
            LR at the smoothed loss's minimum), ``"valley"`` (falling back to ``"steepest"``
            where there is no valley) or ``"steepest"``; all three are in the result.
        model: in train mode during the sweep; it must already be on its device. A dict of
            inputs is passed as keyword arguments, anything else as the one argument.
        loss_fn: ``loss_fn(outputs, targets)`` -> a scalar tensor.
        data: an iterable of ``(inputs, targets)`` batches (cycled when shorter than needed;
            a one-shot iterator is consumed), or a callable returning one batch.
        optimizer: a gradguard optimizer, ``gradguard.guard(...)`` or any ``torch.optim`` one.
            Its clip and guard act as in training (a skipped non-finite step stays skipped).
        clip_policies: policies (or spec strings) to simulate: fresh copies are fed each step's
            gradients and record the scale they would apply; nothing is clipped by them. The
            recorded gradient norm is the total L2 norm before clipping (after GradScaler's
            unscale), measured alongside; without policies to simulate, a gradguard
            optimizer's ``last_step.grad_norm`` is read instead.
        amp: autocast with float16 (with a ``GradScaler``) on CUDA, bfloat16 elsewhere, or the
            dtype given.
        device: where batches are moved; by default the device of the model's first parameter.
        scheduler: a scheduler attached to ``optimizer``, restored afterwards (it is not
            stepped).
        output_dir: if given, ``lr_finder.json`` and ``lr_finder.png`` (when matplotlib is
            installed) are written there; otherwise nothing touches the disk.

    Afterwards the model's parameters, buffers, gradients and train/eval modes, the optimizer
    (state_dict, and for gradguard optimizers the guard's records and clip-policy state), the
    scheduler and the torch (CPU, CUDA), numpy and ``random`` RNG states are exactly as before,
    also when the sweep raises. Under ``torch.distributed`` the per-step numbers are averaged
    over ranks before anything is decided, so every rank stops at the same step and gets the
    same suggestions (with DDP the gradients are already the same on every rank).

    >>> _ = torch.manual_seed(0)
    >>> x = torch.randn(256, 4); y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    >>> model = nn.Linear(4, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.01)
    >>> batches = [(x[i:i + 32], y[i:i + 32, None]) for i in range(0, 256, 32)]
    >>> before = [p.detach().clone() for p in model.parameters()]
    >>> result = find_lr(model, nn.functional.mse_loss, batches, opt, start_lr=1e-4,
    ...                  end_lr=10.0, num_steps=60)
    >>> result.rule, 1e-3 < result.suggestion < 1.0, result.stop_reason
    ('minimum', True, 'diverged')
    >>> all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    True
    """
    check_positive("start_lr", start_lr)
    check_positive("end_lr", end_lr)
    if end_lr <= start_lr:
        raise ValueError(f"Invalid end_lr: {end_lr}; must be greater than start_lr ({start_lr})")
    num_steps = check_int("num_steps", num_steps, 2)
    check_choice("mode", mode, SWEEP_MODES)
    check_choice("rule", rule, RULES)
    check_beta(smooth)
    check_positive("diverge_threshold", diverge_threshold)
    if diverge_threshold <= 1:
        raise ValueError(f"Invalid diverge_threshold: {diverge_threshold}; must be > 1")
    accumulation_steps = check_int("accumulation_steps", accumulation_steps, 1)
    if not 0 < clip_percentile <= 100:
        raise ValueError(f"Invalid clip_percentile: {clip_percentile}; must be in (0, 100]")
    if not isinstance(model, nn.Module):
        raise TypeError(f"Invalid model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"Invalid optimizer: expected a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    if scheduler is not None and scheduler.optimizer is not optimizer:
        raise ValueError("Invalid scheduler: it is not attached to the optimizer given")
    policies = _policies(clip_policies)
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    amp_dtype = _amp_dtype(amp, device)
    if mode == "exp":
        sweep = exponential_decay(start_lr, end_lr / start_lr, num_steps - 1)
    else:
        sweep = polynomial_decay(start_lr, num_steps - 1, end_lr, 1.0)

    opt_params = [p for g in optimizer.param_groups for p in g["params"]]
    seen = {id(p) for p in opt_params}
    params = opt_params + [p for p in model.parameters() if id(p) not in seen]
    snapshot = _Snapshot(model, optimizer, scheduler, params)
    settings = {"start_lr": float(start_lr), "end_lr": float(end_lr), "num_steps": num_steps,
                "mode": mode, "smooth": float(smooth),
                "diverge_threshold": float(diverge_threshold),
                "accumulation_steps": accumulation_steps,
                "amp": None if amp_dtype is None else str(amp_dtype),
                "clip_percentile": float(clip_percentile), "rule": rule,
                "optimizer": type(optimizer).__name__}
    try:
        rec = _sweep(model, loss_fn, data, optimizer, opt_params, params, sweep, num_steps,
                     smooth, float(diverge_threshold), accumulation_steps, amp_dtype, policies,
                     device)
    finally:
        snapshot.restore()
    lrs, losses, norms, scales, diverged_at, reason, why = rec
    result = LRFinderResult.from_curves(
        lrs, losses, norms, scales, smooth=smooth, diverge_threshold=diverge_threshold,
        diverged_at=diverged_at, stop_reason=reason, divergence=why,
        clip_percentile=clip_percentile, settings=settings, rule=rule)
    if output_dir is not None:
        out = Path(output_dir)
        result.to_json(out / "lr_finder.json")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            import warnings
            warnings.warn("matplotlib is not installed: lr_finder.png was not written "
                          "(LRFinderResult.from_json(...).plot(path) can draw it later)",
                          stacklevel=2)
        else:
            result.plot(out / "lr_finder.png")
    return result


def _sweep(model: nn.Module, loss_fn: Callable[[Any, Any], Tensor],
           data: Iterable[Any] | Callable[[], Any], optimizer: Optimizer,
           opt_params: list[Tensor], params: list[Tensor], sweep: Callable[[int], float],
           num_steps: int, smooth: float, threshold: float, accumulation_steps: int,
           amp_dtype: torch.dtype | None, policies: dict[str, ClipPolicy],
           device: torch.device) -> tuple[list[float], list[float], list[float],
                                          dict[str, list[float]], int | None, str, str]:
    groups = optimizer.param_groups
    ref = float(groups[0]["lr"])
    ratios = [float(g["lr"]) / ref if ref != 0 else 1.0 for g in groups]
    scaler = (torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None)
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                else nullcontext())
    guarded = hasattr(optimizer, "_core")
    monitor = _DivergenceMonitor(smooth, threshold)
    batches = _batches(data)
    lrs: list[float] = []
    losses: list[float] = []
    norms: list[float] = []
    scales: dict[str, list[float]] = {k: [] for k in policies}
    model.train()
    for t in range(num_steps):
        lr = sweep(t)
        for group, ratio in zip(groups, ratios, strict=True):
            set_lr(group, lr * ratio)
        for p in params:
            p.grad = None
        total = torch.zeros((), dtype=torch.float64, device=device)
        for _ in range(accumulation_steps):
            batch = next(batches)
            if not isinstance(batch, tuple | list) or len(batch) != 2:
                raise ValueError(f"Invalid data: each batch must be (inputs, targets), got "
                                 f"{type(batch).__name__}")
            inputs, targets = _to(batch[0], device), _to(batch[1], device)
            with autocast:
                out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
                loss = loss_fn(out, targets)
            scaled = loss / accumulation_steps
            (scaled if scaler is None else scaler.scale(scaled)).backward()
            total = total + loss.detach().to(device=device, dtype=torch.float64)
        if scaler is not None:
            scaler.unscale_(optimizer)
        # The pre-clip norm is measured here, after any unscale_, from the gradients the step
        # gets (the simulated policies need these statistics anyway); a gradguard optimizer's
        # own last_step.grad_norm, the same number, is read instead when nothing else needs them.
        measure = bool(policies) or not guarded or scaler is not None
        norm = torch.full((), math.nan, dtype=torch.float64, device=device)
        sim: list[Tensor] = []
        if measure:
            with_grad = [p for p in opt_params if p.grad is not None]
            grads = [p.grad for p in with_grad if p.grad is not None]
            idx = list(range(len(grads)))
            if grads:
                stats = GradStats(with_grad, grads)
                norm = stats.total_norm(idx).to(device=device, dtype=torch.float64)
                skip = ~torch.isfinite(norm)
                sim = [policy.decide(stats, idx, skip if policy.stateful else None).min_scale
                       for policy in policies.values()]
            else:
                norm = torch.zeros((), dtype=torch.float64, device=device)
                sim = [torch.ones((), device=device) for _ in policies]
        stopped_by_guard = False
        try:
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
        except NonFiniteGradientError:  # the guard gave up after repeated non-finite steps
            stopped_by_guard = True
        record = getattr(optimizer, "last_step", None)
        if not measure and record is not None:
            norm = record.grad_norm.to(device=device, dtype=torch.float64)
        values = torch.stack([total / accumulation_steps, norm,
                              *(s.to(device=device, dtype=torch.float64) for s in sim)])
        host = _mean_over_ranks(values).tolist()  # the one host read of the step
        lrs.append(float(lr))
        losses.append(host[0])
        norms.append(host[1])
        for k, v in zip(scales, host[2:], strict=True):
            scales[k].append(v)
        if not math.isfinite(host[0]) or stopped_by_guard:
            why = ("the guard stopped after repeated non-finite gradients" if stopped_by_guard
                   else f"the loss is {host[0]}")
            return lrs, losses, norms, scales, t, "nonfinite", why
        if monitor.update(host[0]):
            return lrs, losses, norms, scales, t, "diverged", monitor.reason
    return lrs, losses, norms, scales, None, "completed", ""
