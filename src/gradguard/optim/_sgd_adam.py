"""SGD and the Adam family (Adam, AdamW, NAdam, Adamax): the drop-ins for torch.optim's
classes of the same names. See :mod:`gradguard.optim._optimizers` for the options they share."""

from __future__ import annotations

from typing import Any, Unpack

import torch
from torch import Tensor

from .._validation import (
    check_betas,
    check_lr,
    check_nonneg,
    check_tensor_hparams,
)
from ..rules import RULES
from ._base import _NOT_HPARAMS, GuardedOptimizer, GuardOptions, Params, _scalar
from ._registry import log_grid, register, variant
from ._sparse import sgd_sparse
from .backends import eager

__all__ = ["SGD", "Adam", "AdamW", "Adamax", "NAdam"]


@register(
    variant("sgd", "plain SGD", lrs=log_grid(1e-3, 1.0, 7),
            bench={"lr": 0.01, "momentum": 0.9}, step_bytes=20 + 4),
    variant("momentum", "SGD with momentum 0.9", lrs=log_grid(1e-4, 1e-1, 7), momentum=0.9),
    variant("nesterov", "SGD, Nesterov momentum 0.9", lrs=log_grid(1e-4, 1e-1, 7),
            momentum=0.9, nesterov=True),
)
class SGD(GuardedOptimizer):
    r"""Stochastic gradient descent, with momentum and Nesterov momentum.

    .. math::
        g \leftarrow g + \lambda\theta, \quad
        b \leftarrow \mu b + (1-\tau) g, \quad
        \theta \leftarrow \theta - \eta\,(g + \mu b \text{ if nesterov else } b)

    >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    >>> opt = SGD([w], lr=0.1, momentum=0.9, clip="global_norm:1")
    >>> w.grad = torch.tensor([30.0, 40.0])
    >>> opt.step(); w.detach()
    tensor([0.9400, 1.9200])
    >>> opt.last_step.clipped
    tensor(True)
    """

    rule = RULES["sgd"]
    _sparse_error = None

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        **options: Unpack[GuardOptions],
    ) -> None:
        check_lr(lr)
        check_nonneg("momentum", momentum)
        check_nonneg("dampening", dampening)
        check_nonneg("weight_decay", weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"Nesterov momentum requires a momentum and zero dampening "
                             f"(nesterov=True with momentum={momentum}, "
                             f"dampening={dampening})")
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening,
                    "weight_decay": weight_decay, "nesterov": nesterov, "maximize": maximize,
                    "foreach": foreach, "differentiable": differentiable, "fused": fused}
        super().__init__(params, defaults, **options)

    def _sparse_update(self, group: dict[str, Any], p: Tensor, g: Tensor,
                       state: dict[str, Tensor], scale: Tensor | None, clamp: float | None,
                       skip: Tensor | None) -> None:
        if group["momentum"] == 0 and group["weight_decay"] == 0 and (
                scale is None or scale.dim() == 0):
            sgd_sparse(p, g, lr=_scalar(group["lr"]), scale=scale, clamp=clamp, skip=skip,
                       maximize=group["maximize"])
            return
        # Momentum or weight decay make torch's update dense: the reference on the dense
        # gradient computes the same.
        fresh = self._fresh.get(p)
        hparams = {k: _scalar(v) for k, v in group.items() if k not in _NOT_HPARAMS}
        eager.update_tensors(self.rule.update, [p], [g.to_dense()], [state], [scale], clamp,
                             [fresh], skip, _scalar(group["lr"]), hparams)
        if fresh is not None:
            self._fresh[p] = fresh & skip if skip is not None else torch.zeros_like(fresh)



@register(
    variant("adam", "Adam", lrs=log_grid(1e-4, 1e-1, 7), bench={"lr": 1e-3}, step_bytes=28 + 4),
    variant("amsgrad", "Adam with AMSGrad", lrs=log_grid(1e-4, 1e-1, 7), amsgrad=True),
)
class Adam(GuardedOptimizer):
    r"""Adam (Kingma & Ba 2014); AMSGrad with ``amsgrad=True`` (Reddi et al. 2018).

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad
        \theta_t = \theta_{t-1} - \frac{\eta}{1-\beta_1^t}
                   \frac{m_t}{\sqrt{v_t}/\sqrt{1-\beta_2^t} + \epsilon}

    >>> w = torch.nn.Parameter(torch.tensor([1.0]))
    >>> opt = Adam([w], lr=0.1)
    >>> w.grad = torch.tensor([float("nan")])
    >>> opt.step(); w.detach(), opt.skipped_steps   # the bad step changed nothing
    (tensor([1.]), tensor(1))
    >>> w.grad = torch.tensor([2.0])
    >>> opt.step(); w.detach()
    tensor([0.9000])
    """

    rule = RULES["adam"]
    _decoupled_default = False
    # torch's words, which AdamW shares
    _sparse_error = "Adam does not support sparse gradients, please consider SparseAdam instead"

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        **options: Unpack[GuardOptions],
    ) -> None:
        check_tensor_hparams(lr, betas, foreach, capturable)
        check_lr(lr)
        check_nonneg("eps", eps, "epsilon value")
        check_betas(betas)
        check_nonneg("weight_decay", weight_decay)
        betas = (_scalar(betas[0]), _scalar(betas[1]))
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "amsgrad": amsgrad, "maximize": maximize, "foreach": foreach,
                    "capturable": capturable, "differentiable": differentiable, "fused": fused,
                    "decoupled_weight_decay": decoupled_weight_decay}
        super().__init__(params, defaults, **options)




@register(variant("adamw", "AdamW, weight decay 0.01", lrs=log_grid(1e-4, 1e-1, 7),
                  bench={"lr": 1e-3}, step_bytes=28 + 4))
class AdamW(Adam):
    r"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter 2019).

    .. math:: \theta_{t-1} \leftarrow (1 - \eta\lambda)\,\theta_{t-1}
              \text{, then the Adam update}

    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> opt = AdamW([w], lr=0.01, weight_decay=0.1, clip="agc:0.01")
    >>> w.grad = torch.ones(3)
    >>> opt.step(); w.detach()
    tensor([0.9890, 0.9890, 0.9890])
    """

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        **options: Unpack[GuardOptions],
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, **options)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True


@register(variant("nadam", "NAdam", lrs=log_grid(1e-4, 1e-1, 7), bench={"lr": 1e-3},
                  step_bytes=28 + 4))
class NAdam(GuardedOptimizer):
    r"""NAdam: Adam with Nesterov momentum (Dozat 2016), momentum schedule
    :math:`\mu_t = \beta_1(1 - \frac12 0.96^{t\psi})`; ``decoupled_weight_decay`` gives
    NAdamW. See :func:`gradguard.rules.nadam` for the update.

    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> opt = NAdam([w], lr=0.01, clip="value:0.5")
    >>> w.grad = torch.tensor([1.0, -1.0])
    >>> opt.step(); w.detach()
    tensor([-0.0106,  0.0106])
    """

    rule = RULES["nadam"]

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        **options: Unpack[GuardOptions],
    ) -> None:
        check_lr(lr)
        check_nonneg("eps", eps, "epsilon value")
        check_betas(betas)
        check_nonneg("weight_decay", weight_decay)
        check_nonneg("momentum_decay", momentum_decay)
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "momentum_decay": momentum_decay,
                    "decoupled_weight_decay": decoupled_weight_decay, "maximize": maximize,
                    "foreach": foreach, "capturable": capturable,
                    "differentiable": differentiable}
        super().__init__(params, defaults, **options)



@register(variant("adamax", "Adamax", lrs=log_grid(1e-4, 1e-1, 7), bench={"lr": 1e-3},
                  step_bytes=28 + 4))
class Adamax(GuardedOptimizer):
    r"""Adamax, Adam with the infinity norm (Kingma & Ba 2014, section 7).

    .. math:: u_t = \max(\beta_2 u_{t-1}, |g_t| + \epsilon), \quad
              \theta_t = \theta_{t-1} - \frac{\eta}{1-\beta_1^t}\frac{m_t}{u_t}

    >>> w = torch.nn.Parameter(torch.zeros(1))
    >>> opt = Adamax([w], lr=0.1)
    >>> w.grad = torch.tensor([3.0])
    >>> opt.step(); w.detach()
    tensor([-0.1000])
    """

    rule = RULES["adamax"]

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        **options: Unpack[GuardOptions],
    ) -> None:
        check_lr(lr)
        check_nonneg("eps", eps, "epsilon value")
        check_betas(betas)
        check_nonneg("weight_decay", weight_decay)
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "foreach": foreach, "maximize": maximize, "differentiable": differentiable,
                    "capturable": capturable}
        super().__init__(params, defaults, **options)
