"""Regression tests: gradguard's optimizers as drop-ins for torch.optim in corners the generic
tests do not reach. The reference is always torch.optim's class of the same name with
``foreach=False`` (torch's for-loop), never a hard-coded number.

1. Strided parameters and gradients (gapped views, transposes, channels_last, gradients whose
   strides differ from the parameter's) on every backend.
2. Checkpoints that do not fit: wrong-shaped, wrong-class or incomplete state must be refused
   at ``load_state_dict`` (before a step can run on it), a numeric ``step`` accepted.
3. GradScaler at very large scales, with and without a clip.
4. float64 with a binding global-norm clip, to float64 precision.
5. Tensor learning rates of shape ``[1, 1]`` and ``[1]``.
6. SGD without momentum keeps no per-parameter state.
7. A gradient at the clip threshold (up to rounding) does not count as clipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

import gradguard
from gradguard.optim.backends import compiled as _backends
from helpers import assert_tree_equal, snapshot
from optim_table import TABLE

# the optimizers torch.optim has, and all of them: from the test table
NAMES = tuple(e.name for e in TABLE if e.torch_cls is not None)
STEPPED = tuple(n for n in NAMES if n != "SGD")  # the optimizers whose state holds a "step"
LAYOUTS = ("gapped_view", "transposed", "channels_last", "grad_strides")

_compile_works: bool | None = None


def torch_compile_works() -> bool:
    """Whether torch.compile itself works here (checked once, on a trivial function)."""
    global _compile_works
    if _compile_works is None:
        try:
            fn = torch.compile(lambda x: x * 2 + 1, fullgraph=True)
            _compile_works = bool(torch.equal(fn(torch.ones(3)), torch.full((3,), 3.0)))
        except Exception:
            _compile_works = False
    return _compile_works


@pytest.fixture(autouse=True)
def fresh_compiler(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts with gradguard's compiler enabled where torch.compile works (a failed
    compile disables it for the whole process), and leaves the process as it found it."""
    monkeypatch.setattr(_backends, "_compile_failed",
                        None if torch_compile_works() else _backends._compile_failed)
    yield


def make(name: str, params: Any, **kwargs: Any) -> Optimizer:
    cls: type[Optimizer] = getattr(gradguard, name)
    return cls(params, **kwargs)


def make_torch(name: str, params: Any, **kwargs: Any) -> Optimizer:
    cls: type[Optimizer] = getattr(torch.optim, name)
    return cls(params, foreach=False, **kwargs)


def assert_states_close(opt: Optimizer, ref: Optimizer, params: list[Tensor],
                        ref_params: list[Tensor], **tol: float) -> None:
    """Every parameter's state: the same keys, and close tensors."""
    for i, (p, q) in enumerate(zip(params, ref_params, strict=True)):
        got, want = opt.state.get(p, {}), ref.state.get(q, {})
        assert set(got) == set(want), f"param {i}: state keys {set(got)} != {set(want)}"
        for key in want:
            torch.testing.assert_close(got[key], want[key], **tol,
                                       msg=lambda m, i=i, k=key: f"param {i} state {k}: {m}")


# --------------------------------------------------------------------------------------
# 1. strided parameters and gradients
# --------------------------------------------------------------------------------------

STRIDED_CONFIGS: dict[str, tuple[dict[str, Any], ...]] = {
    "SGD": ({"lr": 0.05, "momentum": 0.9}, {"lr": 0.05, "momentum": 0.0}),
    "Adam": ({"lr": 1e-2, "weight_decay": 0.1}, {"lr": 1e-2, "amsgrad": True}),
    "AdamW": ({"lr": 1e-2}, {"lr": 1e-2, "amsgrad": True}),
    "Adagrad": ({"lr": 0.05}, {"lr": 0.05, "weight_decay": 0.1}),
    "NAdam": ({"lr": 1e-2}, {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    "Adamax": ({"lr": 1e-2}, {"lr": 1e-2, "weight_decay": 0.1}),
    "RMSprop": ({"lr": 1e-3}, {"lr": 1e-3, "momentum": 0.9, "centered": True}),
    "Adadelta": ({}, {"weight_decay": 0.1}),
}


def _cfg_id(config: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in config.items()) or "defaults"


def make_strided(layout: str, seed: int) -> tuple[nn.Parameter, Tensor]:
    """A parameter of ``layout`` and the tensor owning its storage (gaps included)."""
    gen = torch.Generator().manual_seed(seed)
    if layout == "gapped_view":
        base = torch.randn(6, 8, generator=gen)
        p = nn.Parameter(base[:, ::2])
        assert p.stride() == (8, 2) and p.untyped_storage().data_ptr() == base.data_ptr()
        return p, base
    if layout == "transposed":
        p = nn.Parameter(torch.randn(6, 4, generator=gen).t())
        assert p.shape == (4, 6) and p.stride() == (1, 4)
    elif layout == "channels_last":
        p = nn.Parameter(torch.randn(2, 3, 4, 5, generator=gen)
                         .to(memory_format=torch.channels_last))
        assert not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
    else:
        p = nn.Parameter(torch.randn(6, 4, generator=gen))
    return p, p


def make_strided_grad(p: Tensor, layout: str, step: int) -> Tensor:
    """Fresh random values; with the parameter's strides where they are dense (as autograd
    gives them), column-major for ``grad_strides``."""
    values = torch.randn(p.shape, generator=torch.Generator().manual_seed(100 + step))
    if layout == "grad_strides":
        g = values.t().contiguous().t()
        assert g.stride() != p.stride() and torch.equal(g, values)
        return g
    return torch.empty_like(p).copy_(values)


def run_strided(name: str, config: dict[str, Any], layout: str, backend: str) -> None:
    compiler_before = _backends.compile_available()
    p, base = make_strided(layout, 0)
    q, ref_base = make_strided(layout, 0)
    opt = make(name, [p], backend=backend, **config)
    ref = make_torch(name, [q], **config)
    for step in range(5):
        g = make_strided_grad(p, layout, step)
        p.grad = g.clone(memory_format=torch.preserve_format)
        q.grad = g.clone(memory_format=torch.preserve_format)
        opt.step()
        ref.step()
        torch.testing.assert_close(p.detach(), q.detach(),
                                   msg=lambda m, s=step: f"param after step {s}: {m}")
    torch.testing.assert_close(base.detach(), ref_base.detach(),
                               msg=lambda m: f"storage (gaps included): {m}")
    assert_states_close(opt, ref, [p], [q])
    assert _backends.compile_available() or not compiler_before, (
        f"the step disabled the compiled path: {_backends._compile_failed}")


@pytest.mark.parametrize("backend", ("auto", "flat", "native", "foreach", "eager"))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("name", "config"), [
    pytest.param(n, c, id=f"{n}[{_cfg_id(c)}]") for n in NAMES for c in STRIDED_CONFIGS[n]])
def test_strided_params_match_torch(name: str, config: dict[str, Any], layout: str,
                                    backend: str) -> None:
    run_strided(name, config, layout, backend)


@pytest.mark.parametrize("name", NAMES)
def test_strided_grads_compiled_match_torch(name: str) -> None:
    if not torch_compile_works():
        pytest.skip("torch.compile does not work here")
    run_strided(name, STRIDED_CONFIGS[name][0], "grad_strides", "compiled")


@pytest.mark.parametrize("name", NAMES)
def test_zero_dim_param_compiled_matches_torch(name: str) -> None:
    """A 0-d parameter beside a matrix: its state (a 0-d exp_avg beside a 0-d step) is
    flattened with it on the compiled path (it once failed to compile, which switched the
    compiled path off for the whole process)."""
    if not torch_compile_works():
        pytest.skip("torch.compile does not work here")
    gen = torch.Generator().manual_seed(3)
    ours = [nn.Parameter(torch.randn(4, 3, generator=gen)), nn.Parameter(torch.randn(()))]
    theirs = [nn.Parameter(p.detach().clone()) for p in ours]
    config = STRIDED_CONFIGS[name][0]
    opt = make(name, ours, backend="compiled", **config)
    ref = make_torch(name, theirs, **config)
    for step in range(4):
        for p, q in zip(ours, theirs, strict=True):
            q.grad = torch.randn(p.shape, generator=gen)
            p.grad = q.grad.clone()
        opt.step()
        ref.step()
        for p, q in zip(ours, theirs, strict=True):
            torch.testing.assert_close(p.detach(), q.detach(),
                                       msg=lambda m, s=step: f"step {s}: {m}")
    assert_states_close(opt, ref, ours, theirs)
    assert _backends.compile_available(), f"compiling failed: {_backends._compile_failed}"


# --------------------------------------------------------------------------------------
# 2. checkpoints that do not fit
# --------------------------------------------------------------------------------------

CKPT_CONFIG: dict[str, dict[str, Any]] = {"SGD": {"momentum": 0.9}}
STATE_KEY = {"SGD": "momentum_buffer", "Adam": "exp_avg", "AdamW": "exp_avg_sq",
             "Adagrad": "sum", "NAdam": "exp_avg_sq", "Adamax": "exp_inf",
             "RMSprop": "square_avg", "Adadelta": "acc_delta"}
CKPT_SIZES = (4, 5, 12)  # the tests corrupt the 12-element parameter, params[2]


def trained(name: str, steps: int = 1, **kwargs: Any) -> tuple[Optimizer, list[nn.Parameter]]:
    gen = torch.Generator().manual_seed(3)
    params = [nn.Parameter(torch.randn(n, generator=gen)) for n in CKPT_SIZES]
    opt = make(name, params, **{**CKPT_CONFIG.get(name, {}), **kwargs})
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return opt, params


def load_error(opt: Optimizer, state_dict: dict[str, Any]) -> str:
    """The message of the ValueError ``load_state_dict`` must raise. Fails at once where it
    loads: a step on such state can corrupt memory and abort the process."""
    try:
        opt.load_state_dict(state_dict)
    except ValueError as e:
        return str(e)
    pytest.fail("load_state_dict accepted a state_dict that does not fit (not stepping on it)")


@pytest.mark.parametrize("name", NAMES)
def test_load_rejects_wrong_shaped_state(name: str) -> None:
    opt, _ = trained(name)
    before = snapshot(opt.state_dict())
    bad = snapshot(opt.state_dict())
    key = STATE_KEY[name]
    assert bad["state"][2][key].shape == (12,)
    bad["state"][2][key] = torch.zeros(7)
    msg = load_error(opt, bad)
    assert key in msg, msg
    assert re.search(r"\b2\b", msg), f"the parameter index (2) is not named: {msg}"
    assert re.search(r"\b12\b", msg), f"the expected shape (12,) is not named: {msg}"
    assert re.search(r"\b7\b", msg), f"the found shape (7,) is not named: {msg}"
    assert_tree_equal(opt.state_dict(), before, "after the failed load")


def test_load_rejects_state_of_another_optimizer() -> None:
    sgd, _ = trained("SGD")
    adam, _ = trained("Adam")
    before = snapshot(adam.state_dict())
    msg = load_error(adam, snapshot(sgd.state_dict()))
    assert any(k in msg for k in ("exp_avg", "step", "momentum_buffer")), msg
    assert_tree_equal(adam.state_dict(), before, "after the failed load")


@pytest.mark.parametrize("name", STEPPED)  # (torch's SGD takes a missing momentum_buffer)
def test_load_rejects_missing_state_key(name: str) -> None:
    opt, _ = trained(name)
    before = snapshot(opt.state_dict())
    bad = snapshot(opt.state_dict())
    key = "exp_avg_sq" if name in ("Adam", "AdamW", "NAdam") else STATE_KEY[name]
    del bad["state"][2][key]
    msg = load_error(opt, bad)
    assert key in msg, msg
    assert_tree_equal(opt.state_dict(), before, "after the failed load")


@pytest.mark.parametrize("backend", ("auto", "eager"))
@pytest.mark.parametrize("name", STEPPED)
def test_load_numeric_step(name: str, backend: str) -> None:
    """Older torch checkpoints hold ``step`` as a Python number: loaded, a step gives what the
    same checkpoint with tensor steps gives, and what torch.optim does with it."""
    gen = torch.Generator().manual_seed(5)
    source = [nn.Parameter(torch.randn(n, generator=gen)) for n in CKPT_SIZES]
    src = make_torch(name, source)
    for _ in range(3):
        for p in source:
            p.grad = torch.randn(p.shape, generator=gen)
        src.step()
    tensor_sd = src.state_dict()
    float_sd = snapshot(tensor_sd)
    for st in float_sd["state"].values():
        st["step"] = float(st["step"])
    runs = []
    for kind, sd in (("float", float_sd), ("tensor", tensor_sd), ("torch", float_sd)):
        params = [nn.Parameter(p.detach().clone()) for p in source]
        opt = make_torch(name, params) if kind == "torch" else make(name, params,
                                                                    backend=backend)
        opt.load_state_dict(snapshot(sd))
        runs.append((opt, params))
    grads = [[torch.randn(n, generator=gen) for n in CKPT_SIZES] for _ in range(2)]
    for gs in grads:
        for opt, params in runs:
            for p, g in zip(params, gs, strict=True):
                p.grad = g.clone()
            opt.step()
    (opt_f, p_f), (_, p_t), (ref, p_ref) = runs
    for i in range(len(CKPT_SIZES)):
        torch.testing.assert_close(p_f[i], p_t[i], msg=lambda m, i=i: f"vs tensor step {i}: {m}")
        torch.testing.assert_close(p_f[i], p_ref[i], msg=lambda m, i=i: f"vs torch {i}: {m}")
    assert_states_close(opt_f, ref, p_f, p_ref)


# --------------------------------------------------------------------------------------
# 3. GradScaler at large scales
# --------------------------------------------------------------------------------------

AMP_SCALES = pytest.mark.parametrize("init_scale", (2.0**64, 2.0**100), ids=("2^64", "2^100"))
AMP_CLIPS = pytest.mark.parametrize("clip", (None, "global_norm:1.0"))


def amp_pair(init_scale: float, clip: str | None) -> list[tuple[nn.Module, Optimizer, Any]]:
    """(model, optimizer, scaler) for gradguard and for torch, from the same weights."""
    out = []
    for kind in ("gradguard", "torch"):
        model = nn.Linear(8, 4)
        gen = torch.Generator().manual_seed(11)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        opt = (make("Adam", model.parameters(), lr=1e-2, clip=clip) if kind == "gradguard"
               else make_torch("Adam", model.parameters(), lr=1e-2))
        out.append((model, opt, torch.amp.GradScaler("cpu", init_scale=init_scale)))
    return out


def amp_step(model: nn.Module, opt: Optimizer, scaler: Any, step: int, *, clip: str | None,
             reference: bool, poison: bool = False) -> None:
    gen = torch.Generator().manual_seed(500 + step)
    x, y = torch.randn(16, 8, generator=gen), torch.randn(16, 4, generator=gen)
    opt.zero_grad(set_to_none=True)
    scaler.scale(F.mse_loss(model(x), y)).backward()
    if poison:
        with torch.no_grad():
            model.weight.grad[0, 0] = float("inf")
    if reference and clip is not None:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()


@AMP_CLIPS
@AMP_SCALES
def test_grad_scaler_large_scale_matches_torch(init_scale: float, clip: str | None) -> None:
    (model, opt, scaler), (ref_model, ref, ref_scaler) = amp_pair(init_scale, clip)
    for step in range(20):
        amp_step(model, opt, scaler, step, clip=clip, reference=False)
        amp_step(ref_model, ref, ref_scaler, step, clip=clip, reference=True)
        assert scaler.get_scale() == ref_scaler.get_scale() == init_scale, step
        for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
            torch.testing.assert_close(p, q, msg=lambda m, s=step: f"step {s}: {m}")
    assert int(opt.skipped_steps) == 0, "gradguard skipped steps whose gradients were finite"


@AMP_CLIPS
@AMP_SCALES
def test_grad_scaler_backs_off_like_torch(init_scale: float, clip: str | None) -> None:
    (model, opt, scaler), (ref_model, ref, ref_scaler) = amp_pair(init_scale, clip)
    for step in range(3):
        amp_step(model, opt, scaler, step, clip=clip, reference=False)
        amp_step(ref_model, ref, ref_scaler, step, clip=clip, reference=True)
    for step in range(3, 15):  # 12 steps with a truly infinite gradient
        try:
            amp_step(model, opt, scaler, step, clip=clip, reference=False, poison=True)
        except gradguard.NonFiniteGradientError as e:
            pytest.fail(f"step {step}, GradScaler still backing off from scale "
                        f"{scaler.get_scale()}: {e}")
        amp_step(ref_model, ref, ref_scaler, step, clip=clip, reference=True, poison=True)
        assert scaler.get_scale() == ref_scaler.get_scale(), step
    assert ref_scaler.get_scale() == init_scale / 2**12 > 1
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p, q)


# --------------------------------------------------------------------------------------
# 4. float64 with a binding clip
# --------------------------------------------------------------------------------------

FP64_CONFIGS = {"SGD": {"lr": 0.05, "momentum": 0.9}, "Adam": {"lr": 1e-2},
                "AdamW": {"lr": 1e-2}, "Adagrad": {"lr": 0.05}}


def mlp64() -> nn.Module:
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    gen = torch.Generator().manual_seed(21)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.to(torch.float64)


@pytest.mark.parametrize("backend", ("eager", "foreach", "native", "compiled"))
@pytest.mark.parametrize("name", tuple(FP64_CONFIGS))
def test_float64_binding_clip_matches_torch(name: str, backend: str) -> None:
    if backend == "compiled" and not torch_compile_works():
        pytest.skip("torch.compile does not work here")
    model, ref_model = mlp64(), mlp64()
    opt = make(name, model.parameters(), clip="global_norm:0.1", backend=backend,
               **FP64_CONFIGS[name])
    ref = make_torch(name, ref_model.parameters(), **FP64_CONFIGS[name])
    binding = 0
    for step in range(100):
        gen = torch.Generator().manual_seed(900 + step)
        x = torch.randn(16, 6, generator=gen, dtype=torch.float64)
        y = torch.randn(16, 3, generator=gen, dtype=torch.float64)
        for m, o in ((model, opt), (ref_model, ref)):
            o.zero_grad(set_to_none=True)
            F.mse_loss(m(x), y).backward()
        norm = torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 0.1)
        binding += int(norm > 0.1)
        opt.step()
        ref.step()
        for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12,
                                       msg=lambda m, s=step: f"step {s}: {m}")
    assert binding > 50 and int(opt.clipped_steps) == binding
    assert backend not in ("native", "compiled") or _backends.compile_available()


# --------------------------------------------------------------------------------------
# 5. tensor learning rates of shape [1, 1] and [1]
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ("auto", "foreach", "eager"))
@pytest.mark.parametrize("lr_shape", ((1, 1), (1,)), ids=("lr[1,1]", "lr[1]"))
@pytest.mark.parametrize(("name", "config"), [
    pytest.param(n, c, id=f"{n}[{_cfg_id(c)}]") for n in NAMES for c in STRIDED_CONFIGS[n]])
def test_tensor_lr_matches_torch(name: str, config: dict[str, Any], lr_shape: tuple[int, ...],
                                 backend: str) -> None:
    config = {**config, "lr": torch.full(lr_shape, 0.01)}
    shapes: tuple[tuple[int, ...], ...] = ((12,), (3, 4), (1,))
    gen = torch.Generator().manual_seed(8)
    init = [torch.randn(s, generator=gen) for s in shapes]
    params = [nn.Parameter(t.clone()) for t in init]
    ref_params = [nn.Parameter(t.clone()) for t in init]
    opt = make(name, params, backend=backend, **config)
    ref = make_torch(name, ref_params, **config)
    for _ in range(3):
        for p, q in zip(params, ref_params, strict=True):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
    for i, (p, q) in enumerate(zip(params, ref_params, strict=True)):
        torch.testing.assert_close(p, q, msg=lambda m, i=i: f"param {i}: {m}")
    assert_states_close(opt, ref, params, ref_params)


# --------------------------------------------------------------------------------------
# 6. SGD without momentum keeps no state
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ("auto", "foreach", "eager"))
def test_sgd_without_momentum_keeps_no_state(backend: str) -> None:
    p, q = nn.Parameter(torch.ones(5)), nn.Parameter(torch.ones(5))
    opt = make("SGD", [p], lr=0.1, backend=backend)
    ref = make_torch("SGD", [q], lr=0.1)
    p.grad, q.grad = torch.ones(5), torch.ones(5)
    opt.step()
    ref.step()
    assert len(ref.state) == 0 and ref.state_dict()["state"] == {}
    assert len(opt.state) == len(ref.state), dict(opt.state)
    assert opt.state_dict()["state"] == ref.state_dict()["state"]


# --------------------------------------------------------------------------------------
# 7. the clip threshold up to rounding
# --------------------------------------------------------------------------------------

def _at_threshold(case: str) -> Tensor:
    if case == "exact":
        return torch.full((4,), 0.5)  # norm exactly 1.0 in float32
    g = torch.randn(12, generator=torch.Generator().manual_seed(4))
    return (g / g.norm()) * (1 - 2**-23)  # norm 1.0 up to float32 rounding


@pytest.mark.parametrize("case", ("exact", "normalised"))
def test_threshold_norm_is_not_counted_as_clipped(case: str) -> None:
    g = _at_threshold(case)
    assert abs(float(g.double().norm()) - 1.0) < 4 * 2**-23
    p = nn.Parameter(torch.zeros_like(g))
    opt = make("SGD", [p], lr=0.1, clip="global_norm:1.0")
    p.grad = g.clone()
    opt.step()
    assert opt.last_step is not None
    assert not bool(opt.last_step.clipped), f"norm {float(opt.last_step.grad_norm)!r} clipped"
    assert int(opt.clipped_steps) == 0


def test_norm_above_threshold_is_clipped() -> None:
    g = _at_threshold("normalised") * 1.5
    p = nn.Parameter(torch.zeros_like(g))
    opt = make("SGD", [p], lr=0.1, clip="global_norm:1.0")
    p.grad = g.clone()
    opt.step()
    assert opt.last_step is not None and bool(opt.last_step.clipped)
    assert int(opt.clipped_steps) == 1


# --------------------------------------------------------------------------------------
# 8. differentiable steps: every optimizer, every clip policy
# --------------------------------------------------------------------------------------

ALL_NAMES = tuple(e.name for e in TABLE)
CLIPS = (None, "global_norm:0.5", "norm:0.5", "value:0.3", "agc:0.05", "auto:50", "zclip:2.5")


@pytest.mark.parametrize("clip", CLIPS, ids=[str(c) for c in CLIPS])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_differentiable_step_passes_gradcheck(name: str, clip: str | None) -> None:
    """Two steps with ``differentiable=True`` as a function of the initial parameter and both
    gradients (float64): autograd's derivative equals the finite differences, the clip in
    the graph (its scale depends on the gradients, so a clip that binds changes the
    derivative)."""
    gen = torch.Generator().manual_seed(7)
    p0 = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    grads = [torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
             for _ in range(2)]
    kwargs: dict[str, Any] = {"lr": 0.1, "differentiable": True, "clip": clip}
    if name == "SGD":
        kwargs["momentum"] = 0.9

    def two_steps(p_init: Tensor, g1: Tensor, g2: Tensor) -> tuple[Tensor, ...]:
        p = p_init.clone()  # not a leaf: the step may write it under autograd
        opt = getattr(gradguard, name)([p], **kwargs)
        for g in (g1, g2):
            p.grad = g
            opt.step()
        state = [v for v in opt.state[p].values()
                 if isinstance(v, Tensor) and v.requires_grad]
        return (p, *state)

    assert torch.autograd.gradcheck(two_steps, (p0, *grads), eps=1e-6, atol=1e-5)
