"""The non-finite guard (skip / raise / off, consecutive-skip error, named parameters),
gradguard.guard() around torch optimizers, and the no-host-read guarantee of step()."""

from __future__ import annotations

import copy
import math
from collections import Counter
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import gradguard
from helpers import (
    Batch,
    assert_params_equal,
    assert_tree_equal,
    clone_params,
    compute_grads,
    count_host_reads,
    make_batches,
    make_model,
    poison_grad,
    save_load,
    snapshot,
)
from optim_table import TABLE, OptimizerEntry, entry_params

GUARD_STEPS = 16
STATEFUL_CLIP = "zclip:1.5:warmup=3"


def _all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def _poisoned_batch(batch: Batch, value: float, flat_index: int) -> Batch:
    x, y = batch
    x = x.clone()
    x.view(-1)[flat_index % x.numel()] = value
    return x, y


def _assert_step_changed_nothing(
    opt: torch.optim.Optimizer,
    model: nn.Module,
    params_before: list[torch.Tensor],
    sd_before: dict[str, Any],
    skipped_before: int,
) -> None:
    for i, (p, before) in enumerate(zip(model.parameters(), params_before, strict=True)):
        assert torch.equal(p, before), f"param {i} changed by a skipped step"
    sd_after = opt.state_dict()
    # State that existed is bitwise unchanged. A skipped *first* step may create a parameter's
    # state (the library cannot know the step is bad without a host read), but only at its
    # initial values, exactly what the first applied step would start from.
    state_before, state_after = sd_before["state"], sd_after["state"]
    assert set(state_before) <= set(state_after)
    for key, value in state_after.items():
        if key in state_before:
            assert_tree_equal(value, state_before[key], f"state/{key}")
        else:
            _assert_initial_state(opt, value, f"state/{key}")
    assert_tree_equal(sd_after["param_groups"], sd_before["param_groups"], "param_groups")
    clip_before, clip_after = sd_before["gradguard"]["clip"], sd_after["gradguard"]["clip"]
    if clip_before:
        assert_tree_equal(clip_after, clip_before, "clip")
    elif clip_after:  # a policy's state created by the skipped step has counted nothing
        assert int(clip_after["count"]) == 0
    assert int(opt.skipped_steps) == skipped_before + 1
    assert int(sd_after["gradguard"]["skipped_steps"]) == skipped_before + 1
    assert bool(opt.last_step.skipped)
    assert not bool(opt.last_step.clipped)


def _assert_initial_state(opt: torch.optim.Optimizer, state: dict[str, Any], path: str) -> None:
    init = opt.param_groups[0].get("initial_accumulator_value", 0.0)
    expected = {"step": 0.0, "mu_product": 1.0, "sum": float(init)}
    for name, t in state.items():
        want = expected.get(name, 0.0)
        assert bool((t == want).all()), f"{path}/{name}: not at its initial value {want}"


# --------------------------------------------------------------------------------------
# 6. A non-finite step is a no-op; later steps equal a run that never saw the batch
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", [None, STATEFUL_CLIP, "auto:10:history=8"])
@pytest.mark.parametrize("entry", entry_params())
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bad_step=st.integers(0, GUARD_STEPS - 2),
    value=st.sampled_from([math.nan, math.inf, -math.inf]),
    where=st.sampled_from(["element", "data"]),
    param_index=st.integers(0, 3),
    flat_index=st.integers(0, 10_000),
)
def test_nonfinite_step_is_skipped_exactly(
    entry: OptimizerEntry,
    clip: str | None,
    bad_step: int,
    value: float,
    where: str,
    param_index: int,
    flat_index: int,
) -> None:
    batches = make_batches(GUARD_STEPS, dtype=entry.dtype)

    model = make_model(dtype=entry.dtype)
    opt = entry.make(model.parameters(), clip=clip, **entry.main)
    for i, batch in enumerate(batches):
        if i == bad_step and where == "data":
            compute_grads(model, _poisoned_batch(batch, value, flat_index))
        else:
            compute_grads(model, batch)
        if i != bad_step:
            opt.step()
            assert not bool(opt.last_step.skipped)
            continue
        if where == "element":
            poison_grad(model, param_index, flat_index, value)
        assert not _all_finite(model), "precondition: the gradient must be non-finite"
        params_before, sd_before = clone_params(model), snapshot(opt.state_dict())
        opt.step()
        _assert_step_changed_nothing(opt, model, params_before, sd_before, skipped_before=0)

    ref_model = make_model(dtype=entry.dtype)
    ref_opt = entry.make(ref_model.parameters(), clip=clip, **entry.main)
    for i, batch in enumerate(batches):
        if i != bad_step:
            compute_grads(ref_model, batch)
            ref_opt.step()

    assert_params_equal(model, ref_model)
    sd, ref_sd = opt.state_dict(), ref_opt.state_dict()
    assert_tree_equal(sd["state"], ref_sd["state"], "state")
    assert_tree_equal(sd["gradguard"]["clip"], ref_sd["gradguard"]["clip"], "clip")
    assert int(opt.skipped_steps) == 1 and int(ref_opt.skipped_steps) == 0
    assert torch.equal(opt.clipped_steps, ref_opt.clipped_steps)


@pytest.mark.parametrize("max_skips", [None, 3])
def test_consecutive_skips_raise_naming_the_parameter(max_skips: int | None) -> None:
    limit = 10 if max_skips is None else max_skips
    extra = {} if max_skips is None else {"max_consecutive_skips": max_skips}
    model = make_model()
    opt = gradguard.Adam(model.named_parameters(), lr=1e-2, **extra)
    batches = iter(make_batches(3 * limit + 5))

    def bad_step(*names: str) -> None:
        compute_grads(model, next(batches))
        params = dict(model.named_parameters())
        for name in names:
            params[name].grad.view(-1)[1] = math.nan
        opt.step()

    compute_grads(model, next(batches))
    opt.step()
    # limit - 1 bad steps, a healthy one (resets the run), limit - 1 bad steps: no error
    for _ in range(limit - 1):
        bad_step("fc2.weight")
    compute_grads(model, next(batches))
    opt.step()
    assert not bool(opt.last_step.skipped)
    for _ in range(limit - 1):
        bad_step("fc2.weight")
    assert int(opt.skipped_steps) == 2 * (limit - 1)

    before = clone_params(model)
    with pytest.raises(gradguard.NonFiniteGradientError) as info:
        bad_step("fc2.weight", "fc1.bias")
    assert isinstance(info.value, RuntimeError)
    assert sorted(info.value.param_names) == ["fc1.bias", "fc2.weight"]
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)


def test_nonfinite_error_is_a_runtime_error() -> None:
    assert issubclass(gradguard.NonFiniteGradientError, RuntimeError)


@pytest.mark.parametrize("entry", entry_params())
def test_nonfinite_raise_mode(entry: OptimizerEntry) -> None:
    model = make_model(dtype=entry.dtype)
    opt = entry.make(model.named_parameters(), nonfinite="raise", **entry.main)
    batches = make_batches(3, dtype=entry.dtype)
    compute_grads(model, batches[0])
    opt.step()
    compute_grads(model, batches[1])
    model.fc1.weight.grad[2, 3] = math.inf
    params_before, sd_before = clone_params(model), snapshot(opt.state_dict())
    with pytest.raises(gradguard.NonFiniteGradientError) as info:
        opt.step()
    assert info.value.param_names == ["fc1.weight"]
    for p, b in zip(model.parameters(), params_before, strict=True):
        assert torch.equal(p, b)
    sd = opt.state_dict()
    assert_tree_equal(sd["state"], sd_before["state"], "state")
    compute_grads(model, batches[2])
    opt.step()  # training can go on
    assert not bool(opt.last_step.skipped)


def test_param_names_without_named_parameters_are_strings() -> None:
    model = make_model()
    opt = gradguard.SGD(model.parameters(), lr=0.1, nonfinite="raise")
    compute_grads(model, make_batches(1)[0])
    model.fc1.bias.grad[0] = math.nan
    model.fc2.bias.grad[0] = math.nan
    with pytest.raises(gradguard.NonFiniteGradientError) as info:
        opt.step()
    names = info.value.param_names
    assert isinstance(names, list) and len(names) == 2
    assert all(isinstance(n, str) for n in names) and len(set(names)) == 2


@pytest.mark.parametrize("entry", entry_params())
def test_nonfinite_off_lets_nan_through(entry: OptimizerEntry) -> None:
    model = make_model(dtype=entry.dtype)
    opt = entry.make(model.parameters(), nonfinite="off", **entry.main)
    compute_grads(model, make_batches(1, dtype=entry.dtype)[0])
    model.fc2.weight.grad[0, 0] = math.nan
    opt.step()
    # the NaN reaches the parameter, or (Lion: torch.sign(nan) == 0) its optimizer state
    state = opt.state[model.fc2.weight].values()
    assert bool(torch.isnan(model.fc2.weight).any()) or any(
        bool(torch.isnan(v).any()) for v in state if isinstance(v, torch.Tensor)
    )
    assert int(opt.skipped_steps) == 0
    assert not bool(opt.last_step.skipped)


# --------------------------------------------------------------------------------------
# guard() around torch optimizers
# --------------------------------------------------------------------------------------

GUARDED = [
    pytest.param(torch.optim.SGD, "SGD", {"lr": 0.05, "momentum": 0.9}, id="SGD"),
    pytest.param(torch.optim.Adam, "Adam", {"lr": 1e-2, "weight_decay": 1e-2}, id="Adam"),
]


@pytest.mark.parametrize("clip", ["global_norm:0.5", STATEFUL_CLIP])
@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize(("torch_cls", "name", "kwargs"), GUARDED)
def test_guard_matches_native_optimizer(
    torch_cls: type[torch.optim.Optimizer],
    name: str,
    kwargs: dict[str, Any],
    fused: bool,
    clip: str,
) -> None:
    model_a = make_model()
    model_b = copy.deepcopy(model_a)
    inner = torch_cls(model_a.parameters(), fused=fused, **kwargs)
    wrapped = gradguard.guard(inner, clip=clip)
    native = getattr(gradguard, name)(model_b.parameters(), clip=clip, **kwargs)
    assert isinstance(wrapped, torch.optim.Optimizer)
    assert wrapped.last_step is None
    sched_a = torch.optim.lr_scheduler.StepLR(wrapped, step_size=20, gamma=0.5)
    sched_b = torch.optim.lr_scheduler.StepLR(native, step_size=20, gamma=0.5)
    bad = {17, 40}
    for i, batch in enumerate(make_batches(60)):
        wrapped.zero_grad()
        native.zero_grad()
        for model in (model_a, model_b):
            x, y = batch
            nn.functional.mse_loss(model(x), y).backward()
            if i in bad:
                model.fc1.weight.grad[1, 1] = math.nan
        wrapped.step()
        native.step()
        sched_a.step()
        sched_b.step()
        assert bool(wrapped.last_step.skipped) == (i in bad)
        torch.testing.assert_close(
            wrapped.last_step.grad_norm,
            native.last_step.grad_norm,
            rtol=1e-4,
            atol=0,
            equal_nan=True,
        )
        for pa, pb in zip(model_a.parameters(), model_b.parameters(), strict=True):
            torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    assert int(wrapped.skipped_steps) == len(bad) == int(native.skipped_steps)
    assert int(wrapped.clipped_steps) == int(native.clipped_steps)
    # the wrapper shares the inner optimizer's param_groups (the scheduler reached it) and state
    assert inner.param_groups[0]["lr"] == pytest.approx(kwargs["lr"] * 0.125)
    assert_tree_equal(wrapped.state_dict()["state"], inner.state_dict()["state"])
    assert len(wrapped.state) == len(inner.state) == 4


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_guard_skip_equals_run_without_the_batch(fused: bool) -> None:
    batches = make_batches(20)
    bad_step = 9

    def run(poison: bool) -> tuple[nn.Module, Any]:
        model = make_model()
        opt = gradguard.guard(
            torch.optim.Adam(model.parameters(), lr=1e-2, fused=fused), clip=STATEFUL_CLIP
        )
        for i, batch in enumerate(batches):
            if i == bad_step and not poison:
                continue
            compute_grads(model, batch)
            if i == bad_step:
                model.fc2.bias.grad[0] = math.inf
                params_before, sd_before = clone_params(model), snapshot(opt.state_dict())
                opt.step()
                _assert_step_changed_nothing(opt, model, params_before, sd_before, 0)
            else:
                opt.step()
        return model, opt

    model_a, opt_a = run(poison=True)
    model_b, opt_b = run(poison=False)
    assert_params_equal(model_a, model_b)
    assert_tree_equal(opt_a.state_dict()["state"], opt_b.state_dict()["state"])


def test_guard_state_dict_round_trip() -> None:
    batches = make_batches(40)

    def fresh(seed: int = 0) -> tuple[nn.Module, Any]:
        model = make_model(seed)
        opt = gradguard.guard(
            torch.optim.Adam(model.parameters(), lr=1e-2), clip="auto:10:history=20"
        )
        return model, opt

    model_a, opt_a = fresh()
    for batch in batches:
        compute_grads(model_a, batch)
        opt_a.step()

    model_b, opt_b = fresh()
    for batch in batches[:20]:
        compute_grads(model_b, batch)
        opt_b.step()
    saved = save_load({"model": model_b.state_dict(), "opt": opt_b.state_dict()})
    model_c, opt_c = fresh(seed=1)
    model_c.load_state_dict(saved["model"])
    opt_c.load_state_dict(saved["opt"])
    for batch in batches[20:]:
        compute_grads(model_c, batch)
        opt_c.step()
    assert_params_equal(model_c, model_a)
    assert_tree_equal(opt_c.state_dict(), opt_a.state_dict())
    assert int(opt_c.clipped_steps) == int(opt_a.clipped_steps) > 0


# --------------------------------------------------------------------------------------
# 7. A healthy step makes no host read
# --------------------------------------------------------------------------------------



def test_host_read_counter_detects_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    t = torch.tensor([1.5])
    p = nn.Parameter(torch.tensor(2.0))
    with count_host_reads(monkeypatch) as counts:
        t.item()
        bool(t)
        float(t)
        int(t)
        t.tolist()
        if (p.detach() > 1).any():
            pass
    assert counts == Counter({"item": 1, "__bool__": 2, "__float__": 1, "__int__": 1, "tolist": 1})
    with count_host_reads(monkeypatch) as counts:
        torch.optim.Adam([p], lr=0.1)  # construction only
        p.grad = torch.tensor(1.0)
        torch.optim.Adam([p], lr=0.1).step()  # torch's own CPU Adam reads its step count
    assert counts["item"] > 0
    assert float(torch.tensor(3.0)) == 3.0  # the patch is gone again


def _assert_no_host_reads(
    opt: torch.optim.Optimizer, model: nn.Module, monkeypatch: pytest.MonkeyPatch, dtype: Any
) -> None:
    batches = make_batches(3, dtype=dtype)
    for batch in batches[:2]:  # warm-up steps (state creation, clip-policy warm-up)
        compute_grads(model, batch)
        opt.step()
    compute_grads(model, batches[2])
    before = clone_params(model)
    with count_host_reads(monkeypatch) as counts:
        opt.step()
    assert counts == Counter(), f"host reads during step(): {dict(counts)}"
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


@pytest.mark.parametrize("clip", [None, "global_norm:1", "zclip:2.5:warmup=1"])
@pytest.mark.parametrize("entry", entry_params())
def test_healthy_step_makes_no_host_read(
    entry: OptimizerEntry, clip: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model(dtype=entry.dtype)
    opt = entry.make(model.parameters(), clip=clip, **entry.main)
    _assert_no_host_reads(opt, model, monkeypatch, entry.dtype)


@pytest.mark.parametrize(
    "clip",
    [
        "none",
        "value:0.01",
        "norm:0.1",
        "global_norm:0.1:norm_type=inf",
        "agc:0.01",
        "auto:10",
        "auto:10:history=2",
        "zclip:2.5:warmup=2",
        "zclip:0.5:warmup=1:max_norm=0.5",
        "zclip:2.5:warmup=5:max_norm=1",
    ],
)
def test_clip_policies_make_no_host_read(clip: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model()
    opt = gradguard.Adam(model.parameters(), lr=1e-2, clip=clip)
    _assert_no_host_reads(opt, model, monkeypatch, torch.float32)


@pytest.mark.parametrize("nonfinite", ["skip", "off"])
def test_nonfinite_modes_make_no_host_read(nonfinite: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model()
    opt = gradguard.LAMB(model.parameters(), lr=1e-2, nonfinite=nonfinite, clip="auto:10")
    _assert_no_host_reads(opt, model, monkeypatch, torch.float32)


def test_table_has_every_optimizer() -> None:
    names = {e.name for e in TABLE}
    assert names == {
        "SGD",
        "Adam",
        "AdamW",
        "NAdam",
        "Adamax",
        "RMSprop",
        "Adagrad",
        "Adadelta",
        "LARS",
        "LAMB",
        "Lion",
    }
    for name in names:
        assert issubclass(getattr(gradguard, name), torch.optim.Optimizer)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", ["SGD", "Adam", "Lion"])
def test_low_precision_nonfinite_step_is_skipped(name: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(8, 4).to(dtype)), nn.Parameter(torch.randn(4).to(dtype))]
    kwargs: dict[str, Any] = {"lr": 0.1}  # big enough to move bf16 weights
    if name == "SGD":
        kwargs["momentum"] = 0.9
    if name == "Adam":
        kwargs["eps"] = 1e-4
    opt = getattr(gradguard, name)(params, clip="global_norm:1", **kwargs)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    before = [p.detach().clone() for p in params]
    state_before = copy.deepcopy(opt.state_dict()["state"])
    params[1].grad = torch.randn_like(params[1])
    params[1].grad[2] = math.inf  # representable in both formats; its norm is inf
    params[0].grad = torch.randn_like(params[0])
    opt.step()
    assert bool(opt.last_step.skipped)
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p, b)
    assert_tree_equal(opt.state_dict()["state"], state_before, "state")
    # a healthy step afterwards trains and stays finite in the low-precision dtype
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert not bool(opt.last_step.skipped)
    assert all(p.dtype == dtype and bool(torch.isfinite(p).all()) for p in params)
    assert any(not torch.equal(p, b) for p, b in zip(params, before, strict=True))


def test_guard_around_fused_float64_keeps_float64_precision() -> None:
    """A binding clip around torch's fused Adam on float64 parameters: the clip scale must not
    reach the kernel as its float32 grad_scale (1e-9 relative off after a few steps)."""
    gen = torch.Generator().manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(8, 8, generator=gen, dtype=torch.float64))]
    theirs = [torch.nn.Parameter(ours[0].detach().clone())]
    opt = gradguard.guard(torch.optim.Adam(ours, lr=1e-2, fused=True), clip="global_norm:0.1")
    ref = torch.optim.Adam(theirs, lr=1e-2, foreach=False)
    for _ in range(20):
        g = torch.randn(8, 8, generator=gen, dtype=torch.float64)
        ours[0].grad, theirs[0].grad = g.clone(), g.clone()
        torch.nn.utils.clip_grad_norm_(theirs, 0.1)
        opt.step()
        ref.step()
    assert bool(opt.last_step.clipped)
    torch.testing.assert_close(ours[0].detach(), theirs[0].detach(), rtol=1e-12, atol=1e-14)
