"""The table of optimizers the generic tests loop over, plus float64 reference
implementations of LARS, LAMB and Lion written directly from the papers' formulas."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch.optim import Optimizer

# --------------------------------------------------------------------------------------
# float64 reference updates (one parameter tensor at a time)
# --------------------------------------------------------------------------------------


def lars_update(
    w: torch.Tensor,
    g: torch.Tensor,
    v: torch.Tensor,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    trust_coefficient: float,
    exclude_bias_and_norm: bool,
    maximize: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LARS (You et al. 2017). Returns the new (w, momentum_buffer)."""
    if maximize:
        g = -g
    if exclude_bias_and_norm and w.ndim <= 1:
        local = 1.0
        d = g
    else:
        w_norm = float(w.norm())
        g_norm = float(g.norm())
        if w_norm > 0 and g_norm > 0:
            local = trust_coefficient * w_norm / (g_norm + weight_decay * w_norm)
        else:
            local = 1.0
        d = g + weight_decay * w
    v = momentum * v + lr * local * d
    return w - v, v


def lamb_update(
    w: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    t: int,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    maximize: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LAMB (You et al. 2019), step ``t`` (1-based). Returns the new (w, exp_avg, exp_avg_sq)."""
    if maximize:
        g = -g
    b1, b2 = betas
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat = m / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    r = m_hat / (v_hat.sqrt() + eps)
    u = r + weight_decay * w
    w_norm = float(w.norm())
    u_norm = float(u.norm())
    ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
    return w - lr * ratio * u, m, v


def lion_update(
    w: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    *,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    maximize: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lion (Chen et al. 2023). Returns the new (w, exp_avg)."""
    if maximize:
        g = -g
    b1, b2 = betas
    c = b1 * m + (1 - b1) * g
    w = w - lr * (torch.sign(c) + weight_decay * w)
    m = b2 * m + (1 - b2) * g
    return w, m


class _ReferenceOptimizer(Optimizer):
    """Minimal torch.optim.Optimizer shell around a float64 per-tensor update function, so
    the reference works with param groups, LR schedulers and GradScaler like torch's."""

    def _update(self, p: torch.Tensor, g: torch.Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._update(p, p.grad.to(torch.float64), self.state[p], group)
        return loss


class ReferenceLARS(_ReferenceOptimizer):
    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        exclude_bias_and_norm: bool = False,
        *,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "exclude_bias_and_norm": exclude_bias_and_norm,
            "maximize": maximize,
            "differentiable": differentiable,  # accepted, as gradguard's (not differentiated)
        }
        super().__init__(params, defaults)

    def _update(self, p: torch.Tensor, g: torch.Tensor, state: dict, group: dict) -> None:
        w = p.to(torch.float64)
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(w)
        w, state["momentum_buffer"] = lars_update(
            w,
            g,
            state["momentum_buffer"],
            lr=group["lr"],
            momentum=group["momentum"],
            weight_decay=group["weight_decay"],
            trust_coefficient=group["trust_coefficient"],
            exclude_bias_and_norm=group["exclude_bias_and_norm"],
            maximize=group["maximize"],
        )
        p.copy_(w)


class ReferenceLAMB(_ReferenceOptimizer):
    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "maximize": maximize,
            "differentiable": differentiable,  # accepted, as gradguard's (not differentiated)
        }
        super().__init__(params, defaults)

    def _update(self, p: torch.Tensor, g: torch.Tensor, state: dict, group: dict) -> None:
        w = p.to(torch.float64)
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float64)
            state["exp_avg"] = torch.zeros_like(w)
            state["exp_avg_sq"] = torch.zeros_like(w)
        state["step"] = state["step"] + 1
        w, state["exp_avg"], state["exp_avg_sq"] = lamb_update(
            w,
            g,
            state["exp_avg"],
            state["exp_avg_sq"],
            int(state["step"]),
            lr=group["lr"],
            betas=group["betas"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
        )
        p.copy_(w)


class ReferenceLion(_ReferenceOptimizer):
    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "weight_decay": weight_decay, "maximize": maximize,
                    "differentiable": differentiable}  # as gradguard's (not differentiated)
        super().__init__(params, defaults)

    def _update(self, p: torch.Tensor, g: torch.Tensor, state: dict, group: dict) -> None:
        w = p.to(torch.float64)
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(w)
        w, state["exp_avg"] = lion_update(
            w,
            g,
            state["exp_avg"],
            lr=group["lr"],
            betas=group["betas"],
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
        )
        p.copy_(w)


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Invalid:
    """An invalid configuration: ``kwargs`` must raise ValueError whose message contains
    one of ``names`` and (unless None) ``str(value)``."""

    kwargs: dict[str, Any]
    names: tuple[str, ...]
    value: Any = None

    @property
    def id(self) -> str:
        return ",".join(f"{k}={v!r}" for k, v in self.kwargs.items())


@dataclass(frozen=True)
class OptimizerEntry:
    name: str
    torch_cls: type[Optimizer] | None
    reference_cls: type[Optimizer] | None
    configs: tuple[dict[str, Any], ...]
    invalid: tuple[Invalid, ...]
    main: dict[str, Any]
    skips: dict[str, str] = field(default_factory=dict)
    # tolerance of the float64 comparison with torch.optim: float64 keeps float64's precision
    fp64_tolerance: dict[str, float] = field(default_factory=lambda: {"rtol": 1e-12,
                                                                      "atol": 1e-14})
    # Where torch.optim has no such optimizer, what torch's OptimizerInfo would say for the
    # conformance tests (tests/test_torch_conformance.py): sample configs (description,
    # kwargs) and constructor errors beyond the common ones (kwargs, message, description).
    own_configs: tuple[tuple[str, dict[str, Any]], ...] = ()
    own_errors: tuple[tuple[dict[str, Any], str, str], ...] = ()

    @property
    def make(self) -> type[Optimizer]:
        """The gradguard constructor (looked up lazily so one missing class fails only
        its own tests)."""
        import gradguard

        return getattr(gradguard, self.name)

    @property
    def reference(self) -> type[Optimizer]:
        """torch.optim class, or the float64 reference for optimizers without one."""
        ref = self.torch_cls or self.reference_cls
        assert ref is not None
        return ref

    @property
    def dtype(self) -> torch.dtype:
        """Comparisons with torch run in float32; with our references in float64."""
        return torch.float32 if self.torch_cls is not None else torch.float64

    @property
    def tolerance(self) -> dict[str, float]:
        if self.torch_cls is not None:
            return {"rtol": 1e-5, "atol": 1e-6}
        return {"rtol": 1e-9, "atol": 1e-12}

    def __repr__(self) -> str:
        return self.name


def _common_invalid(*, betas: bool = False, eps: bool = False) -> tuple[Invalid, ...]:
    out = [
        Invalid({"lr": -1}, ("lr",), -1),
        Invalid({"weight_decay": -1}, ("weight_decay",), -1),
        Invalid({"nonfinite": "ignore"}, ("nonfinite",), "ignore"),
        Invalid({"clip": "bogus:1"}, ("clip",), "bogus:1"),
    ]
    if betas:
        out += [
            Invalid({"betas": (1.0, 0.999)}, ("betas",), 1.0),
            Invalid({"betas": (0.9, -0.1)}, ("betas",), -0.1),
        ]
    if eps:
        out.append(Invalid({"eps": -1e-8}, ("eps",), -1e-8))
    return tuple(out)


NO_TORCH = "no torch.optim counterpart"

TABLE: tuple[OptimizerEntry, ...] = (
    OptimizerEntry(
        name="SGD",
        torch_cls=torch.optim.SGD,
        reference_cls=None,
        configs=(
            {},
            {"lr": 0.05, "momentum": 0.9},
            {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-2},
            {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
            {"lr": 0.05, "momentum": 0.5, "maximize": True},
        ),
        invalid=(
            *_common_invalid(),
            Invalid({"momentum": -0.5}, ("momentum",), -0.5),
            Invalid({"momentum": 0, "nesterov": True}, ("nesterov", "momentum")),
            Invalid(
                {"momentum": 0.9, "dampening": 0.5, "nesterov": True},
                ("nesterov", "dampening"),
            ),
        ),
        main={"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-2},
    ),
    OptimizerEntry(
        name="Adam",
        torch_cls=torch.optim.Adam,
        reference_cls=None,
        configs=(
            {},
            {"lr": 1e-2, "amsgrad": True},
            {"lr": 1e-2, "weight_decay": 1e-2},
            {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True},
            {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6},
            {"lr": 1e-2, "amsgrad": True, "maximize": True},
        ),
        invalid=_common_invalid(betas=True, eps=True),
        main={"lr": 1e-2, "weight_decay": 1e-2},
    ),
    OptimizerEntry(
        name="AdamW",
        torch_cls=torch.optim.AdamW,
        reference_cls=None,
        configs=(
            {},
            {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True},
            {"lr": 1e-2, "maximize": True},
        ),
        invalid=_common_invalid(betas=True, eps=True),
        main={"lr": 1e-2},
    ),
    OptimizerEntry(
        name="NAdam",
        torch_cls=torch.optim.NAdam,
        reference_cls=None,
        configs=(
            {},
            {"lr": 1e-2, "momentum_decay": 0.01},
            {"lr": 1e-2, "weight_decay": 1e-2},
            {"lr": 1e-2, "weight_decay": 1e-2, "decoupled_weight_decay": True},
            {"lr": 1e-2, "maximize": True},
        ),
        invalid=(
            *_common_invalid(betas=True, eps=True),
            Invalid({"momentum_decay": -1}, ("momentum_decay",), -1),
        ),
        main={"lr": 1e-2, "weight_decay": 1e-2},
    ),
    OptimizerEntry(
        name="Adamax",
        torch_cls=torch.optim.Adamax,
        reference_cls=None,
        configs=(
            {},
            {"lr": 1e-2, "weight_decay": 1e-2, "betas": (0.8, 0.99)},
            {"lr": 1e-2, "maximize": True},
        ),
        invalid=_common_invalid(betas=True, eps=True),
        main={"lr": 1e-2},
    ),
    OptimizerEntry(
        name="RMSprop",
        torch_cls=torch.optim.RMSprop,
        reference_cls=None,
        configs=(
            {},
            {"lr": 1e-3, "alpha": 0.9},
            {"lr": 1e-3, "centered": True},
            {"lr": 1e-3, "momentum": 0.9},
            {"lr": 1e-3, "centered": True, "momentum": 0.5, "weight_decay": 1e-2},
            {"lr": 1e-3, "maximize": True},
        ),
        invalid=(
            *_common_invalid(eps=True),
            Invalid({"alpha": -1}, ("alpha",), -1),
            Invalid({"momentum": -0.5}, ("momentum",), -0.5),
        ),
        main={"lr": 3e-3, "momentum": 0.5, "centered": True},
    ),
    OptimizerEntry(
        name="Adagrad",
        torch_cls=torch.optim.Adagrad,
        reference_cls=None,
        configs=(
            {},
            {"lr": 0.05, "lr_decay": 1e-2},
            {"lr": 0.05, "initial_accumulator_value": 0.1},
            {"lr": 0.05, "weight_decay": 1e-2},
            {"lr": 0.05, "maximize": True},
        ),
        invalid=(
            *_common_invalid(eps=True),
            Invalid({"lr_decay": -1}, ("lr_decay",), -1),
            Invalid({"initial_accumulator_value": -1}, ("initial_accumulator_value",), -1),
        ),
        main={"lr": 0.05},
    ),
    OptimizerEntry(
        name="Adadelta",
        torch_cls=torch.optim.Adadelta,
        reference_cls=None,
        configs=(
            {},
            {"rho": 0.5},
            {"lr": 0.5, "weight_decay": 1e-2},
            {"maximize": True},
        ),
        invalid=(
            *_common_invalid(eps=True),
            Invalid({"rho": 1.5}, ("rho",), 1.5),
            Invalid({"rho": -0.1}, ("rho",), -0.1),
        ),
        main={"lr": 5.0},
    ),
    OptimizerEntry(
        name="LARS",
        torch_cls=None,
        reference_cls=ReferenceLARS,
        configs=(
            {},
            {"exclude_bias_and_norm": True},
            {"lr": 2.0, "weight_decay": 1e-2},
            {"weight_decay": 1e-2, "exclude_bias_and_norm": True, "momentum": 0.5},
            {"maximize": True},
        ),
        invalid=(
            *_common_invalid(),
            Invalid({"momentum": -0.5}, ("momentum",), -0.5),
            Invalid({"trust_coefficient": -1}, ("trust_coefficient",), -1),
        ),
        main={"lr": 5.0, "weight_decay": 1e-3},
        own_configs=(
            ("default", {}),
            ("exclude_bias_and_norm", {"exclude_bias_and_norm": True}),
            ("weight_decay", {"lr": 2.0, "weight_decay": 1e-2}),
            ("momentum, weight_decay, exclude_bias_and_norm",
             {"momentum": 0.5, "weight_decay": 1e-2, "exclude_bias_and_norm": True}),
            ("trust_coefficient", {"trust_coefficient": 1e-2}),
            ("maximize", {"maximize": True}),
            ("maximize, weight_decay", {"weight_decay": 1e-2, "maximize": True}),
        ),
        own_errors=(
            ({"momentum": -0.5}, "Invalid momentum value: -0.5", "negative momentum"),
            ({"momentum": 1.0}, "Invalid momentum value: 1.0", "momentum of 1"),
            ({"trust_coefficient": -1}, "Invalid trust_coefficient value: -1",
             "negative trust_coefficient"),
        ),
        skips={"torch_interop": NO_TORCH},
    ),
    OptimizerEntry(
        name="LAMB",
        torch_cls=None,
        reference_cls=ReferenceLAMB,
        configs=(
            {},
            {"lr": 1e-2, "weight_decay": 1e-2},
            {"lr": 1e-2, "betas": (0.8, 0.99)},
            {"lr": 1e-2, "maximize": True},
        ),
        invalid=_common_invalid(betas=True, eps=True),
        main={"lr": 2e-2, "weight_decay": 1e-2},
        own_configs=(
            ("default", {}),
            ("non-default lr", {"lr": 1e-2}),
            ("weight_decay", {"lr": 1e-2, "weight_decay": 0.1}),
            ("betas, eps", {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-8}),
            ("maximize, weight_decay", {"lr": 1e-2, "weight_decay": 0.1, "maximize": True}),
        ),
        own_errors=(
            ({"betas": (1.0, 0.99)}, "Invalid beta parameter at index 0: 1.0", "beta1 of 1"),
            ({"betas": (0.9, -0.1)}, r"Invalid beta parameter at index 1: -0.1",
             "negative beta2"),
            ({"eps": -1e-6}, "Invalid epsilon value: -1e-06", "negative eps"),
        ),
        skips={"torch_interop": NO_TORCH},
    ),
    OptimizerEntry(
        name="Lion",
        torch_cls=None,
        reference_cls=ReferenceLion,
        configs=(
            {},
            {"lr": 1e-3, "weight_decay": 0.1},
            {"lr": 1e-3, "maximize": True},
        ),
        invalid=_common_invalid(betas=True),
        main={"lr": 1e-2, "weight_decay": 1e-2},
        own_configs=(
            ("default", {}),
            ("non-default lr", {"lr": 1e-3}),
            ("weight_decay", {"lr": 1e-3, "weight_decay": 0.1}),
            ("betas", {"lr": 1e-3, "betas": (0.95, 0.98)}),
            ("maximize, weight_decay", {"lr": 1e-3, "weight_decay": 0.1, "maximize": True}),
        ),
        own_errors=(
            ({"betas": (1.0, 0.99)}, "Invalid beta parameter at index 0: 1.0", "beta1 of 1"),
            ({"betas": (0.9, -0.1)}, r"Invalid beta parameter at index 1: -0.1",
             "negative beta2"),
        ),
        skips={"torch_interop": NO_TORCH},
    ),
)

TORCH_TABLE = tuple(e for e in TABLE if e.torch_cls is not None)


def _config_id(config: dict[str, Any]) -> str:
    if not config:
        return "defaults"
    return ",".join(f"{k}={v}" for k, v in config.items())


def entry_params(test_key: str | None = None) -> list[Any]:
    """``pytest.param`` per table entry, marked skip where the entry lists ``test_key``."""
    out = []
    for entry in TABLE:
        marks = []
        if test_key is not None and test_key in entry.skips:
            marks.append(pytest.mark.skip(reason=f"{entry.name}: {entry.skips[test_key]}"))
        out.append(pytest.param(entry, id=entry.name, marks=marks))
    return out


def config_params() -> list[Any]:
    """``pytest.param(entry, config)`` for every sample config of every entry."""
    return [
        pytest.param(entry, config, id=f"{entry.name}[{_config_id(config)}]")
        for entry in TABLE
        for config in entry.configs
    ]


def invalid_params() -> list[Any]:
    return [
        pytest.param(entry, bad, id=f"{entry.name}[{bad.id}]")
        for entry in TABLE
        for bad in entry.invalid
    ]


def loss_sign(config: dict[str, Any]) -> float:
    """With ``maximize=True`` the tests maximize ``-loss`` so the run stays well-behaved."""
    return -1.0 if config.get("maximize", False) else 1.0
