"""RMSprop, Adagrad and Adadelta: the drop-ins for torch.optim's classes of the same names.
See :mod:`gradguard.optim._optimizers` for the options they share."""

from __future__ import annotations

from typing import Any, Unpack

import torch  # noqa: F401  (the doctests use it)
from torch import Tensor

from .._validation import (
    check_lr,
    check_nonneg,
    check_unit_interval,
)
from ..rules import RULES
from ._base import GuardedOptimizer, GuardOptions, Params, _scalar
from ._registry import log_grid, register, variant
from ._sparse import adagrad_sparse

__all__ = ["Adadelta", "Adagrad", "RMSprop"]


@register(variant("rmsprop", "RMSprop", lrs=log_grid(1e-5, 1e-2, 7), bench={"lr": 1e-3},
                  step_bytes=20 + 4))
class RMSprop(GuardedOptimizer):
    r"""RMSprop (Tieleman & Hinton 2012); ``centered`` subtracts the squared mean gradient
    (Graves 2013); ``momentum`` adds a momentum buffer.

    .. math:: v_t = \alpha v_{t-1} + (1-\alpha) g_t^2, \quad
              \theta_t = \theta_{t-1} - \eta\,\frac{g_t}{\sqrt{v_t} + \epsilon}

    >>> w = torch.nn.Parameter(torch.zeros(1))
    >>> opt = RMSprop([w], lr=0.01)
    >>> w.grad = torch.tensor([1.0])
    >>> opt.step(); w.detach()
    tensor([-0.1000])
    """

    rule = RULES["rmsprop"]

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        **options: Unpack[GuardOptions],
    ) -> None:
        check_lr(lr)
        check_nonneg("eps", eps, "epsilon value")
        check_nonneg("momentum", momentum)
        check_nonneg("weight_decay", weight_decay)
        check_unit_interval("alpha", alpha, closed_right=True)
        defaults = {"lr": lr, "momentum": momentum, "alpha": alpha, "eps": eps,
                    "centered": centered, "weight_decay": weight_decay,
                    "capturable": capturable, "foreach": foreach, "maximize": maximize,
                    "differentiable": differentiable}
        super().__init__(params, defaults, **options)



@register(variant("adagrad", "Adagrad", lrs=log_grid(1e-3, 1.0, 7), bench={"lr": 1e-2},
                  step_bytes=20 + 4))
class Adagrad(GuardedOptimizer):
    r"""Adagrad (Duchi et al. 2011).

    .. math:: s_t = s_{t-1} + g_t^2, \quad
              \theta_t = \theta_{t-1} - \frac{\eta}{1+(t-1)\delta}\frac{g_t}{\sqrt{s_t}+\epsilon}

    >>> w = torch.nn.Parameter(torch.zeros(1))
    >>> opt = Adagrad([w], lr=0.1)
    >>> w.grad = torch.tensor([2.0])
    >>> opt.step(); w.detach()
    tensor([-0.1000])
    """

    rule = RULES["adagrad"]
    _sparse_error = None

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        **options: Unpack[GuardOptions],
    ) -> None:
        check_lr(lr)
        check_nonneg("lr_decay", lr_decay)
        check_nonneg("weight_decay", weight_decay)
        check_nonneg("initial_accumulator_value", initial_accumulator_value)
        check_nonneg("eps", eps, "epsilon value")
        defaults = {"lr": lr, "lr_decay": lr_decay, "eps": eps, "weight_decay": weight_decay,
                    "initial_accumulator_value": initial_accumulator_value, "foreach": foreach,
                    "maximize": maximize, "differentiable": differentiable, "fused": fused}
        super().__init__(params, defaults, **options)
        # As torch.optim.Adagrad: the state exists from construction on.
        for group in self.param_groups:
            for p in group["params"]:
                self._state_for(p, group)

    def _sparse_update(self, group: dict[str, Any], p: Tensor, g: Tensor,
                       state: dict[str, Tensor], scale: Tensor | None, clamp: float | None,
                       skip: Tensor | None) -> None:
        if group["weight_decay"] != 0:
            raise RuntimeError("weight_decay option is not compatible with sparse gradients")
        if scale is not None and scale.dim() > 0:  # unit-wise (AGC): on the dense gradient,
            g = g.to_dense().mul(scale.to(g.dtype)).to_sparse()  # the same rows stay nonzero
            scale = None
        adagrad_sparse(p, g, state, lr=_scalar(group["lr"]), lr_decay=group["lr_decay"],
                       eps=group["eps"], scale=scale, clamp=clamp, skip=skip,
                       maximize=group["maximize"])



@register(variant("adadelta", "Adadelta", lrs=log_grid(1e-2, 10.0, 7), bench={"lr": 1.0},
                  step_bytes=28 + 4))
class Adadelta(GuardedOptimizer):
    r"""Adadelta (Zeiler 2012).

    .. math:: v_t = \rho v_{t-1} + (1-\rho) g_t^2, \quad
              \Delta_t = \frac{\sqrt{u_{t-1}+\epsilon}}{\sqrt{v_t+\epsilon}} g_t, \quad
              u_t = \rho u_{t-1} + (1-\rho)\Delta_t^2, \quad \theta_t = \theta_{t-1} - \eta\Delta_t

    >>> w = torch.nn.Parameter(torch.zeros(1))
    >>> opt = Adadelta([w], lr=1.0, eps=1e-6)
    >>> w.grad = torch.tensor([1.0])
    >>> opt.step(); w.detach()
    tensor([-0.0032])
    """

    rule = RULES["adadelta"]

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
        **options: Unpack[GuardOptions],
    ) -> None:
        check_lr(lr)
        check_unit_interval("rho", rho, closed_right=True)
        check_nonneg("eps", eps, "epsilon value")
        check_nonneg("weight_decay", weight_decay)
        defaults = {"lr": lr, "rho": rho, "eps": eps, "weight_decay": weight_decay,
                    "maximize": maximize, "capturable": capturable, "foreach": foreach,
                    "differentiable": differentiable}
        super().__init__(params, defaults, **options)
