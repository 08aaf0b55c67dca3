"""Spec strings for schedules (command lines, configs): ``[warmup:N[:...]+]name[:arg...]``.

Arguments after the name are ``:``-separated: positional values in order, ``key=value``
options and bare flags (``staircase``). Where torch has the schedule, the spec builds torch's
scheduler; the rest build the classes of :mod:`gradguard.schedules`.

Each schedule is one entry of the table ``_FORMS``: an ``@_schedule(usage, arguments...)``
build function, from which :func:`parse` reads the grammar and :data:`VALID_FORMS` is written.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim import lr_scheduler as tsched
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from .._validation import check_positive
from ._schedulers import (
    ExponentialDecayLR,
    InverseTimeDecayLR,
    PolynomialDecayLR,
    Warmup,
    WarmupStableDecayLR,
)

__all__ = ["VALID_FORMS", "lr_at", "lr_curve", "parse"]

_Conv = Callable[[str], Any]


def _float(text: str) -> float:
    return math.inf if text.lower() in ("inf", "infinity") else float(text)


def _int(text: str) -> int:
    return int(text)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _fraction_or_steps(text: str) -> float | int:
    value = float(text)
    return value if value < 1 else int(text)


def _choice(*choices: str) -> _Conv:
    def conv(text: str) -> str:
        if text not in choices:
            raise ValueError(f"one of {', '.join(choices)}")
        return text
    return conv


_Build = Callable[[dict[str, Any], Optimizer, int | None], LRScheduler]


@dataclass(frozen=True)
class _Form:
    """One spec form: its usage (as :data:`VALID_FORMS` lists it), its positional arguments
    (name and converter, the first ``required`` of them required), ``key=value`` options,
    bare flags, whether it needs ``total_steps``, and ``build``, which makes the scheduler from
    the parsed arguments, the optimizer and the total steps it runs for."""

    usage: str
    positional: tuple[tuple[str, _Conv], ...] = ()
    required: int = 0
    options: dict[str, _Conv] = field(default_factory=dict)
    flags: tuple[str, ...] = ()
    needs_total: bool = False
    build: _Build | None = None


# name -> form, in the order VALID_FORMS lists them; each schedule is one @_schedule entry.
_FORMS: dict[str, _Form] = {}


def _schedule(usage: str, positional: tuple[tuple[str, _Conv], ...] = (), required: int = 0,
              options: dict[str, _Conv] | None = None, flags: tuple[str, ...] = (),
              needs_total: bool = False) -> Callable[[_Build], _Build]:
    """Register the decorated build function as the schedule of form ``usage``, named by the
    usage's first word."""
    def register(build: _Build) -> _Build:
        name = usage.split(":")[0].split("[")[0]
        if name in _FORMS:
            raise RuntimeError(f"schedule {name!r} registered twice")
        _FORMS[name] = _Form(usage, positional, required, dict(options or {}), flags,
                             needs_total, build)
        return build
    return register


def _lrs(opt: Optimizer) -> list[float]:
    return [float(g["lr"]) for g in opt.param_groups]


@_schedule("constant")
def _constant(a: dict[str, Any], opt: Optimizer, total: int | None) -> LRScheduler:
    return tsched.ConstantLR(opt, factor=1.0, total_iters=0)


@_schedule("step:STEP_SIZE[:GAMMA]", (("step_size", _int), ("gamma", _float)), 1)
def _step(a: dict[str, Any], opt: Optimizer, total: int | None) -> LRScheduler:
    return tsched.StepLR(opt, a["step_size"], a.get("gamma", 0.1))


@_schedule("multistep:M1,M2,...[:GAMMA]", (("milestones", _ints), ("gamma", _float)), 1)
def _multistep(a: dict[str, Any], opt: Optimizer, total: int | None) -> LRScheduler:
    return tsched.MultiStepLR(opt, a["milestones"], a.get("gamma", 0.1))


@_schedule("exp:RATE[:DECAY_STEPS][:staircase]", (("rate", _float), ("decay_steps", _float)), 1,
           flags=("staircase",))
def _exp(a: dict[str, Any], opt: Optimizer, total: int | None) -> LRScheduler:
    steps, staircase = a.get("decay_steps", 1.0), a.get("staircase", False)
    check_positive("decay_rate", a["rate"])
    if steps == 1:  # torch has this one
        return tsched.ExponentialLR(opt, a["rate"])
    return ExponentialDecayLR(opt, a["rate"], steps, staircase)


@_schedule("inverse_time:RATE[:DECAY_STEPS][:staircase]",
           (("rate", _float), ("decay_steps", _float)), 1, flags=("staircase",))
def _inverse_time(a: dict[str, Any], opt: Optimizer, total: int | None) -> LRScheduler:
    return InverseTimeDecayLR(opt, a["rate"], a.get("decay_steps", 1.0),
                              a.get("staircase", False))


@_schedule("poly[:POWER][:end=LR]", (("power", _float),), 0, {"end": _float}, needs_total=True)
def _poly(a: dict[str, Any], opt: Optimizer, total: int | None) -> LRScheduler:
    assert total is not None
    power, end = a.get("power", 1.0), a.get("end", 0.0)
    if end == 0:
        return tsched.PolynomialLR(opt, total_iters=total, power=power)
    return PolynomialDecayLR(opt, total, end, power)


@_schedule("cosine[:end=LR]", options={"end": _float}, needs_total=True)
def _cosine(a: dict[str, Any], opt: Optimizer, total: int | None) -> LRScheduler:
    assert total is not None
    return tsched.CosineAnnealingLR(opt, T_max=total, eta_min=a.get("end", 0.0))


@_schedule("cosine_restarts:T0[:mult=M][:end=LR]", (("t0", _int),), 1,
           {"mult": _int, "end": _float})
def _cosine_restarts(a: dict[str, Any], opt: Optimizer, total: int | None) -> LRScheduler:
    return tsched.CosineAnnealingWarmRestarts(opt, a["t0"], T_mult=a.get("mult", 1),
                                              eta_min=a.get("end", 0.0))


@_schedule("cyclic:MAX_LR:STEP_SIZE_UP[:mode=triangular|triangular2|exp_range][:gamma=G]",
           (("max_lr", _float), ("step_size_up", _int)), 2,
           {"mode": _choice("triangular", "triangular2", "exp_range"), "gamma": _float})
def _cyclic(a: dict[str, Any], opt: Optimizer, total: int | None) -> LRScheduler:
    return tsched.CyclicLR(opt, base_lr=_lrs(opt), max_lr=a["max_lr"],
                           step_size_up=a["step_size_up"], mode=a.get("mode", "triangular"),
                           gamma=a.get("gamma", 1.0), cycle_momentum=False)


@_schedule("onecycle[:pct=P][:div=D][:final_div=F][:anneal=cos|linear]",
           options={"pct": _float, "div": _float, "final_div": _float,
                    "anneal": _choice("cos", "linear")}, needs_total=True)
def _onecycle(a: dict[str, Any], opt: Optimizer, total: int | None) -> LRScheduler:
    assert total is not None
    return tsched.OneCycleLR(opt, max_lr=_lrs(opt), total_steps=total,
                             pct_start=a.get("pct", 0.3), anneal_strategy=a.get("anneal", "cos"),
                             div_factor=a.get("div", 25.0),
                             final_div_factor=a.get("final_div", 1e4), cycle_momentum=False)


@_schedule("plateau[:patience=N][:factor=F][:mode=min|max][:threshold=T][:cooldown=N]"
           "[:min_lr=LR]",
           options={"patience": _int, "factor": _float, "mode": _choice("min", "max"),
                    "threshold": _float, "cooldown": _int, "min_lr": _float})
def _plateau(a: dict[str, Any], opt: Optimizer, total: int | None) -> LRScheduler:
    return ReduceLROnPlateau(opt, mode=a.get("mode", "min"), factor=a.get("factor", 0.1),
                             patience=a.get("patience", 10), threshold=a.get("threshold", 1e-4),
                             cooldown=a.get("cooldown", 0), min_lr=a.get("min_lr", 0.0))


@_schedule("wsd[:DECAY][:warmup=N][:end=LR][:shape=linear|cosine|sqrt]",
           (("decay", _fraction_or_steps),), 0,
           {"warmup": _int, "end": _float, "shape": _choice("linear", "cosine", "sqrt")},
           needs_total=True)
def _wsd(a: dict[str, Any], opt: Optimizer, total: int | None) -> LRScheduler:
    assert total is not None
    decay = a.get("decay")
    if isinstance(decay, float):
        decay = round(decay * total)
    return WarmupStableDecayLR(opt, total, a.get("warmup", 0), decay, a.get("end", 0.0),
                               a.get("shape", "linear"))


# The warm-up is not a schedule of its own: parse() wraps the one after "+" in Warmup.
_WARMUP = _Form("warmup:N[:exp][:start=F]", (("steps", _int),), 1, {"start": _float},
                flags=("exp",))


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


# cosine, the common one, first; the others in table order.
_NEED_TOTAL = sorted((n for n, f in _FORMS.items() if f.needs_total), key=lambda n: n != "cosine")

VALID_FORMS = ", ".join(f'"{f.usage}"' for f in _FORMS.values()) + (
    f', and "{_WARMUP.usage}" alone or in front of any of them with "+" '
    f'(e.g. "warmup:500+cosine"); {_and(_NEED_TOTAL)} need total_steps')


def _fail(spec: str, why: str) -> ValueError:
    return ValueError(f"Invalid schedule spec {spec!r}: {why}; valid forms: {VALID_FORMS}")


def _split(spec: str, part: str, form: _Form, name: str) -> dict[str, Any]:
    args: dict[str, Any] = {}
    positional = list(form.positional)
    for token in part.split(":")[1:]:
        token = token.strip()
        key, sep, text = token.partition("=")
        if sep:
            conv = form.options.get(key)
            if conv is None:
                allowed = ", ".join(form.options) or "none"
                raise _fail(spec, f"unknown option {key!r} for {name} (options: {allowed})")
        elif token in form.flags:
            args[token] = True
            continue
        elif positional:
            key, conv = positional.pop(0)
            text = token
        else:
            raise _fail(spec, f"unexpected {token!r} after {name}")
        try:
            args[key] = conv(text)
        except ValueError as e:
            detail = f" ({e})" if "one of" in str(e) else ""
            raise _fail(spec, f"{key}={text!r} is not valid{detail}") from None
    missing = [k for k, _ in form.positional[:form.required] if k not in args]
    if missing:
        raise _fail(spec, f"{name} needs {', '.join(missing)} (form {form.usage})")
    return args


def parse(spec: str, optimizer: Optimizer, total_steps: int | None = None) -> LRScheduler:
    """Build a scheduler for ``optimizer`` from a spec string.

    ``total_steps`` is the run's length in scheduler steps, needed by ``cosine`` (``T_max``),
    ``poly``, ``onecycle`` and ``wsd``; after ``warmup:N+`` they get ``total_steps - N`` (the
    wrapped schedule starts when the warm-up ends, see :class:`Warmup`). LRs in specs
    (``end=``, ``min_lr=``, ``MAX_LR``) are absolute; ``cyclic`` cycles up from and
    ``onecycle`` peaks at each group's current LR; neither cycles momentum. A warm-up around
    ``plateau`` takes ``step(metric)``. The forms (:data:`VALID_FORMS`):

    - ``constant``; ``step:STEP_SIZE[:GAMMA]``, ``multistep:M1,M2,...[:GAMMA]`` (torch's
      StepLR, MultiStepLR; GAMMA defaults to 0.1)
    - ``exp:RATE[:DECAY_STEPS][:staircase]`` (:class:`ExponentialDecayLR`; torch's
      ExponentialLR when DECAY_STEPS is 1), ``inverse_time:RATE[:DECAY_STEPS][:staircase]``
    - ``poly[:POWER][:end=LR]`` (torch's PolynomialLR when end is 0), ``cosine[:end=LR]``,
      ``cosine_restarts:T0[:mult=M][:end=LR]``, ``cyclic:MAX_LR:STEP_SIZE_UP[:mode=..]``,
      ``onecycle[:pct=P][:div=D][:final_div=F][:anneal=cos|linear]``
    - ``plateau[:patience=N][:factor=F][:mode=min|max][:threshold=T][:cooldown=N][:min_lr=LR]``
    - ``wsd[:DECAY][:warmup=N][:end=LR][:shape=linear|cosine|sqrt]`` (DECAY: a fraction of
      total_steps if below 1, else a number of steps; default 0.2)
    - ``warmup:N[:exp][:start=F]``, alone or as ``warmup:N[...]+SCHEDULE``

    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    >>> parse("warmup:500+cosine", opt, total_steps=10_000).scheduler.T_max
    9500
    >>> parse("exp:0.96:1000:staircase", opt)
    <gradguard.schedules._schedulers.ExponentialDecayLR object at ...>
    >>> parse("cosnie", opt)
    Traceback (most recent call last):
    ValueError: Invalid schedule spec 'cosnie': unknown name 'cosnie'; valid forms: ...
    """
    if not isinstance(spec, str):
        raise TypeError(f"Invalid schedule spec: expected a string, got {spec!r}")
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"Invalid optimizer: expected a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    if total_steps is not None and (isinstance(total_steps, bool)
                                    or not isinstance(total_steps, int) or total_steps < 1):
        raise ValueError(f"Invalid total_steps: {total_steps!r}; must be None or an integer "
                         ">= 1")
    parts = [p.strip() for p in spec.strip().split("+")]
    if len(parts) > 2:
        raise _fail(spec, "at most one '+' (a warm-up in front of one schedule)")
    warmup: dict[str, Any] | None = None
    if parts[0].split(":")[0].strip().lower() == "warmup":
        warmup = _split(spec, parts[0], _WARMUP, "warmup")
        parts = parts[1:]
        if len(parts) == 1 and parts[0].split(":")[0].strip().lower() == "warmup":
            raise _fail(spec, "one warm-up only")
    elif len(parts) == 2:
        raise _fail(spec, "only a warm-up can come before '+'")
    inner: LRScheduler | None = None
    if parts:
        name = parts[0].split(":")[0].strip().lower()
        form = _FORMS.get(name)
        if form is None:
            raise _fail(spec, f"unknown name {name!r}")
        args = _split(spec, parts[0], form, name)
        total = total_steps
        if form.needs_total:
            if total_steps is None:
                raise _fail(spec, f"{name} needs total_steps (the run's length in scheduler "
                                  "steps)")
            if warmup is not None:
                total = total_steps - warmup["steps"]
                if total < 1:
                    raise _fail(spec, f"total_steps ({total_steps}) must exceed the warm-up "
                                      f"({warmup['steps']}) for {name}")
        assert form.build is not None
        try:
            inner = form.build(args, optimizer, total)
        except (ValueError, TypeError) as e:
            raise _fail(spec, str(e)) from None
    if warmup is None:
        assert inner is not None
        return inner
    try:
        return Warmup(inner, warmup["steps"], "exponential" if warmup.get("exp") else "linear",
                      warmup.get("start"), optimizer=optimizer)
    except (ValueError, TypeError) as e:
        raise _fail(spec, str(e)) from None


def _takes_metrics(scheduler: LRScheduler) -> bool:
    return isinstance(scheduler, ReduceLROnPlateau) or (
        isinstance(scheduler, Warmup) and scheduler.takes_metrics)


def lr_curve(spec: str, num_steps: int, base_lr: float = 1.0, total_steps: int | None = None,
             metrics: Sequence[float] | None = None) -> list[float]:
    """The LR at steps ``0 .. num_steps - 1`` of the schedule ``spec`` started at ``base_lr``.

    A pure function: it runs the scheduler :func:`parse` builds (torch's own where torch has
    the schedule, so there is one source of math) on a throw-away one-parameter optimizer.
    ``plateau`` specs need ``metrics``: ``metrics[t]`` is what ``step`` receives after step
    ``t`` (``num_steps - 1`` values).

    >>> lr_curve("step:2:0.5", 5, base_lr=0.1)
    [0.1, 0.1, 0.05, 0.05, 0.025]
    >>> [round(x, 4) for x in lr_curve("warmup:2+cosine", 6, base_lr=1.0, total_steps=6)]
    [0.0, 0.5, 1.0, 0.8536, 0.5, 0.1464]
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"Invalid num_steps: {num_steps!r}; must be an integer >= 1")
    param = torch.nn.Parameter(torch.zeros(()))
    opt = torch.optim.SGD([param], lr=float(base_lr))
    sched = parse(spec, opt, total_steps)
    takes = _takes_metrics(sched)
    if takes and (metrics is None or len(metrics) < num_steps - 1):
        got = "None" if metrics is None else f"{len(metrics)} values"
        raise ValueError(f"Invalid metrics: {got}; spec {spec!r} reduces the LR on a plateau of "
                         f"the metric and needs num_steps - 1 = {num_steps - 1} of them")
    if not takes and metrics is not None:
        raise ValueError(f"Invalid metrics: spec {spec!r} does not use a metric")
    out: list[float] = []
    for t in range(num_steps):
        out.append(float(opt.param_groups[0]["lr"]))
        if t == num_steps - 1:
            break
        opt.step()  # no gradient: changes nothing, keeps torch's call-order check quiet
        if takes:
            assert metrics is not None
            sched.step(metrics[t])  # type: ignore[arg-type]
        else:
            sched.step()
    return out


def lr_at(spec: str, step: int, base_lr: float = 1.0, total_steps: int | None = None,
          metrics: Sequence[float] | None = None) -> float:
    """The LR at ``step`` of the schedule ``spec`` started at ``base_lr`` (see
    :func:`lr_curve`, which is cheaper for many steps).

    >>> lr_at("exp:0.5:10:staircase", 25, base_lr=1.0)
    0.25
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"Invalid step: {step!r}; must be an integer >= 0")
    return lr_curve(spec, step + 1, base_lr, total_steps, metrics)[-1]
