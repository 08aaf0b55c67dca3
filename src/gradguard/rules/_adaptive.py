"""Adaptive-moment rules: Adam (AMSGrad, AdamW), NAdam, Adamax and LAMB."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ._common import Scalar, State, _coef, _f64, _step, _trust, _zeros, rule


def adam_init(p: Tensor, hp: Mapping[str, Any]) -> State:
    state = {"step": _step(p), "exp_avg": _zeros(p), "exp_avg_sq": _zeros(p)}
    if hp["amsgrad"]:
        state["max_exp_avg_sq"] = _zeros(p)
    return state


@rule("adam", adam_init)
def adam(
    param: Tensor,
    grad: Tensor,
    state: State,
    *,
    lr: Scalar,
    betas: tuple[Scalar, Scalar],
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    **_: Any,
) -> tuple[Tensor, State]:
    r"""Adam (Kingma & Ba 2014), AMSGrad (Reddi et al. 2018), AdamW (Loshchilov & Hutter 2019).

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        \hat v_t &= \max(\hat v_{t-1}, v_t) \text{ (AMSGrad) else } v_t \\
        \theta_t &= \theta_{t-1} - \frac{\eta}{1-\beta_1^t}\,
                    \frac{m_t}{\sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon}

    Weight decay adds :math:`\lambda\theta` to the gradient, or with ``decoupled_weight_decay``
    (AdamW) multiplies :math:`\theta` by :math:`1-\eta\lambda` first.
    """
    beta1, beta2 = betas
    g = -grad if maximize else grad
    step = state["step"] + 1
    if weight_decay != 0:
        if decoupled_weight_decay:
            param = param * _coef(1 - lr * weight_decay, param)
        else:
            g = g + weight_decay * param
    exp_avg = torch.lerp(state["exp_avg"], g, 1 - beta1)
    exp_avg_sq = state["exp_avg_sq"] * beta2 + (1 - beta2) * g * g
    t = _f64(step)
    step_size = _coef(lr / (1 - beta1**t), param)
    bc2_sqrt = _coef((1 - beta2**t).sqrt(), param)
    new: State = {"step": step, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    second = exp_avg_sq
    if amsgrad:
        second = torch.maximum(state["max_exp_avg_sq"], exp_avg_sq)
        new["max_exp_avg_sq"] = second
    denom = second.sqrt() / bc2_sqrt + eps
    return param + (-step_size * exp_avg) / denom, new


def nadam_init(p: Tensor, hp: Mapping[str, Any]) -> State:
    return {"step": _step(p), "mu_product": torch.ones((), dtype=torch.float32, device=p.device),
            "exp_avg": _zeros(p), "exp_avg_sq": _zeros(p)}


@rule("nadam", nadam_init)
def nadam(
    param: Tensor,
    grad: Tensor,
    state: State,
    *,
    lr: Scalar,
    betas: tuple[Scalar, Scalar],
    eps: float,
    weight_decay: float,
    momentum_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    **_: Any,
) -> tuple[Tensor, State]:
    r"""NAdam (Dozat 2016) with the momentum schedule of torch.optim.NAdam.

    .. math::
        \mu_t &= \beta_1 (1 - \tfrac12 \cdot 0.96^{t\psi}), \qquad
        \Pi_t = \textstyle\prod_{i\le t} \mu_i \\
        \theta_t &= \theta_{t-1}
          - \eta\frac{1-\mu_t}{1-\Pi_t}\frac{g_t}{\sqrt{v_t/(1-\beta_2^t)}+\epsilon}
          - \eta\frac{\mu_{t+1}}{1-\Pi_t\mu_{t+1}}\frac{m_t}{\sqrt{v_t/(1-\beta_2^t)}+\epsilon}
    """
    beta1, beta2 = betas
    g = -grad if maximize else grad
    step = state["step"] + 1
    t = _f64(step)
    bias_correction2 = _coef(1 - beta2**t, param)
    if weight_decay != 0:
        if decoupled_weight_decay:
            param = param * _coef(1 - lr * weight_decay, param)
        else:
            g = g + weight_decay * param
    mu = beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))
    mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
    # In the product's own precision, as torch's ``mu_product *= mu`` (float32 unless float64
    # is the default dtype).
    mu_product = state["mu_product"] * mu.to(state["mu_product"].dtype)
    mu_product_next = _f64(mu_product) * mu_next
    exp_avg = torch.lerp(state["exp_avg"], g, 1 - beta1)
    exp_avg_sq = state["exp_avg_sq"] * beta2 + (1 - beta2) * g * g
    denom = (exp_avg_sq / bias_correction2).sqrt() + eps
    c_grad = _coef(-lr * (1.0 - mu) / (1.0 - _f64(mu_product)), param)
    c_avg = _coef(-lr * mu_next / (1.0 - mu_product_next), param)
    param = param + (c_grad * g) / denom
    param = param + (c_avg * exp_avg) / denom
    return param, {"step": step, "mu_product": mu_product, "exp_avg": exp_avg,
                   "exp_avg_sq": exp_avg_sq}


def adamax_init(p: Tensor, hp: Mapping[str, Any]) -> State:
    return {"step": _step(p), "exp_avg": _zeros(p), "exp_inf": _zeros(p)}


@rule("adamax", adamax_init)
def adamax(
    param: Tensor,
    grad: Tensor,
    state: State,
    *,
    lr: Scalar,
    betas: tuple[Scalar, Scalar],
    eps: float,
    weight_decay: float,
    maximize: bool,
    **_: Any,
) -> tuple[Tensor, State]:
    r"""Adamax (Kingma & Ba 2014, section 7): Adam with the infinity norm.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        u_t = \max(\beta_2 u_{t-1}, |g_t| + \epsilon), \quad
        \theta_t = \theta_{t-1} - \frac{\eta}{1-\beta_1^t}\frac{m_t}{u_t}
    """
    beta1, beta2 = betas
    g = -grad if maximize else grad
    step = state["step"] + 1
    if weight_decay != 0:
        g = g + weight_decay * param
    exp_avg = torch.lerp(state["exp_avg"], g, 1 - beta1)
    exp_inf = torch.maximum(state["exp_inf"] * beta2, g.abs() + eps)
    clr = _coef(lr / (1 - beta1 ** _f64(step)), param)
    return param + (-clr * exp_avg) / exp_inf, {"step": step, "exp_avg": exp_avg,
                                                 "exp_inf": exp_inf}


def lamb_init(p: Tensor, hp: Mapping[str, Any]) -> State:
    return {"step": _step(p), "exp_avg": _zeros(p), "exp_avg_sq": _zeros(p)}


@rule("lamb", lamb_init, per_tensor=True)
def lamb(
    param: Tensor,
    grad: Tensor,
    state: State,
    *,
    lr: Scalar,
    betas: tuple[Scalar, Scalar],
    eps: float,
    weight_decay: float,
    maximize: bool,
    segments: Any = None,
    **_: Any,
) -> tuple[Tensor, State]:
    r"""LAMB (You et al. 2019, Algorithm 2, with bias correction).

    .. math::
        r_t &= \frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)}+\epsilon}, \qquad
        u_t = r_t + \lambda\theta_{t-1} \\
        \theta_t &= \theta_{t-1} - \eta\,\frac{\|\theta_{t-1}\|}{\|u_t\|}\,u_t

    ``segments`` (a flat buffer of several tensors): norms and trust ratios per segment
    (:class:`gradguard.optim.backends.flat.Segments`).
    """
    beta1, beta2 = betas
    g = -grad if maximize else grad
    step = state["step"] + 1
    t = _f64(step)
    exp_avg = torch.lerp(state["exp_avg"], g, 1 - beta1)
    exp_avg_sq = state["exp_avg_sq"] * beta2 + (1 - beta2) * g * g
    bc1, bc2 = _coef(1 - beta1**t, param), _coef(1 - beta2**t, param)
    r = (exp_avg / bc1) / ((exp_avg_sq / bc2).sqrt() + eps)
    u = r + weight_decay * param if weight_decay != 0 else r
    norm = torch.linalg.vector_norm if segments is None else segments.norm
    ratio = _trust(norm(param), norm(u))
    new = {"step": step, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    coef = _coef(lr * ratio, param)
    if segments is not None:
        coef = segments.expand(coef)
    return param - coef * u, new
