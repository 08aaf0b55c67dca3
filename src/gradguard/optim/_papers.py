"""LARS, LAMB and Lion, from their papers (torch.optim has none of them). See
:mod:`gradguard.optim._optimizers` for the options they share."""

from __future__ import annotations

from typing import Unpack

import torch  # noqa: F401  (the doctests use it)
from torch import Tensor

from .._validation import (
    check_betas,
    check_lr,
    check_nonneg,
    check_unit_interval,
)
from ..rules import RULES
from ._base import GuardedOptimizer, GuardOptions, Params
from ._registry import log_grid, register, variant

__all__ = ["LAMB", "LARS", "Lion"]


@register(variant("lars", "LARS (momentum 0.9, trust coefficient 1e-3)",
                  lrs=log_grid(1e-2, 10.0, 7), bench={"lr": 0.1}, step_bytes=20 + 8 + 4,
                  third_party="LARS"))
class LARS(GuardedOptimizer):
    r"""LARS, layer-wise adaptive rate scaling (You, Gitman & Ginsburg 2017, Algorithm 1).

    .. math::
        \lambda^l = \eta_{tc}\frac{\|w^l\|}{\|\nabla L(w^l)\| + \beta\|w^l\|}, \quad
        v^l \leftarrow m v^l + \gamma\lambda^l(\nabla L(w^l) + \beta w^l), \quad
        w^l \leftarrow w^l - v^l

    ``exclude_bias_and_norm=True`` gives vectors (biases, norm weights) plain momentum SGD
    without weight decay, as in the SimCLR/BYOL recipes.

    >>> w = torch.nn.Parameter(torch.full((2, 2), 1.0))
    >>> opt = LARS([w], lr=1.0, momentum=0.9)
    >>> w.grad = torch.full((2, 2), 0.5)
    >>> opt.step(); w.detach()
    tensor([[0.9990, 0.9990],
            [0.9990, 0.9990]])
    """

    rule = RULES["lars"]
    _whole_tensors = "its trust ratio needs the norms of whole parameters and gradients"

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 1e-3,
        exclude_bias_and_norm: bool = False,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        **options: Unpack[GuardOptions],
    ) -> None:
        check_lr(lr)
        check_unit_interval("momentum", momentum)
        check_nonneg("weight_decay", weight_decay)
        check_nonneg("trust_coefficient", trust_coefficient)
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                    "trust_coefficient": trust_coefficient,
                    "exclude_bias_and_norm": exclude_bias_and_norm, "maximize": maximize,
                    "differentiable": differentiable}
        super().__init__(params, defaults, **options)



@register(variant("lamb", "LAMB", lrs=log_grid(1e-4, 1e-1, 7), bench={"lr": 1e-3},
                  step_bytes=28 + 16 + 4, third_party="Lamb"))
class LAMB(GuardedOptimizer):
    r"""LAMB, layer-wise adaptive moments (You et al. 2019, Algorithm 2).

    .. math::
        r_t = \frac{\hat m_t}{\sqrt{\hat v_t}+\epsilon}, \quad u_t = r_t + \lambda\theta, \quad
        \theta \leftarrow \theta - \eta\frac{\|\theta\|}{\|u_t\|}u_t

    >>> w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    >>> opt = LAMB([w], lr=0.1)
    >>> w.grad = torch.tensor([1.0, 1.0])
    >>> opt.step(); w.detach()
    tensor([2.6464, 3.6464])
    """

    rule = RULES["lamb"]
    _whole_tensors = "its trust ratio needs the norms of whole parameters and updates"

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        **options: Unpack[GuardOptions],
    ) -> None:
        check_lr(lr)
        check_nonneg("eps", eps, "epsilon value")
        check_betas(betas)
        check_nonneg("weight_decay", weight_decay)
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "maximize": maximize,
                    "differentiable": differentiable}
        super().__init__(params, defaults, **options)



@register(variant("lion", "Lion", lrs=log_grid(1e-5, 1e-2, 7), bench={"lr": 1e-4},
                  step_bytes=20 + 4, third_party="Lion"))
class Lion(GuardedOptimizer):
    r"""Lion, evolved sign momentum (Chen et al. 2023).

    .. math::
        \theta \leftarrow \theta - \eta\left(\operatorname{sign}(\beta_1 m + (1-\beta_1)g)
            + \lambda\theta\right), \quad m \leftarrow \beta_2 m + (1-\beta_2) g

    >>> w = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    >>> opt = Lion([w], lr=0.1)
    >>> w.grad = torch.tensor([0.3, -2.0])
    >>> opt.step(); w.detach()
    tensor([ 0.9000, -0.9000])
    """

    rule = RULES["lion"]

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        **options: Unpack[GuardOptions],
    ) -> None:
        check_lr(lr)
        check_betas(betas)
        check_nonneg("weight_decay", weight_decay)
        defaults = {"lr": lr, "betas": betas, "weight_decay": weight_decay, "maximize": maximize,
                    "differentiable": differentiable}
        super().__init__(params, defaults, **options)
