"""Momentum rules: SGD (with Nesterov), LARS and Lion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ._common import Scalar, State, _coef, _trust, _zeros, rule


def sgd_init(p: Tensor, hp: Mapping[str, Any]) -> State:
    return {} if hp["momentum"] == 0 else {"momentum_buffer": _zeros(p)}


@rule("sgd", sgd_init, fresh_key="momentum_buffer")
def sgd(
    param: Tensor,
    grad: Tensor,
    state: State,
    *,
    lr: Scalar,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    fresh: Tensor | None = None,
    **_: Any,
) -> tuple[Tensor, State]:
    r"""Stochastic gradient descent with momentum (Polyak; Nesterov as in Sutskever et al. 2013).

    .. math::
        g &\leftarrow g + \lambda\theta \\
        b &\leftarrow \mu b + (1-\tau) g \quad (b = g \text{ at the first step}) \\
        \theta &\leftarrow \theta - \eta\,(g + \mu b \text{ if nesterov else } b)

    ``fresh`` (a bool tensor) marks a momentum buffer that has not been initialised yet.
    """
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * param
    new: State = {}
    if momentum != 0:
        buf = state["momentum_buffer"] * momentum + (1 - dampening) * g
        if fresh is not None:
            buf = torch.where(fresh, g, buf)
        new["momentum_buffer"] = buf
        g = g + momentum * buf if nesterov else buf
    return param - _coef(lr, param) * g, new


def lars_init(p: Tensor, hp: Mapping[str, Any]) -> State:
    return {"momentum_buffer": _zeros(p)}


@rule("lars", lars_init, per_tensor=True)
def lars(
    param: Tensor,
    grad: Tensor,
    state: State,
    *,
    lr: Scalar,
    momentum: float,
    weight_decay: float,
    trust_coefficient: float,
    exclude_bias_and_norm: bool,
    maximize: bool,
    segments: Any = None,
    **_: Any,
) -> tuple[Tensor, State]:
    r"""LARS, layer-wise adaptive rate scaling (You, Gitman & Ginsburg 2017, Algorithm 1).

    .. math::
        \lambda^l &= \eta_{tc} \frac{\|w^l\|}{\|\nabla L(w^l)\| + \beta\|w^l\|} \\
        v^l &\leftarrow m v^l + \gamma\,\lambda^l\,(\nabla L(w^l) + \beta w^l), \qquad
        w^l \leftarrow w^l - v^l

    :math:`\lambda^l = 1` where a norm is zero, and for vectors (biases, norm weights) when
    ``exclude_bias_and_norm`` is set (those also get no weight decay).

    ``segments`` (a flat buffer of several tensors): norms and trust ratios per segment
    (:class:`gradguard.optim.backends.flat.Segments`), the vectors excluded element by
    element.
    """
    g = -grad if maximize else grad
    if segments is None and exclude_bias_and_norm and param.dim() <= 1:
        update = _coef(lr, param) * g
    else:
        norm = torch.linalg.vector_norm if segments is None else segments.norm
        w_norm = norm(param)
        g_norm = norm(g)
        local = _trust(trust_coefficient * w_norm, g_norm + weight_decay * w_norm)
        d = g + weight_decay * param if weight_decay != 0 else g
        coef = _coef(lr * local, param)
        if segments is not None:
            coef = segments.expand(coef)
        update = coef * d
        if segments is not None and exclude_bias_and_norm:
            update = torch.where(segments.vectors, _coef(lr, param) * g, update)
    buf = state["momentum_buffer"] * momentum + update
    return param - buf, {"momentum_buffer": buf}


def lion_init(p: Tensor, hp: Mapping[str, Any]) -> State:
    return {"exp_avg": _zeros(p)}


@rule("lion", lion_init)
def lion(
    param: Tensor,
    grad: Tensor,
    state: State,
    *,
    lr: Scalar,
    betas: tuple[Scalar, Scalar],
    weight_decay: float,
    maximize: bool,
    **_: Any,
) -> tuple[Tensor, State]:
    r"""Lion, evolved sign momentum (Chen et al. 2023, Algorithm 2).

    .. math::
        c_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        \theta_t = \theta_{t-1} - \eta(\operatorname{sign}(c_t) + \lambda\theta_{t-1}), \quad
        m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t
    """
    beta1, beta2 = betas
    g = -grad if maximize else grad
    m = state["exp_avg"]
    c = torch.lerp(m, g, 1 - beta1)
    direction = torch.sign(c)
    if weight_decay != 0:
        direction = direction + weight_decay * param
    return param - _coef(lr, param) * direction, {"exp_avg": torch.lerp(m, g, 1 - beta2)}
