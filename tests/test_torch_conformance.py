"""Conformance of gradguard's optimizers with torch.optim, driven by torch's own OptimizerInfo
database (``torch.testing._internal.common_optimizers.optim_db`` of the installed torch).

One table, :data:`TABLE`, has one entry per optimizer (pytest ids are the optimizer names).
For the eight optimizers torch.optim has, an entry pairs gradguard's class with torch's class
and its OptimizerInfo: the sample configs (``optim_inputs_func``), error inputs
(``optim_error_inputs_func``), LR scheduler inputs and supported flags all come from torch. LARS,
LAMB and Lion have no torch counterpart: their entries carry their own configs and error inputs,
and the float64 references of ``tests/optim_table.py`` (written from the papers) stand in for
torch's class, compared in float64.

Every entry declares its capabilities; a generic test that needs a capability an entry lacks is
not generated for that entry (nothing is skipped or xfailed at run time):

============  =======  =====  ==============  ======  =======  =========
entry         foreach  fused  differentiable  sparse  complex  tensor_lr
============  =======  =====  ==============  ======  =======  =========
SGD           yes      yes    yes             yes     yes      yes
Adam          yes      yes    yes             no      yes      yes
AdamW         yes      yes    yes             no      yes      yes
NAdam         yes      no     yes             no      yes      yes
Adamax        yes      no     yes             no      yes      yes
RMSprop       yes      no     yes             no      yes      yes
Adagrad       yes      yes    yes             yes     yes      yes
Adadelta      yes      no     yes             no      yes      yes
LARS          no       no     yes             no      yes      yes
LAMB          no       no     yes             no      yes      yes
Lion          no       no     yes             no      yes      yes
============  =======  =====  ==============  ======  =======  =========

Why a test is not generated:

- ``foreach`` / ``fused`` variants: torch.optim's flags. The torch entries take them from
  OptimizerInfo.supported_impls (``fused`` only where supports_fused_on includes "cpu": SGD,
  Adam, AdamW, Adagrad). LARS, LAMB and Lion have neither flag (they are not torch.optim
  optimizers; gradguard chooses their backend with ``backend=``), so they run the default only.
- ``differentiable``: LARS, LAMB and Lion take the flag too (gradcheck here, and for every
  clip policy in tests/test_dropin_regressions.py), but their float64 references cannot be
  differentiated, so test_differentiable_grad_matches_torch runs for the torch entries only.
  The variants of the other tests leave differentiable out as torch's tests do (a
  differentiable step is in-place on leaf parameters, which autograd forbids; see
  pytorch#116490).
- ``sparse`` (test_sparse_*): only SGD and Adagrad have a sparse update (torch's
  supports_sparse); for every other entry test_errors checks torch's error for a sparse
  gradient instead. Fused variants take no sparse gradients (torch raises), so the sparse
  tests run the for-loop and foreach variants.
- torch interop (test_state_dict_*_torch, test_state_dict_to_torch): only where torch has the
  class; LARS, LAMB and Lion are compared with their references elsewhere.
- test_zero_grads_are_noop: generated only for configs without weight decay (weight decay moves
  parameters whatever the gradient, e.g. AdamW's default of 1e-2).
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn import Parameter
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau, StepLR
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch.testing._internal.common_optimizers import (
    ErrorOptimizerInput,
    OptimizerErrorEnum,
    OptimizerInfo,
    OptimizerInput,
    get_error_inputs_for_all_optims,
    optim_db,
)

import gradguard
from helpers import assert_tree_equal, save_load
from optim_table import TABLE as OPTIMIZERS

CPU = "cpu"
IMPL_FLAGS = ("foreach", "fused", "differentiable")
ALL_FLAGS = (*IMPL_FLAGS, "sparse", "complex", "tensor_lr")
# Keys that newer versions added to param groups: an older checkpoint lacks them.
NEWER_GROUP_KEYS = ("maximize", "foreach", "differentiable", "fused", "capturable",
                    "decoupled_weight_decay")
Schedulers = list[Callable[[Optimizer], Any]]
DEFAULT_SCHEDULERS: tuple[Schedulers, ...] = (
    [lambda opt: StepLR(opt, gamma=0.9, step_size=10), lambda opt: ReduceLROnPlateau(opt)],
)


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------


def _error(kwargs: dict[str, Any], error_type: type[BaseException], regex: str,
           desc: str, *, params: Any = None,
           on: OptimizerErrorEnum = OptimizerErrorEnum.CONSTRUCTION_ERROR
           ) -> ErrorOptimizerInput:
    return ErrorOptimizerInput(OptimizerInput(params=params, kwargs=kwargs, desc=desc),
                               error_on=on, error_type=error_type, error_regex=regex)


def _sparse_grad_error(name: str) -> ErrorOptimizerInput:
    """A step on a sparse gradient, for optimizers without a sparse update."""
    p = Parameter(torch.zeros(3))
    p.grad = torch.sparse_coo_tensor(torch.tensor([[0, 2]]), torch.ones(2), (3,),
                                     check_invariants=True)
    # torch's AdamW says "Adam does not support ...": the name is not part of the contract
    return _error({}, RuntimeError, "does not support sparse gradients",
                  "sparse gradient", params=[p], on=OptimizerErrorEnum.STEP_ERROR)


def _own_errors(entry: Any) -> list[ErrorOptimizerInput]:
    """Error inputs of an optimizer torch.optim lacks: torch's generic ones, then the common
    arguments', then its own (from the test table)."""
    out = list(get_error_inputs_for_all_optims(CPU, torch.float32))
    out += [
        _error({"lr": -0.1}, ValueError, "Invalid learning rate: -0.1", "negative lr"),
        _error({"weight_decay": -1}, ValueError, "Invalid weight_decay value: -1",
               "negative weight_decay"),
        _sparse_grad_error(entry.name),
    ]
    out += [_error(kw, ValueError, msg, desc) for kw, msg, desc in entry.own_errors]
    return out


@dataclass(frozen=True)
class Entry:
    """One optimizer: gradguard's class, what it is compared with, and what it supports."""

    name: str
    reference: type[Optimizer]  # torch.optim's class, or the float64 reference
    info: OptimizerInfo | None = None
    own_flags: frozenset[str] = field(default_factory=frozenset)
    table: Any = None  # the test table's entry (tests/optim_table.py)

    def __repr__(self) -> str:
        return self.name

    @property
    def cls(self) -> type[Optimizer]:
        return getattr(gradguard, self.name)

    @property
    def is_torch(self) -> bool:
        return self.info is not None

    @property
    def dtype(self) -> torch.dtype:
        """Comparisons with torch run in float32, with the references in float64."""
        return torch.float32 if self.is_torch else torch.float64

    @property
    def flags(self) -> frozenset[str]:
        if self.info is None:
            return self.own_flags
        info = self.info
        flags = {f for f in ("foreach", "differentiable") if f in info.supported_impls}
        if "fused" in info.supported_impls and CPU in info.supports_fused_on:
            flags.add("fused")
        if info.supports_sparse:
            flags.add("sparse")
        if info.supports_complex:
            flags.add("complex")
        flags.add("tensor_lr")
        return frozenset(flags)

    def configs(self, dtype: torch.dtype | None = None) -> list[OptimizerInput]:
        """Fresh sample configs (tensor learning rates are new tensors on every call)."""
        if self.info is not None:
            return self.info.optim_inputs_func(device=CPU, dtype=dtype or self.dtype)
        return [OptimizerInput(params=None, kwargs=copy.deepcopy(kw), desc=desc)
                for desc, kw in self.table.own_configs]

    def config(self, index: int, dtype: torch.dtype | None = None) -> dict[str, Any]:
        return self.configs(dtype)[index].kwargs

    def error_inputs(self) -> list[ErrorOptimizerInput]:
        if self.info is None:
            return _own_errors(self.table)
        out = list(self.info.optim_error_inputs_func(device=CPU, dtype=torch.float32))
        if "sparse" not in self.flags:
            out.append(_sparse_grad_error(self.name))
        return out

    @property
    def scheduler_inputs(self) -> tuple[Schedulers, ...]:
        if self.info is None:
            return DEFAULT_SCHEDULERS
        return tuple(self.info.scheduler_inputs)

    def impl_variants(self, skip: tuple[str, ...] = ("differentiable",)
                      ) -> list[tuple[str, dict[str, Any]]]:
        """torch's pattern: every supported impl flag False, then each one True alone."""
        flags = [f for f in IMPL_FLAGS if f in self.flags and f not in skip]
        if not flags:
            return [("default", {})]
        base = dict.fromkeys(flags, False)
        return [("forloop", base)] + [(f, {**base, f: True}) for f in flags]

    def make(self, params: Any, kwargs: dict[str, Any], **extra: Any) -> Optimizer:
        """gradguard's optimizer."""
        return self.cls(params, **copy.deepcopy(kwargs), **extra)

    def make_reference(self, params: Any, kwargs: dict[str, Any]) -> Optimizer:
        """torch's for-loop implementation, or the float64 reference."""
        kw = copy.deepcopy(kwargs)
        if self.is_torch:
            kw["foreach"] = False
        return self.reference(params, **kw)


_INFOS = {info.name: info for info in optim_db}
OWN = frozenset({"complex", "tensor_lr", "differentiable"})

# One entry per optimizer of the project's test table (tests/optim_table.py): torch's
# OptimizerInfo where torch has the optimizer, else the float64 reference from the paper.
TABLE: list[Entry] = [
    Entry(e.name, e.torch_cls, _INFOS[e.name], table=e) if e.torch_cls is not None
    else Entry(e.name, e.reference, own_flags=OWN, table=e) for e in OPTIMIZERS]


def _slug(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_") or "x"


def entries(flag: str | None = None, *, torch_only: bool = False) -> list[Any]:
    return [pytest.param(e, id=e.name) for e in TABLE
            if (flag is None or flag in e.flags) and (e.is_torch or not torch_only)]


def configs(flag: str | None = None, *, torch_only: bool = False,
            where: Callable[[Entry, dict[str, Any]], bool] | None = None) -> list[Any]:
    """``pytest.param(entry, index)`` per sample config (ids ``Name-desc``)."""
    out = []
    for e in TABLE:
        if (flag is not None and flag not in e.flags) or (torch_only and not e.is_torch):
            continue
        for i, cfg in enumerate(e.configs()):
            if where is None or where(e, cfg.kwargs):
                out.append(pytest.param(e, i, id=f"{e.name}-{i}-{_slug(cfg.desc)}"))
    return out


def configs_with_impls(flag: str | None = None, *, skip: tuple[str, ...] = ("differentiable",)
                       ) -> list[Any]:
    """``pytest.param(entry, index, impl_kwargs)`` per config and impl variant."""
    out = []
    for p in configs(flag):
        e, i = p.values
        for impl, kw in e.impl_variants(skip):
            out.append(pytest.param(e, i, kw, id=f"{p.id}-{impl}"))
    return out


def _effective(entry: Entry, kwargs: dict[str, Any], name: str) -> Any:
    if name in kwargs:
        return kwargs[name]
    param = inspect.signature(entry.cls).parameters.get(name)
    return None if param is None else param.default


# --------------------------------------------------------------------------------------
# Problems and helpers
# --------------------------------------------------------------------------------------


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.randn(shape, generator=_gen(seed), dtype=torch.float64).to(dtype)


def _params(dtype: torch.dtype, seed: int = 0) -> list[Parameter]:
    """A weight and a bias."""
    return [Parameter(_randn(4, 3, seed=seed, dtype=dtype)),
            Parameter(_randn(4, seed=seed + 1, dtype=dtype))]


def _clones(params: list[Tensor]) -> list[Parameter]:
    return [Parameter(p.detach().clone()) for p in params]


def _quad_loss(params: list[Tensor], step: int) -> Tensor:
    w, b = params
    x = _randn(w.shape[1], seed=1000 + step, dtype=w.dtype)
    return (w.mv(x) + b).pow(2).sum()


def _backward(params: list[Tensor], step: int) -> Tensor:
    for p in params:
        p.grad = None
    loss = _quad_loss(params, step)
    loss.backward()
    return loss.detach()


def _run(opt: Optimizer, params: list[Tensor], start: int, n: int) -> None:
    for k in range(start, start + n):
        _backward(params, k)
        opt.step()


def _assert_same(a: list[Tensor], b: list[Tensor], what: str = "param") -> None:
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert torch.equal(x.detach(), y.detach()), (
            f"{what} {i}: max abs diff {(x.detach() - y.detach()).abs().max()}")


def _assert_close(a: list[Tensor], b: list[Tensor], what: str = "param") -> None:
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        torch.testing.assert_close(x.detach(), y.detach(),
                                   msg=lambda m, i=i: f"{what} {i}: {m}")


def _value(v: Any, dtype: torch.dtype) -> Tensor:
    if isinstance(v, Tensor):
        return v.detach().to(dtype)
    return torch.tensor(float(v), dtype=dtype)


def _assert_states_close(opt: Optimizer, params: list[Tensor], ref: Optimizer,
                         ref_params: list[Tensor], dtype: torch.dtype) -> None:
    """Same state keys per parameter, every entry close (in ``dtype``)."""
    for i, (p, q) in enumerate(zip(params, ref_params, strict=True)):
        sa, sb = dict(opt.state.get(p, {})), dict(ref.state.get(q, {}))
        assert sorted(sa) == sorted(sb), f"param {i}: state keys {sorted(sa)} != {sorted(sb)}"
        for key, vb in sb.items():
            va = sa[key]
            if va is None or vb is None:
                assert va is None and vb is None, f"param {i} {key!r}: {va!r} vs {vb!r}"
                continue
            torch.testing.assert_close(_value(va, dtype), _value(vb, dtype),
                                       msg=lambda m, i=i, k=key: f"param {i} {k!r}: {m}")


def _state_by_index(opt: Optimizer) -> dict[int, dict[str, Any]]:
    params = [p for g in opt.param_groups for p in g["params"]]
    return {i: dict(opt.state[p]) for i, p in enumerate(params) if p in opt.state}


def _scheduler_step(schedulers: list[Any], metric: float) -> None:
    for s in schedulers:
        if isinstance(s, ReduceLROnPlateau):
            s.step(metric)
        else:
            s.step()


# --------------------------------------------------------------------------------------
# The table itself
# --------------------------------------------------------------------------------------


def test_table_covers_every_gradguard_optimizer() -> None:
    names = {n for n in gradguard.optim.__all__
             if isinstance(getattr(gradguard, n, None), type)
             and issubclass(getattr(gradguard, n), gradguard.GuardedOptimizer)
             and n != "GuardedOptimizer"}
    assert names == {e.name for e in TABLE}


@pytest.mark.parametrize("entry", entries())
def test_declared_flags_match_constructor(entry: Entry) -> None:
    """An impl flag is declared exactly where gradguard's constructor (and torch's) takes it."""
    own = inspect.signature(entry.cls).parameters
    for flag in IMPL_FLAGS:
        assert (flag in entry.flags) == (flag in own), f"{entry.name}: flag {flag!r}"
        if entry.is_torch and flag != "fused":
            theirs = inspect.signature(entry.reference).parameters
            assert (flag in own) == (flag in theirs), f"{entry.name}: flag {flag!r}"


# --------------------------------------------------------------------------------------
# 1. errors
# --------------------------------------------------------------------------------------


def _error_params() -> list[Any]:
    out = []
    for e in TABLE:
        for i, err in enumerate(e.error_inputs()):
            desc = _slug(err.optimizer_error_input.desc)
            out.append(pytest.param(e, i, id=f"{e.name}-{i}-{desc}"))
    return out


def _check_error(cls: type[Optimizer], err: ErrorOptimizerInput) -> None:
    inp = err.optimizer_error_input
    params = inp.params if inp.params is not None else [Parameter(torch.randn(2, 2))]
    kwargs = inp.kwargs
    if issubclass(err.error_type, Warning):
        expect = pytest.warns(err.error_type, match=err.error_regex)
    else:
        expect = pytest.raises(err.error_type, match=err.error_regex)  # type: ignore[assignment]
    if err.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
        with expect:
            cls(params, **kwargs)
    else:
        opt = cls(params, **kwargs)
        with expect:
            opt.step()


@pytest.mark.parametrize(("entry", "index"), _error_params())
def test_errors(entry: Entry, index: int) -> None:
    _check_error(entry.cls, entry.error_inputs()[index])
    if entry.is_torch:  # the input is torch's, or ours checked against torch's class
        _check_error(entry.reference, entry.error_inputs()[index])


# --------------------------------------------------------------------------------------
# 2. matches torch's for-loop implementation (or the float64 reference)
# --------------------------------------------------------------------------------------


def _seq_model(dtype: torch.dtype) -> tuple[nn.Module, Parameter]:
    model = nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 1))
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(_randn(*p.shape, seed=50 + i))
    return model.to(dtype), Parameter(torch.tensor(0.3, dtype=dtype))


@pytest.mark.parametrize("clip", [None, "global_norm:1e9"], ids=["noclip", "clip1e9"])
@pytest.mark.parametrize(("entry", "index", "impl"), configs_with_impls())
def test_matches_reference(entry: Entry, index: int, impl: dict[str, Any],
                           clip: str | None) -> None:
    dtype = entry.dtype
    kwargs = entry.config(index)
    runs = []
    for ours in (True, False):
        model, scalar = _seq_model(dtype)
        params = [*model.parameters(), scalar]
        opt = (entry.make(params, {**kwargs, **impl}, clip=clip) if ours
               else entry.make_reference(params, kwargs))
        runs.append((model, scalar, params, opt))
    for step in range(7):
        for model, scalar, _, opt in runs:
            opt.zero_grad()
            if step == 3:
                model[2].requires_grad_(False)  # a frozen layer: grads stay None
            if step == 5:
                model[2].requires_grad_(True)
            if step != 2:  # step 2: every grad is None, a no-op
                x = _randn(3, 2, seed=200 + step, dtype=dtype)
                (model(x).sum() * torch.sigmoid(scalar) + scalar * scalar).backward()
            opt.step()
        (_, _, ours_p, ours_opt), (_, _, ref_p, ref_opt) = runs
        _assert_close(ours_p, ref_p)
        _assert_states_close(ours_opt, ours_p, ref_opt, ref_p, dtype)


# --------------------------------------------------------------------------------------
# 3. goes the right direction
# --------------------------------------------------------------------------------------


def _weight_bias(contiguous: bool, seed: int) -> list[Parameter]:
    if contiguous:
        return [Parameter(_randn(10, 5, seed=seed)), Parameter(_randn(10, seed=seed + 1))]
    return [Parameter(_randn(10, 5, 2, seed=seed)[..., 0]),
            Parameter(_randn(10, 2, seed=seed + 1)[..., 0])]


def _closure(opt: Optimizer, w: Tensor, b: Tensor, x: Tensor) -> Callable[[], Tensor]:
    """The loss ``|w x + b|^2`` with its gradients, as a step's closure."""
    def closure() -> Tensor:
        opt.zero_grad()
        loss = (w.mv(x) + b).pow(2).sum()
        loss.backward()
        return loss.detach()
    return closure


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize(("entry", "index"), configs())
def test_goes_right_direction(entry: Entry, index: int, contiguous: bool) -> None:
    for sched in (None, *entry.scheduler_inputs):
        kwargs = entry.config(index, torch.float32)  # fresh: schedulers edit tensor lrs
        w, b = _weight_bias(contiguous, seed=7)
        assert w.is_contiguous() == contiguous
        x = _randn(5, seed=9)
        opt = entry.make([w, b], kwargs)
        schedulers = [s(opt) for s in (sched or [])]

        closure = _closure(opt, w, b, x)

        initial = float(closure())
        for _ in range(20):
            loss = opt.step(closure)
            _scheduler_step(schedulers, float(loss))
        final = float(closure())
        what = f"{kwargs} schedulers={bool(sched)}: {initial} -> {final}"
        if kwargs.get("maximize", False):
            assert final > initial, what
        else:
            assert final < initial, what


@pytest.mark.parametrize("entry", entries())
def test_param_groups_with_schedulers_go_right_direction(entry: Entry) -> None:
    for sched in entry.scheduler_inputs:
        w, b = _weight_bias(True, seed=11)
        x = _randn(5, seed=12)
        opt = entry.make([{"params": [w]}, {"params": [b], "lr": 0.01}], {})
        schedulers = [s(opt) for s in sched]

        closure = _closure(opt, w, b, x)

        initial = float(closure())
        for _ in range(20):
            _scheduler_step(schedulers, float(opt.step(closure)))
        assert float(closure()) < initial


# --------------------------------------------------------------------------------------
# 4. tensor lr
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("entry", "index", "impl"), configs_with_impls("tensor_lr"))
def test_tensor_lr(entry: Entry, index: int, impl: dict[str, Any]) -> None:
    kwargs = {k: v for k, v in entry.config(index, torch.float32).items() if k != "lr"}
    kwargs.update(impl)
    params = _params(torch.float32)
    params_t = _clones(params)
    opt = entry.make(params, {**kwargs, "lr": 1e-3})
    try:
        opt_t = entry.make(params_t, {**kwargs, "lr": torch.tensor(1e-3)})
    except ValueError as exc:
        assert re.search("lr as a Tensor is not supported", str(exc)), exc
        assert entry.is_torch, "only torch's rules reject a tensor lr"
        with pytest.raises(ValueError, match="lr as a Tensor is not supported"):
            entry.reference(_params(torch.float32), **kwargs, lr=torch.tensor(1e-3))
        return
    for k in range(5):
        _run(opt, params, k, 1)
        _run(opt_t, params_t, k, 1)
        _assert_close(params_t, params)


# --------------------------------------------------------------------------------------
# 5. complex
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", [None, "global_norm:1.0"], ids=["noclip", "clip1"])
@pytest.mark.parametrize(("entry", "index", "impl"),
                         configs_with_impls("complex", skip=("differentiable", "fused")))
def test_complex_matches_real_view(entry: Entry, index: int, impl: dict[str, Any],
                                   clip: str | None) -> None:
    kwargs = {**entry.config(index, torch.complex64), **impl}
    complex_params = [
        Parameter(torch.randn(10, 5, generator=_gen(1), dtype=torch.complex64)),
        Parameter(torch.randn(10, generator=_gen(2), dtype=torch.complex64)),
        Parameter(torch.randn(10, 5, generator=_gen(3), dtype=torch.float32)),  # a real one
    ]
    real_params = [Parameter(torch.view_as_real(p.detach()).clone() if p.is_complex()
                             else p.detach().clone()) for p in complex_params]
    opt_c = entry.make(complex_params, kwargs, clip=clip)
    opt_r = entry.make(real_params, kwargs, clip=clip)
    gen = _gen(4)
    for _ in range(3):
        for pc, pr in zip(complex_params, real_params, strict=True):
            g = torch.randn(pr.shape, generator=gen, dtype=torch.float32)
            pr.grad = g.clone()
            pc.grad = torch.view_as_complex(g.clone()) if pc.is_complex() else g.clone()
        opt_c.step()
        opt_r.step()
        as_real = [torch.view_as_real(p) if p.is_complex() else p for p in complex_params]
        _assert_close(as_real, real_params)
    for pc, pr in zip(complex_params, real_params, strict=True):
        sc, sr = opt_c.state.get(pc, {}), opt_r.state.get(pr, {})
        assert sorted(sc) == sorted(sr)
        for key, vr in sr.items():
            vc = sc[key]
            if isinstance(vc, Tensor) and vc.is_complex():
                vc = torch.view_as_real(vc)
            torch.testing.assert_close(_value(vc, torch.float32), _value(vr, torch.float32),
                                       msg=lambda m, k=key: f"state {k!r}: {m}")


# --------------------------------------------------------------------------------------
# 6. sparse gradients
# --------------------------------------------------------------------------------------


def _sparse_configs() -> list[Any]:
    """torch's recipe: sample configs with metadata_for_sparse's keys replaced, deduplicated,
    times the for-loop and foreach variants, with and without the sparse schedulers."""
    out = []
    for e in TABLE:
        if "sparse" not in e.flags:
            continue
        assert e.info is not None
        updates = e.info.metadata_for_sparse[0]
        seen: list[dict[str, Any]] = []
        for cfg in e.configs(torch.float64):
            kw = {k: v for k, v in cfg.kwargs.items() if k not in updates}
            kw.update(updates)
            if any(kw.keys() == s.keys() and all(_eq(kw[k], s[k]) for k in kw) for s in seen):
                continue
            seen.append(kw)
            for impl, ikw in e.impl_variants(skip=("differentiable", "fused")):
                for with_sched in (False, True):
                    tag = "sched" if with_sched else "nosched"
                    out.append(pytest.param(e, {**kw, **ikw}, with_sched,
                                            id=f"{e.name}-{_slug(cfg.desc)}-{impl}-{tag}"))
    return out


def _eq(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and torch.equal(a, b)
    return bool(a == b)


def _uncoalesced(step: int, shape: tuple[int, ...]) -> Tensor:
    """A sparse COO gradient with a duplicate index (uncoalesced), rows varying by step."""
    rows = shape[0]
    index = torch.tensor([[step % rows, (3 * step + 1) % rows, step % rows]])
    values = torch.randn((3, *shape[1:]), generator=_gen(300 + step), dtype=torch.float64)
    grad = torch.sparse_coo_tensor(index, values, shape, check_invariants=True)
    assert not grad.is_coalesced()
    return grad


@pytest.mark.parametrize(("entry", "kwargs", "with_sched"), _sparse_configs())
def test_sparse_matches_dense_and_torch(entry: Entry, kwargs: dict[str, Any],
                                        with_sched: bool) -> None:
    assert entry.info is not None
    sched = entry.info.metadata_for_sparse[1] if with_sched else []
    init = [_randn(5, 3, seed=21, dtype=torch.float64), _randn(4, seed=22, dtype=torch.float64)]
    runs = []
    for kind in ("sparse", "dense", "torch"):
        params = [Parameter(t.clone()) for t in init]
        opt = (entry.make_reference(params, kwargs) if kind == "torch"
               else entry.make(params, kwargs))
        runs.append((kind, params, opt, [s(opt) for s in sched]))
    for step in range(10):
        grads = [_uncoalesced(step, tuple(t.shape)) for t in init]
        for kind, params, opt, _ in runs:
            for p, g in zip(params, grads, strict=True):
                p.grad = g.to_dense() if kind == "dense" else g.clone()
            opt.step()
        metric = float(sum(p.detach().pow(2).sum() for p in runs[0][1]))
        for _, _, _, schedulers in runs:
            _scheduler_step(schedulers, metric)
        (_, sparse_p, _, _), (_, dense_p, _, _), (_, torch_p, _, _) = runs
        _assert_close(sparse_p, dense_p, "sparse vs dense param")
        _assert_close(sparse_p, torch_p, "sparse vs torch param")
    _assert_states_close(runs[0][2], runs[0][1], runs[2][2], runs[2][1], torch.float64)


@pytest.mark.parametrize(("entry", "kwargs", "with_sched"),
                         [p for p in _sparse_configs() if not p.values[2]])
def test_sparse_embedding_matches_torch(entry: Entry, kwargs: dict[str, Any],
                                        with_sched: bool) -> None:
    weight = _randn(8, 3, seed=31, dtype=torch.float64)
    runs = []
    for ours in (True, False):
        emb = nn.Embedding(8, 3, sparse=True).to(torch.float64)
        with torch.no_grad():
            emb.weight.copy_(weight)
        opt = (entry.make(emb.parameters(), kwargs) if ours
               else entry.make_reference(emb.parameters(), kwargs))
        runs.append((emb, opt))
    for step in range(5):
        idx = torch.tensor([step % 8, 5, step % 8, (2 * step + 3) % 8])
        for emb, opt in runs:
            opt.zero_grad()
            out = emb(idx)
            (out.pow(2).sum() + out.sum()).backward()
            assert emb.weight.grad is not None and emb.weight.grad.is_sparse
            opt.step()
        _assert_close([runs[0][0].weight], [runs[1][0].weight])


# --------------------------------------------------------------------------------------
# 7. differentiable
# --------------------------------------------------------------------------------------


def _diff_case(entry: Entry, index: int) -> tuple[dict[str, Any], list[str], dict[str, Any],
                                                  tuple[Tensor, ...]]:
    """Config, names of the differentiable state entries, the other state entries, and the
    inputs (param, grad, state...) of one step, from two warm-up steps of torch's class."""
    kwargs = entry.config(index, torch.float64)
    warm = Parameter(_randn(2, 2, seed=41, dtype=torch.float64))
    opt = entry.make_reference([warm], kwargs)
    for k in range(2):
        warm.grad = _randn(2, 2, seed=42 + k, dtype=torch.float64)
        opt.step()
    state = dict(opt.state[warm])
    keys = [k for k, v in state.items()
            if k != "step" and isinstance(v, Tensor) and v.is_floating_point()]
    # The step count in float64 (torch computes its bias corrections in the step's dtype).
    fixed = {k: v.to(torch.float64) if isinstance(v, Tensor) else v
             for k, v in state.items() if k not in keys}
    values = []
    for i, k in enumerate(keys):
        v = state[k].detach().to(torch.float64)
        if v.dim() > 0 and bool((v >= 0).all()):
            # Second moments after two steps are ~1e-6 (Adadelta), where finite differences of
            # 1e-6 are meaningless, and AMSGrad's maximum starts tied with its average (a kink):
            # offsets that differ by entry keep every state valid and away from both.
            v = v + 0.5 + 0.25 * i
        values.append(v)
    grad = _randn(2, 2, seed=45, dtype=torch.float64) * 2  # norm > 1: global_norm:1 binds
    inputs = (warm.detach().clone(), grad, *values)
    return kwargs, keys, fixed, tuple(t.clone().requires_grad_() for t in inputs)


def _step_fn(cls: type[Optimizer], kwargs: dict[str, Any], keys: list[str],
             fixed: dict[str, Any], **extra: Any) -> Callable[..., tuple[Tensor, ...]]:
    def fn(p_leaf: Tensor, grad: Tensor, *values: Tensor) -> tuple[Tensor, ...]:
        p = p_leaf.clone()
        p.grad = grad
        opt = cls([p], differentiable=True, **copy.deepcopy(kwargs), **extra)
        state = {k: v.clone() if isinstance(v, Tensor) else v for k, v in fixed.items()}
        state.update((k, v.clone()) for k, v in zip(keys, values, strict=True))
        opt.state[p].update(state)
        opt.step()
        return (p, *(opt.state[p][k] for k in keys))
    return fn


@pytest.mark.parametrize("clip", [None, "global_norm:1.0"], ids=["noclip", "clip1"])
@pytest.mark.parametrize(("entry", "index"), configs("differentiable"))
def test_differentiable_gradcheck(entry: Entry, index: int, clip: str | None) -> None:
    kwargs, keys, fixed, inputs = _diff_case(entry, index)
    fn = _step_fn(entry.cls, kwargs, keys, fixed, clip=clip)
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize(("entry", "index"), configs("differentiable", torch_only=True))
def test_differentiable_grad_matches_torch(entry: Entry, index: int) -> None:
    kwargs, keys, fixed, inputs = _diff_case(entry, index)
    weights = [_randn(*t.shape, seed=60 + i, dtype=torch.float64) for i, t in enumerate(inputs)]
    results = []
    for cls in (entry.cls, entry.reference):
        outs = _step_fn(cls, kwargs, keys, fixed)(*inputs)
        scalar = sum((w * o).sum() for w, o in zip(weights, outs, strict=False))
        grads = torch.autograd.grad(scalar, inputs, allow_unused=True)
        results.append(([o.detach() for o in outs],
                        [torch.zeros_like(t) if g is None else g for g, t in
                         zip(grads, inputs, strict=True)]))
    (outs, grads), (t_outs, t_grads) = results
    _assert_close(outs, t_outs, "output")
    _assert_close(grads, t_grads, "gradient wrt input")


# --------------------------------------------------------------------------------------
# 8. state_dict
# --------------------------------------------------------------------------------------


def _primed(entry: Entry, kwargs: dict[str, Any], steps: int = 5
            ) -> tuple[list[Parameter], Optimizer]:
    params = _params(torch.float32)
    opt = entry.make(params, kwargs)
    _run(opt, params, 0, steps)
    return params, opt


def _continue_both(opt_a: Optimizer, params_a: list[Tensor], opt_b: Optimizer,
                   params_b: list[Tensor], *, exact: bool) -> None:
    for k in range(5, 10):
        _run(opt_a, params_a, k, 1)
        _run(opt_b, params_b, k, 1)
        if exact:
            _assert_same(params_a, params_b)
        else:
            _assert_close(params_a, params_b)


@pytest.mark.parametrize(("entry", "index"), configs())
def test_state_dict_round_trip(entry: Entry, index: int) -> None:
    kwargs = entry.config(index, torch.float32)
    params, opt = _primed(entry, kwargs)
    sd = opt.state_dict()
    loaded = save_load(sd)  # torch.save / torch.load(weights_only=True)
    assert_tree_equal(sd, loaded)
    params_c = _clones(params)
    opt_c = entry.make(params_c, kwargs)
    opt_c.load_state_dict(loaded)
    assert_tree_equal(opt_c.state_dict(), opt.state_dict())
    _continue_both(opt, params, opt_c, params_c, exact=True)
    # deterministic: the state_dicts of two equal optimizers are equal
    assert_tree_equal(opt.state_dict(), opt_c.state_dict())


@pytest.mark.parametrize(("entry", "index"), configs())
def test_state_dict_older_format(entry: Entry, index: int) -> None:
    kwargs = entry.config(index, torch.float32)
    params, opt = _primed(entry, kwargs)
    sd = copy.deepcopy(opt.state_dict())
    flags = set(NEWER_GROUP_KEYS) | set(entry.info.not_og_supported_flags if entry.info else ())
    for group in sd["param_groups"]:
        for key in flags:
            group.pop(key, None)
    params_c = _clones(params)
    opt_c = entry.make(params_c, kwargs)
    opt_c.load_state_dict(sd)
    _continue_both(opt, params, opt_c, params_c, exact=True)


@pytest.mark.parametrize(("entry", "index"), configs())
def test_state_dict_numeric_step(entry: Entry, index: int) -> None:
    kwargs = entry.config(index, torch.float32)
    params, opt = _primed(entry, kwargs)
    sd = copy.deepcopy(opt.state_dict())
    for st in sd["state"].values():
        if isinstance(st.get("step"), Tensor):
            st["step"] = float(st["step"].item())
    params_c = _clones(params)
    opt_c = entry.make(params_c, kwargs)
    opt_c.load_state_dict(sd)
    _continue_both(opt, params, opt_c, params_c, exact=True)


@pytest.mark.parametrize(("entry", "index"), configs(torch_only=True))
def test_state_dict_from_torch(entry: Entry, index: int) -> None:
    kwargs = entry.config(index, torch.float32)
    params = _params(torch.float32)
    theirs = entry.make_reference(params, kwargs)
    _run(theirs, params, 0, 5)
    params_c = _clones(params)
    ours = entry.make(params_c, kwargs)
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    _continue_both(theirs, params, ours, params_c, exact=False)


@pytest.mark.parametrize(("entry", "index"), configs(torch_only=True))
def test_state_dict_to_torch(entry: Entry, index: int) -> None:
    kwargs = entry.config(index, torch.float32)
    params, ours = _primed(entry, kwargs)
    params_c = _clones(params)
    theirs = entry.make_reference(params_c, kwargs)
    theirs.load_state_dict(copy.deepcopy(ours.state_dict()))
    _continue_both(ours, params, theirs, params_c, exact=False)


# --------------------------------------------------------------------------------------
# 9. deepcopy
# --------------------------------------------------------------------------------------


def _public(opt: Optimizer) -> set[str]:
    return {k for k in opt.__dict__ if not k.startswith("_")}


@pytest.mark.parametrize(("entry", "index"), configs())
def test_deepcopy(entry: Entry, index: int) -> None:
    kwargs = entry.config(index, torch.float32)
    params, opt = _primed(entry, kwargs, steps=3)
    bundle = copy.deepcopy({"opt": opt, "params": params})
    opt_c, params_c = bundle["opt"], bundle["params"]
    assert type(opt_c) is type(opt)
    assert _public(opt_c) == _public(opt)
    # torch's Optimizer.__setstate__ adds defaults (differentiable) that an optimizer without
    # the flag lacks: what it adds to the reference's copy, it may add to ours
    ref = entry.make_reference(_params(torch.float32), kwargs)
    added = set(copy.deepcopy(ref).defaults) - set(ref.defaults)
    assert set(opt_c.defaults) - set(opt.defaults) <= added
    assert_tree_equal({k: opt_c.defaults[k] for k in opt.defaults}, opt.defaults, "defaults")
    for name in _public(opt) - {"state", "param_groups", "defaults"}:
        assert_tree_equal(getattr(opt_c, name), getattr(opt, name), name)
    ids = {id(p): i for i, p in enumerate(params)}
    ids_c = {id(p): i for i, p in enumerate(params_c)}
    for g, gc in zip(opt.param_groups, opt_c.param_groups, strict=True):
        assert [ids[id(p)] for p in g["params"]] == [ids_c[id(p)] for p in gc["params"]]
        assert_tree_equal({k: v for k, v in gc.items() if k != "params"},
                          {k: v for k, v in g.items() if k != "params"}, "param_group")
    assert_tree_equal(_state_by_index(opt_c), _state_by_index(opt), "state")
    for k in range(3, 6):
        _run(opt, params, k, 1)
        _run(opt_c, params_c, k, 1)
        _assert_same(params_c, params)


# --------------------------------------------------------------------------------------
# 10. printing
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", [None, "global_norm:1.0"], ids=["noclip", "clip"])
@pytest.mark.parametrize(("entry", "index", "impl"), configs_with_impls(skip=()))
def test_repr_matches_torch(entry: Entry, index: int, impl: dict[str, Any],
                            clip: str | None) -> None:
    kwargs = {**entry.config(index, torch.float32), **impl}
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    ours = repr(entry.make(params, kwargs, clip=clip))
    theirs = repr(entry.reference(params, **copy.deepcopy(kwargs)))
    theirs = theirs.replace(entry.reference.__name__, entry.name, 1)  # the references' names
    assert ours.startswith(f"{entry.name} (")
    assert ours == theirs


# --------------------------------------------------------------------------------------
# 11. steps without gradients, and with zero gradients
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("entry", "index", "impl"), configs_with_impls())
def test_step_without_grads_is_noop(entry: Entry, index: int, impl: dict[str, Any]) -> None:
    kwargs = {**entry.config(index, torch.float32), **impl}
    params, opt = _primed(entry, kwargs, steps=3)
    before_p = [p.detach().clone() for p in params]
    before_s = copy.deepcopy(_state_by_index(opt))
    for p in params:
        p.grad = None
    opt.step()
    _assert_same(params, before_p)
    assert_tree_equal(_state_by_index(opt), before_s, "state")
    # parameters that do not require grad, and a closure
    frozen = [torch.randn(2, 3, generator=_gen(5)) for _ in range(2)]
    old = [t.clone() for t in frozen]
    opt2 = entry.make(frozen, kwargs)
    assert float(opt2.step(lambda: torch.tensor([1.0]))) == 1.0
    _assert_same(frozen, old)


@pytest.mark.parametrize(("entry", "index", "impl"), [
    p for p in configs_with_impls()
    if not _effective(p.values[0], p.values[0].config(p.values[1]), "weight_decay")])
def test_zero_grads_are_noop(entry: Entry, index: int, impl: dict[str, Any]) -> None:
    kwargs = {**entry.config(index, torch.float32), **impl}
    param = Parameter(torch.randn(5, 1, generator=_gen(6)))
    old = param.detach().clone()
    opt = entry.make([param], kwargs)
    for _ in range(2):
        param.grad = torch.zeros_like(param)
        opt.step()
    _assert_same([param], [old])


# --------------------------------------------------------------------------------------
# 12. gradients are never written
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["test-default", "auto"])
@pytest.mark.parametrize("clip", [None, "global_norm:0.01"], ids=["noclip", "clip0.01"])
@pytest.mark.parametrize(("entry", "index"), configs())
def test_step_never_writes_grads(entry: Entry, index: int, clip: str | None, backend: str,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``test-default``: the backend these tests run (conftest's GRADGUARD_BACKEND);
    ``auto``: the library's default, with its default compile threshold (so small groups
    take the native fused kernels or the multi-tensor path, nothing compiles)."""
    extra: dict[str, Any] = {"clip": clip}
    if backend == "auto":
        monkeypatch.delenv("GRADGUARD_COMPILE_MIN_NUMEL", raising=False)
        extra["backend"] = "auto"
    kwargs = entry.config(index, torch.float32)
    params = _params(torch.float32)
    opt = entry.make(params, kwargs, **extra)
    for k in range(3):
        _backward(params, k)
        grads = [p.grad.clone() for p in params if p.grad is not None]
        opt.step()
        _assert_same([p.grad for p in params if p.grad is not None], grads, "grad")


# --------------------------------------------------------------------------------------
# 13. param groups and LR schedulers
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("entry", "index"), configs())
def test_param_groups_equal_separate_optimizers(entry: Entry, index: int) -> None:
    kwargs = {k: v for k, v in entry.config(index, torch.float32).items()
              if k not in ("lr", "weight_decay")}
    lr = float(_effective(entry, entry.config(index), "lr"))
    groups = [{"lr": lr, "weight_decay": 0.0}, {"lr": lr / 2, "weight_decay": 0.05}]
    params = _params(torch.float32)
    sep = _clones(params)
    joint = entry.make([{"params": [p], **g} for p, g in zip(params, groups, strict=True)],
                       kwargs)
    alone = [entry.make([p], {**kwargs, **g}) for p, g in zip(sep, groups, strict=True)]
    for k in range(5):
        _backward(params, k)
        _backward(sep, k)
        joint.step()
        for opt in alone:
            opt.step()
        _assert_close(params, sep)


@pytest.mark.parametrize("sched", ["StepLR", "ReduceLROnPlateau"])
@pytest.mark.parametrize(("entry", "index"), configs())
def test_scheduler_matches_reference(entry: Entry, index: int, sched: str) -> None:
    dtype = entry.dtype
    kwargs = entry.config(index)
    runs = []
    for ours in (True, False):
        params = _params(dtype)
        opt = entry.make(params, kwargs) if ours else entry.make_reference(params, kwargs)
        s = (StepLR(opt, step_size=2, gamma=0.5) if sched == "StepLR"
             else ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=0.5))
        runs.append((params, opt, s))
    for k in range(8):
        losses = [float(_backward(params, k)) for params, _, _ in runs]
        for _, opt, s in runs:
            opt.step()
            _scheduler_step([s], losses[0])
        (p_a, o_a, _), (p_b, o_b, _) = runs
        _assert_close(p_a, p_b)
        assert [float(g["lr"]) for g in o_a.param_groups] == \
            [float(g["lr"]) for g in o_b.param_groups]


# --------------------------------------------------------------------------------------
# 14. hooks
# --------------------------------------------------------------------------------------


def _hook_kwargs(entry: Entry) -> dict[str, Any]:
    """The first config that keeps optimizer state (SGD without momentum keeps none)."""
    return {"momentum": 0.9} if entry.name == "SGD" else {}


def _record_hooks(entry: Entry, cls: type[Optimizer], dtype: torch.dtype) -> list[Any]:
    calls: list[Any] = []
    params = _params(dtype)
    opt = cls(params, **_hook_kwargs(entry), **({"foreach": False} if cls is entry.reference
                                                 and entry.is_torch else {}))

    def rec(name: str) -> Callable[..., Any]:
        def hook(*args: Any) -> None:
            calls.append((name, len(args)))
        return hook

    def sd_pre(o: Optimizer) -> None:
        calls.append(("sd_pre", len(o.param_groups)))
        o.state["marker"] = 1  # type: ignore[index]

    def sd_post(o: Optimizer, sd: dict[str, Any]) -> dict[str, Any]:
        calls.append(("sd_post", sd["state"].get("marker"), len(sd["param_groups"])))
        o.state.pop("marker")  # type: ignore[call-overload]
        sd["state"].pop("marker")
        sd["post_ran"] = True
        return sd

    def load_pre_first(o: Optimizer, sd: dict[str, Any]) -> None:
        calls.append(("load_pre_first", sd["param_groups"][0]["lr"]))
        sd["param_groups"][0]["lr"] = 0.002

    def load_pre_replace(o: Optimizer, sd: dict[str, Any]) -> dict[str, Any]:
        calls.append(("load_pre_replace", sd["param_groups"][0]["lr"]))
        new = copy.deepcopy(sd)
        new["param_groups"][0]["lr"] = 0.003
        return new

    def load_post(o: Optimizer) -> None:
        calls.append(("load_post", o.param_groups[0]["lr"]))

    handles = [
        register_optimizer_step_pre_hook(rec("global_pre")),
        register_optimizer_step_post_hook(rec("global_post")),
    ]
    try:
        handles += [
            opt.register_step_pre_hook(rec("pre")),
            opt.register_step_pre_hook(rec("pre2")),
            opt.register_step_post_hook(rec("post")),
            opt.register_step_post_hook(rec("post2")),
            opt.register_state_dict_pre_hook(sd_pre),
            opt.register_state_dict_post_hook(sd_post),
            opt.register_load_state_dict_pre_hook(load_pre_replace),
            opt.register_load_state_dict_pre_hook(load_pre_first, prepend=True),
            opt.register_load_state_dict_post_hook(load_post),
        ]
        _run(opt, params, 0, 2)
        sd = opt.state_dict()
        calls.append(("state_dict", "marker" in sd["state"], sd.get("post_ran")))
        opt.load_state_dict(sd)
        calls.append(("after_load", opt.param_groups[0]["lr"]))
        _run(opt, params, 2, 1)
    finally:
        for h in handles:
            h.remove()
    calls.append("removed")
    _run(opt, params, 3, 1)
    return calls


@pytest.mark.parametrize("entry", entries())
def test_hooks_fire_as_on_reference(entry: Entry) -> None:
    ours = _record_hooks(entry, entry.cls, entry.dtype)
    theirs = _record_hooks(entry, entry.reference, entry.dtype)
    assert ours == theirs


@pytest.mark.parametrize("entry", entries())
def test_load_state_dict_pre_hook_runs_first(entry: Entry) -> None:
    """torch runs load_state_dict pre-hooks before it reads the state_dict, so a hook can
    convert a checkpoint (here: state entries saved under other names)."""
    kwargs = _hook_kwargs(entry)
    params, opt = _primed(entry, kwargs, steps=2)
    sd = copy.deepcopy(opt.state_dict())
    sd["state"] = {i: {f"legacy_{k}": v for k, v in st.items()} for i, st in sd["state"].items()}

    def convert(o: Optimizer, sd: dict[str, Any]) -> None:
        sd["state"] = {i: {k.removeprefix("legacy_"): v for k, v in st.items()}
                       for i, st in sd["state"].items()}

    params_c = _clones(params)
    opt_c = entry.make(params_c, kwargs)
    opt_c.register_load_state_dict_pre_hook(convert)
    opt_c.load_state_dict(sd)
    _continue_both(opt, params, opt_c, params_c, exact=True)
