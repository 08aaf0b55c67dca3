"""Optimizer behaviour against torch.optim and the float64 references: trajectories,
hyperparameter validation, state_dict round trips and interop, param groups, dtypes,
LR schedulers, GradScaler, and the clipped/skipped step counters."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from torch import nn

import gradguard
from gradguard import clip as gclip
from helpers import (
    STEPS,
    assert_params_close,
    assert_params_equal,
    assert_states_close,
    assert_tree_equal,
    clone_params,
    compute_grads,
    eval_loss,
    grads_of,
    make_batches,
    make_model,
    poison_grad,
    save_load,
    snapshot,
    total_norm64,
)
from optim_table import (
    TABLE,
    Invalid,
    OptimizerEntry,
    config_params,
    entry_params,
    invalid_params,
    loss_sign,
)


def _lockstep(
    tol: dict[str, float],
    model_a: nn.Module,
    opt_a: torch.optim.Optimizer,
    model_b: nn.Module,
    opt_b: torch.optim.Optimizer,
    batches: list[Any],
    *,
    sign: float = 1.0,
    clip_b: Any = None,
    sched_a: Any = None,
    sched_b: Any = None,
    scaler_a: Any = None,
    scaler_b: Any = None,
) -> None:
    """Step both optimizers on the same batches, checking the params after every step.

    ``clip_b(params) -> Tensor`` is applied to model_b's gradients before its step (the
    "manual" clipping of the torch reference); the total norm it returns must match
    ``opt_a.last_step.grad_norm``."""
    for i, batch in enumerate(batches):
        if scaler_a is None:
            compute_grads(model_a, batch, sign)
            compute_grads(model_b, batch, sign)
            norm_b = clip_b(list(model_b.parameters())) if clip_b is not None else None
            opt_a.step()
            opt_b.step()
        else:
            for model, opt, scaler in ((model_a, opt_a, scaler_a), (model_b, opt_b, scaler_b)):
                opt.zero_grad()
                x, y = batch
                scaler.scale(sign * nn.functional.mse_loss(model(x), y)).backward()
                scaler.step(opt)
                scaler.update()
            assert scaler_a.get_scale() == scaler_b.get_scale()
            norm_b = None
        if norm_b is not None:
            torch.testing.assert_close(
                opt_a.last_step.grad_norm.double(), norm_b.double(), rtol=1e-4, atol=1e-7
            )
        if sched_a is not None:
            sched_a.step()
            sched_b.step()
            for ga, gb in zip(opt_a.param_groups, opt_b.param_groups, strict=True):
                assert ga["lr"] == pytest.approx(gb["lr"], rel=1e-12), f"step {i}"
        try:
            assert_params_close(model_a, model_b, **tol)
        except AssertionError as exc:
            raise AssertionError(f"trajectories diverge at step {i}: {exc}") from exc


def _assert_moved(before: list[torch.Tensor], model: nn.Module) -> None:
    """Guard against vacuous comparisons: the reference run must have changed the params."""
    after = clone_params(model)
    assert any(not torch.allclose(b, a) for b, a in zip(before, after, strict=True))


Twins = tuple[nn.Module, torch.optim.Optimizer, nn.Module, torch.optim.Optimizer]


def _twins(entry: OptimizerEntry, config: dict[str, Any], dtype: torch.dtype | None = None,
           **ours: Any) -> Twins:
    """The same model twice: (ours, our optimizer, twin, the reference optimizer), both built
    with ``config``; ``ours`` adds keyword arguments for our optimizer only (e.g. ``clip``)."""
    model_a = make_model(dtype=entry.dtype if dtype is None else dtype)
    model_b = copy.deepcopy(model_a)
    opt_a = entry.make(model_a.parameters(), **ours, **config)
    opt_b = entry.reference(model_b.parameters(), **config)
    return model_a, opt_a, model_b, opt_b


# --------------------------------------------------------------------------------------
# 1. Same trajectory as torch.optim / the float64 references
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("entry", "config"), config_params())
def test_trajectory_matches_reference(entry: OptimizerEntry, config: dict[str, Any]) -> None:
    model_a, opt_a, model_b, opt_b = _twins(entry, config)
    start = clone_params(model_b)
    _lockstep(
        entry.tolerance,
        model_a,
        opt_a,
        model_b,
        opt_b,
        make_batches(STEPS, dtype=entry.dtype),
        sign=loss_sign(config),
    )
    _assert_moved(start, model_b)
    assert_states_close(opt_a, model_a.parameters(), opt_b, model_b.parameters(), **entry.tolerance)
    for ga, gb in zip(opt_a.param_groups, opt_b.param_groups, strict=True):
        for key, value in gb.items():
            if key != "params":
                assert ga[key] == value, f"param_group[{key!r}]: {ga[key]!r} != {value!r}"


@pytest.mark.parametrize("entry", [e for e in TABLE if e.torch_cls is not None], ids=repr)
def test_trajectory_matches_torch_in_float64(entry: OptimizerEntry) -> None:
    model_a, opt_a, model_b, opt_b = _twins(entry, entry.main, torch.float64)
    tol = entry.fp64_tolerance
    _lockstep(tol, model_a, opt_a, model_b, opt_b, make_batches(STEPS, dtype=torch.float64))
    assert_states_close(opt_a, model_a.parameters(), opt_b, model_b.parameters(), **tol)


@pytest.mark.parametrize("as_object", [False, True], ids=["spec", "policy"])
@pytest.mark.parametrize("entry", entry_params())
def test_trajectory_with_global_norm_clip(entry: OptimizerEntry, as_object: bool) -> None:
    max_norm = 0.5
    clip = gclip.GlobalNorm(max_norm) if as_object else "global_norm:0.5"
    model_a, opt_a, model_b, opt_b = _twins(entry, entry.main, clip=clip)
    _lockstep(
        entry.tolerance,
        model_a,
        opt_a,
        model_b,
        opt_b,
        make_batches(STEPS, dtype=entry.dtype),
        clip_b=lambda params: torch.nn.utils.clip_grad_norm_(params, max_norm),
    )
    assert 0 < int(opt_a.clipped_steps) <= STEPS
    assert_states_close(opt_a, model_a.parameters(), opt_b, model_b.parameters(), **entry.tolerance)


# --------------------------------------------------------------------------------------
# 2. Hyperparameter validation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("entry", "bad"), invalid_params())
def test_invalid_hyperparameters_raise(entry: OptimizerEntry, bad: Invalid) -> None:
    params = list(make_model().parameters())
    with pytest.raises(ValueError) as info:
        entry.make(params, **bad.kwargs)
    message = str(info.value)
    assert any(name in message for name in bad.names), (
        f"message {message!r} names none of {bad.names}"
    )
    if bad.value is not None:
        assert str(bad.value) in message, f"message {message!r} lacks {bad.value!r}"


@pytest.mark.parametrize("entry", entry_params())
def test_valid_configs_construct(entry: OptimizerEntry) -> None:
    """The invalid-config test is only meaningful if nearby valid configs are accepted."""
    params = list(make_model().parameters())
    for config in entry.configs:
        opt = entry.make(params, **config)
        assert isinstance(opt, torch.optim.Optimizer)
        assert opt.last_step is None
    for nonfinite in ("skip", "raise", "off"):
        entry.make(params, nonfinite=nonfinite, max_consecutive_skips=3, clip="value:1")
    entry.make(params, clip=None)
    entry.make(params, clip=gclip.NoClip())


# --------------------------------------------------------------------------------------
# 3. state_dict: round trip, torch.save, interop with torch.optim
# --------------------------------------------------------------------------------------

STATEFUL_CLIPS = ["auto:10:history=20", "zclip:1.5:warmup=5"]


@pytest.mark.parametrize("via_torch_save", [False, True], ids=["in_memory", "torch_save"])
@pytest.mark.parametrize("clip", STATEFUL_CLIPS)
@pytest.mark.parametrize("entry", entry_params())
def test_state_dict_round_trip_is_bitwise(
    entry: OptimizerEntry, clip: str, via_torch_save: bool
) -> None:
    steps, cut = 60, 30
    batches = make_batches(steps)

    model_a = make_model()
    opt_a = entry.make(model_a.parameters(), clip=clip, **entry.main)
    for batch in batches:
        compute_grads(model_a, batch)
        opt_a.step()

    model_b = make_model()
    opt_b = entry.make(model_b.parameters(), clip=clip, **entry.main)
    for batch in batches[:cut]:
        compute_grads(model_b, batch)
        opt_b.step()
    saved = {"model": model_b.state_dict(), "opt": opt_b.state_dict()}
    saved = save_load(saved) if via_torch_save else snapshot(saved)
    assert {"clipped_steps", "skipped_steps", "clip"} <= set(saved["opt"]["gradguard"])
    del model_b, opt_b

    model_c = make_model(seed=1)  # different init: everything must come from the checkpoint
    model_c.load_state_dict(saved["model"])
    opt_c = entry.make(model_c.parameters(), clip=clip, **entry.main)
    opt_c.load_state_dict(saved["opt"])
    for batch in batches[cut:]:
        compute_grads(model_c, batch)
        opt_c.step()

    assert_params_equal(model_c, model_a)
    assert_tree_equal(opt_c.state_dict(), opt_a.state_dict())
    assert torch.equal(opt_c.clipped_steps, opt_a.clipped_steps)
    assert torch.equal(opt_c.skipped_steps, opt_a.skipped_steps)
    if clip.startswith("auto"):
        assert int(opt_a.clipped_steps) > 0, "AutoClip should clip here, or the test is vacuous"


@pytest.mark.parametrize("direction", ["torch_to_gradguard", "gradguard_to_torch"])
@pytest.mark.parametrize("entry", entry_params("torch_interop"))
def test_state_dict_interop_with_torch(entry: OptimizerEntry, direction: str) -> None:
    assert entry.torch_cls is not None
    steps, cut = 60, 30
    batches = make_batches(steps)
    src_cls, dst_cls = (
        (entry.torch_cls, entry.make)
        if direction == "torch_to_gradguard"
        else (entry.make, entry.torch_cls)
    )
    model_src = make_model()
    opt_src = src_cls(model_src.parameters(), **entry.main)
    for batch in batches[:cut]:
        compute_grads(model_src, batch)
        opt_src.step()

    model_dst = make_model(seed=1)
    model_dst.load_state_dict(model_src.state_dict())
    opt_dst = dst_cls(model_dst.parameters(), **entry.main)
    opt_dst.load_state_dict(snapshot(opt_src.state_dict()))
    assert_states_close(
        opt_dst, model_dst.parameters(), opt_src, model_src.parameters(), rtol=0, atol=0
    )
    _lockstep(entry.tolerance, model_src, opt_src, model_dst, opt_dst, batches[cut:])
    assert_states_close(
        opt_dst, model_dst.parameters(), opt_src, model_src.parameters(), **entry.tolerance
    )


# --------------------------------------------------------------------------------------
# 4. Param groups, missing gradients, maximize, dtypes, LR schedulers, GradScaler
# --------------------------------------------------------------------------------------


def _groups(model: nn.Module, lr: float) -> list[dict[str, Any]]:
    return [
        {"params": list(model.fc1.parameters()), "lr": lr * 0.5, "weight_decay": 0.05},
        {"params": list(model.fc2.parameters())},
    ]


@pytest.mark.parametrize("entry", entry_params())
def test_param_groups_match_reference(entry: OptimizerEntry) -> None:
    model_a = make_model(dtype=entry.dtype)
    model_b = copy.deepcopy(model_a)
    lr = entry.main.get("lr", 1e-3)
    opt_a = entry.make(_groups(model_a, lr), **entry.main)
    opt_b = entry.reference(_groups(model_b, lr), **entry.main)
    assert opt_a.param_groups[0]["lr"] == lr * 0.5
    assert opt_a.param_groups[0]["weight_decay"] == 0.05
    _lockstep(
        entry.tolerance, model_a, opt_a, model_b, opt_b, make_batches(STEPS, dtype=entry.dtype)
    )
    assert_states_close(opt_a, model_a.parameters(), opt_b, model_b.parameters(), **entry.tolerance)


@pytest.mark.parametrize("entry", entry_params())
def test_per_group_clip(entry: OptimizerEntry) -> None:
    """Group 0 clips by its own global norm, group 1 opts out of clipping (clip=None),
    group 2 has no "clip" key and uses the optimizer-level policy."""
    model_a = make_model(dtype=entry.dtype)
    model_b = copy.deepcopy(model_a)

    def groups(model: nn.Module) -> list[dict[str, Any]]:
        return [
            {"params": list(model.fc1.parameters()), "clip": "global_norm:0.2"},
            {"params": [model.fc2.weight], "clip": None},
            {"params": [model.fc2.bias]},
        ]

    def manual_clip(params: list[torch.Tensor]) -> torch.Tensor:
        total = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad) for p in params])
        )
        torch.nn.utils.clip_grad_norm_(params[:2], 0.2)
        torch.nn.utils.clip_grad_value_(params[3:], 0.01)
        return total

    opt_a = entry.make(groups(model_a), clip="value:0.01", **entry.main)
    ref_groups = [{"params": g["params"]} for g in groups(model_b)]
    opt_b = entry.reference(ref_groups, **entry.main)
    _lockstep(
        entry.tolerance,
        model_a,
        opt_a,
        model_b,
        opt_b,
        make_batches(STEPS, dtype=entry.dtype),
        clip_b=manual_clip,
    )
    assert int(opt_a.clipped_steps) > 0


@pytest.mark.parametrize("entry", entry_params())
def test_params_without_grad_are_untouched(entry: OptimizerEntry) -> None:
    config = {**entry.main, "weight_decay": 0.01}
    model_a = make_model(dtype=entry.dtype)
    model_b = copy.deepcopy(model_a)
    extra_a = nn.Parameter(
        torch.randn(5, 3, generator=torch.Generator().manual_seed(5)).to(entry.dtype)
    )
    extra_b = nn.Parameter(extra_a.detach().clone())
    before = extra_a.detach().clone()
    opt_a = entry.make([*model_a.parameters(), extra_a], **config)
    opt_b = entry.reference([*model_b.parameters(), extra_b], **config)
    _lockstep(entry.tolerance, model_a, opt_a, model_b, opt_b, make_batches(30, dtype=entry.dtype))
    assert extra_a.grad is None
    assert torch.equal(extra_a, before)
    # No state for it, except where the reference creates it at construction (torch's
    # Adagrad): then it is still the initial state, as the reference's.
    state_a, state_b = opt_a.state.get(extra_a), opt_b.state.get(extra_b)
    assert bool(state_a) == bool(state_b), f"state for a param without grad: {opt_a.state}"
    if state_b:
        assert state_a.keys() == state_b.keys()
        for key in state_b:
            torch.testing.assert_close(state_a[key], state_b[key], rtol=0.0, atol=0.0,
                                       check_device=False)


@pytest.mark.parametrize("entry", entry_params())
def test_maximize_equals_minimizing_the_negated_loss(entry: OptimizerEntry) -> None:
    model_a = make_model(dtype=entry.dtype)
    model_b = copy.deepcopy(model_a)
    opt_a = entry.make(model_a.parameters(), maximize=True, **entry.main)
    opt_b = entry.make(model_b.parameters(), maximize=False, **entry.main)
    batches = make_batches(50, dtype=entry.dtype)
    for batch in batches:
        compute_grads(model_a, batch, sign=-1.0)
        compute_grads(model_b, batch, sign=1.0)
        opt_a.step()
        opt_b.step()
    assert_params_close(model_a, model_b, **entry.tolerance)
    # and maximizing the loss itself must go the other way
    model_c = make_model(dtype=entry.dtype)
    opt_c = entry.make(model_c.parameters(), maximize=True, **entry.main)
    for batch in batches:
        compute_grads(model_c, batch)
        opt_c.step()
    assert eval_loss(model_c) > eval_loss(model_b)


@pytest.mark.parametrize(
    "dtype",
    [torch.float32, torch.float64, torch.bfloat16, torch.float16],
    ids=["fp32", "fp64", "bf16", "fp16"],
)
@pytest.mark.parametrize("entry", entry_params())
def test_dtypes_preserved_and_training_works(entry: OptimizerEntry, dtype: torch.dtype) -> None:
    model = make_model(dtype=dtype)
    config = dict(entry.main)
    if dtype == torch.float16 and entry.name in ("Adam", "AdamW", "NAdam", "RMSprop"):
        # eps=1e-8 is 0 in float16: pure-fp16 Adam/RMSprop divide by zero (in torch too), which
        # the guard turns into skipped steps. fp16 training uses a representable eps.
        config["eps"] = 1e-4
    opt = entry.make(model.parameters(), **config)
    start = eval_loss(model)
    for batch in make_batches(STEPS, dtype=dtype):
        compute_grads(model, batch)
        opt.step()
    assert eval_loss(model) < 0.9 * start
    for p in model.parameters():
        assert p.dtype == dtype
        assert torch.isfinite(p).all()
        state = opt.state[p]
        assert state, "the main configs all keep per-parameter state"
        for key, value in state.items():
            # per-element state lives in the param dtype; scalar bookkeeping such as "step"
            # or NAdam's "mu_product" is float32 in torch and is checked against torch below
            if isinstance(value, torch.Tensor) and value.shape == p.shape and p.ndim > 0:
                assert value.dtype == dtype, f"state {key!r} has dtype {value.dtype}"
    if entry.torch_cls is not None:
        ref_model = make_model(dtype=dtype)
        ref_opt = entry.torch_cls(ref_model.parameters(), **config)
        compute_grads(ref_model, make_batches(1, dtype=dtype)[0])
        ref_opt.step()
        for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
            for key, value in ref_opt.state[q].items():
                if isinstance(value, torch.Tensor):
                    assert opt.state[p][key].dtype == value.dtype, f"state {key!r}"


def _schedulers(opt: torch.optim.Optimizer, kind: str) -> Any:
    if kind == "StepLR":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    lr = opt.param_groups[0]["lr"]
    cycle_momentum = "betas" in opt.defaults or "momentum" in opt.defaults
    return torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=2 * lr, total_steps=STEPS, cycle_momentum=cycle_momentum
    )


@pytest.mark.parametrize("kind", ["StepLR", "OneCycleLR"])
@pytest.mark.parametrize("entry", entry_params())
def test_lr_schedulers_drive_identically(entry: OptimizerEntry, kind: str) -> None:
    model_a, opt_a, model_b, opt_b = _twins(entry, entry.main)
    sched_a, sched_b = _schedulers(opt_a, kind), _schedulers(opt_b, kind)
    _lockstep(
        entry.tolerance,
        model_a,
        opt_a,
        model_b,
        opt_b,
        make_batches(STEPS, dtype=entry.dtype),
        sched_a=sched_a,
        sched_b=sched_b,
    )
    assert opt_a.param_groups[0]["lr"] != entry.main.get("lr")  # the scheduler did act
    if kind == "OneCycleLR" and "betas" in opt_a.defaults:
        assert opt_a.param_groups[0]["betas"] == opt_b.param_groups[0]["betas"]


@pytest.mark.parametrize("entry", entry_params())
def test_grad_scaler_trains_identically(entry: OptimizerEntry) -> None:
    model_a, opt_a, model_b, opt_b = _twins(entry, entry.main)
    scaler_a = torch.amp.GradScaler(device="cpu", init_scale=2.0**12, growth_interval=10)
    scaler_b = torch.amp.GradScaler(device="cpu", init_scale=2.0**12, growth_interval=10)
    _lockstep(
        entry.tolerance,
        model_a,
        opt_a,
        model_b,
        opt_b,
        make_batches(STEPS, dtype=entry.dtype),
        scaler_a=scaler_a,
        scaler_b=scaler_b,
    )
    assert scaler_a.get_scale() > 2.0**12  # the scale grew: no overflow, real scaling
    assert_states_close(opt_a, model_a.parameters(), opt_b, model_b.parameters(), **entry.tolerance)


# --------------------------------------------------------------------------------------
# 8. StepRecord and the clipped/skipped counters
# --------------------------------------------------------------------------------------


def _assert_scalar(t: Any, dtype: torch.dtype | tuple[torch.dtype, ...]) -> None:
    assert isinstance(t, torch.Tensor) and t.ndim == 0, f"{t!r} is not a 0-d tensor"
    dtypes = dtype if isinstance(dtype, tuple) else (dtype,)
    assert t.dtype in dtypes, f"dtype {t.dtype} not in {dtypes}"


INT_DTYPES = (torch.int32, torch.int64)


@pytest.mark.parametrize("entry", entry_params())
def test_counters_and_step_record(entry: OptimizerEntry) -> None:
    c = 1e-4  # so small that every healthy step clips
    model = make_model()
    opt = entry.make(model.parameters(), clip=f"global_norm:{c}", **entry.main)
    assert opt.last_step is None
    _assert_scalar(opt.clipped_steps, INT_DTYPES)
    _assert_scalar(opt.skipped_steps, INT_DTYPES)
    assert int(opt.clipped_steps) == 0 and int(opt.skipped_steps) == 0

    bad_steps = {3, 7, 8}
    for i, batch in enumerate(make_batches(12)):
        compute_grads(model, batch)
        expected_norm = total_norm64(grads_of(model))
        if i in bad_steps:
            poison_grad(model, i % 4, i, math.nan if i % 2 else math.inf)
        opt.step()
        rec = opt.last_step
        assert isinstance(rec, gradguard.StepRecord) and isinstance(rec, tuple)
        assert rec._fields == ("grad_norm", "clip_scale", "clipped", "skipped")
        _assert_scalar(rec.grad_norm, torch.float32)
        _assert_scalar(rec.clip_scale, (torch.float32, torch.float64))
        _assert_scalar(rec.clipped, torch.bool)
        _assert_scalar(rec.skipped, torch.bool)
        n_bad = sum(1 for b in bad_steps if b <= i)
        assert int(opt.skipped_steps) == n_bad
        assert int(opt.clipped_steps) == i + 1 - n_bad
        if i in bad_steps:
            assert bool(rec.skipped) and not bool(rec.clipped)
        else:
            assert not bool(rec.skipped) and bool(rec.clipped)
            assert float(rec.grad_norm) == pytest.approx(expected_norm, rel=1e-5)
            assert float(rec.clip_scale) == pytest.approx(
                min(1.0, c / (expected_norm + 1e-6)), rel=1e-5
            )

    sd = save_load(opt.state_dict())
    assert int(sd["gradguard"]["clipped_steps"]) == 12 - len(bad_steps)
    assert int(sd["gradguard"]["skipped_steps"]) == len(bad_steps)
    fresh = entry.make(make_model().parameters(), clip=f"global_norm:{c}", **entry.main)
    fresh.load_state_dict(sd)
    assert int(fresh.clipped_steps) == 12 - len(bad_steps)
    assert int(fresh.skipped_steps) == len(bad_steps)


def test_no_clip_records_scale_one() -> None:
    model = make_model()
    opt = gradguard.Adam(model.parameters(), lr=1e-2)
    for batch in make_batches(5):
        compute_grads(model, batch)
        expected = total_norm64(grads_of(model))
        opt.step()
        assert float(opt.last_step.clip_scale) == 1.0
        assert not bool(opt.last_step.clipped) and not bool(opt.last_step.skipped)
        assert float(opt.last_step.grad_norm) == pytest.approx(expected, rel=1e-5)
    assert int(opt.clipped_steps) == 0 and int(opt.skipped_steps) == 0


def _expected_min_factor(spec: str, model: nn.Module) -> float:
    """Smallest factor applied to any gradient entry, computed independently in float64."""
    params = [p for p in model.parameters() if p.grad is not None]
    grads = [p.grad.detach().double() for p in params]
    kind, value = spec.split(":")[:2]
    c = float(value)
    factors = [1.0]
    if kind == "value":
        factors += [c / float(g.abs().max()) for g in grads if float(g.abs().max()) > c]
    elif kind == "norm":
        factors += [c / (float(g.norm()) + 1e-6) for g in grads]
    elif kind == "agc":
        for p, g in zip(params, grads, strict=True):
            w = p.detach().double()
            units = [(w, g)] if g.ndim <= 1 else list(zip(w, g, strict=True))
            for wu, gu in units:
                max_norm = max(float(wu.norm()), 1e-3) * c
                if float(gu.norm()) > max_norm:
                    factors.append(max_norm / max(float(gu.norm()), 1e-6))
    elif kind == "global_norm":
        factors.append(c / (total_norm64(grads) + 1e-6))
    return min(factors)


@pytest.mark.parametrize("spec", ["value:0.01", "norm:0.05", "agc:0.01", "global_norm:0.3"])
def test_clip_scale_is_smallest_factor(spec: str) -> None:
    model = make_model()
    opt = gradguard.SGD(model.parameters(), lr=0.05, clip=spec)
    clipped = 0
    for batch in make_batches(10):
        compute_grads(model, batch)
        expected = _expected_min_factor(spec, model)
        opt.step()
        assert float(opt.last_step.clip_scale) == pytest.approx(expected, rel=1e-4)
        assert bool(opt.last_step.clipped) == (expected < 1.0)
        clipped += expected < 1.0
    assert clipped > 0, "the spec should clip on this problem, or the test is vacuous"
    assert int(opt.clipped_steps) == clipped
