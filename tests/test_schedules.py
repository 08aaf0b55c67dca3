"""Learning-rate schedules: the pure functions and the schedulers against closed forms written
out here (Keras' definitions, torch's documented formulas), two param groups with different
base LRs, Warmup around torch schedulers (ReduceLROnPlateau included), state_dict round trips
mid-schedule, and spec strings."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.optim import lr_scheduler as tsched

import gradguard
from gradguard.schedules import (
    VALID_FORMS,
    ExponentialDecayLR,
    InverseTimeDecayLR,
    PolynomialDecayLR,
    Warmup,
    WarmupStableDecayLR,
    constant_schedule,
    exponential_decay,
    inverse_time_decay,
    join_warmup,
    lr_at,
    lr_curve,
    parse,
    polynomial_decay,
    warmup_factor,
    warmup_stable_decay,
)
from helpers import save_load

BASES = (0.1, 0.003)  # two param groups with different base LRs
PROPERTY = settings(max_examples=30, deadline=None)


# --------------------------------------------------------------------------------------
# Reference definitions, written out independently of the library
# --------------------------------------------------------------------------------------


def keras_exponential(lr: float, rate: float, steps: float, staircase: bool, t: int) -> float:
    p = t / steps
    if staircase:
        p = math.floor(p)
    return lr * rate**p


def keras_inverse_time(lr: float, rate: float, steps: float, staircase: bool, t: int) -> float:
    p = t / steps
    if staircase:
        p = math.floor(p)
    return lr / (1 + rate * p)


def keras_polynomial(lr: float, steps: int, end: float, power: float, t: int) -> float:
    t = min(t, steps)
    return (lr - end) * (1 - t / steps) ** power + end


def torch_cosine(base: float, eta_min: float, t_max: int, t: int) -> float:
    """CosineAnnealingLR's documented closed form."""
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * t / t_max)) / 2


def wsd_reference(base: float, total: int, warm: int, decay: int, end: float, shape: str,
                  t: int) -> float:
    if t < warm:
        return base * t / warm
    if t < total - decay:
        return base
    if t >= total:
        return end
    u = (t - (total - decay)) / decay
    d = {"linear": 1 - u, "cosine": (1 + math.cos(math.pi * u)) / 2, "sqrt": 1 - u**0.5}[shape]
    return end + (base - end) * d


def two_group_optimizer(opt_cls: type[torch.optim.Optimizer] = torch.optim.SGD,
                        **kwargs: Any) -> torch.optim.Optimizer:
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    return opt_cls([{"params": [a], "lr": BASES[0]}, {"params": [b], "lr": BASES[1]}], **kwargs)


def run(sched: Any, steps: int, metrics: list[float] | None = None) -> list[list[float]]:
    """The LR of every group at steps 0 .. steps-1, stepping the optimizer first (no grads)."""
    opt = sched.optimizer
    out = []
    for t in range(steps):
        out.append([float(g["lr"]) for g in opt.param_groups])
        opt.step()
        if metrics is None:
            sched.step()
        else:
            sched.step(metrics[t])
    return out


def flat(rows: list[list[float]]) -> list[float]:
    return [v for row in rows for v in row]


def assert_table(actual: list[list[float]], expected: Callable[[float, int], float],
                 rel: float = 1e-12) -> None:
    for t, row in enumerate(actual):
        for base, value in zip(BASES, row, strict=True):
            assert value == pytest.approx(expected(base, t), rel=rel, abs=1e-15), (t, base)


# --------------------------------------------------------------------------------------
# Pure functions: value tables against closed forms and hand-computed numbers
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("staircase", [False, True])
@pytest.mark.parametrize(("rate", "steps"), [(0.96, 10), (0.5, 3), (0.9, 1), (1e8, 99)])
def test_exponential_decay_matches_keras(rate: float, steps: int, staircase: bool) -> None:
    f = exponential_decay(0.1, rate, steps, staircase)
    for t in range(0, 120, 7):
        assert f(t) == pytest.approx(keras_exponential(0.1, rate, steps, staircase, t), rel=1e-12)


def test_exponential_decay_known_values() -> None:
    f = exponential_decay(0.1, 0.96, 1000, staircase=True)
    assert f(999) == pytest.approx(0.1)
    assert f(2500) == pytest.approx(0.1 * 0.96**2)
    assert exponential_decay(0.1, 0.96, 1000)(500) == pytest.approx(0.1 * math.sqrt(0.96))


@pytest.mark.parametrize("staircase", [False, True])
def test_inverse_time_decay_matches_keras(staircase: bool) -> None:
    f = inverse_time_decay(0.5, 0.3, 7, staircase)
    for t in range(60):
        assert f(t) == pytest.approx(keras_inverse_time(0.5, 0.3, 7, staircase, t), rel=1e-12)
    # Keras 2's optimizer argument decay=r is decay_steps=1: lr / (1 + r t).
    assert inverse_time_decay(0.01, 1e-3)(1000) == pytest.approx(0.005)


@pytest.mark.parametrize(("end", "power"), [(0.0, 1.0), (1e-3, 2.0), (0.02, 0.5)])
def test_polynomial_decay_matches_keras(end: float, power: float) -> None:
    f = polynomial_decay(0.1, 40, end, power)
    for t in range(60):
        assert f(t) == pytest.approx(keras_polynomial(0.1, 40, end, power, t), rel=1e-12)
    assert f(40) == pytest.approx(end) and f(1000) == pytest.approx(end)


def test_polynomial_decay_upwards_is_a_linear_ramp() -> None:
    f = polynomial_decay(1e-3, 10, end_value=1.0)
    assert [f(t) for t in range(11)] == pytest.approx([1e-3 + (1 - 1e-3) * t / 10
                                                       for t in range(11)])


@given(lr=st.floats(1e-6, 10), rate=st.floats(0.01, 2.0), steps=st.integers(1, 50),
       staircase=st.booleans(), t=st.integers(0, 500))
@PROPERTY
def test_decays_match_keras_property(lr: float, rate: float, steps: int, staircase: bool,
                                     t: int) -> None:
    assert exponential_decay(lr, rate, steps, staircase)(t) == pytest.approx(
        keras_exponential(lr, rate, steps, staircase, t), rel=1e-9)
    assert inverse_time_decay(lr, rate, steps, staircase)(t) == pytest.approx(
        keras_inverse_time(lr, rate, steps, staircase, t), rel=1e-12)
    assert polynomial_decay(lr, steps, lr / 7, 1 + rate)(t) == pytest.approx(
        keras_polynomial(lr, steps, lr / 7, 1 + rate, t), rel=1e-12)


@pytest.mark.parametrize("shape", ["linear", "cosine", "sqrt"])
def test_warmup_stable_decay_table(shape: str) -> None:
    f = warmup_stable_decay(0.2, total_steps=50, warmup_steps=5, decay_steps=15, end_value=1e-3,
                            shape=shape)
    for t in range(60):
        assert f(t) == pytest.approx(wsd_reference(0.2, 50, 5, 15, 1e-3, shape, t), rel=1e-12)
    # default decay: the last 20% of the run
    g = warmup_stable_decay(1.0, total_steps=100)
    assert g(79) == 1.0 and g(80) == 1.0 and g(90) == pytest.approx(0.5) and g(100) == 0.0


def test_warmup_factor_closed_forms() -> None:
    assert [warmup_factor(t, 5, "linear", 0.2) for t in range(7)] == pytest.approx(
        [0.2 + 0.8 * t / 5 for t in range(5)] + [1.0, 1.0])
    exp = [warmup_factor(t, 4, "exponential", 1e-3) for t in range(6)]
    assert exp == pytest.approx([1e-3 ** (1 - t / 4) for t in range(4)] + [1.0, 1.0])
    ratios = [b / a for a, b in itertools.pairwise(exp[:5])]
    assert ratios == pytest.approx([ratios[0]] * 4)  # geometric: the same ratio every step
    assert warmup_factor(0, 10) == 0.0 and warmup_factor(0, 10, "exponential") == 0.01
    assert warmup_factor(3, 0) == 1.0


def test_join_warmup_delays_the_schedule() -> None:
    inner = exponential_decay(2.0, 0.5)
    f = join_warmup(inner, 4, "linear", 0.0)
    assert [f(t) for t in range(8)] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 1.0, 0.5, 0.25])
    assert constant_schedule(0.3)(10**9) == 0.3


@pytest.mark.parametrize(
    ("call", "argname"),
    [
        (lambda: exponential_decay(0.1, -0.5), "decay_rate"),
        (lambda: exponential_decay(0.1, 0.5, 0), "decay_steps"),
        (lambda: exponential_decay(float("nan"), 0.5), "init_value"),
        (lambda: inverse_time_decay(0.1, -1.0), "decay_rate"),
        (lambda: polynomial_decay(0.1, 0), "decay_steps"),
        (lambda: polynomial_decay(0.1, 10, power=0), "power"),
        (lambda: warmup_stable_decay(0.1, 10, warmup_steps=6, decay_steps=5), "warmup_steps"),
        (lambda: warmup_stable_decay(0.1, 10, shape="step"), "shape"),
        (lambda: warmup_factor(0, -1), "warmup_steps"),
        (lambda: warmup_factor(0, 5, "cubic"), "mode"),
        (lambda: warmup_factor(0, 5, "exponential", 0.0), "start_factor"),
        (lambda: warmup_factor(0, 5, "linear", 1.5), "start_factor"),
        (lambda: exponential_decay(0.1, 0.5)(-1), "step"),
    ],
)
def test_pure_function_errors_name_the_argument(call: Callable[[], Any], argname: str) -> None:
    with pytest.raises((ValueError, TypeError), match=f"Invalid {argname}"):
        call()


# --------------------------------------------------------------------------------------
# The schedulers: two param groups, torch's protocol, agreement with torch where it overlaps
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("staircase", [False, True])
def test_exponential_decay_lr_two_groups(staircase: bool) -> None:
    opt = two_group_optimizer()
    sched = ExponentialDecayLR(opt, decay_rate=0.7, decay_steps=4, staircase=staircase)
    assert_table(run(sched, 30), lambda b, t: keras_exponential(b, 0.7, 4, staircase, t))
    assert sched.get_last_lr() == pytest.approx([keras_exponential(b, 0.7, 4, staircase, 30)
                                                 for b in BASES])


def test_inverse_time_and_polynomial_lr_two_groups() -> None:
    opt = two_group_optimizer()
    assert_table(run(InverseTimeDecayLR(opt, 0.5, 3, staircase=True), 25),
                 lambda b, t: keras_inverse_time(b, 0.5, 3, True, t))
    opt = two_group_optimizer()
    sched = PolynomialDecayLR(opt, decay_steps=20, end_lr=[1e-3, 1e-4], power=2.0)
    ends = dict(zip(BASES, [1e-3, 1e-4], strict=True))
    assert_table(run(sched, 30), lambda b, t: keras_polynomial(b, 20, ends[b], 2.0, t))


def test_wsd_lr_two_groups() -> None:
    opt = two_group_optimizer()
    sched = WarmupStableDecayLR(opt, total_steps=40, warmup_steps=4, decay_steps=10,
                                shape="sqrt")
    assert_table(run(sched, 45), lambda b, t: wsd_reference(b, 40, 4, 10, 0.0, "sqrt", t))


def test_agrees_with_torch_where_torch_has_the_schedule() -> None:
    ours, theirs = two_group_optimizer(), two_group_optimizer()
    a = run(ExponentialDecayLR(ours, 0.9), 40)
    b = run(tsched.ExponentialLR(theirs, 0.9), 40)
    assert flat(a) == pytest.approx(flat(b), rel=1e-12)
    ours, theirs = two_group_optimizer(), two_group_optimizer()
    a = run(PolynomialDecayLR(ours, 30, power=1.5), 40)
    b = run(tsched.PolynomialLR(theirs, total_iters=30, power=1.5), 40)
    assert flat(a) == pytest.approx(flat(b), rel=1e-9, abs=1e-15)


def test_scheduler_argument_errors() -> None:
    opt = two_group_optimizer()
    with pytest.raises(ValueError, match="Invalid decay_rate"):
        ExponentialDecayLR(opt, decay_rate=0.0)
    with pytest.raises(ValueError, match="Invalid end_lr"):
        PolynomialDecayLR(opt, 10, end_lr=[0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="Invalid decay_steps"):
        PolynomialDecayLR(opt, 0)
    with pytest.raises(ValueError, match=r"Invalid warmup_steps \+ decay_steps"):
        WarmupStableDecayLR(opt, 10, warmup_steps=8, decay_steps=3)


def test_works_with_gradguard_optimizer_and_tensor_lr() -> None:
    model = torch.nn.Linear(3, 1)
    opt = gradguard.AdamW(model.parameters(), lr=0.01, clip="global_norm:1")
    sched = parse("warmup:3+exp:0.5:2", opt)
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        model(torch.ones(4, 3)).sum().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    assert lrs == pytest.approx([0.0, 0.01 / 3, 0.02 / 3, 0.01, 0.01 * 0.5**0.5, 0.005,
                                 0.005 * 0.5**0.5])
    # A tensor LR (capturable/fused torch optimizers) is updated in place, not replaced.
    p = torch.nn.Parameter(torch.zeros(2))
    topt = torch.optim.Adam([p], lr=torch.tensor(0.1))
    lr_tensor = topt.param_groups[0]["lr"]
    w = Warmup(ExponentialDecayLR(topt, 0.5), 2)
    run(w, 4)
    assert topt.param_groups[0]["lr"] is lr_tensor
    assert float(lr_tensor) == pytest.approx(0.1 * 0.5**2)


# --------------------------------------------------------------------------------------
# Warmup around torch schedulers
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("start", [0.0, 0.25])
def test_warmup_then_cosine_two_groups(start: float) -> None:
    total, warm = 30, 5
    opt = two_group_optimizer()
    sched = Warmup(tsched.CosineAnnealingLR(opt, T_max=total - warm, eta_min=1e-4), warm,
                   start_factor=start)

    def expected(base: float, t: int) -> float:
        if t < warm:
            return base * (start + (1 - start) * t / warm)
        return torch_cosine(base, 1e-4, total - warm, t - warm)

    assert_table(run(sched, total + 1), expected, rel=1e-9)


def test_warmup_matches_its_pure_function() -> None:
    opt = two_group_optimizer()
    sched = Warmup(ExponentialDecayLR(opt, 0.8, 3), 6, mode="exponential", start_factor=0.05)
    assert_table(run(sched, 25),
                 lambda b, t: join_warmup(exponential_decay(b, 0.8, 3), 6, "exponential",
                                          0.05)(t))


def test_warmup_then_step_lr_and_warmup_alone() -> None:
    opt = two_group_optimizer()
    sched = Warmup(tsched.StepLR(opt, step_size=3, gamma=0.1), 4)
    assert_table(run(sched, 14),
                 lambda b, t: b * t / 4 if t < 4 else b * 0.1 ** ((t - 4) // 3))
    for make in (lambda o: Warmup(None, 4, optimizer=o), lambda o: Warmup(o, 4)):
        opt = two_group_optimizer()
        assert_table(run(make(opt), 8), lambda b, t: b * min(t, 4) / 4)


def test_warmup_plateau_does_not_act_during_warmup() -> None:
    warm, patience = 4, 1
    metrics = [10.0, 20.0, 30.0, 40.0,  # rising during the warm-up: must be ignored
               5.0, 5.0, 5.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    opt = two_group_optimizer()
    plateau = tsched.ReduceLROnPlateau(opt, factor=0.5, patience=patience)
    sched = Warmup(plateau, warm)
    lrs = run(sched, warm, metrics)
    assert plateau.last_epoch == 0 and plateau.num_bad_epochs == 0
    assert plateau.best == math.inf
    lrs += run(sched, len(metrics) - warm, metrics[warm:])
    lrs.append([float(g["lr"]) for g in opt.param_groups])
    # Reference: a plateau scheduler that starts at the end of the warm-up and is given the
    # metrics measured from then on (the one passed at t = W was measured at a warm-up LR).
    ref_opt = two_group_optimizer()
    ref = tsched.ReduceLROnPlateau(ref_opt, factor=0.5, patience=patience)
    ref_lrs = [[float(g["lr"]) for g in ref_opt.param_groups]]
    for m in metrics[warm:]:
        ref_opt.step()
        ref.step(m)
        ref_lrs.append([float(g["lr"]) for g in ref_opt.param_groups])
    assert_table(lrs[:warm], lambda b, t: b * t / warm)
    assert lrs[warm:] == ref_lrs
    assert lrs[-1] == pytest.approx([b * 0.125 for b in BASES])  # it did reduce, three times


def test_warmup_plateau_metric_errors() -> None:
    opt = two_group_optimizer()
    sched = Warmup(tsched.ReduceLROnPlateau(opt), 2)
    sched.step()  # no metric needed during the warm-up
    sched.step()
    with pytest.raises(TypeError, match="Invalid metrics"):
        sched.step()
    other = Warmup(tsched.StepLR(two_group_optimizer(), 2), 2)
    with pytest.raises(TypeError, match="Invalid metrics"):
        other.step(1.0)


def test_warmup_argument_errors() -> None:
    opt = two_group_optimizer()
    with pytest.raises(TypeError, match="Invalid scheduler"):
        Warmup(None, 3)
    with pytest.raises(TypeError, match="Invalid scheduler"):
        Warmup("cosine", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Invalid warmup_steps"):
        Warmup(opt, -1)
    with pytest.raises(ValueError, match="Invalid mode"):
        Warmup(opt, 3, mode="cubic")
    with pytest.raises(ValueError, match="Invalid start_factor"):
        Warmup(opt, 3, mode="exponential", start_factor=0.0)
    with pytest.raises(ValueError, match="Invalid optimizer"):
        Warmup(tsched.StepLR(opt, 2), 3, optimizer=two_group_optimizer())


# --------------------------------------------------------------------------------------
# state_dict round trips mid-schedule
# --------------------------------------------------------------------------------------

ROUND_TRIP_SPECS = [
    "exp:0.9:3:staircase",
    "inverse_time:0.5:2",
    "poly:2:end=0.001",
    "wsd:0.3:warmup=4:shape=cosine",
    "warmup:5+cosine",
    "warmup:5:exp+step:3:0.5",
    "warmup:4+plateau:patience=1:factor=0.5",
    "warmup:6",
    "onecycle",
]


@pytest.mark.parametrize("spec", ROUND_TRIP_SPECS)
@pytest.mark.parametrize("split", [3, 9])
def test_state_dict_round_trip_mid_schedule(spec: str, split: int) -> None:
    total = 24
    metrics = [1.0 / (1 + (t % 5)) + 0.01 * t for t in range(total)]  # plateaus now and then

    def fresh() -> tuple[torch.optim.Optimizer, Any]:
        opt = two_group_optimizer(torch.optim.SGD, momentum=0.9)
        return opt, parse(spec, opt, total_steps=total)

    takes_metric = "plateau" in spec
    opt, sched = fresh()
    straight = run(sched, total, metrics if takes_metric else None)

    opt, sched = fresh()
    first = run(sched, split, metrics if takes_metric else None)
    saved = save_load({"opt": opt.state_dict(), "sched": sched.state_dict()})
    opt2, sched2 = fresh()  # a new run: make, then load (torch's documented order)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    rest = run(sched2, total - split, metrics[split:] if takes_metric else None)
    assert first + rest == straight


# --------------------------------------------------------------------------------------
# Spec strings
# --------------------------------------------------------------------------------------

TOTAL = 40


def _cyclic(base: float, max_lr: float, step: int, t: int) -> float:
    """CyclicLR's 'triangular' policy as documented."""
    cycle = math.floor(1 + t / (2 * step))
    x = abs(t / step - 2 * cycle + 1)
    return base + (max_lr - base) * max(0.0, 1 - x)


def _sgdr(base: float, t0: int, mult: int, t: int) -> float:
    """SGDR (Loshchilov & Hutter 2017) with eta_min = 0."""
    length, start = t0, 0
    while t >= start + length:
        start += length
        length *= mult
    return base * (1 + math.cos(math.pi * (t - start) / length)) / 2


SPEC_TABLE: list[tuple[str, type, Callable[[float, int], float]]] = [
    ("constant", tsched.ConstantLR, lambda b, t: b),
    ("step:7:0.5", tsched.StepLR, lambda b, t: b * 0.5 ** (t // 7)),
    ("step:7", tsched.StepLR, lambda b, t: b * 0.1 ** (t // 7)),
    ("multistep:5,12,30:0.3", tsched.MultiStepLR,
     lambda b, t: b * 0.3 ** sum(t >= m for m in (5, 12, 30))),
    ("exp:0.9", tsched.ExponentialLR, lambda b, t: b * 0.9**t),
    ("exp:0.96:10:staircase", ExponentialDecayLR,
     lambda b, t: keras_exponential(b, 0.96, 10, True, t)),
    ("exp:0.5:8", ExponentialDecayLR, lambda b, t: keras_exponential(b, 0.5, 8, False, t)),
    ("inverse_time:0.5:4:staircase", InverseTimeDecayLR,
     lambda b, t: keras_inverse_time(b, 0.5, 4, True, t)),
    ("poly", tsched.PolynomialLR, lambda b, t: keras_polynomial(b, TOTAL, 0.0, 1.0, t)),
    ("poly:2:end=1e-4", PolynomialDecayLR,
     lambda b, t: keras_polynomial(b, TOTAL, 1e-4, 2.0, t)),
    ("cosine", tsched.CosineAnnealingLR, lambda b, t: torch_cosine(b, 0.0, TOTAL, t)),
    ("cosine:end=1e-5", tsched.CosineAnnealingLR, lambda b, t: torch_cosine(b, 1e-5, TOTAL, t)),
    ("cosine_restarts:5:mult=2", tsched.CosineAnnealingWarmRestarts,
     lambda b, t: _sgdr(b, 5, 2, t)),
    ("cyclic:0.5:6", tsched.CyclicLR, lambda b, t: _cyclic(b, 0.5, 6, t)),
    ("wsd:0.25:warmup=5:shape=cosine", WarmupStableDecayLR,
     lambda b, t: wsd_reference(b, TOTAL, 5, 10, 0.0, "cosine", t)),
    ("wsd:8:end=1e-3", WarmupStableDecayLR,
     lambda b, t: wsd_reference(b, TOTAL, 0, 8, 1e-3, "linear", t)),
    ("warmup:10+cosine", Warmup,
     lambda b, t: b * t / 10 if t < 10 else torch_cosine(b, 0.0, TOTAL - 10, t - 10)),
    ("warmup:4:exp:start=0.1+exp:0.5:3", Warmup,
     lambda b, t: b * 0.1 ** (1 - t / 4) if t < 4 else keras_exponential(b, 0.5, 3, False,
                                                                          t - 4)),
    ("warmup:6", Warmup, lambda b, t: b * min(t, 6) / 6),
    (" Warmup:3 + STEP:4:0.5 ", Warmup,
     lambda b, t: b * t / 3 if t < 3 else b * 0.5 ** ((t - 3) // 4)),
]


@pytest.mark.parametrize(("spec", "cls", "expected"), SPEC_TABLE, ids=[s[0] for s in SPEC_TABLE])
def test_spec_builds_the_schedule(spec: str, cls: type, expected: Callable[[float, int],
                                                                            float]) -> None:
    opt = two_group_optimizer()
    sched = parse(spec, opt, total_steps=TOTAL)
    assert type(sched) is cls
    assert_table(run(sched, TOTAL + 3), expected, rel=1e-9)
    # the pure forms give the same numbers
    curve = lr_curve(spec, TOTAL + 3, base_lr=BASES[0], total_steps=TOTAL)
    assert curve == pytest.approx([expected(BASES[0], t) for t in range(TOTAL + 3)], rel=1e-9,
                                  abs=1e-15)
    assert lr_at(spec, 17, base_lr=BASES[1], total_steps=TOTAL) == pytest.approx(
        expected(BASES[1], 17), rel=1e-9)


def test_spec_onecycle_is_torchs() -> None:
    opt, ref_opt = two_group_optimizer(), two_group_optimizer()
    sched = parse("onecycle:pct=0.25:div=10:final_div=100:anneal=linear", opt, total_steps=TOTAL)
    ref = tsched.OneCycleLR(ref_opt, max_lr=list(BASES), total_steps=TOTAL, pct_start=0.25,
                            div_factor=10, final_div_factor=100, anneal_strategy="linear",
                            cycle_momentum=False)
    assert run(sched, TOTAL - 1) == run(ref, TOTAL - 1)
    assert max(lr_curve("onecycle", TOTAL, 0.2, TOTAL)) == pytest.approx(0.2)


def test_spec_plateau_and_warmup_plateau_curves() -> None:
    metrics = [3.0, 2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0]
    assert lr_curve("plateau:patience=1:factor=0.5", 10, 1.0, metrics=metrics) == [
        1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25]
    assert lr_curve("warmup:2+plateau:patience=0:factor=0.5", 6, 1.0,
                    metrics=[9.0, 9.0, 1.0, 1.0, 1.0]) == [0.0, 0.5, 1.0, 1.0, 0.5, 0.25]
    with pytest.raises(ValueError, match="Invalid metrics"):
        lr_curve("plateau", 5, 1.0)
    with pytest.raises(ValueError, match="Invalid metrics"):
        lr_curve("cosine", 5, 1.0, total_steps=5, metrics=[1.0] * 4)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "unknown name ''"),
        ("cosnie", "unknown name 'cosnie'"),
        ("step", "step needs step_size"),
        ("step:x", "step_size='x' is not valid"),
        ("step:3:0.1:9", "unexpected '9'"),
        ("exp:0.9:staircas", "decay_steps='staircas' is not valid"),
        ("plateau:patience=x", "patience='x' is not valid"),
        ("plateau:mode=avg", "one of min, max"),
        ("plateau:paitence=3", "unknown option 'paitence'"),
        ("cosine", "cosine needs total_steps"),
        ("warmup:50+cosine", "must exceed the warm-up"),
        ("warmup:5+warmup:3", "one warm-up only"),
        ("cosine+warmup:3", "only a warm-up can come before"),
        ("warmup:1+step:2+exp:0.5", "at most one '+'"),
        ("exp:-0.5", "Invalid decay_rate"),
        ("wsd:0.5:warmup=30", "Invalid warmup_steps + decay_steps"),
        ("warmup:3:exp:start=0", "Invalid start_factor"),
    ],
)
def test_bad_spec_lists_valid_forms(spec: str, fragment: str) -> None:
    opt = two_group_optimizer()
    total = 40 if spec not in ("cosine",) else None
    with pytest.raises(ValueError) as info:
        parse(spec, opt, total_steps=total)
    message = str(info.value)
    assert fragment in message
    assert f"Invalid schedule spec {spec!r}" in message
    assert "valid forms:" in message and '"cosine[:end=LR]"' in message
    assert '"warmup:N[:exp][:start=F]"' in message


def test_valid_forms_name_every_schedule() -> None:
    for name in ("constant", "step", "multistep", "exp", "inverse_time", "poly", "cosine",
                 "cosine_restarts", "cyclic", "onecycle", "plateau", "wsd", "warmup"):
        assert f'"{name}' in VALID_FORMS


def test_parse_type_errors() -> None:
    with pytest.raises(TypeError, match="Invalid schedule spec"):
        parse(3, two_group_optimizer())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Invalid optimizer"):
        parse("cosine", None, 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Invalid total_steps"):
        parse("cosine", two_group_optimizer(), total_steps=0)
    with pytest.raises(ValueError, match="Invalid step"):
        lr_at("constant", -1)


# VALID_FORMS as it was written before each schedule became one table entry (the CLI's
# messages quote it): the string generated from the table must not change.
OLD_VALID_FORMS = (
    '"constant", "step:STEP_SIZE[:GAMMA]", "multistep:M1,M2,...[:GAMMA]", '
    '"exp:RATE[:DECAY_STEPS][:staircase]", "inverse_time:RATE[:DECAY_STEPS][:staircase]", '
    '"poly[:POWER][:end=LR]", "cosine[:end=LR]", "cosine_restarts:T0[:mult=M][:end=LR]", '
    '"cyclic:MAX_LR:STEP_SIZE_UP[:mode=triangular|triangular2|exp_range][:gamma=G]", '
    '"onecycle[:pct=P][:div=D][:final_div=F][:anneal=cos|linear]", '
    '"plateau[:patience=N][:factor=F][:mode=min|max][:threshold=T][:cooldown=N][:min_lr=LR]", '
    '"wsd[:DECAY][:warmup=N][:end=LR][:shape=linear|cosine|sqrt]", and '
    '"warmup:N[:exp][:start=F]" alone or in front of any of them with "+" '
    '(e.g. "warmup:500+cosine"); cosine, poly, onecycle and wsd need total_steps'
)


def test_valid_forms_generated_from_the_table_are_the_old_string() -> None:
    assert VALID_FORMS == OLD_VALID_FORMS


def test_every_schedule_in_the_table_is_built_and_tested() -> None:
    """Each schedule is one entry of the spec table (usage, arguments, build function); every
    one is run against its closed form in SPEC_TABLE or has its own test here."""
    from gradguard.schedules._spec import _FORMS

    own_tests = {"onecycle", "plateau"}  # test_spec_onecycle_is_torchs, ..._plateau_...
    tested = {spec.split("+")[-1].split(":")[0].strip().lower() for spec, _, _ in SPEC_TABLE}
    assert (tested - {"warmup"}) | own_tests == set(_FORMS)
    for name, form in _FORMS.items():
        assert form.build is not None and form.usage.startswith(name), name
        assert f'"{form.usage}"' in VALID_FORMS
