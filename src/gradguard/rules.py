"""The update rules: the math of every optimizer, written once, per tensor.

Each rule is a pure function ``rule(param, grad, state, **hparams) -> (new_param, new_state)``.
It reads the parameter, the (already clipped) gradient and the state tensors, and returns new
tensors; it never writes to its inputs. The optimizer commits the results (or keeps the old
values when the step is skipped), and faster paths are derived from these same functions. Rules
know nothing about hooks, clipping policies or logging.

Scalar bookkeeping (bias corrections, step sizes) is done on 0-d tensors, so nothing here
reads a value back to the host. Where torch.optim has the optimizer, the order of operations
follows its single-tensor implementation, so trajectories agree to rounding.

>>> import torch
>>> p, g = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.5])
>>> new_p, new_state = sgd(p, g, {}, lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0,
...                        nesterov=False, maximize=False)
>>> new_p
tensor([ 0.9500, -2.0500])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

State = dict[str, Tensor]
Scalar = float | Tensor

__all__ = [
    "adadelta",
    "adagrad",
    "adam",
    "adamax",
    "lamb",
    "lars",
    "lion",
    "nadam",
    "rmsprop",
    "sgd",
]


def _f64(step: Tensor) -> Tensor:
    """The step count as float64 for scalar math (torch.optim does this math in Python floats)."""
    return step if step.device.type == "mps" else step.to(torch.float64)


# An opaque copy: under torch.compile it makes a 0-d coefficient a buffer computed once,
# instead of an expression (a pow, a sqrt) the fused loop would re-evaluate per vector.
# Registered with the dispatcher directly (not ``torch.library.custom_op``, whose autograd and
# Python layers cost about 10 us per call, several calls per tensor per step).
_LIB = torch.library.Library("gradguard", "DEF")
_LIB.define("scalar(Tensor x) -> Tensor")
_LIB.impl("scalar", lambda x: x.clone(), "CompositeExplicitAutograd")


@torch.library.register_fake("gradguard::scalar", lib=_LIB)
def _(x: Tensor) -> Tensor:
    return torch.empty_like(x)


_materialize = torch.ops.gradguard.scalar


def _coef(x: Scalar, like: Tensor) -> Scalar:
    """A scalar coefficient (possibly computed in float64), cast to the precision the
    elementwise math runs in (float64 for float64 tensors, else float32), as torch.optim's
    kernels do with Python scalars. Keeping float64 out of the elementwise loops lets compiled
    kernels vectorize. Python numbers pass through unchanged; anything else is cast with its
    ``.to`` (a tensor, or the multi-tensor path's list of per-tensor coefficients)."""
    if isinstance(x, int | float):
        return x
    x = x.to(torch.float64 if like.dtype == torch.float64 else torch.float32)
    return _materialize(x) if torch.compiler.is_compiling() else x


def _trust(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where both are positive, else 1 (the LARS/LAMB convention)."""
    ok = (num > 0) & (den > 0)
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.ones_like(num))


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
    **_: Any,
) -> tuple[Tensor, State]:
    r"""LARS, layer-wise adaptive rate scaling (You, Gitman & Ginsburg 2017, Algorithm 1).

    .. math::
        \lambda^l &= \eta_{tc} \frac{\|w^l\|}{\|\nabla L(w^l)\| + \beta\|w^l\|} \\
        v^l &\leftarrow m v^l + \gamma\,\lambda^l\,(\nabla L(w^l) + \beta w^l), \qquad
        w^l \leftarrow w^l - v^l

    :math:`\lambda^l = 1` where a norm is zero, and for vectors (biases, norm weights) when
    ``exclude_bias_and_norm`` is set (those also get no weight decay).
    """
    g = -grad if maximize else grad
    if exclude_bias_and_norm and param.dim() <= 1:
        update = _coef(lr, param) * g
    else:
        w_norm = torch.linalg.vector_norm(param)
        g_norm = torch.linalg.vector_norm(g)
        local = _trust(trust_coefficient * w_norm, g_norm + weight_decay * w_norm)
        d = g + weight_decay * param if weight_decay != 0 else g
        update = _coef(lr * local, param) * d
    buf = state["momentum_buffer"] * momentum + update
    return param - buf, {"momentum_buffer": buf}


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
    **_: Any,
) -> tuple[Tensor, State]:
    r"""LAMB (You et al. 2019, Algorithm 2, with bias correction).

    .. math::
        r_t &= \frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)}+\epsilon}, \qquad
        u_t = r_t + \lambda\theta_{t-1} \\
        \theta_t &= \theta_{t-1} - \eta\,\frac{\|\theta_{t-1}\|}{\|u_t\|}\,u_t
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
    ratio = _trust(torch.linalg.vector_norm(param), torch.linalg.vector_norm(u))
    new = {"step": step, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    return param - _coef(lr * ratio, param) * u, new


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
