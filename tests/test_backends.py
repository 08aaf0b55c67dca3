"""The fast execution paths against the eager reference.

- ``compiled`` (torch.compile of the reference update) vs ``eager`` for every optimizer and a
  selection of clip policies, with a non-finite step in the middle: parameters, every state
  tensor, clip-policy state and counters agree.
- ``foreach`` (the rules run once over lists of tensors with torch's ``_foreach_*`` ops) vs
  ``eager`` the same way, bitwise on the CPU, plus mixed ranks (LARS), fresh momentum buffers,
  float64 and bfloat16, tensor learning rates and betas; the TensorList operations one by one.
- ``native`` / ``auto`` (torch's fused kernels) vs ``eager`` for Adam, AdamW, SGD and Adagrad,
  checking which kernel really ran (counting wrappers around torch's ``_fused_*_`` ops), and
  that ineligible settings do not use the fused kernel.
- bfloat16 parameters on the compiled path.
- A learning-rate schedule and a changing clip scale do not recompile.
- A broken compiler falls back to the foreach path with exactly one warning.
- A healthy compiled or native step makes no host read.

Compiling costs seconds per configuration, so every configuration here is compiled once (the
combinations are chosen to share compiled graphs between tests) on four small tensors.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import random
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters as dynamo_counters

import gradguard
from gradguard import rules
from gradguard.optim import backends
from gradguard.optim.backends import compiled as _backends
from gradguard.optim.backends import eager
from gradguard.optim.backends import foreach as _foreach
from gradguard.optim.backends._tensorlist import TensorList
from gradguard.optim.backends.eager import update_tensors
from gradguard.optim.backends.foreach import update_foreach
from helpers import assert_tree_equal, count_host_reads, snapshot, wrap_counting
from optim_table import TABLE, OptimizerEntry

ENTRIES = {e.name: e for e in TABLE}

SHAPES: tuple[tuple[int, ...], ...] = ((12, 6), (12,), (3, 12), (3,))
STEPS = 20
NAN_STEP = 5  # a NaN in one gradient entry: both paths must skip this step
SPIKE_STEP = 12  # a 30x larger gradient (what ZClip and AutoClip react to)
RTOL, ATOL = 1e-5, 1e-6

FUSED_OPS = ("_fused_adam_", "_fused_adamw_", "_fused_sgd_", "_fused_adagrad_")


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def make_params(
    shapes: tuple[tuple[int, ...], ...] = SHAPES, dtype: torch.dtype = torch.float32, seed: int = 0
) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [
        nn.Parameter((torch.randn(s, generator=gen, dtype=torch.float64) * 0.5).to(dtype))
        for s in shapes
    ]


def make_grads(
    step: int,
    shapes: tuple[tuple[int, ...], ...] = SHAPES,
    dtype: torch.dtype = torch.float32,
    *,
    nan_step: int | None = NAN_STEP,
) -> list[torch.Tensor]:
    """Fresh random gradients for ``step``, of a magnitude that varies over two decades (so
    global-norm clipping is active on some steps and not on others)."""
    gen = torch.Generator().manual_seed(7919 + step)
    magnitude = 10 ** (float(torch.rand((), generator=gen, dtype=torch.float64)) * 2.2 - 1.5)
    if step == SPIKE_STEP:
        magnitude *= 30
    grads = [
        (torch.randn(s, generator=gen, dtype=torch.float64) * magnitude).to(dtype) for s in shapes
    ]
    if step == nan_step:
        grads[1].view(-1)[3] = float("nan")
    return grads


def set_grads(params: list[nn.Parameter], grads: list[torch.Tensor]) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()


def assert_tree_close(a: Any, b: Any, *, rtol: float, atol: float, path: str = "") -> None:
    """Nested dicts/lists of tensors: floating tensors close (``atol`` relative to the largest
    magnitude of the expected tensor, at least 1), everything else equal."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), f"{path}: type"
        assert a.dtype == b.dtype, f"{path}: dtype {a.dtype} != {b.dtype}"
        assert a.shape == b.shape, f"{path}: shape {a.shape} != {b.shape}"
        if a.is_floating_point():
            ea, eb = a.detach().to(torch.float64), b.detach().to(torch.float64)
            finite = eb[torch.isfinite(eb)]
            scale = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
            torch.testing.assert_close(
                ea, eb, rtol=rtol, atol=atol * scale, equal_nan=True, msg=lambda m: f"{path}: {m}"
            )
        else:
            assert torch.equal(a, b), f"{path}: {a} != {b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {set(a)} != {set(b)}"
        for key in a:
            assert_tree_close(a[key], b[key], rtol=rtol, atol=atol, path=f"{path}/{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), f"{path}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_tree_close(x, y, rtol=rtol, atol=atol, path=f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@contextmanager
def count_paths(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Count which execution path runs: ``"compiled"`` (a call of the compiled update),
    ``"eager"`` (the reference ``update_tensors``), ``"foreach"`` (``update_foreach``) and
    each of torch's fused optimizer ops. Every wrapper calls the original."""
    counts: Counter[str] = Counter()
    with monkeypatch.context() as m:
        original_compiled = _backends._compiled_update

        def compiled_update(rule: Any = None) -> Any:
            fn = original_compiled(rule)

            def counted(*args: Any, **kwargs: Any) -> Any:
                counts["compiled"] += 1
                return fn(*args, **kwargs)

            return counted

        m.setattr(_backends, "_compiled_update", compiled_update)
        wrap_counting(m, counts, eager, "update_tensors", "eager")
        wrap_counting(m, counts, _foreach, "update_foreach", "foreach")
        for name in FUSED_OPS:
            wrap_counting(m, counts, torch, name)
        yield counts


def run_pair(
    name: str,
    config: dict[str, Any],
    clip: str | None,
    backend: str,
    *,
    dtype: torch.dtype = torch.float32,
    shapes: tuple[tuple[int, ...], ...] = SHAPES,
    steps: int = STEPS,
    rtol: float = RTOL,
    atol: float = ATOL,
    lr_lambda: Callable[[int], float] | None = None,
    after_step: Callable[[int, torch.optim.Optimizer], None] | None = None,
    nan_step: int = NAN_STEP,
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Train the same parameters with ``backend`` and with ``eager`` on identical gradients,
    asserting after every step that the two agree and that the NaN step (``nan_step``) changed
    nothing."""
    cls = getattr(gradguard, name)
    params_a, params_b = make_params(shapes, dtype), make_params(shapes, dtype)
    opt_a = cls(params_a, clip=clip, backend=backend, **config)
    opt_b = cls(params_b, clip=clip, backend="eager", **config)
    assert (opt_a.backend, opt_b.backend) == (backend, "eager")
    scheds = []
    if lr_lambda is not None:
        scheds = [torch.optim.lr_scheduler.LambdaLR(o, lr_lambda) for o in (opt_a, opt_b)]
    for step in range(steps):
        grads = make_grads(step, shapes, dtype, nan_step=nan_step)
        set_grads(params_a, grads)
        set_grads(params_b, grads)
        before = [p.detach().clone() for p in params_a]
        sd_before = snapshot(opt_a.state_dict())
        opt_a.step()
        opt_b.step()
        for s in scheds:
            s.step()
        rec_a, rec_b = opt_a.last_step, opt_b.last_step
        assert rec_a is not None and rec_b is not None
        assert bool(rec_a.skipped) == bool(rec_b.skipped) == (step == nan_step), step
        assert bool(rec_a.clipped) == bool(rec_b.clipped), step
        if step == nan_step:
            for i, (p, b) in enumerate(zip(params_a, before, strict=True)):
                assert torch.equal(p, b), f"{backend}: param {i} changed by the NaN step"
            if sd_before["state"]:  # (a skipped first step creates the initial state)
                assert_tree_equal(opt_a.state_dict()["state"], sd_before["state"], "state")
        else:
            torch.testing.assert_close(rec_a.grad_norm, rec_b.grad_norm, rtol=rtol, atol=0.0)
            torch.testing.assert_close(rec_a.clip_scale, rec_b.clip_scale, rtol=rtol, atol=atol)
        for i, (pa, pb) in enumerate(zip(params_a, params_b, strict=True)):
            torch.testing.assert_close(
                pa.detach().to(torch.float64),
                pb.detach().to(torch.float64),
                rtol=rtol,
                atol=atol,
                msg=lambda m, i=i, s=step: f"{name} {backend} step {s} param {i}: {m}",
            )
        if after_step is not None:
            after_step(step, opt_a)
    sd_a, sd_b = opt_a.state_dict(), opt_b.state_dict()
    stateless = name == "SGD" and not config.get("momentum")  # as torch's SGD: no state
    assert bool(sd_a["state"]) != stateless, "optimizer state (or its absence) differs from torch"
    assert_tree_close(sd_a, sd_b, rtol=rtol, atol=atol)
    assert int(opt_a.skipped_steps) == int(opt_b.skipped_steps) == 1
    assert int(opt_a.clipped_steps) == int(opt_b.clipped_steps)
    if clip is None:
        assert int(opt_a.clipped_steps) == 0
    else:  # the clip policy really acted on some steps (else the comparison proves little)
        assert int(opt_a.clipped_steps) > 0
    return opt_a, opt_b


@pytest.fixture
def compiler_ok() -> Iterator[None]:
    """These tests are about the compiled path: it must be available before and after."""
    assert _backends.compile_available(), _backends._compile_failed
    yield
    assert _backends.compile_available(), f"compiling failed: {_backends._compile_failed}"


# --------------------------------------------------------------------------------------
# 1. compiled vs eager
# --------------------------------------------------------------------------------------

# Every optimizer with global-norm clipping, and the other policies on a few optimizers each
# (chosen so that the fallback cases of the native tests reuse these compiled graphs).
COMPILED_CASES = [(e.name, "global_norm:1") for e in TABLE] + [
    ("SGD", None),
    ("Lion", None),
    ("AdamW", "agc:0.01"),
    ("LAMB", "agc:0.01"),
    ("Adagrad", "value:0.1"),
    ("RMSprop", "value:0.1"),
    ("Adam", "zclip:2.5:warmup=3"),
    ("LARS", "zclip:2.5:warmup=3"),
    ("Adam", "norm:0.5"),
]


@pytest.mark.parametrize(
    ("name", "clip"), [pytest.param(n, c, id=f"{n}-{c}") for n, c in COMPILED_CASES]
)
def test_compiled_matches_eager(
    name: str, clip: str | None, monkeypatch: pytest.MonkeyPatch, compiler_ok: None
) -> None:
    entry: OptimizerEntry = ENTRIES[name]
    with count_paths(monkeypatch) as counts:
        run_pair(name, entry.main, clip, "compiled")
    # every step of the compiled optimizer ran compiled (one chunk), the reference eagerly
    assert counts["compiled"] == STEPS
    assert counts["eager"] == STEPS
    assert not any(counts[op] for op in FUSED_OPS)


@pytest.mark.parametrize("threshold, expected", [(None, "foreach"), ("0", "compiled"),
                                                 ("100", "compiled"), ("101", "foreach")])
def test_auto_compiles_only_large_groups(threshold: str | None, expected: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # 100 elements: under the default threshold (2**20) and under 101, not under 0 or 100.
    if threshold is None:
        monkeypatch.delenv("GRADGUARD_COMPILE_MIN_NUMEL", raising=False)
    else:
        monkeypatch.setenv("GRADGUARD_COMPILE_MIN_NUMEL", threshold)
    w = torch.nn.Parameter(torch.randn(10, 10))
    opt = gradguard.RMSprop([w], lr=1e-2, clip="global_norm:1", backend="auto")
    with count_paths(monkeypatch) as counts:
        for _ in range(2):
            w.grad = torch.randn(10, 10)
            opt.step()
    other = "compiled" if expected == "foreach" else "foreach"
    assert counts[expected] == 2 and counts[other] == 0


def test_compile_min_numel_rejects_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADGUARD_COMPILE_MIN_NUMEL", "-5")
    with pytest.raises(ValueError, match="GRADGUARD_COMPILE_MIN_NUMEL: '-5'"):
        backends.compile_min_numel()


def test_compiled_lars_keeps_matrices_apart_from_vectors(
    monkeypatch: pytest.MonkeyPatch, compiler_ok: None
) -> None:
    # The compiled path flattens tensors; LARS's exclude_bias_and_norm branches on dim(), so
    # matrices must stay matrices there (flattened to 1-D they were treated as biases).
    config = {"lr": 5.0, "weight_decay": 1e-2, "exclude_bias_and_norm": True}
    with count_paths(monkeypatch) as counts:
        run_pair("LARS", config, "global_norm:1", "compiled")
    assert counts["compiled"] == STEPS


def test_compiled_cases_cover_every_optimizer_and_policy() -> None:
    assert {n for n, _ in COMPILED_CASES} == set(ENTRIES)
    kinds = {c.split(":")[0] if c else None for _, c in COMPILED_CASES}
    assert kinds >= {None, "global_norm", "agc", "value", "zclip", "norm"}


# --------------------------------------------------------------------------------------
# 1b. foreach (the rules over lists of tensors, torch._foreach_* ops) vs eager
# --------------------------------------------------------------------------------------

# Every optimizer with global-norm clipping, and every other policy on a few optimizers: unit-wise
# scales (AGC), a value clamp, per-tensor scales (norm), ZClip, none.
FOREACH_CASES = [(e.name, "global_norm:1") for e in TABLE] + [
    ("SGD", None),
    ("Lion", None),
    ("AdamW", "agc:0.01"),
    ("LAMB", "agc:0.01"),
    ("LARS", "agc:0.01"),
    ("Adagrad", "value:0.1"),
    ("RMSprop", "value:0.1"),
    ("Adam", "zclip:2.5:warmup=3"),
    ("LARS", "zclip:2.5:warmup=3"),
    ("Adam", "norm:0.5"),
    ("NAdam", "norm:0.5"),
    ("Adadelta", "auto:10"),
]


def run_foreach_pair(
    name: str, config: dict[str, Any], clip: str | None, monkeypatch: pytest.MonkeyPatch,
    **kwargs: Any,
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """:func:`run_pair` on the foreach backend, checking that the foreach path (and no other)
    ran for it, and that on the CPU it agrees with the reference bitwise."""
    steps = kwargs.get("steps", STEPS)
    with count_paths(monkeypatch) as counts:
        opt_a, opt_b = run_pair(name, config, clip, "foreach", **kwargs)
    assert counts["foreach"] == steps, dict(counts)
    assert counts["eager"] == steps, dict(counts)
    assert counts["compiled"] == 0 and not any(counts[op] for op in FUSED_OPS), dict(counts)
    for pa, pb in zip(opt_a.param_groups[0]["params"], opt_b.param_groups[0]["params"],
                      strict=True):
        assert torch.equal(pa, pb), f"{name} {clip}: foreach differs from eager"
    assert_tree_equal(opt_a.state_dict(), opt_b.state_dict())
    return opt_a, opt_b


@pytest.mark.parametrize(
    ("name", "clip"), [pytest.param(n, c, id=f"{n}-{c}") for n, c in FOREACH_CASES]
)
def test_foreach_matches_eager(name: str, clip: str | None,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    run_foreach_pair(name, ENTRIES[name].main, clip, monkeypatch)


def test_foreach_cases_cover_every_optimizer_and_policy() -> None:
    assert {n for n, _ in FOREACH_CASES} == set(ENTRIES)
    kinds = {c.split(":")[0] if c else None for _, c in FOREACH_CASES}
    assert kinds >= {None, "global_norm", "agc", "value", "zclip", "norm", "auto"}


def _cfg_id(config: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in config.items())


# Settings that take other branches of the rules, or other operand types in the TensorList ops.
FOREACH_CONFIGS = [
    # 2-D weights and 1-D biases in one group: per-rank buckets (the rule branches on dim())
    ("LARS", {"lr": 5.0, "weight_decay": 1e-2, "exclude_bias_and_norm": True}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "maximize": True}),
    ("Adam", {"lr": 1e-2, "amsgrad": True, "weight_decay": 0.1,
              "decoupled_weight_decay": True}),
    ("NAdam", {"lr": 1e-2, "weight_decay": 1e-2, "decoupled_weight_decay": True}),
    ("RMSprop", {"lr": 1e-3, "weight_decay": 1e-2}),  # not centered, no momentum
    ("Adagrad", {"lr": 0.05, "lr_decay": 1e-2, "weight_decay": 1e-2}),
    ("Lion", {"lr": 1e-3, "weight_decay": 0.1, "maximize": True}),
]


@pytest.mark.parametrize(
    ("name", "config"),
    [pytest.param(n, c, id=f"{n}[{_cfg_id(c)}]") for n, c in FOREACH_CONFIGS],
)
def test_foreach_other_settings_match_eager(
    name: str, config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_foreach_pair(name, config, "global_norm:1", monkeypatch)


@pytest.mark.parametrize("config", [{"dampening": 0.1}, {"nesterov": True}],
                         ids=["dampening", "nesterov"])
def test_foreach_sgd_fresh_buffers_after_skipped_first_step(
    config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first step is skipped: the momentum buffers stay uninitialised (``fresh``) and the
    next step must take the gradient as the buffer, on both paths."""
    opt_a, _ = run_foreach_pair("SGD", {"lr": 0.05, "momentum": 0.9, **config},
                                "global_norm:1", monkeypatch, nan_step=0)
    assert all(not bool(f) for f in opt_a._fresh.values())


@pytest.mark.parametrize("name", ["Adam", "NAdam", "LAMB", "LARS", "Adagrad"])
def test_foreach_float64_matches_eager(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    opt_a, _ = run_foreach_pair(name, ENTRIES[name].main, "global_norm:1", monkeypatch,
                                dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in opt_a.param_groups[0]["params"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", ["SGD", "Adam", "NAdam", "RMSprop", "LAMB", "Lion"])
def test_foreach_tensor_lr_matches_eager(
    name: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tensor learning rate (and tensor betas where the optimizer takes betas): the
    reflected operators with a tensor on the left (``lr * x``) go through the TensorList's
    ``__torch_function__``, and must keep the operand order (in bfloat16 ``lr * x`` and
    ``x * lr`` round differently)."""
    config = dict(ENTRIES[name].main)
    config["lr"] = torch.tensor(config["lr"])
    if "betas" in inspect.signature(ENTRIES[name].make).parameters:
        config["betas"] = (torch.tensor(0.9), torch.tensor(0.99))
    tol = {"rtol": 2e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {}
    run_foreach_pair(name, config, "global_norm:1", monkeypatch, dtype=dtype, steps=10, **tol)


def test_foreach_calls_the_rule_once_per_bucket() -> None:
    """Multi-tensor: one call of the rule per (device, dtype, rank, state layout) bucket, with
    TensorLists, not one per tensor; the results are the per-tensor reference's, bit for
    bit."""
    calls: list[tuple[int, int]] = []

    def counting_rule(param: Any, grad: Any, state: Any, **kw: Any) -> Any:
        assert isinstance(param, TensorList) and isinstance(grad, TensorList)
        calls.append((len(param), param.dim()))
        return rules.adam(param, grad, state, **kw)

    shapes = ((4, 3), (3,), (5, 2), (2,), (2, 2, 2), (6,))
    params = ([torch.randn(s) for s in shapes] + [torch.randn(3, dtype=torch.float64)]
              + [torch.randn(4, 3).t()])  # not contiguous
    states = [{"step": torch.zeros(()), "exp_avg": torch.zeros_like(p),
               "exp_avg_sq": torch.zeros_like(p)} for p in params]
    reference = [(p.clone(), {k: v.clone() for k, v in st.items()})
                 for p, st in zip(params, states, strict=True)]
    grads = [torch.randn_like(p) for p in params]
    hparams = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
               "maximize": False, "decoupled_weight_decay": False}
    before = [p.clone() for p in params]
    n = len(params)
    update_foreach(counting_rule, params, grads, states, [None] * n, None, [None] * n, None,
                   1e-2, hparams)
    assert sorted(calls) == [(1, 1), (1, 3), (3, 1), (3, 2)]
    assert all(not torch.equal(p, b) for p, b in zip(params, before, strict=True))
    for p, (ref_p, ref_st), g, st in zip(params, reference, grads, states, strict=True):
        update_tensors(rules.adam, [ref_p], [g], [ref_st], [None], None, [None], None, 1e-2,
                       hparams)  # the per-tensor reference, in the tensor's own shape
        assert torch.equal(p, ref_p) and p.shape == ref_p.shape
        assert all(torch.equal(st[k], ref_st[k]) for k in st)
    # a skipped step changes nothing, bitwise, even where the new values would be NaN
    after = [p.clone() for p in params]
    grads[0][0, 0] = float("nan")
    update_foreach(rules.adam, params, grads, states, [None] * n, None, [None] * n,
                   torch.tensor(True), 1e-2, hparams)
    assert all(torch.equal(p, a) for p, a in zip(params, after, strict=True))
    assert all(float(st["step"]) == 1.0 for st in states)


def test_foreach_chunks_large_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bucket over more than ``MAX_NUMEL`` elements is split into calls of at most that many
    (a larger tensor alone), bounding the memory the intermediate results take; the results do
    not change."""
    monkeypatch.setattr(_foreach, "MAX_NUMEL", 40)
    sizes: list[int] = []
    original = rules.rmsprop

    def counting_rule(param: Any, grad: Any, state: Any, **kw: Any) -> Any:
        if isinstance(param, TensorList):  # (the eager reference calls it per tensor)
            sizes.append(sum(t.numel() for t in param))
        return original(param, grad, state, **kw)

    monkeypatch.setattr(gradguard.RMSprop, "rule",
                        dataclasses.replace(gradguard.RMSprop.rule, update=counting_rule))
    shapes = ((12, 6), (12,), (3, 12), (3,), (2, 3), (30,), (5,))
    opt_a, _ = run_foreach_pair("RMSprop", ENTRIES["RMSprop"].main, "global_norm:1",
                                monkeypatch, shapes=shapes, steps=6)
    # per step, greedily in order: 2-D 72 | 36 | 6 (36 + 6 > 40); 1-D 12 + 3 | 30 + 5
    assert sorted(sizes[:5]) == [6, 15, 35, 36, 72]
    assert len(sizes) == 5 * 6
    assert opt_a.state_dict()["state"]


def _tl(*shapes: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32) -> TensorList:
    gen = torch.Generator().manual_seed(seed)
    return TensorList([torch.rand(s, generator=gen, dtype=torch.float64).to(dtype) + 0.5
                       for s in shapes])


# (name, function of two operands); applied to TensorLists and to their items one by one
TL_BINARY: list[tuple[str, Callable[[Any, Any], Any]]] = [
    ("add", lambda a, b: a + b), ("sub", lambda a, b: a - b), ("mul", lambda a, b: a * b),
    ("div", lambda a, b: a / b), ("pow", lambda a, b: a**b),
    ("gt", lambda a, b: a > b), ("le", lambda a, b: a <= b),
    ("maximum", torch.maximum), ("minimum", torch.minimum),
    ("lerp", lambda a, b: torch.lerp(a, a * 3, b)),
]


# Operand forms: a list of full and 0-d tensors, a list of 0-d tensors only (step counts,
# coefficients: held as one vector for the exactly rounded ops), a shared 0-d tensor or number
TL_FORMS = ["list-list", "list-0d", "0d-list", "list-number", "number-list", "tensor-list",
            "list-tensor", "0d-0d", "0d-number", "number-0d", "0d-tensor", "tensor-0d",
            "0d-tensor64", "0d-int"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64],
                         ids=["fp32", "bf16", "fp64"])
@pytest.mark.parametrize("operands", TL_FORMS)
@pytest.mark.parametrize(("name", "op"), TL_BINARY, ids=[n for n, _ in TL_BINARY])
def test_tensorlist_binary_ops_match_per_tensor(
    name: str, op: Callable[[Any, Any], Any], operands: str, dtype: torch.dtype
) -> None:
    """Every binary operation, every operand form: bitwise what the op gives tensor by tensor
    (0-d items broadcast against full ones; a tensor or number operand is shared), dtypes
    included (type promotion against a 0-d tensor of another dtype too). A list of 0-d
    tensors does the exactly rounded ops as one op over a vector, and its result, used again
    (against full tensors too), still matches."""
    full = _tl((3, 4), (5,), (), dtype=dtype)
    zero_d = _tl((), (), (), seed=1, dtype=dtype)
    scalar_t = torch.tensor(0.75)  # float32: a tensor lr or beta
    forms: dict[str, tuple[Any, Any]] = {
        "list-list": (full, _tl((3, 4), (5,), (), seed=2, dtype=dtype)),
        "list-0d": (full, zero_d), "0d-list": (zero_d, full),
        "list-number": (full, 0.3), "number-list": (0.3, full),
        "tensor-list": (scalar_t, full), "list-tensor": (full, scalar_t),
        "0d-0d": (zero_d, _tl((), (), (), seed=2, dtype=dtype)),
        "0d-number": (zero_d, 0.3), "number-0d": (0.3, zero_d),
        "0d-tensor": (zero_d, scalar_t.to(dtype)), "tensor-0d": (scalar_t.to(dtype), zero_d),
        "0d-tensor64": (zero_d, scalar_t.double()), "0d-int": (zero_d, 2),
    }
    a, b = forms[operands]
    numbers = ("list-number", "number-list", "0d-number", "number-0d", "0d-int")
    if name in ("maximum", "minimum") and operands in numbers:
        pytest.skip("torch.maximum takes tensors only")
    if name == "lerp" and (operands.startswith(("number", "tensor")) or operands == "0d-int"
                           or (operands in ("list-tensor", "0d-tensor64")
                               and dtype != torch.float32)):
        pytest.skip("lerp's start is a tensor; a tensor weight must have the input's dtype")

    def item(x: Any, i: int) -> Any:
        return x.items[i] if isinstance(x, TensorList) else x

    result = op(a, b)
    assert isinstance(result, TensorList), type(result)
    assert len(result) == 3
    wants = [op(item(a, i), item(b, i)) for i in range(3)]
    for i, (got, want) in enumerate(zip(result, wants, strict=True)):
        assert got.dtype == want.dtype and got.shape == want.shape, (i, got, want)
        assert torch.equal(got, want), (i, got, want)
    all_0d = "list" not in operands
    if not all_0d:
        return
    if name in ("add", "sub", "mul", "div") and operands != "0d-tensor64":
        assert isinstance(result._vec, torch.Tensor), "expected one op over a vector"
    if result.dtype.is_floating_point:
        again = (result * 2 - result) / (result + 1.5)
        mixed = full * again + (again * again).sqrt()
        for i, (g1, g2) in enumerate(zip(again, mixed, strict=True)):
            w1 = (wants[i] * 2 - wants[i]) / (wants[i] + 1.5)
            assert torch.equal(g1, w1), (g1, w1)
            assert torch.equal(g2, full.items[i] * w1 + (w1 * w1).sqrt())


@pytest.mark.parametrize(
    ("name", "op"),
    [("neg", lambda x: -x), ("sqrt", lambda x: x.sqrt()), ("abs", lambda x: (x - 1).abs()),
     ("sign", lambda x: torch.sign(x - 1)), ("to", lambda x: x.to(torch.float64)),
     ("vector_norm", torch.linalg.vector_norm), ("ones_like", torch.ones_like),
     ("where", lambda x: torch.where(x > 1, x, torch.ones_like(x))),
     ("rsub", lambda x: 1 - x), ("rdiv", lambda x: 2 / x), ("rpow", lambda x: 0.9**x),
     ("and", lambda x: (x > 0.7) & (x < 1.2)), ("invert", lambda x: ~(x > 1)),
     ("_coef", lambda x: rules._coef(x.to(torch.float64) * 3, x)),
     ("_f64", rules._f64)],
)
def test_tensorlist_unary_ops_match_per_tensor(name: str, op: Callable[[Any], Any]) -> None:
    x = _tl((3, 4), (5,), ())
    result = op(x)
    assert isinstance(result, TensorList)
    for t, got in zip(x, result, strict=True):
        want = op(t)
        assert got.dtype == want.dtype and torch.equal(got, want), (name, got, want)


def test_tensorlist_unmapped_operations_fail_loudly() -> None:
    x = _tl((3,), (2, 2))
    with pytest.raises(TypeError, match=r"torch\.atan2 is not mapped for TensorList"):
        torch.atan2(x, x)
    with pytest.raises(TypeError, match=r"torch\.Tensor\.atan2"):
        torch.tensor(1.0).atan2(x)
    with pytest.raises(AttributeError, match=r"'exp'.*_tensorlist\.py"):
        x.exp()
    with pytest.raises(TypeError, match="truth value"):
        bool(x > 1)
    with pytest.raises(TypeError, match=r"dim\(\): the tensors differ"):
        x.dim()
    mixed = TensorList([torch.ones(2), torch.ones(2, dtype=torch.float64)])
    with pytest.raises(TypeError, match="dtype: the tensors differ"):
        _ = mixed.dtype
    with pytest.raises(ValueError, match="different lengths"):
        _ = x + _tl((3,))


# --------------------------------------------------------------------------------------
# 2. native (torch's fused kernels) vs eager
# --------------------------------------------------------------------------------------

NATIVE_CASES = [
    ("Adam", {"lr": 1e-2, "weight_decay": 1e-2}, "_fused_adam_"),
    ("Adam", {"lr": 1e-2, "amsgrad": True}, "_fused_adam_"),
    ("AdamW", {"lr": 1e-2}, "_fused_adamw_"),
    ("AdamW", {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True}, "_fused_adamw_"),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-2}, "_fused_sgd_"),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}, "_fused_sgd_"),
    ("SGD", {"lr": 0.05}, "_fused_sgd_"),
    ("Adagrad", {"lr": 0.05, "lr_decay": 1e-2}, "_fused_adagrad_"),
]


@pytest.mark.parametrize("backend", ["native", "auto"])
@pytest.mark.parametrize("clip", [None, "global_norm:1", "auto:10"])
@pytest.mark.parametrize(
    ("name", "config", "op"),
    [pytest.param(n, c, op, id=f"{n}[{_cfg_id(c)}]") for n, c, op in NATIVE_CASES],
)
def test_native_matches_eager(
    name: str,
    config: dict[str, Any],
    op: str,
    clip: str | None,
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with count_paths(monkeypatch) as counts:
        run_pair(name, config, clip, backend)
    assert counts["eager"] == STEPS  # the reference, once per step
    if clip is not None and backend == "auto":
        # A clipped step never hands its scale to a fused kernel (it would write the scaled
        # gradient back into .grad): groups large enough to compile (all, in the tests)
        # compile.
        assert counts["compiled"] > 0, dict(counts)
        assert sum(counts[o] for o in FUSED_OPS) == 0, dict(counts)
        return
    # one fused call per step (the NaN step included: it goes in as found_inf; a clip on
    # gradients clipped into temporaries), no other path for the native optimizer
    assert counts[op] == STEPS, dict(counts)
    assert sum(counts[o] for o in FUSED_OPS) == STEPS, dict(counts)
    assert counts["compiled"] == 0


# Settings the fused kernels cannot take as their grad_scale: dampening (torch's fused SGD
# clones the first gradient into the buffer: no fused step at all), per-tensor / unit-wise
# scales (Norm, AGC) and a value clamp (in groups too small to compile, these go through the
# fused kernel on clipped temporaries: see the prescaled test below).
NOT_NATIVE_CASES = [
    ("SGD", ENTRIES["SGD"].main, "global_norm:1"),  # dampening=0.1
    ("Adam", ENTRIES["Adam"].main, "norm:0.5"),
    ("AdamW", ENTRIES["AdamW"].main, "agc:0.01"),
    ("Adagrad", ENTRIES["Adagrad"].main, "value:0.1"),
]


@pytest.mark.parametrize("backend", ["native", "auto"])
@pytest.mark.parametrize(
    ("name", "config", "clip"),
    [pytest.param(n, c, clip, id=f"{n}-{clip}") for n, c, clip in NOT_NATIVE_CASES],
)
def test_ineligible_native_falls_back_to_compiled(
    name: str,
    config: dict[str, Any],
    clip: str,
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
    compiler_ok: None,
) -> None:
    assert (name, clip) in COMPILED_CASES  # shares the compiled graphs of test 1
    with count_paths(monkeypatch) as counts:
        run_pair(name, config, clip, backend)
    assert counts["eager"] == STEPS
    if backend == "native" and name != "SGD":
        # asked for: the fused kernel, on gradients clipped into temporaries
        assert sum(counts[o] for o in FUSED_OPS) == STEPS, dict(counts)
        assert counts["compiled"] == 0, dict(counts)
        return
    assert not any(counts[o] for o in FUSED_OPS), dict(counts)
    assert counts["compiled"] == STEPS


PRESCALED_CASES = [
    ("Adam", ENTRIES["Adam"].main, "norm:0.5", "_fused_adam_"),
    ("AdamW", ENTRIES["AdamW"].main, "agc:0.01", "_fused_adamw_"),
    ("Adagrad", ENTRIES["Adagrad"].main, "value:0.1", "_fused_adagrad_"),
    ("SGD", {"lr": 0.05, "momentum": 0.9}, "agc:0.01", "_fused_sgd_"),
]


@pytest.mark.parametrize("why", ["small", "no_compiler"])
@pytest.mark.parametrize(
    ("name", "config", "clip", "op"),
    [pytest.param(n, c, clip, op, id=f"{n}-{clip}") for n, c, clip, op in PRESCALED_CASES],
)
def test_prescaled_native_where_the_multi_tensor_path_would_run(
    name: str, config: dict[str, Any], clip: str, op: str, why: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Per-tensor or unit-wise scales and value clamps cannot be a fused kernel's grad_scale;
    where the group is too small to compile (``auto``) or there is no compiler, the fused
    kernel runs on gradients clipped into temporaries instead of the multi-tensor rule: every
    step matches the eager reference, the NaN step changes nothing, and ``.grad`` is not
    written."""
    if why == "small":
        monkeypatch.setenv("GRADGUARD_COMPILE_MIN_NUMEL", str(1 << 30))
        backend = "auto"
    else:
        monkeypatch.setattr(_backends, "_compile_failed", "disabled by this test")
        backend = "native"
    with count_paths(monkeypatch) as counts:
        run_pair(name, config, clip, backend)
    assert counts[op] == STEPS, dict(counts)
    assert counts["foreach"] == 0 and counts["compiled"] == 0, dict(counts)
    assert counts["eager"] == STEPS
    params = make_params()
    opt = getattr(gradguard, name)(params, clip=clip, backend=backend, **config)
    grads = [10 * g for g in make_grads(0, nan_step=None)]
    set_grads(params, grads)
    opt.step()
    assert all(torch.equal(p.grad, g) for p, g in zip(params, grads, strict=True))


@pytest.mark.parametrize("with_scaler", [False, True], ids=["plain", "grad_scaler"])
@pytest.mark.parametrize("backend", ["eager", "foreach", "compiled", "native", "flat"])
def test_step_leaves_gradients_unchanged(
    backend: str, with_scaler: bool, compiler_ok: None
) -> None:
    """The clip scale (and GradScaler's inverse scale) are folded into the update: after the
    step ``.grad`` still holds exactly what backward produced, on every path (the native one
    runs torch's fused kernel on gradients clipped into temporaries: handed the scale as its
    ``grad_scale``, the kernel would write ``grad / grad_scale`` back)."""
    params = make_params()
    opt = gradguard.Adam(params, clip="global_norm:1", backend=backend, **ENTRIES["Adam"].main)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8) if with_scaler else None
    for step in range(3):
        grads = [10 * g for g in make_grads(step, nan_step=None)]  # norm > 1: clipped
        scale_used = scaler.get_scale() if scaler is not None else 1.0
        if scaler is not None:
            grads = [g * scale_used for g in grads]
            scaler.scale(torch.zeros((), requires_grad=True))  # arms the scaler for this step
        set_grads(params, grads)
        before = [p.detach().clone() for p in params]
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        assert bool(opt.last_step.clipped)
        assert any(not torch.equal(p, b) for p, b in zip(params, before, strict=True))
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            same = torch.equal(p.grad, g)
            diff = float((p.grad - g).abs().max())
            assert same, f"{backend}: step {step} changed the grad of param {i} (by up to {diff})"


def test_native_with_mixed_dtypes_is_not_fused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mixed parameter dtypes in one group: no single fused call can take them, so the
    native backend must not call the kernel (the foreach fallback runs when compiling fails,
    here forced to keep this test free of compile time, with one bucket per dtype) and still
    match eager."""
    monkeypatch.setattr(_backends, "_compile_failed", "disabled by this test")
    pa = [nn.Parameter(torch.ones(4)), nn.Parameter(torch.ones(3, dtype=torch.float64))]
    pb = [nn.Parameter(torch.ones(4)), nn.Parameter(torch.ones(3, dtype=torch.float64))]
    opt_a = gradguard.Adam(pa, lr=0.1, backend="native")
    opt_b = gradguard.Adam(pb, lr=0.1, backend="eager")
    with count_paths(monkeypatch) as counts:
        for step in range(3):
            for ps in (pa, pb):
                ps[0].grad = torch.full((4,), 0.5 + step)
                ps[1].grad = torch.full((3,), -1.0 - step, dtype=torch.float64)
            opt_a.step()
            opt_b.step()
    assert not any(counts[o] for o in FUSED_OPS)
    assert counts["eager"] == 3
    assert counts["foreach"] == 3
    for a, b in zip(pa, pb, strict=True):
        assert torch.equal(a, b)
        assert not torch.equal(a, torch.ones_like(a))


# --------------------------------------------------------------------------------------
# 3. low-precision parameters on the compiled path
# --------------------------------------------------------------------------------------


def test_compiled_bfloat16_matches_eager(
    monkeypatch: pytest.MonkeyPatch, compiler_ok: None
) -> None:
    """bf16 parameters, state and gradients. The compiled kernel may keep intermediates in
    float32 where eager rounds each op to bf16, so the paths agree to a few bf16 ulps; both
    stay close to a float32 run of the same steps."""
    steps = 10
    with count_paths(monkeypatch) as counts:
        opt_a, opt_b = run_pair(
            "AdamW",
            {"lr": 5e-2},
            "global_norm:1",
            "compiled",
            dtype=torch.bfloat16,
            steps=steps,
            rtol=2e-2,
            atol=1e-2,
        )
    assert counts["compiled"] == steps
    params_a = opt_a.param_groups[0]["params"]
    assert all(p.dtype == torch.bfloat16 for p in params_a)
    for st in opt_a.state.values():
        assert st["exp_avg"].dtype == torch.bfloat16
    # a float32 run of the same gradients
    params_f = make_params(SHAPES, torch.float32)
    opt_f = gradguard.AdamW(params_f, lr=5e-2, clip="global_norm:1", backend="eager")
    for step in range(steps):
        set_grads(params_f, [g.to(torch.float32) for g in make_grads(step, dtype=torch.bfloat16)])
        opt_f.step()
    for pa, pb, pf in zip(params_a, opt_b.param_groups[0]["params"], params_f, strict=True):
        for p in (pa, pb):
            torch.testing.assert_close(p.float(), pf.detach(), rtol=3e-2, atol=3e-2)


# --------------------------------------------------------------------------------------
# 4. no recompilation for a learning-rate schedule or a changing clip scale
# --------------------------------------------------------------------------------------


def test_lr_schedule_and_clip_scale_do_not_recompile(
    monkeypatch: pytest.MonkeyPatch, compiler_ok: None
) -> None:
    # 11 tensors: several chunks, the last one shorter, so the chunking is covered too
    shapes = ((5, 4), (5,), (4, 5), (4,), (6, 3), (6,), (3, 6), (3,), (7,), (2, 7), (9,))
    warmup = 2
    graphs: list[int] = []
    lrs: list[float] = []
    scales: list[float] = []

    def after_step(step: int, opt: torch.optim.Optimizer) -> None:
        graphs.append(dynamo_counters["stats"]["unique_graphs"])
        lrs.append(opt.param_groups[0]["lr"])
        scales.append(float(opt.last_step.clip_scale))

    def lr_lambda(step: int) -> float:
        return 1.0 / (1.0 + 0.37 * step) + 0.1 * math.sin(step)

    start = dynamo_counters["stats"]["unique_graphs"]
    with count_paths(monkeypatch) as counts:
        run_pair(
            "Adam",
            ENTRIES["Adam"].main,
            "global_norm:1",
            "compiled",
            shapes=shapes,
            lr_lambda=lr_lambda,
            after_step=after_step,
        )
    # every chunk of every step compiled
    assert counts["compiled"] == math.ceil(len(shapes) / _backends.CHUNK) * STEPS
    # positive control: the counter does count the graphs compiled for this new chunking
    assert graphs[warmup - 1] > start
    assert graphs[-1] == graphs[warmup - 1], f"recompiled after warm-up: {graphs}"
    # the learning rate and the clip scale really changed from step to step
    base_lr = ENTRIES["Adam"].main["lr"]
    assert lrs == pytest.approx([base_lr * lr_lambda(s + 1) for s in range(STEPS)])
    assert len(set(lrs)) == STEPS
    assert len({round(x, 6) for x in scales if x < 1}) >= 5
    assert 1.0 in scales  # and some steps were not clipped at all


def test_one_graph_serves_chunks_of_other_shapes(compiler_ok: None) -> None:
    # Chunks of different shapes, 1-D parameters among flattened matrices, and tensors on both
    # sides of the size where inductor lowers LAMB's norms differently: one graph per side.
    # (Parameters given to dynamo, or views of matrices, used to pin each chunk's sizes.)
    small = [(5, 4), (7,), (3, 9), (11,), (2, 2), (6, 5), (13,), (4, 8), (3,), (9, 2), (5,),
             (8,)]
    large = [(650, 500), (4097,), (800, 700), (5000,), (710, 660), (4200,), (900, 600), (4500,)]
    # mixed, as in a model: the optimizer must regroup them by side
    mixed = small[: 3 * _backends.CHUNK] + large[: 2 * _backends.CHUNK]
    random.Random(3).shuffle(mixed)
    shapes = tuple(mixed)
    assert len(shapes) == 5 * _backends.CHUNK  # whole chunks: no shorter tail chunk
    params = make_params(shapes)
    # an eps no other test uses: the graphs compiled here are new ones
    opt = gradguard.LAMB(params, lr=1e-3, eps=1.2345e-7, weight_decay=0.01,
                         clip="global_norm:1", backend="compiled")
    before = dynamo_counters["stats"]["unique_graphs"]
    for step in range(3):
        set_grads(params, make_grads(step, shapes, nan_step=None))
        opt.step()
    assert dynamo_counters["stats"]["unique_graphs"] - before == 2


def test_compiled_step_bumps_parameter_versions(compiler_ok: None) -> None:
    # The compiled path writes through aliases of the parameters; autograd must still see the
    # write, as with any in-place update, and refuse a backward through the old values.
    w = nn.Parameter(torch.randn(3, 4))
    x = torch.randn(4, 2, requires_grad=True)
    loss = (w @ x).sum()  # saves w for x's gradient
    w.grad = torch.randn(3, 4)
    version = w._version
    gradguard.RMSprop([w], lr=0.1, backend="compiled").step()
    assert w._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


# --------------------------------------------------------------------------------------
# 5. a broken compiler: one warning, then the foreach path
# --------------------------------------------------------------------------------------


def _broken_compiled_update(rule: Any = None) -> Any:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("BackendCompilerFailed: simulated missing C++ compiler")

    return broken


def _fallback_warnings(caught: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    return [
        w for w in caught if issubclass(w.category, RuntimeWarning) and "compile" in str(w.message)
    ]


@pytest.mark.parametrize(("name", "backend"), [("RMSprop", "compiled"), ("Lion", "auto")])
def test_compile_failure_warns_once_and_matches_eager(
    name: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = ENTRIES[name]
    with monkeypatch.context() as m:
        m.setattr(_backends, "_compiled_update", _broken_compiled_update)
        m.setattr(_backends, "_compile_failed", None)
        counts: Counter[str] = Counter()
        wrap_counting(m, counts, eager, "update_tensors", "eager")
        wrap_counting(m, counts, _foreach, "update_foreach", "foreach")
        assert _backends.compile_available()
        params_a, params_b = make_params(), make_params()
        opt_a = entry.make(params_a, clip="global_norm:1", backend=backend, **entry.main)
        opt_b = entry.make(params_b, clip="global_norm:1", backend="eager", **entry.main)
        set_grads(params_a, make_grads(0))
        set_grads(params_b, make_grads(0))
        with pytest.warns(RuntimeWarning, match="torch.compile is not available") as first:
            opt_a.step()
        assert len(_fallback_warnings(list(first))) == 1
        message = str(_fallback_warnings(list(first))[0].message)
        assert "simulated missing C++ compiler" in message
        assert "multi-tensor eager path (foreach)" in message
        assert counts == Counter({"foreach": 1})
        opt_b.step()
        assert not _backends.compile_available()
        # later steps, and a new optimizer on the compiled backend, do not warn again
        params_c = make_params()
        opt_c = entry.make(params_c, clip="global_norm:1", backend="compiled", **entry.main)
        set_grads(params_c, make_grads(0))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt_c.step()
            for step in range(1, 8):
                for ps in (params_a, params_b, params_c):
                    set_grads(ps, make_grads(step))
                opt_a.step()
                opt_b.step()
                opt_c.step()
        assert _fallback_warnings(caught) == []
        # opt_a and opt_c ran the foreach path, the reference opt_b the eager one
        assert counts == Counter({"foreach": 1 + 1 + 2 * 7, "eager": 8})
        # on the CPU the foreach fallback agrees with the reference bitwise
        assert int(opt_a.skipped_steps) == int(opt_b.skipped_steps) == 1
        for pa, pb, pc in zip(params_a, params_b, params_c, strict=True):
            assert torch.equal(pa, pb)
            assert torch.equal(pc, pb)
        assert_tree_equal(opt_a.state_dict(), opt_b.state_dict())
    assert _backends.compile_available()  # the monkeypatch restored the module state


# --------------------------------------------------------------------------------------
# 6. no host read on a healthy fast step
# --------------------------------------------------------------------------------------



def test_host_read_counter_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    with count_host_reads(monkeypatch) as counts:
        float(torch.tensor(2.0))
        torch.tensor([1.0]).tolist()
        torch.tensor(3.0).item()
    assert counts == Counter({"__float__": 1, "tolist": 1, "item": 1})
    assert float(torch.tensor(2.0)) == 2.0  # unpatched again


@pytest.mark.parametrize(
    ("name", "backend", "path"),
    [("Adam", "native", "_fused_adam_"), ("RMSprop", "compiled", "compiled"),
     ("RMSprop", "foreach", "foreach"), ("SGD", "foreach", "foreach")],
)
def test_healthy_fast_step_makes_no_host_read(
    name: str, backend: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = ENTRIES[name]
    params = make_params()
    opt = entry.make(params, clip="global_norm:1", backend=backend, **entry.main)
    for step in range(2):  # warm-up: state creation, compiling
        set_grads(params, make_grads(step, nan_step=None))
        opt.step()
    set_grads(params, make_grads(2, nan_step=None))
    before = [p.detach().clone() for p in params]
    with count_paths(monkeypatch) as paths, count_host_reads(monkeypatch) as reads:
        opt.step()
    assert reads == Counter(), f"host reads during step(): {dict(reads)}"
    assert paths[path] == 1, dict(paths)
    assert all(not torch.equal(p, b) for p, b in zip(params, before, strict=True))
    assert _backends.compile_available()


# --------------------------------------------------------------------------------------
# the backend argument and the environment variable
# --------------------------------------------------------------------------------------


def test_backend_default_comes_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    p = [nn.Parameter(torch.ones(2))]
    monkeypatch.setenv("GRADGUARD_BACKEND", "compiled")
    assert gradguard.Lion(p).backend == "compiled"
    monkeypatch.setenv("GRADGUARD_BACKEND", "foreach")
    assert gradguard.Lion(p).backend == "foreach"
    assert gradguard.Lion(p, backend="native").backend == "native"
    monkeypatch.delenv("GRADGUARD_BACKEND")
    assert gradguard.Adam(p).backend == "auto"
    monkeypatch.setenv("GRADGUARD_BACKEND", "fast")
    with pytest.raises(ValueError, match="fast"):
        gradguard.SGD(p)
    with pytest.raises(ValueError, match="backend"):
        gradguard.SGD(p, backend="turbo")


# torch's implementation flags select the path: an explicit True/False is obeyed, None lets
# ``backend`` decide (here "eager", so any other path seen comes from the flag).
FLAG_CASES = [
    ({"foreach": True}, "foreach"),
    ({"foreach": False}, "eager"),
    ({"fused": True}, "_fused_adam_"),
    ({"fused": False, "foreach": None}, "eager"),
]


@pytest.mark.parametrize(("flags", "path"), FLAG_CASES, ids=[p for _, p in FLAG_CASES])
def test_torch_flags_select_the_path(flags: dict[str, Any], path: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    params = make_params()
    opt = gradguard.Adam(params, lr=1e-2, backend="eager", **flags)
    with count_paths(monkeypatch) as counts:
        for step in range(3):
            set_grads(params, make_grads(step, nan_step=None))
            opt.step()
    assert counts[path] == 3, dict(counts)
    assert sum(counts.values()) == 3, dict(counts)


def test_fused_false_keeps_auto_off_the_fused_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    params = make_params()
    opt = gradguard.Adam(params, lr=1e-2, backend="auto", fused=False)
    with count_paths(monkeypatch) as counts:
        set_grads(params, make_grads(0, nan_step=None))
        opt.step()
    assert not any(counts[o] for o in FUSED_OPS), dict(counts)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"fused": True, "foreach": True}, RuntimeError, "`fused` and `foreach` cannot be `True`"),
    ({"fused": True, "differentiable": True}, RuntimeError,
     "`fused` does not support `differentiable`"),
])
def test_flag_conflicts_raise_torchs_errors(kwargs: dict[str, Any], error: type[Exception],
                                            message: str) -> None:
    for cls in (torch.optim.Adam, gradguard.Adam):
        with pytest.raises(error, match=message):
            cls(make_params(), **kwargs)


def test_fused_on_complex_params_raises_torchs_error() -> None:
    p = nn.Parameter(torch.randn(3, dtype=torch.complex64))
    p.grad = torch.randn_like(p)
    for cls in (torch.optim.Adam, gradguard.Adam):
        opt = cls([p], fused=True)
        with pytest.raises(RuntimeError, match="`fused=True` requires all the params"):
            opt.step()


def test_rules_compile_apart(compiler_ok: None) -> None:
    """Compiling SGD (no ``step`` in its state) after Adam in one process: with one compiled
    function for every rule, dynamo's explanation of the recompile failed (KeyError: 'step')
    and compiling was switched off for the process."""
    cases = (("Adam", {"lr": 1e-2}, "global_norm:1"), ("Adam", {"lr": 1e-2}, "norm:0.5"),
             ("Adam", {"lr": 1e-2}, None), ("SGD", {"lr": 0.05, "momentum": 0.9}, "global_norm:1"))
    for name, config, clip in cases:
        params = make_params()
        opt = getattr(gradguard, name)(params, backend="compiled", clip=clip, **config)
        for step in range(3):
            set_grads(params, make_grads(step, nan_step=None))
            opt.step()
        assert _backends.compile_available(), f"{name}: {_backends._compile_failed}"
