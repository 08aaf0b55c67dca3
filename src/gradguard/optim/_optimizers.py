"""The optimizers users construct. The math lives in :mod:`gradguard.rules`.

Where torch.optim has the optimizer, the constructor takes the same arguments with the same
defaults, param groups carry the same keys and the state the same entries, so checkpoints move
between ``torch.optim.X`` and ``gradguard.X`` both ways. Every optimizer also takes:

``clip``
    a :mod:`gradguard.clip` policy, a spec string (``"global_norm:1"``, ``"agc:0.01"``, ...) or
    None. A param group may carry its own ``"clip"`` (None there: do not clip that group).
``nonfinite``
    ``"skip"`` (default): a step whose gradients hold NaN or Inf changes nothing and is counted;
    after ``max_consecutive_skips`` such steps in a row the step raises
    :class:`gradguard.NonFiniteGradientError`. ``"raise"``: raise at the first bad step (this
    reads one flag on the host per step). ``"off"``: no check.
``backend``
    ``"auto"`` (default, or the ``GRADGUARD_BACKEND`` environment variable): torch's native
    fused kernel where one is exact for the step (Adam, AdamW, SGD, Adagrad on contiguous
    tensors; a clipped step in groups too small to compile gives it gradients clipped into
    temporaries), else the ``torch.compile``'d update, else (no compiler) the multi-tensor
    eager path with a warning. No path writes ``.grad``. torch's ``foreach=``/``fused=``
    flags, where set to True or False, choose the path instead (see ``docs/design.md``).
    ``"native"``, ``"compiled"``, ``"foreach"`` (the rule run once over lists of
    tensors with torch's ``_foreach_*`` ops, no compiler needed) or ``"eager"`` (the readable
    per-tensor reference) force a path (``"native"`` falls back to compiled where no native
    kernel fits, ``"native"`` and ``"compiled"`` to foreach where nothing compiles).
``measure_in_backward``
    measure gradient norms during backward with per-parameter hooks (default), so the clip
    needs no extra pass over the gradients at the step. Records are checked against the
    gradient's identity and version counter before use; turn this off for code that edits
    gradients through ``.data``, which bypasses the version counter.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Unpack

import torch
from torch import Tensor

from .._validation import (
    check_betas,
    check_lr,
    check_nonneg,
    check_tensor_hparams,
    check_unit_interval,
)
from ..rules import RULES
from ._base import _NOT_HPARAMS, GuardedOptimizer, GuardOptions, _scalar
from ._registry import log_grid, register, variant
from ._sparse import adagrad_sparse, sgd_sparse
from .backends import eager

__all__ = ["LAMB", "LARS", "SGD", "Adadelta", "Adagrad", "Adam", "AdamW", "Adamax", "Lion",
           "NAdam", "RMSprop"]

Params = Iterable[Any]


def _check_lr(lr: float | Tensor) -> None:
    check_lr(lr)


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
        _check_lr(lr)
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
        _check_lr(lr)
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
        _check_lr(lr)
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
        _check_lr(lr)
        check_nonneg("eps", eps, "epsilon value")
        check_betas(betas)
        check_nonneg("weight_decay", weight_decay)
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "foreach": foreach, "maximize": maximize, "differentiable": differentiable,
                    "capturable": capturable}
        super().__init__(params, defaults, **options)



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
        _check_lr(lr)
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
        _check_lr(lr)
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
        _check_lr(lr)
        check_unit_interval("rho", rho, closed_right=True)
        check_nonneg("eps", eps, "epsilon value")
        check_nonneg("weight_decay", weight_decay)
        defaults = {"lr": lr, "rho": rho, "eps": eps, "weight_decay": weight_decay,
                    "maximize": maximize, "capturable": capturable, "foreach": foreach,
                    "differentiable": differentiable}
        super().__init__(params, defaults, **options)



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
        _check_lr(lr)
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
        _check_lr(lr)
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
        _check_lr(lr)
        check_betas(betas)
        check_nonneg("weight_decay", weight_decay)
        defaults = {"lr": lr, "betas": betas, "weight_decay": weight_decay, "maximize": maximize,
                    "differentiable": differentiable}
        super().__init__(params, defaults, **options)
