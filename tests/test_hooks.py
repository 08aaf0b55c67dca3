"""Gradient norms measured in backward hooks.

In every scenario the norm the step used (``last_step.grad_norm``, ``clip_scale``, the clipped
update) is checked against a norm recomputed here with ``torch.linalg.vector_norm`` over the
final ``.grad`` of each parameter, and ``hooks.hits`` / ``hooks.misses`` are checked so that a
record made stale by an edit after backward cannot be used silently. Where the norm decides the
update (clipping), the trajectory is also compared with torch.optim plus torch's own clipping
utilities.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gradguard
from gradguard.clip import GradHooks
from helpers import IN_FEATURES, OUT_FEATURES, TinyNet, make_batch, make_model

RTOL = 1e-5
SGD_KW = {"lr": 0.05, "momentum": 0.9}


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def recomputed_norm(params: list[torch.Tensor], norm_type: float = 2.0) -> float:
    """Total norm of the final gradients, in float64, from per-tensor vector norms."""
    norms = [
        torch.linalg.vector_norm(p.grad.detach().to(torch.float64), norm_type)
        for p in params
        if p.grad is not None
    ]
    if not norms:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(norms), norm_type))


def grads_with(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.grad is not None]


def hooks_of(opt: torch.optim.Optimizer) -> GradHooks:
    hooks = opt._hooks
    assert isinstance(hooks, GradHooks)
    return hooks


def counts(opt: torch.optim.Optimizer) -> tuple[int, int]:
    h = hooks_of(opt)
    return h.hits, h.misses


def backward(model: nn.Module, step: int, scale: float = 1.0) -> None:
    x, y = make_batch(step)
    (F.mse_loss(model(x), y) * scale).backward()


def assert_grad_norm(opt: torch.optim.Optimizer, expected: float) -> None:
    rec = opt.last_step
    assert rec is not None
    assert rec.grad_norm.dtype == torch.float32 and rec.grad_norm.shape == ()
    assert float(rec.grad_norm) == pytest.approx(expected, rel=RTOL), (
        f"grad_norm {float(rec.grad_norm)} != recomputed {expected}"
    )


def assert_models_close(a: nn.Module, b: nn.Module, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(
            pa.detach(), pb.detach(), rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}"
        )


def make_pair(
    clip: str | None, seed: int = 0
) -> tuple[nn.Module, torch.optim.Optimizer, nn.Module, torch.optim.Optimizer]:
    """gradguard.SGD with ``clip`` and a torch.optim.SGD twin on an identical model."""
    model, ref = make_model(seed), make_model(seed)
    opt = gradguard.SGD(model.parameters(), clip=clip, **SGD_KW)
    ref_opt = torch.optim.SGD(ref.parameters(), **SGD_KW)
    return model, opt, ref, ref_opt


# --------------------------------------------------------------------------------------
# 1. plain backward
# --------------------------------------------------------------------------------------


def test_hooks_are_registered_on_every_trainable_parameter() -> None:
    model = make_model()
    opt = gradguard.Adam(model.parameters(), lr=1e-2)
    hooks = hooks_of(opt)
    assert hooks.norm_types == (2.0,) and not hooks.units
    backward(model, 0)
    for p in model.parameters():
        recorded = hooks.lookup(p, 2.0)
        assert recorded is not None
        expected = torch.linalg.vector_norm(p.grad.to(torch.float64))
        assert float(recorded) == pytest.approx(float(expected), rel=RTOL)
        assert hooks.lookup(p, 1.0) is None  # a norm type nobody asked for is not recorded
    assert hooks.hits == 4 and hooks.misses == 4


def test_small_gradients_are_measured_at_the_step_by_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the default threshold only a parameter of at least HOOK_MIN_NUMEL elements gets a
    backward hook; the smaller ones are measured at the step, and the norm is the same."""
    monkeypatch.delenv("GRADGUARD_HOOK_MIN_NUMEL", raising=False)
    from gradguard.clip._hooks import HOOK_MIN_NUMEL
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(HOOK_MIN_NUMEL // 64, 64), nn.Tanh(), nn.Linear(64, 3))
    big = model[0].weight
    assert big.numel() >= HOOK_MIN_NUMEL
    assert all(p.numel() < HOOK_MIN_NUMEL for p in model.parameters() if p is not big)
    opt = gradguard.SGD(model.parameters(), lr=0.1, clip="global_norm:1")
    hooks = hooks_of(opt)
    for step in range(3):
        opt.zero_grad()
        x = torch.randn(8, big.shape[1])
        (model(x) ** 2).sum().mul(10).backward()
        assert hooks.lookup(big, 2.0) is not None
        assert all(hooks.lookup(p, 2.0) is None for p in model.parameters() if p is not big)
        expected = recomputed_norm(list(model.parameters()))
        hits, misses = counts(opt)
        opt.step()
        assert counts(opt) == (hits + 1, misses + 3), step
        assert_grad_norm(opt, expected)


def test_hook_threshold_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    w = nn.Parameter(torch.ones(5))
    monkeypatch.setenv("GRADGUARD_HOOK_MIN_NUMEL", "6")
    hooks = GradHooks([w])
    w.sum().backward()
    assert hooks.lookup(w, 2.0) is None
    monkeypatch.setenv("GRADGUARD_HOOK_MIN_NUMEL", "5")
    hooks = GradHooks([w])
    w.grad = None
    w.sum().backward()
    assert hooks.lookup(w, 2.0) is not None
    monkeypatch.setenv("GRADGUARD_HOOK_MIN_NUMEL", "-1")
    with pytest.raises(ValueError, match="Invalid GRADGUARD_HOOK_MIN_NUMEL: '-1'"):
        GradHooks([w])


def test_plain_backward_uses_hook_norms() -> None:
    model, opt, ref, ref_opt = make_pair("global_norm:1")
    for step in range(5):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            backward(m, step, scale=10.0)  # large enough for clipping to act
        expected = recomputed_norm(list(model.parameters()))
        hits, misses = counts(opt)
        opt.step()
        assert counts(opt) == (hits + 4, misses), "every norm should come from the hooks"
        assert_grad_norm(opt, expected)
        total = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        assert float(total) == pytest.approx(expected, rel=RTOL)
        ref_opt.step()
        assert bool(opt.last_step.clipped)
        assert_models_close(model, ref)


# --------------------------------------------------------------------------------------
# 2. gradient accumulation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("set_to_none", [True, False])
def test_accumulated_gradients(set_to_none: bool) -> None:
    model, opt, ref, ref_opt = make_pair("global_norm:1")
    for step in range(4):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad(set_to_none=set_to_none)
            for micro in range(3):
                backward(m, 3 * step + micro, scale=5.0)
        expected = recomputed_norm(list(model.parameters()))
        # the norm of the sum differs from the norm of the last micro-batch alone
        last = copy.deepcopy(model)
        last.zero_grad()
        backward(last, 3 * step + 2, scale=5.0)
        assert abs(recomputed_norm(list(last.parameters())) - expected) > 1e-3 * expected
        hits, misses = counts(opt)
        opt.step()
        # the hook fires after each accumulation, so the last record is of the final sum
        assert counts(opt) == (hits + 4, misses)
        assert_grad_norm(opt, expected)
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        ref_opt.step()
        assert_models_close(model, ref)


# --------------------------------------------------------------------------------------
# 3. GradScaler
# --------------------------------------------------------------------------------------

INF_STEP = 3


@pytest.mark.parametrize("backend", ["eager", "native"])
@pytest.mark.parametrize("clip", [None, "global_norm:1"])
@pytest.mark.parametrize("manual_unscale", [False, True], ids=["auto", "manual"])
def test_grad_scaler(backend: str, clip: str | None, manual_unscale: bool) -> None:
    model, ref = make_model(), make_model()
    opt = gradguard.SGD(model.parameters(), clip=clip, backend=backend, **SGD_KW)
    ref_opt = torch.optim.SGD(ref.parameters(), **SGD_KW)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ref_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for step in range(8):
        opt.zero_grad()
        ref_opt.zero_grad()
        x, y = make_batch(step)
        for m, s in ((model, scaler), (ref, ref_scaler)):
            s.scale(F.mse_loss(m(x), y) * 5.0).backward()
            if step == INF_STEP:
                m.fc1.weight.grad.view(-1)[3] = math.inf
        scale_used = scaler.get_scale()
        assert scale_used == ref_scaler.get_scale()
        if manual_unscale:
            scaler.unscale_(opt)
            expected = recomputed_norm(list(model.parameters()))
        else:
            expected = recomputed_norm(list(model.parameters())) / scale_used
        before = [p.detach().clone() for p in model.parameters()]
        scaler.step(opt)
        scaler.update()
        ref_scaler.unscale_(ref_opt)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        ref_scaler.step(ref_opt)
        ref_scaler.update()
        assert scaler.get_scale() == ref_scaler.get_scale()
        assert bool(opt.last_step.skipped) == (step == INF_STEP)
        if step == INF_STEP:
            assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
        else:
            assert_grad_norm(opt, expected)
            assert bool(opt.last_step.clipped) == (clip is not None and expected > 1.0)
        assert_models_close(model, ref)
    assert int(opt.skipped_steps) == 1
    assert scaler.get_scale() < 2.0**10  # the inf step halved the scale


# --------------------------------------------------------------------------------------
# 4. gradients edited after backward
# --------------------------------------------------------------------------------------

Edit = Callable[[nn.Parameter], None]


def _replace(p: nn.Parameter) -> None:
    gen = torch.Generator().manual_seed(99)
    p.grad = torch.randn(p.shape, generator=gen)


EDITS: dict[str, Edit] = {
    "mul_": lambda p: p.grad.mul_(3.0),
    "add_": lambda p: p.grad.add_(1.0),
    "replace": _replace,
    "detach_mul_": lambda p: p.grad.detach().mul_(-2.0),
    "copy_": lambda p: p.grad.copy_(torch.full_like(p.grad, 0.25)),
    "indexed": lambda p: p.grad.view(-1).__setitem__(0, 7.0),
    "clip_grad_norm_": lambda p: torch.nn.utils.clip_grad_norm_([p], 1e-3),
    "clip_grad_value_": lambda p: torch.nn.utils.clip_grad_value_([p], 1e-3),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_edit_after_backward_is_measured_again(edit: str) -> None:
    model, opt, ref, ref_opt = make_pair("global_norm:1")
    hooks = hooks_of(opt)
    for step in range(3):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            backward(m, step, scale=5.0)
        unedited = recomputed_norm(list(model.parameters()))
        for m in (model, ref):
            EDITS[edit](m.fc1.weight)
        expected = recomputed_norm(list(model.parameters()))
        assert abs(expected - unedited) > 1e-4 * unedited  # the edit changed the norm
        assert hooks.lookup(model.fc1.weight, 2.0) is None
        assert hooks.lookup(model.fc2.weight, 2.0) is not None
        hits, misses = counts(opt)
        opt.step()
        assert counts(opt) == (hits + 3, misses + 1)
        assert_grad_norm(opt, expected)
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        ref_opt.step()
        assert_models_close(model, ref)


def test_several_edits_and_replaced_grad() -> None:
    model, opt, _, _ = make_pair(None)
    params = list(model.parameters())
    for step in range(3):
        opt.zero_grad()
        backward(model, step)
        params[0].grad.mul_(3)
        params[1].grad.add_(1)
        params[2].grad = torch.randn_like(params[2])
        expected = recomputed_norm(params)
        hits, misses = counts(opt)
        opt.step()
        assert counts(opt) == (hits + 1, misses + 3)
        assert_grad_norm(opt, expected)


def test_edit_through_dot_data_with_hooks_off() -> None:
    """``p.grad.data.mul_()`` (common in older training code) edits the gradient without
    bumping its version counter, so no hook record can notice it; such code creates the
    optimizer with ``measure_in_backward=False`` and the step measures the edited gradient."""
    model, opt, ref, ref_opt = make_pair("global_norm:1")
    opt = type(opt)(model.parameters(), clip="global_norm:1", measure_in_backward=False,
                    **{k: v for k, v in opt.defaults.items()
                       if k in ("lr", "momentum", "betas", "eps", "weight_decay")})
    assert opt._hooks is None
    ref_opt = type(ref_opt)(ref.parameters(), **{k: v for k, v in ref_opt.defaults.items()
                                                 if k in ("lr", "momentum", "betas", "eps",
                                                          "weight_decay")})
    for m, o in ((model, opt), (ref, ref_opt)):
        o.zero_grad()
        backward(m, 0, scale=5.0)
        m.fc1.weight.grad.data.mul_(3.0)
    expected = recomputed_norm(list(model.parameters()))
    opt.step()
    assert_grad_norm(opt, expected)
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
    ref_opt.step()
    assert_models_close(model, ref)


# --------------------------------------------------------------------------------------
# 5. frozen parameters and parameters without a gradient
# --------------------------------------------------------------------------------------


class BranchNet(nn.Module):
    """TinyNet plus a branch that only contributes on even steps; fc1 is frozen."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(IN_FEATURES, 12)
        self.fc2 = nn.Linear(12, OUT_FEATURES)
        self.branch = nn.Linear(12, OUT_FEATURES)
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        self.fc1.requires_grad_(False)

    def forward(self, x: torch.Tensor, use_branch: bool) -> torch.Tensor:
        h = torch.tanh(self.fc1(x))
        out = self.fc2(h)
        return out + self.branch(h) if use_branch else out


@pytest.mark.parametrize("set_to_none", [True, False])
def test_frozen_and_unused_parameters(set_to_none: bool) -> None:
    model = BranchNet()
    ref = copy.deepcopy(model)
    opt = gradguard.Adam(model.parameters(), lr=1e-2, clip="global_norm:0.5")
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    branch = list(model.branch.parameters())
    frozen = [p.detach().clone() for p in model.fc1.parameters()]
    for step in range(6):
        use_branch = step % 2 == 0
        x, y = make_batch(step)
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad(set_to_none=set_to_none)
            (F.mse_loss(m(x, use_branch), y) * 5.0).backward()
        with_grad = grads_with(model)
        assert all(p.grad is None for p in model.fc1.parameters())
        if set_to_none and not use_branch:
            assert all(p.grad is None for p in branch)
        expected = recomputed_norm(with_grad)
        branch_before = [p.detach().clone() for p in branch]
        state_before = [copy.deepcopy(opt.state.get(p, {})) for p in branch]
        hits, misses = counts(opt)
        opt.step()
        # a gradient zeroed in place after its hook fired (set_to_none=False, unused branch)
        # is measured again; every other gradient's norm comes from its hook
        stale = 0 if (use_branch or set_to_none) else len(branch)
        assert counts(opt) == (hits + len(with_grad) - stale, misses + stale)
        assert_grad_norm(opt, expected)
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        ref_opt.step()
        assert_models_close(model, ref)
        for p, f in zip(model.fc1.parameters(), frozen, strict=True):
            assert torch.equal(p, f)
        if set_to_none and not use_branch:
            for p, b, s in zip(branch, branch_before, state_before, strict=True):
                assert torch.equal(p, b)
                assert set(opt.state[p]) == set(s)
                for k, v in s.items():
                    assert torch.equal(opt.state[p][k], v)
    assert not any(p in opt.state and opt.state[p] for p in model.fc1.parameters())


def test_parameter_unfrozen_after_construction_is_measured() -> None:
    model = make_model()
    model.fc1.weight.requires_grad_(False)
    opt = gradguard.SGD(model.parameters(), lr=0.1)
    model.fc1.weight.requires_grad_(True)  # no hook was registered on it
    backward(model, 0)
    expected = recomputed_norm(list(model.parameters()))
    opt.step()
    assert counts(opt) == (3, 1)
    assert_grad_norm(opt, expected)


def test_hooks_follow_added_param_groups() -> None:
    model = make_model()
    opt = gradguard.SGD([model.fc1.weight, model.fc1.bias], lr=0.1, clip="global_norm:1")
    opt.add_param_group({"params": list(model.fc2.parameters())})
    backward(model, 0, scale=5.0)
    expected = recomputed_norm(list(model.parameters()))
    opt.step()
    assert counts(opt) == (4, 0)
    assert_grad_norm(opt, expected)


def test_hooks_follow_a_deep_copy() -> None:
    """A deep copy of model and optimizer together: the copy's hooks watch the copy's
    parameters, the original's hooks keep watching the original's."""
    model = make_model()
    opt = gradguard.SGD(model.parameters(), lr=0.1, clip="global_norm:1")
    model2, opt2 = copy.deepcopy((model, opt))
    assert opt2.backend == opt.backend and opt2.clip is not None
    for m, o, step in ((model, opt, 0), (model2, opt2, 1)):
        o.zero_grad()
        backward(m, step, scale=5.0)
        expected = recomputed_norm(list(m.parameters()))
        hits, misses = counts(o)
        o.step()
        assert counts(o) == (hits + 4, misses)
        assert_grad_norm(o, expected)


# --------------------------------------------------------------------------------------
# 6. unit-wise norms (AGC) and the inf-norm (Value) from hooks
# --------------------------------------------------------------------------------------


def unit_norms(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.dim() <= 1:
        return torch.linalg.vector_norm(t)
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.dim())), keepdim=True)


def agc_(params: list[nn.Parameter], clipping: float, eps: float = 1e-3) -> float:
    """Adaptive gradient clipping (Brock et al. 2021) in place; returns the smallest factor."""
    smallest = 1.0
    for p in params:
        if p.grad is None:
            continue
        max_norm = unit_norms(p).clamp_min(eps) * clipping
        g_norm = unit_norms(p.grad)
        scale = torch.where(g_norm > max_norm, max_norm / g_norm.clamp_min(1e-6), 1.0)
        p.grad.mul_(scale)
        smallest = min(smallest, float(scale.min()))
    return smallest


@pytest.mark.parametrize("edit", [False, True])
def test_agc_uses_valid_unit_norms(edit: bool) -> None:
    model, opt, ref, ref_opt = make_pair("agc:0.01")
    no_hooks = make_model()
    opt_nh = gradguard.SGD(no_hooks.parameters(), clip="agc:0.01", **SGD_KW)
    hooks_of(opt_nh).remove()
    opt_nh._hooks = None
    hooks = hooks_of(opt)
    assert hooks.units
    for step in range(4):
        for m, o in ((model, opt), (ref, ref_opt), (no_hooks, opt_nh)):
            o.zero_grad()
            backward(m, step)
            if edit:
                m.fc1.weight.grad.mul_(5.0)
        for name, p in model.named_parameters():
            recorded = hooks.lookup_units(p)
            if edit and name == "fc1.weight":
                assert recorded is None
            else:
                assert recorded is not None
                torch.testing.assert_close(recorded, unit_norms(p.grad), rtol=RTOL, atol=0.0)
        expected = recomputed_norm(list(model.parameters()))
        hits, misses = counts(opt)
        opt.step()
        assert counts(opt) == (hits + 4 - edit, misses + edit)
        assert_grad_norm(opt, expected)
        opt_nh.step()
        smallest = agc_(list(ref.parameters()), 0.01)
        ref_opt.step()
        assert smallest < 1.0  # AGC acted
        assert float(opt.last_step.clip_scale) == pytest.approx(smallest, rel=1e-5)
        assert_models_close(model, ref)
        assert_models_close(model, no_hooks, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("edit", [False, True])
def test_value_clip_uses_valid_inf_norms(edit: bool) -> None:
    model, opt, ref, ref_opt = make_pair("value:0.05")
    hooks = hooks_of(opt)
    assert hooks.norm_types == (2.0, math.inf)
    for step in range(4):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            backward(m, step)
            if edit:
                m.fc2.bias.grad.mul_(10.0)
        params = list(model.parameters())
        if not edit:
            for p in params:
                recorded = hooks.lookup(p, math.inf)
                assert recorded is not None
                assert float(recorded) == pytest.approx(float(p.grad.abs().max()), rel=RTOL)
        absmax = recomputed_norm(params, math.inf)
        expected = recomputed_norm(params)
        hits, misses = counts(opt)
        opt.step()
        # two norms (2 and inf) per parameter; the edited one is measured again for both
        assert counts(opt) == (hits + 8 - 2 * edit, misses + 2 * edit)
        assert_grad_norm(opt, expected)
        assert absmax > 0.05
        assert float(opt.last_step.clip_scale) == pytest.approx(0.05 / absmax, rel=RTOL)
        torch.nn.utils.clip_grad_value_(ref.parameters(), 0.05)
        ref_opt.step()
        assert_models_close(model, ref)


# --------------------------------------------------------------------------------------
# 7. property: random models, accumulation and edits
# --------------------------------------------------------------------------------------

PROPERTY_EDITS = ("none", "none", "mul_", "add_", "replace", "zero_")
PROPERTY_CLIPS = (None, "global_norm:1", "value:0.1", "agc:0.01", "norm:0.5")


def _apply(edit: str, p: nn.Parameter, gen: torch.Generator) -> None:
    if edit == "mul_":
        p.grad.mul_(-1.7)
    elif edit == "add_":
        p.grad.add_(0.3)
    elif edit == "replace":
        p.grad = torch.randn(p.shape, generator=gen)
    elif edit == "zero_":
        p.grad.zero_()


@settings(max_examples=40, deadline=None)
@given(
    widths=st.lists(st.integers(1, 7), min_size=2, max_size=4),
    bias=st.booleans(),
    micro_batches=st.integers(1, 3),
    set_to_none=st.booleans(),
    edits=st.lists(st.sampled_from(PROPERTY_EDITS), min_size=2, max_size=12),
    clip=st.sampled_from(PROPERTY_CLIPS),
    seed=st.integers(0, 2**16),
)
def test_property_grad_norm_equals_recomputed(
    widths: list[int],
    bias: bool,
    micro_batches: int,
    set_to_none: bool,
    edits: list[str],
    clip: str | None,
    seed: int,
) -> None:
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b, bias=bias), nn.Tanh()]
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    params = list(model.parameters())
    opt = gradguard.SGD(params, lr=0.01, clip=clip)
    per_param = 2 if clip is not None and clip.startswith("value") else 1
    for step in range(2):
        opt.zero_grad(set_to_none=set_to_none)
        for _ in range(micro_batches):
            x = torch.randn(3, widths[0], generator=gen)
            model(x).pow(2).sum().backward()
        edited = 0
        for i, p in enumerate(params):
            e = edits[(i + step) % len(edits)]
            _apply(e, p, gen)
            edited += e != "none"
        expected = recomputed_norm(params)
        hits, misses = counts(opt)
        opt.step()
        n = len(params)
        assert counts(opt) == (hits + per_param * (n - edited), misses + per_param * edited)
        assert_grad_norm(opt, expected)


def test_recomputed_norm_helper() -> None:
    model = TinyNet()
    for p in model.parameters():
        p.grad = torch.full_like(p, 2.0)
    n = sum(p.numel() for p in model.parameters())
    assert recomputed_norm(list(model.parameters())) == pytest.approx(2.0 * math.sqrt(n))
    assert recomputed_norm(list(model.parameters()), math.inf) == 2.0
