"""Clip policies: invariants (hypothesis), agreement with torch.nn.utils, AutoClip and ZClip
thresholds against numpy computations of their definitions, spec strings, state_dict."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from gradguard import clip as gclip
from helpers import save_load, total_norm64

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------
# Strategies and helpers
# --------------------------------------------------------------------------------------


@st.composite
def param_sets(draw: st.DrawFn) -> list[nn.Parameter]:
    """1-4 parameters of random shapes (0-d to 3-d) whose weights and gradients have random,
    independently drawn scales spanning several orders of magnitude."""
    n = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    grad_scale = 10.0 ** draw(st.floats(-3, 3))
    weight_scale = 10.0 ** draw(st.floats(-3, 1))
    gen = torch.Generator().manual_seed(seed)
    params = []
    for _ in range(n):
        shape = draw(st.lists(st.integers(1, 6), min_size=0, max_size=3))
        rel = 10.0 ** draw(st.floats(-1, 1))
        p = nn.Parameter(torch.randn(shape, generator=gen) * weight_scale)
        p.grad = torch.randn(shape, generator=gen) * grad_scale * rel
        params.append(p)
    return params


def clone(params: list[nn.Parameter]) -> list[nn.Parameter]:
    out = []
    for p in params:
        q = nn.Parameter(p.detach().clone())
        q.grad = p.grad.detach().clone()
        out.append(q)
    return out


def grads(params: list[nn.Parameter]) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in params]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.double().reshape(-1), b.double().reshape(-1)
    return float(a64 @ b64 / (a64.norm() * b64.norm()))


def assert_same_direction(
    before: list[torch.Tensor], after: list[torch.Tensor], *, globally: bool = True
) -> None:
    for b, a in zip(before, after, strict=True):
        if float(b.double().norm()) > 0:
            assert cosine(b, a) == pytest.approx(1.0, abs=1e-5)
    if not globally:
        return
    flat_b = torch.cat([t.reshape(-1) for t in before])
    flat_a = torch.cat([t.reshape(-1) for t in after])
    assert cosine(flat_b, flat_a) == pytest.approx(1.0, abs=1e-5)


max_norms = st.floats(-2, 2).map(lambda e: 10.0**e)


# --------------------------------------------------------------------------------------
# GlobalNorm, Norm, Value, AGC, NoClip
# --------------------------------------------------------------------------------------


@PROPERTY
@given(params=param_sets(), c=max_norms, norm_type=st.sampled_from([2.0, 1.0, 3.0, math.inf]))
def test_global_norm_matches_torch_and_invariants(
    params: list[nn.Parameter], c: float, norm_type: float
) -> None:
    before = grads(params)
    total = total_norm64(before, norm_type)
    torch_params = clone(params)
    torch.nn.utils.clip_grad_norm_(torch_params, c, norm_type=norm_type)

    returned = gclip.GlobalNorm(c, norm_type=norm_type).clip_(params)
    after = grads(params)

    assert float(returned) == pytest.approx(total_norm64(before), rel=1e-5)  # always L2
    for mine, theirs in zip(after, grads(torch_params), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=0)
    new_total = total_norm64(after, norm_type)
    if total > c * 1.001:
        assert new_total == pytest.approx(c * total / (total + 1e-6), rel=1e-5)
    elif total < c * 0.999:
        for b, a in zip(before, after, strict=True):
            assert torch.equal(a, b)
    assert new_total <= c * (1 + 1e-5)
    assert_same_direction(before, after)

    # Clipping again changes nothing more, up to torch's 1e-6 in c / (norm + 1e-6): a norm
    # just clipped to c * n / (n + 1e-6) is scaled once more by at most c / (c + 1e-6).
    again = gclip.GlobalNorm(c, norm_type=norm_type).clip_(params)
    assert float(again) == pytest.approx(total_norm64(after), rel=1e-5)
    for a, a2 in zip(after, grads(params), strict=True):
        torch.testing.assert_close(a2, a, rtol=1e-5 + 1e-6 / c, atol=0)


@PROPERTY
@given(params=param_sets(), c=max_norms)
def test_norm_clips_each_tensor_separately(params: list[nn.Parameter], c: float) -> None:
    before = grads(params)
    returned = gclip.Norm(c).clip_(params)
    after = grads(params)
    assert float(returned) == pytest.approx(total_norm64(before), rel=1e-5)
    for b, a in zip(before, after, strict=True):
        expected = b.clone()
        probe = nn.Parameter(torch.zeros_like(b))
        probe.grad = expected
        torch.nn.utils.clip_grad_norm_([probe], c)
        torch.testing.assert_close(a, probe.grad, rtol=1e-5, atol=0)
        assert total_norm64([a]) <= c * (1 + 1e-5)
        if total_norm64([b]) < c * 0.999:
            assert torch.equal(a, b)
    assert_same_direction(before, after, globally=False)  # per-tensor scales differ
    gclip.Norm(c).clip_(params)  # again: nothing more, up to c / (c + 1e-6) as above
    for a, a2 in zip(after, grads(params), strict=True):
        torch.testing.assert_close(a2, a, rtol=1e-5 + 1e-6 / c, atol=0)


@PROPERTY
@given(params=param_sets(), c=max_norms)
def test_value_clamps_every_entry(params: list[nn.Parameter], c: float) -> None:
    before = grads(params)
    torch_params = clone(params)
    torch.nn.utils.clip_grad_value_(torch_params, c)
    returned = gclip.Value(c).clip_(params)
    assert float(returned) == pytest.approx(total_norm64(before), rel=1e-5)
    for a, b, t in zip(grads(params), before, grads(torch_params), strict=True):
        assert torch.equal(a, t)
        assert float(a.abs().max()) <= float(torch.tensor(c))  # c rounded to float32
        inside = b.abs() <= c
        assert torch.equal(a[inside], b[inside])


def agc_reference(
    params: list[nn.Parameter], clipping: float, eps: float
) -> tuple[list[torch.Tensor], list[list[tuple[float, float]]]]:
    """Float64 AGC; also returns (grad unit norm, max unit norm) per unit for each tensor."""
    out, units_info = [], []
    for p in params:
        w = p.detach().double()
        g = p.grad.detach().double()
        if g.ndim <= 1:
            w_units, g_units = w.reshape(1, -1), g.reshape(1, -1)
        else:
            w_units, g_units = w.reshape(w.shape[0], -1), g.reshape(g.shape[0], -1)
        w_norm = w_units.norm(dim=1).clamp(min=eps)
        g_norm = g_units.norm(dim=1)
        max_norm = w_norm * clipping
        scale = torch.where(g_norm > max_norm, max_norm / g_norm.clamp(min=1e-6), 1.0)
        out.append((g_units * scale[:, None]).reshape(g.shape))
        units_info.append(list(zip(g_norm.tolist(), max_norm.tolist(), strict=True)))
    return out, units_info


@PROPERTY
@given(
    params=param_sets(),
    clipping=st.floats(-3, 0).map(lambda e: 10.0**e),
    eps=st.sampled_from([1e-3, 1e-2, 1e-4]),
)
def test_agc_bounds_unit_norms(params: list[nn.Parameter], clipping: float, eps: float) -> None:
    before = grads(params)
    expected, units_info = agc_reference(params, clipping, eps)
    returned = gclip.AGC(clipping=clipping, eps=eps).clip_(params)
    after = grads(params)
    assert float(returned) == pytest.approx(total_norm64(before), rel=1e-5)
    for a, b, e, info in zip(after, before, expected, units_info, strict=True):
        torch.testing.assert_close(a.double(), e, rtol=1e-5, atol=1e-12)
        a_units = a.reshape(1, -1) if a.ndim <= 1 else a.reshape(a.shape[0], -1)
        b_units = b.reshape(1, -1) if b.ndim <= 1 else b.reshape(b.shape[0], -1)
        for k, (g_norm, max_norm) in enumerate(info):
            assert float(a_units[k].double().norm()) <= max_norm * (1 + 1e-5)
            if g_norm < max_norm * (1 - 1e-4):
                assert torch.equal(a_units[k], b_units[k]), f"unit {k} should be untouched"
            if float(b_units[k].double().norm()) > 0:
                assert cosine(a_units[k], b_units[k]) == pytest.approx(1.0, abs=1e-5)


@PROPERTY
@given(params=param_sets())
def test_no_clip_changes_nothing(params: list[nn.Parameter]) -> None:
    before = grads(params)
    returned = gclip.NoClip().clip_(params)
    assert float(returned) == pytest.approx(total_norm64(before), rel=1e-5)
    for a, b in zip(grads(params), before, strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------
# AutoClip and ZClip on recorded norm sequences
# --------------------------------------------------------------------------------------


def feed(
    policy: Any, norms: list[float], seed: int, start: int = 0
) -> tuple[list[float], list[float], list[float]]:
    """Feed gradients with the given total norms (two tensors, a random direction each step);
    the first ``start`` steps only advance the random directions and are not fed.

    Returns the actual float64 norms fed, the policy's last_threshold after each call and the
    norm of the gradient after clipping."""
    gen = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.zeros(4, 5)), nn.Parameter(torch.zeros(7))]
    fed, thresholds, clipped = [], [], []
    for i, target in enumerate(norms):
        direction = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
        if i < start:
            continue
        scale = target / total_norm64(direction)
        for p, d in zip(params, direction, strict=True):
            p.grad = (d * scale).float()
        fed.append(total_norm64(grads(params)))
        returned = policy.clip_(params)
        assert float(returned) == pytest.approx(fed[-1], rel=1e-5)
        thr = policy.last_threshold
        assert isinstance(thr, torch.Tensor) and thr.ndim == 0
        thresholds.append(float(thr))
        clipped.append(total_norm64(grads(params)))
    return fed, thresholds, clipped


def autoclip_reference(norms: list[float], percentile: float, history: int | None) -> list[float]:
    out, seen = [], []
    for n in norms:
        seen.append(n)
        window = seen if history is None else seen[-history:]
        out.append(float(np.percentile(np.asarray(window), percentile)))
    return out


def zclip_reference(
    norms: list[float],
    *,
    alpha: float,
    z_thresh: float,
    warmup: int,
    max_norm: float | None,
    eps: float,
) -> tuple[list[float], float]:
    """Thresholds per step and the smallest relative distance of any z-score to z_thresh
    (used to discard sequences where float32 rounding could flip the clip decision)."""
    out: list[float] = []
    collected: list[float] = []
    mean = var = None
    closest = math.inf
    for n in norms:
        if mean is None or var is None:
            collected.append(n)
            thr = math.inf
            if len(collected) == warmup:
                mean = float(np.mean(collected))
                var = float(np.var(collected))
        else:
            std = math.sqrt(var)
            z = (n - mean) / (std + eps)
            closest = min(closest, abs(z - z_thresh) / z_thresh)
            if z > z_thresh:
                thr = mean + (z_thresh**2 / z) * std
                eff = thr
            else:
                thr = math.inf
                eff = n
            mean = alpha * mean + (1 - alpha) * eff
            var = alpha * var + (1 - alpha) * (eff - mean) ** 2
        if max_norm is not None:
            thr = min(thr, max_norm)
        out.append(thr)
    return out, closest


def assert_thresholds(
    fed: list[float],
    got: list[float],
    expected: list[float],
    clipped: list[float],
) -> None:
    for i, (n, g, e, c) in enumerate(zip(fed, got, expected, clipped, strict=True)):
        if math.isinf(e):
            assert math.isinf(g) and g > 0, f"step {i}: threshold {g}, expected inf"
        else:
            assert g == pytest.approx(e, rel=1e-4), f"step {i}: threshold {g}, expected {e}"
        assert c == pytest.approx(n * min(1.0, e / (n + 1e-6)), rel=1e-4), f"step {i}"


@st.composite
def norm_sequences(draw: st.DrawFn, max_len: int = 40) -> list[float]:
    """Log-normal norms with occasional spikes (and dips), generated from a drawn seed."""
    length = draw(st.integers(1, max_len))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    base = 10.0 ** draw(st.floats(-1, 1))
    spread = draw(st.floats(0.05, 0.5))
    norms = base * np.exp(rng.normal(0.0, spread, length))
    spikes = rng.random(length) < draw(st.floats(0, 0.3))
    norms[spikes] *= rng.uniform(3, 30, int(spikes.sum()))
    return [float(x) for x in norms]


@PROPERTY
@given(
    norms=norm_sequences(),
    percentile=st.floats(0.5, 100),
    history=st.one_of(st.none(), st.integers(1, 12)),
    seed=st.integers(0, 1000),
)
def test_autoclip_threshold_matches_percentile(
    norms: list[float], percentile: float, history: int | None, seed: int
) -> None:
    policy = gclip.AutoClip(percentile=percentile, history=history)
    fed, got, clipped = feed(policy, norms, seed)
    expected = autoclip_reference(fed, percentile, history)
    assert_thresholds(fed, got, expected, clipped)


@PROPERTY
@given(
    norms=norm_sequences(60),
    alpha=st.floats(0.5, 0.99),
    z_thresh=st.floats(0.5, 3.0),
    warmup=st.integers(1, 10),
    max_norm=st.one_of(st.none(), st.floats(0.05, 20)),
    seed=st.integers(0, 1000),
)
def test_zclip_threshold_matches_definition(
    norms: list[float],
    alpha: float,
    z_thresh: float,
    warmup: int,
    max_norm: float | None,
    seed: int,
) -> None:
    policy = gclip.ZClip(alpha=alpha, z_thresh=z_thresh, warmup=warmup, max_norm=max_norm)
    fed, got, clipped = feed(policy, norms, seed)
    expected, closest = zclip_reference(
        fed, alpha=alpha, z_thresh=z_thresh, warmup=warmup, max_norm=max_norm, eps=1e-6
    )
    assume(closest > 1e-3)  # float32 rounding may legitimately flip a borderline decision
    assert_thresholds(fed, got, expected, clipped)


def test_zclip_clips_a_spike_after_warmup() -> None:
    """A hand-checked example: warm-up on [1, 2, 3], then a spike of 10."""
    policy = gclip.ZClip(alpha=0.9, z_thresh=2.0, warmup=3)
    fed, got, clipped = feed(policy, [1.0, 2.0, 3.0, 10.0], seed=0)
    assert all(math.isinf(t) for t in got[:3])
    mean, std = 2.0, math.sqrt(2.0 / 3.0)
    z = (fed[3] - mean) / (std + 1e-6)
    assert got[3] == pytest.approx(mean + 4.0 / z * std, rel=1e-4)
    assert clipped[3] == pytest.approx(got[3] * fed[3] / (fed[3] + 1e-6), rel=1e-4)


@pytest.mark.parametrize(
    "make",
    [
        lambda: gclip.AutoClip(percentile=25, history=6),
        lambda: gclip.ZClip(alpha=0.8, z_thresh=1.0, warmup=4),
        lambda: gclip.ZClip(alpha=0.8, z_thresh=1.0, warmup=10, max_norm=2.0),
    ],
    ids=["auto", "zclip", "zclip_warmup"],
)
@pytest.mark.parametrize("via_torch_save", [False, True])
def test_stateful_policy_state_dict_round_trip(
    make: Callable[[], Any], via_torch_save: bool
) -> None:
    rng = np.random.default_rng(0)
    norms = [float(x) for x in np.exp(rng.normal(0, 0.5, 30))]
    norms[12] *= 20
    norms[20] *= 20
    full = make()
    _, expected, expected_clipped = feed(full, norms, seed=3)

    first = make()
    feed(first, norms[:8], seed=3)
    sd = first.state_dict()
    sd = save_load(sd) if via_torch_save else sd
    second = make()
    second.load_state_dict(sd)
    _, got, got_clipped = feed(second, norms, seed=3, start=8)
    assert got == expected[8:]
    assert got_clipped == expected_clipped[8:]
    assert any(not math.isinf(t) for t in expected[8:])
    # the loaded state matters: a fresh policy fed the same steps behaves differently
    _, fresh, _ = feed(make(), norms, seed=3, start=8)
    assert fresh != expected[8:]


# --------------------------------------------------------------------------------------
# Spec strings
# --------------------------------------------------------------------------------------

SPECS: list[tuple[str, type, Callable[[], Any]]] = [
    ("none", gclip.NoClip, lambda: gclip.NoClip()),
    ("value:0.5", gclip.Value, lambda: gclip.Value(0.5)),
    ("norm:1", gclip.Norm, lambda: gclip.Norm(1.0)),
    ("global_norm:1", gclip.GlobalNorm, lambda: gclip.GlobalNorm(1.0)),
    (
        "global_norm:1:norm_type=inf",
        gclip.GlobalNorm,
        lambda: gclip.GlobalNorm(1.0, norm_type=math.inf),
    ),
    ("agc:0.01", gclip.AGC, lambda: gclip.AGC(0.01)),
    ("agc:0.01:eps=1e-3", gclip.AGC, lambda: gclip.AGC(clipping=0.01, eps=1e-3)),
    ("auto:10", gclip.AutoClip, lambda: gclip.AutoClip(10)),
    ("auto:10:history=100", gclip.AutoClip, lambda: gclip.AutoClip(10, history=100)),
    ("zclip:2.5", gclip.ZClip, lambda: gclip.ZClip(z_thresh=2.5)),
    (
        "zclip:2.5:alpha=0.9:warmup=5:max_norm=1",
        gclip.ZClip,
        lambda: gclip.ZClip(alpha=0.9, z_thresh=2.5, warmup=5, max_norm=1.0),
    ),
]

# one neighbour per spec that differs in exactly one value: == must tell them apart
DIFFERENT = {
    "value:0.5": lambda: gclip.Value(0.25),
    "norm:1": lambda: gclip.Norm(2.0),
    "global_norm:1": lambda: gclip.GlobalNorm(1.0, norm_type=1.0),
    "global_norm:1:norm_type=inf": lambda: gclip.GlobalNorm(1.0),
    "agc:0.01": lambda: gclip.AGC(0.02),
    "agc:0.01:eps=1e-3": lambda: gclip.AGC(0.01, eps=1e-2),
    "auto:10": lambda: gclip.AutoClip(20),
    "auto:10:history=100": lambda: gclip.AutoClip(10),
    "zclip:2.5": lambda: gclip.ZClip(z_thresh=3.0),
    "zclip:2.5:alpha=0.9:warmup=5:max_norm=1": lambda: gclip.ZClip(
        alpha=0.9, z_thresh=2.5, warmup=5
    ),
}


def _behaviour(policy: Any, seed: int = 0) -> list[torch.Tensor]:
    """Clipped gradients and thresholds over a short spiky sequence."""
    norms = [1.0, 1.2, 0.8, 1.1, 0.9, 1.0, 8.0, 1.0, 0.5, 12.0, 1.0, 0.7] * 2
    gen = torch.Generator().manual_seed(seed)
    params = [
        nn.Parameter(torch.randn(3, 4, generator=gen)),
        nn.Parameter(torch.randn(4, generator=gen)),
    ]
    out = []
    for n in norms:
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) * n / 3.0
        out.append(policy.clip_(params).detach().clone())
        out.extend(p.grad.detach().clone() for p in params)
    return out


@pytest.mark.parametrize(("spec", "cls", "make"), SPECS, ids=[s[0] for s in SPECS])
def test_parse_specs(spec: str, cls: type, make: Callable[[], Any]) -> None:
    parsed = gclip.parse(spec)
    expected = make()
    assert type(parsed) is cls
    assert parsed == expected
    assert gclip.parse(parsed.spec) == parsed
    assert gclip.parse(expected.spec) == expected
    if spec in DIFFERENT:
        assert parsed != DIFFERENT[spec]()
    for a, b in zip(_behaviour(parsed), _behaviour(expected), strict=True):
        assert torch.equal(a, b)


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["value", "norm", "global_norm", "agc", "auto", "zclip"]),
    x=st.floats(1e-4, 1e3),
    y=st.floats(1e-4, 1e-1),
    k=st.integers(1, 500),
    flag=st.booleans(),
)
def test_spec_round_trips_for_random_values(
    kind: str, x: float, y: float, k: int, flag: bool
) -> None:
    policy: Any
    if kind == "value":
        policy = gclip.Value(x)
    elif kind == "norm":
        policy = gclip.Norm(x, norm_type=math.inf if flag else 2.0)
    elif kind == "global_norm":
        policy = gclip.GlobalNorm(x, norm_type=math.inf if flag else 1.0 + y)
    elif kind == "agc":
        policy = gclip.AGC(clipping=y, eps=x * 1e-3)
    elif kind == "auto":
        policy = gclip.AutoClip(percentile=min(x, 100.0), history=k if flag else None)
    else:
        policy = gclip.ZClip(
            alpha=1.0 - y, z_thresh=x, warmup=k, max_norm=x * 2 if flag else None, eps=y * 1e-3
        )
    again = gclip.parse(policy.spec)
    assert type(again) is type(policy)
    assert again == policy
    assert again.spec == policy.spec


@pytest.mark.parametrize("spec", ["bogus:1", "clipper", "l2:1", "globalnorm:1"])
def test_unknown_spec_lists_valid_forms(spec: str) -> None:
    with pytest.raises(ValueError) as info:
        gclip.parse(spec)
    message = str(info.value)
    for form in ("none", "value", "global_norm", "agc", "auto", "zclip"):
        assert form in message, f"{form!r} missing from {message!r}"


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "value",
        "value:abc",
        "global_norm",
        "global_norm:1:norm_type=abc",
        "zclip:2.5:beta=3",
        "auto:10:history=ten",
        "norm:1:2",
    ],
)
def test_malformed_spec_raises(spec: str) -> None:
    with pytest.raises(ValueError):
        gclip.parse(spec)


def test_each_policy_says_its_threshold_so_no_caller_tests_its_type() -> None:
    """``threshold`` is what the records and plots show (compare, the monitor): the global L2
    norm clipped to, for global_norm its ``c``; for AutoClip and ZClip the last one used
    (None before the first step, though ``has_threshold`` says one will come); None for the
    per-tensor and unit-wise policies and for a global norm of another order."""
    from gradguard import optim as gg_optim
    from gradguard.clip import parse

    p = torch.nn.Parameter(torch.ones(4))
    expected_none = ["none", "value:0.1", "norm:1", "agc:0.05", "global_norm:1:norm_type=inf"]
    for spec in expected_none:
        policy = parse(spec)
        assert policy.threshold is None and not policy.has_threshold, spec
    assert parse("global_norm:2.5").threshold == 2.5 and parse("global_norm:2.5").has_threshold
    for spec in ("auto:10", "zclip:2.5"):
        policy = parse(spec)
        assert policy.threshold is None and policy.has_threshold, spec
        opt = gg_optim.SGD([p], lr=0.1, clip=policy)
        p.grad = torch.full((4,), 3.0)
        opt.step()
        assert policy.threshold is policy.last_threshold is not None, spec
        assert not torch.isnan(torch.as_tensor(policy.threshold)), spec  # ZClip: inf in warm-up


# --------------------------------------------------------------------------------------
# The registry: what each policy declares, so that no caller tests its type
# --------------------------------------------------------------------------------------

# VALID_FORMS as it was written by hand before the grammar came from the registry: the CLI's
# messages and the tests quote it, so the generated string must not change.
OLD_VALID_FORMS = (
    '"none", "value:C", "norm:C", "global_norm:C[:norm_type=P]", "agc:CLIPPING[:eps=E]", '
    '"auto:PERCENTILE[:history=N]", "zclip:Z[:alpha=A][:warmup=N][:max_norm=M][:eps=E]"'
)


def test_valid_forms_generated_from_the_registry_are_the_old_string() -> None:
    from gradguard.clip._policies import POLICIES

    assert gclip.VALID_FORMS == OLD_VALID_FORMS
    generated = ", ".join(f'"{c.spec_usage}"' for c in POLICIES.values())
    assert generated == gclip.VALID_FORMS


def test_every_registered_policy_is_in_the_spec_table() -> None:
    """SPECS is the table the parse, equality and behaviour tests run over: a new policy (a
    class that declares its spec form) must add a row there."""
    from gradguard.clip._policies import POLICIES

    assert POLICIES, "no policy registered"
    assert {cls for _, cls, _ in SPECS} == set(POLICIES.values())
    assert {spec.split(":")[0] for spec, _, _ in SPECS} == set(POLICIES)
    for name, cls in POLICIES.items():
        assert cls.name == name
        assert f'"{cls.spec_usage}"' in gclip.VALID_FORMS
        assert getattr(gclip, cls.__name__) is cls, f"{cls.__name__} not in gradguard.clip"


def test_a_policy_form_that_does_not_fit_its_init_is_refused() -> None:
    from gradguard.clip._policies import POLICIES

    before = dict(POLICIES)
    with pytest.raises(TypeError, match="is taken by GlobalNorm"):
        type("Twin", (gclip.GlobalNorm,), {"name": "global_norm", "spec_usage": "x:C"})
    with pytest.raises(TypeError, match=r"\['limit'\] are not arguments"):
        type("Typo", (gclip.GlobalNorm,), {"name": "typo", "spec_usage": "typo:C",
                                           "spec_first": "limit"})
    with pytest.raises(TypeError, match=r"\['eps'\] are not arguments"):
        type("Ints", (gclip.GlobalNorm,), {"name": "ints", "spec_usage": "ints:C",
                                           "spec_ints": frozenset({"eps"})})
    with pytest.raises(TypeError, match="non-empty lower-case"):
        type("Nameless", (gclip.GlobalNorm,), {"name": "", "spec_usage": ":C"})
    # A subclass that declares no form of its own is no part of the grammar.
    type("Quiet", (gclip.GlobalNorm,), {})
    assert before == POLICIES


class _Recording(gclip.GradStats):
    """GradStats that notes which statistics a policy asks for."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.asked_norms: set[float] = set()
        self.asked_units = False
        self.asked_param_norms = False

    def norms(self, norm_type: float = 2.0) -> list[torch.Tensor]:
        self.asked_norms.add(float(norm_type))
        return super().norms(norm_type)

    def unit_norms(self, i: int) -> torch.Tensor:
        self.asked_units = True
        return super().unit_norms(i)

    def param_unit_norms(self, i: int) -> torch.Tensor:
        self.asked_param_norms = True
        return super().param_unit_norms(i)


@pytest.mark.parametrize(("spec", "cls", "make"), SPECS, ids=[s[0] for s in SPECS])
def test_each_policy_declares_exactly_the_statistics_it_reads(
    spec: str, cls: type, make: Callable[[], Any]
) -> None:
    """``needs`` is how the optimizer knows what to measure in backward and what to all-reduce
    together (no isinstance): it must name what decide() reads, and no more."""
    gen = torch.Generator().manual_seed(0)
    params = [nn.Parameter(torch.randn(3, 4, generator=gen)), nn.Parameter(torch.randn(4))]
    grads = [torch.randn(p.shape, generator=gen) * 5 for p in params]
    stats = _Recording(params, grads)
    policy = make()
    for _ in range(3):  # stateful ones: past the first step too
        policy.decide(stats, [0, 1], None)
    needs = policy.needs
    assert needs == gclip.StatNeeds(frozenset(stats.asked_norms), stats.asked_units,
                                    stats.asked_param_norms), spec


def test_hooks_measure_what_a_policy_declares() -> None:
    """The optimizer's backward hooks follow ``needs``: a policy of no known type that asks
    for 3-norms and unit-wise norms gets them measured."""
    import gradguard

    class ThreeNorm(gclip.ClipPolicy):
        @property
        def needs(self) -> gclip.StatNeeds:
            return gclip.StatNeeds(frozenset({3.0}), units=True)

        def decide(self, stats: gclip.GradStats, idx: list[int],
                   skip: torch.Tensor | None) -> gclip.ClipDecision:
            return gclip.NoClip().decide(stats, idx, skip)

    w = nn.Parameter(torch.ones(3))
    hooks = gradguard.SGD([w], lr=0.1, clip=ThreeNorm())._hooks
    assert hooks is not None and hooks.norm_types == (2.0, 3.0) and hooks.units
    groups = [{"params": [w], "clip": gclip.Value(1.0)}]
    hooks = gradguard.SGD(groups, lr=0.1, clip="agc:0.01")._hooks
    assert hooks is not None and hooks.norm_types == (2.0, math.inf) and hooks.units


def test_stat_needs_merge() -> None:
    merged = gclip.StatNeeds.merge(p.needs for _, _, make in SPECS for p in [make()])
    assert merged == gclip.StatNeeds(frozenset({2.0, math.inf}), True, True)
    assert gclip.StatNeeds.merge([]) == gclip.StatNeeds()


@pytest.mark.parametrize(
    "make",
    [
        lambda: gclip.AutoClip(percentile=25, history=5),
        lambda: gclip.AutoClip(percentile=50),
        lambda: gclip.ZClip(alpha=0.8, z_thresh=1.0, warmup=3),
    ],
    ids=["auto_history", "auto", "zclip"],
)
@pytest.mark.parametrize("steps_before", [0, 6])
def test_restored_snapshot_decides_exactly_as_before(
    make: Callable[[], Any], steps_before: int
) -> None:
    params = [nn.Parameter(torch.zeros(4, 5)), nn.Parameter(torch.zeros(7))]

    def step_grads(k: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(100 + k)
        scale = 20.0 if k % 5 == 3 else 1.0  # a spike now and then
        return [torch.randn(p.shape, generator=g) * scale for p in params]

    def decide(policy: Any, k: int, skip: bool = False) -> list[torch.Tensor]:
        d = policy.decide(gclip.GradStats(params, step_grads(k)), [0, 1],
                          torch.tensor(skip))
        return [d.min_scale, d.binding, *[s for s in d.scales if s is not None],
                torch.as_tensor(policy.last_threshold)]

    policy = make()
    for k in range(steps_before):
        decide(policy, k, skip=k == 2)  # a skipped step among them
    snap = policy.snapshot()
    first = [decide(policy, k) for k in range(10, 22)]
    for _ in range(2):  # one snapshot restores more than once
        policy.restore(snap)
        again = [decide(policy, k) for k in range(10, 22)]
        for a, b in zip(first, again, strict=True):
            for x, y in zip(a, b, strict=True):
                assert torch.equal(x, y)
    # the restore matters: going on from where the policy is now decides differently
    later = [decide(policy, k) for k in range(10, 22)]
    assert any(not torch.equal(x, y) for a, b in zip(first, later, strict=True)
               for x, y in zip(a, b, strict=True))
    assert policy.spec == make().spec


# --------------------------------------------------------------------------------------
# unit-wise norms measured all at once (small models: one call per row length, not per tensor)
# --------------------------------------------------------------------------------------

_SHAPES = st.lists(st.lists(st.integers(0, 4), max_size=3).map(tuple), min_size=1, max_size=6)


@given(shapes=_SHAPES, seed=st.integers(0, 2**16))
@settings(max_examples=60, deadline=None)
def test_units_together_are_the_per_tensor_unit_norms(shapes: list[tuple[int, ...]],
                                                      seed: int) -> None:
    """0-d tensors, vectors, matrices and up, empty ones included: the vectors of
    GradStats.units_together are, tensor by tensor, unitwise_norm of each gradient and
    parameter."""
    from gradguard.clip._stats import GradStats, unitwise_norm

    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen) for s in shapes]
    grads = [torch.randn(s, generator=gen) * 10 for s in shapes]
    together = GradStats(params, grads).units_together(list(range(len(shapes))))
    expected_counts = [1 if len(s) <= 1 else s[0] for s in shapes]
    if sum(expected_counts) == 0:
        assert together is None
        return
    assert together is not None
    g_all, p_all, counts, unit_shapes = together
    assert counts == expected_counts
    for i, (g_part, p_part) in enumerate(zip(g_all.split(counts), p_all.split(counts),
                                             strict=True)):
        torch.testing.assert_close(g_part.view(unit_shapes[i]), unitwise_norm(grads[i]))
        torch.testing.assert_close(p_part.view(unit_shapes[i]), unitwise_norm(params[i]))


def test_agc_decides_the_same_all_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """AGC's decision from the norms measured all at once equals the one measured tensor by
    tensor (scales, smallest scale, whether it bound), for strided tensors too."""
    from gradguard.clip._stats import GradStats

    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(6, 5, generator=gen), torch.randn(5, generator=gen),
              torch.randn(4, 6, generator=gen).t(), torch.randn(3, 2, 2, generator=gen),
              torch.randn((), generator=gen)]
    grads = [torch.randn(p.shape, generator=gen) * 5 for p in params]
    policy = gclip.AGC(0.05)
    idx = list(range(len(params)))
    fast = policy.decide(GradStats(params, grads), idx, None)
    monkeypatch.setattr(GradStats, "units_together", lambda self, idx: None)
    slow = policy.decide(GradStats(params, grads), idx, None)
    assert bool(fast.binding) and bool(slow.binding)
    torch.testing.assert_close(fast.min_scale, slow.min_scale)
    for a, b in zip(fast.scales, slow.scales, strict=True):
        assert a is not None and b is not None
        assert a.shape == b.shape
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------------------
# norms of gradients laid end to end in flat buffers (a param group stepped flat)
# --------------------------------------------------------------------------------------


def _laid(a: int, b: int, grads: list[torch.Tensor], params: list[torch.Tensor]) -> Any:
    """Gradients and parameters a..b-1 laid end to end, as a flat group lays them."""
    from gradguard.clip._stats import FlatLayout, Laid

    def cat(ts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in ts])

    return Laid(a, b, cat(grads[a:b]), cat(params[a:b]),
                FlatLayout([g.shape for g in grads[a:b]], torch.device("cpu")))


@given(shapes=_SHAPES, cut=st.integers(0, 6), seed=st.integers(0, 2**16),
       norm_type=st.sampled_from([1.0, 2.0, math.inf]))
@settings(max_examples=60, deadline=None)
def test_laid_total_is_the_per_tensor_total(shapes: list[tuple[int, ...]], cut: int, seed: int,
                                            norm_type: float) -> None:
    """The total norm of whole runs of gradients laid in flat buffers (one reduction per
    buffer) equals the one combined from per-tensor norms, for every run, for both runs
    together, and for index lists that are not whole runs (which take the per-tensor route)."""
    from gradguard.clip._stats import GradStats

    # (torch has no inf-norm of an empty tensor, per tensor or in one buffer)
    assume(norm_type != math.inf or all(math.prod(s) for s in shapes))
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(s, generator=gen) * 10 for s in shapes]
    params = [torch.zeros(s) for s in shapes]
    cut = min(cut, len(shapes))
    runs = [(0, cut), (cut, len(shapes))]
    laid = [_laid(a, b, grads, params) for a, b in runs if b > a]
    queries = [list(range(a, b)) for a, b in runs if b > a] + [list(range(len(shapes)))]
    if len(shapes) > 1:
        queries += [list(range(1, len(shapes))), [len(shapes) - 1, 0]]
    for idx in queries:
        fast = GradStats(params, grads, laid=laid).total_norm(idx, norm_type)
        slow = GradStats(params, grads).total_norm(idx, norm_type)
        assert fast.dtype == slow.dtype
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)


def test_laid_total_takes_one_reduction_per_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole runs are measured over their buffers, never tensor by tensor; with GradScaler's
    multiplier (float32 gradients are unscaled tensor by tensor first) they are not."""
    from gradguard.clip import _stats

    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(4, 3, generator=gen), torch.randn(3, generator=gen)]
    params = [torch.zeros_like(g) for g in grads]
    laid = [_laid(0, 2, grads, params)]
    calls: list[int] = []
    measure = _stats.measure
    monkeypatch.setattr(_stats, "measure", lambda ts, n: calls.append(len(ts)) or measure(ts, n))
    total = _stats.GradStats(params, grads, laid=laid).total_norm([0, 1])
    torch.testing.assert_close(total, torch.linalg.vector_norm(laid[0].grads))
    assert calls == []
    scaled = _stats.GradStats(params, grads, multiplier=torch.tensor(0.5), laid=laid)
    torch.testing.assert_close(scaled.total_norm([0, 1]), total * 0.5)
    assert calls  # per tensor


@given(shapes=_SHAPES, cut=st.integers(0, 6), seed=st.integers(0, 2**16))
@settings(max_examples=60, deadline=None)
def test_laid_unit_norms_are_the_per_tensor_unit_norms(shapes: list[tuple[int, ...]], cut: int,
                                                      seed: int) -> None:
    """Unit-wise norms of gradients and parameters laid in flat buffers (a few row-norm calls
    per run of units of one length) are, tensor by tensor, unitwise_norm of each; and AGC's
    decision from them is the one measured tensor by tensor."""
    from gradguard.clip._stats import GradStats, unitwise_norm

    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen) for s in shapes]
    grads = [torch.randn(s, generator=gen) * 10 for s in shapes]
    cut = min(cut, len(shapes))
    laid = [_laid(a, b, grads, params) for a, b in ((0, cut), (cut, len(shapes))) if b > a]
    idx = list(range(len(shapes)))
    stats = GradStats(params, grads, laid=laid)
    together = stats.units_together(idx)
    if sum(1 if len(s) <= 1 else s[0] for s in shapes) == 0:
        assert together is None
        return
    assert together is not None
    g_all, p_all, counts, unit_shapes = together
    for i, (g_part, p_part) in enumerate(zip(g_all.split(counts), p_all.split(counts),
                                             strict=True)):
        torch.testing.assert_close(g_part.view(unit_shapes[i]), unitwise_norm(grads[i]))
        torch.testing.assert_close(p_part.view(unit_shapes[i]), unitwise_norm(params[i]))
    fast = gclip.AGC(0.05).decide(stats, idx, None)
    slow = gclip.AGC(0.05).decide(GradStats(params, grads), idx, None)
    torch.testing.assert_close(fast.min_scale, slow.min_scale)
    assert bool(fast.binding) == bool(slow.binding)
    for a, b in zip(fast.scales, slow.scales, strict=True):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b)
