"""Squared-gradient accumulator rules: RMSprop, Adagrad and Adadelta."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ._common import Scalar, State, _coef, _f64, _step, _zeros, rule


def rmsprop_init(p: Tensor, hp: Mapping[str, Any]) -> State:
    state = {"step": _step(p), "square_avg": _zeros(p)}
    if hp["momentum"] > 0:
        state["momentum_buffer"] = _zeros(p)
    if hp["centered"]:
        state["grad_avg"] = _zeros(p)
    return state


@rule("rmsprop", rmsprop_init)
def rmsprop(
    param: Tensor,
    grad: Tensor,
    state: State,
    *,
    lr: Scalar,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
    **_: Any,
) -> tuple[Tensor, State]:
    r"""RMSprop (Tieleman & Hinton 2012), optionally centered (Graves 2013) and with momentum.

    .. math::
        v_t &= \alpha v_{t-1} + (1-\alpha) g_t^2, \qquad
        \bar g_t = \alpha \bar g_{t-1} + (1-\alpha) g_t \text{ (centered)} \\
        d_t &= \sqrt{v_t - \bar g_t^2} + \epsilon, \qquad
        b_t = \mu b_{t-1} + g_t / d_t, \qquad \theta_t = \theta_{t-1} - \eta b_t
    """
    g = -grad if maximize else grad
    step = state["step"] + 1
    if weight_decay != 0:
        g = g + weight_decay * param
    square_avg = state["square_avg"] * alpha + (1 - alpha) * g * g
    new: State = {"step": step, "square_avg": square_avg}
    if centered:
        grad_avg = torch.lerp(state["grad_avg"], g, 1 - alpha)
        new["grad_avg"] = grad_avg
        avg = (square_avg - grad_avg * grad_avg).sqrt()
    else:
        avg = square_avg.sqrt()
    avg = avg + eps
    if momentum > 0:
        buf = state["momentum_buffer"] * momentum + g / avg
        new["momentum_buffer"] = buf
        return param - _coef(lr, param) * buf, new
    return param + (-_coef(lr, param) * g) / avg, new


def adagrad_init(p: Tensor, hp: Mapping[str, Any]) -> State:
    init = hp["initial_accumulator_value"]
    value = complex(init, init) if p.is_complex() else init  # as torch.optim.Adagrad
    return {"step": _step(p), "sum": torch.full_like(p, value, memory_format=torch.preserve_format)}


@rule("adagrad", adagrad_init)
def adagrad(
    param: Tensor,
    grad: Tensor,
    state: State,
    *,
    lr: Scalar,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    **_: Any,
) -> tuple[Tensor, State]:
    r"""Adagrad (Duchi et al. 2011).

    .. math::
        s_t = s_{t-1} + g_t^2, \qquad
        \theta_t = \theta_{t-1} - \frac{\eta}{1 + (t-1)\delta}\,\frac{g_t}{\sqrt{s_t}+\epsilon}
    """
    g = -grad if maximize else grad
    step = state["step"] + 1
    if weight_decay != 0:
        g = g + weight_decay * param
    clr = _coef(lr / (1 + (_f64(step) - 1) * lr_decay), param)
    total = state["sum"] + g * g
    std = total.sqrt() + eps
    return param + (-clr * g) / std, {"step": step, "sum": total}


def adadelta_init(p: Tensor, hp: Mapping[str, Any]) -> State:
    return {"step": _step(p), "square_avg": _zeros(p), "acc_delta": _zeros(p)}


@rule("adadelta", adadelta_init)
def adadelta(
    param: Tensor,
    grad: Tensor,
    state: State,
    *,
    lr: Scalar,
    rho: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    **_: Any,
) -> tuple[Tensor, State]:
    r"""Adadelta (Zeiler 2012).

    .. math::
        v_t &= \rho v_{t-1} + (1-\rho) g_t^2, \qquad
        \Delta_t = \frac{\sqrt{u_{t-1}+\epsilon}}{\sqrt{v_t+\epsilon}}\, g_t \\
        u_t &= \rho u_{t-1} + (1-\rho)\Delta_t^2, \qquad \theta_t = \theta_{t-1} - \eta\Delta_t
    """
    g = -grad if maximize else grad
    step = state["step"] + 1
    if weight_decay != 0:
        g = g + weight_decay * param
    square_avg = state["square_avg"] * rho + (1 - rho) * g * g
    std = (square_avg + eps).sqrt()
    delta = (state["acc_delta"] + eps).sqrt() / std * g
    acc_delta = state["acc_delta"] * rho + (1 - rho) * delta * delta
    new = {"step": step, "square_avg": square_avg, "acc_delta": acc_delta}
    return param - _coef(lr, param) * delta, new
