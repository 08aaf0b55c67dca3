"""Clip policies: how much to shrink the gradients at a step, as tensors.

A policy looks at the step's :class:`GradStats` and returns a :class:`ClipDecision`: a scale per
gradient tensor (a 0-d tensor, or one value per unit for AGC), or an elementwise bound for
:class:`Value`. The optimizer multiplies the gradient by the scale inside its update, so the
gradients are never rewritten; :meth:`ClipPolicy.clip_` applies the same decision in place for
use outside a gradguard optimizer. Nothing here reads a value on the host, and stateful
policies (AutoClip, ZClip) keep their statistics as tensors on the gradients' device.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._validation import check_nonneg, check_positive, check_unit_interval
from ._dist import local
from ._stats import GradStats

__all__ = [
    "AGC",
    "AutoClip",
    "ClipDecision",
    "ClipPolicy",
    "GlobalNorm",
    "NoClip",
    "Norm",
    "Value",
    "ZClip",
]

_EPS = 1e-6  # as in torch.nn.utils.clip_grad_norm_: scale = max_norm / (norm + 1e-6)


@dataclass
class ClipDecision:
    """What a policy decided for one step.

    ``scales[k]`` multiplies the gradient at ``idx[k]`` (None: leave it), ``clamp`` bounds every
    entry to ``[-clamp, clamp]`` after scaling, and ``min_scale`` is the smallest factor applied
    to any gradient entry (1 when nothing was clipped). ``binding`` (a bool tensor) says whether
    a norm or entry exceeded the policy's threshold: the step counts as clipped only then, not
    when ``min_scale`` is below 1 only through the ``1e-6`` of ``c / (norm + 1e-6)`` (a norm at
    or just under ``c``, which ``clip_grad_norm_`` also scales by about ``1 - 1e-6 / c``).
    """

    scales: list[Tensor | None]
    clamp: float | None
    min_scale: Tensor
    binding: Tensor


def _ratio_scale(threshold: Tensor | float, norm: Tensor) -> Tensor:
    """``min(1, threshold / (norm + 1e-6))``, the factor that brings ``norm`` to ``threshold``."""
    return torch.clamp(threshold / (norm + _EPS), max=1.0)


def _fmt(x: float | int | None) -> str:
    if x is None:
        return "None"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return repr(x)  # repr round-trips floats exactly


class ClipPolicy:
    """Base class. Subclasses implement :meth:`decide` and, if stateful, the state methods."""

    name: ClassVar[str] = ""
    stateful: ClassVar[bool] = False

    def decide(self, stats: GradStats, idx: list[int], skip: Tensor | None) -> ClipDecision:
        """The clipping for the gradients at ``idx``. A stateful policy updates its state here,
        unless ``skip`` (a bool tensor) is true: a skipped step leaves the state unchanged."""
        raise TypeError(f"{type(self).__name__} must define decide()")

    # -- the threshold ------------------------------------------------------------------
    @property
    def threshold(self) -> Tensor | float | None:
        """The norm of all gradients together that this policy clips to now, for logs and
        plots; None for a policy without one (per-tensor ones, or a global norm other than
        the L2 norm) and for an adaptive one before its first step."""
        return None

    @property
    def has_threshold(self) -> bool:
        """Whether :attr:`threshold` is (or, for an adaptive policy, will be) a number."""
        return self.threshold is not None

    # -- identity -------------------------------------------------------------------------
    def _hparams(self) -> dict[str, Any]:
        return {}

    @property
    def spec(self) -> str:
        """A spec string that :func:`gradguard.clip.parse` maps back to an equal policy."""
        return self.name

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._hparams().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClipPolicy) or type(self) is not type(other):
            return False
        return self._hparams() == other._hparams()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self._hparams().items()))))

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The policy's running state (tensors); empty for stateless policies."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if state_dict:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state_dict)}")

    def snapshot(self) -> dict[str, Any]:
        """A deep copy of everything this policy keeps between steps (its hyperparameters and
        running statistics), for :meth:`restore`: the LR finder puts a policy back as it found
        it."""
        return copy.deepcopy(self.__dict__)

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Put back what :meth:`snapshot` took (copies, so one snapshot restores many times)."""
        self.__dict__.clear()
        self.__dict__.update(copy.deepcopy(snapshot))

    # -- standalone use --------------------------------------------------------------------------
    @torch.no_grad()
    def clip_(self, parameters: Tensor | Iterable[Tensor]) -> Tensor:
        """Clip the ``.grad`` of ``parameters`` in place; return their total L2 norm before.

        A step whose gradients are not finite does not enter a stateful policy's history.
        """
        if isinstance(parameters, Tensor):
            parameters = [parameters]
        params = [p for p in parameters if p.grad is not None]
        if not params:
            return torch.zeros(())
        grads = [p.grad for p in params if p.grad is not None]
        stats = GradStats(params, grads)
        idx = list(range(len(grads)))
        total = stats.total_norm(idx)
        skip = ~torch.isfinite(total) if self.stateful else None
        decision = self.decide(stats, idx, skip)
        for g, s in zip(grads, decision.scales, strict=True):
            part = local(g)  # a sharded gradient: scales are those of its local shard
            if s is not None:
                part.mul_(s.to(part.dtype))
            if decision.clamp is not None:
                part.clamp_(-decision.clamp, decision.clamp)
        return total


class NoClip(ClipPolicy):
    """No clipping (spec ``"none"``)."""

    name = "none"

    def decide(self, stats: GradStats, idx: list[int], skip: Tensor | None) -> ClipDecision:
        device = stats.grads[idx[0]].device if idx else None
        return ClipDecision([None] * len(idx), None, torch.ones((), device=device),
                            torch.zeros((), dtype=torch.bool, device=device))


class Value(ClipPolicy):
    r"""Clip every gradient entry to :math:`[-c, c]` (spec ``"value:C"``).

    The same as ``torch.nn.utils.clip_grad_value_``.

    >>> p = torch.nn.Parameter(torch.zeros(3)); p.grad = torch.tensor([-2.0, 0.1, 3.0])
    >>> _ = Value(0.5).clip_([p]); p.grad
    tensor([-0.5000,  0.1000,  0.5000])
    """

    name = "value"

    def __init__(self, c: float) -> None:
        check_positive("c", c, "clip value")
        self.c = float(c)

    def _hparams(self) -> dict[str, Any]:
        return {"c": self.c}

    @property
    def spec(self) -> str:
        return f"value:{_fmt(self.c)}"

    def decide(self, stats: GradStats, idx: list[int], skip: Tensor | None) -> ClipDecision:
        absmax = stats.total_norm(idx, math.inf)
        # The smallest factor any entry sees is c / max|g| (1 when nothing exceeds c).
        return ClipDecision([None] * len(idx), self.c, torch.clamp(self.c / absmax, max=1.0),
                            absmax > self.c)


class _NormPolicy(ClipPolicy):
    """Shared by Norm and GlobalNorm: a max norm ``c`` and a ``norm_type``."""

    def __init__(self, c: float, norm_type: float = 2.0) -> None:
        check_positive("c", c, "max norm")
        if not math.isinf(norm_type):
            check_positive("norm_type", norm_type)
        self.c = float(c)
        self.norm_type = float(norm_type)

    def _hparams(self) -> dict[str, Any]:
        return {"c": self.c, "norm_type": self.norm_type}

    @property
    def spec(self) -> str:
        extra = "" if self.norm_type == 2.0 else f":norm_type={_fmt(self.norm_type)}"
        return f"{self.name}:{_fmt(self.c)}{extra}"


class Norm(_NormPolicy):
    r"""Clip each gradient tensor's norm to ``c`` separately (spec ``"norm:C"``).

    .. math:: g_i \leftarrow g_i \cdot \min\left(1, \frac{c}{\|g_i\|_p + 10^{-6}}\right)
    """

    name = "norm"

    def decide(self, stats: GradStats, idx: list[int], skip: Tensor | None) -> ClipDecision:
        norms = stats.norms(self.norm_type)
        scales = [_ratio_scale(self.c, norms[i]) for i in idx]
        binding = torch.stack([norms[i] for i in idx]).max() > self.c
        return ClipDecision(list(scales), None, torch.stack(scales).min(), binding)


class GlobalNorm(_NormPolicy):
    r"""Clip the norm of all gradients taken together (Pascanu et al. 2013; spec
    ``"global_norm:C"``), exactly as ``torch.nn.utils.clip_grad_norm_``.

    .. math:: g \leftarrow g \cdot \min\left(1, \frac{c}{\|g\|_p + 10^{-6}}\right)

    >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.tensor([3.0, 4.0])
    >>> GlobalNorm(1.0).clip_([p])
    tensor(5.)
    >>> p.grad
    tensor([0.6000, 0.8000])
    """

    name = "global_norm"

    @property
    def threshold(self) -> float | None:
        return float(self.c) if self.norm_type == 2.0 else None

    def decide(self, stats: GradStats, idx: list[int], skip: Tensor | None) -> ClipDecision:
        norm = stats.total_norm(idx, self.norm_type)
        scale = _ratio_scale(self.c, norm)
        return ClipDecision([scale] * len(idx), None, scale, norm > self.c)


class AGC(ClipPolicy):
    r"""Adaptive gradient clipping, unit-wise (Brock et al. 2021; spec ``"agc:CLIPPING"``).

    For every unit :math:`i` (a row/filter: a slice along dim 0; a whole vector for biases):

    .. math::
        g_i \leftarrow g_i \cdot \min\left(1,
            \lambda \frac{\max(\|w_i\|, \epsilon)}{\max(\|g_i\|, 10^{-6})}\right)

    Brock et al. do not clip the final linear layer: give it a param group with ``clip=None``.
    """

    name = "agc"

    def __init__(self, clipping: float = 0.01, eps: float = 1e-3) -> None:
        check_positive("clipping", clipping)
        check_nonneg("eps", eps)
        self.clipping = float(clipping)
        self.eps = float(eps)

    def _hparams(self) -> dict[str, Any]:
        return {"clipping": self.clipping, "eps": self.eps}

    @property
    def spec(self) -> str:
        extra = "" if self.eps == 1e-3 else f":eps={_fmt(self.eps)}"
        return f"agc:{_fmt(self.clipping)}{extra}"

    def decide(self, stats: GradStats, idx: list[int], skip: Tensor | None) -> ClipDecision:
        scales: list[Tensor | None] = []
        mins: list[Tensor] = []
        over: list[Tensor] = []
        for i in idx:
            g_norm = stats.unit_norms(i)
            max_norm = stats.param_unit_norms(i).clamp_min(self.eps) * self.clipping
            exceeds = g_norm > max_norm
            s = torch.where(exceeds, max_norm / g_norm.clamp_min(_EPS), 1.0)
            scales.append(s)
            mins.append(s.min().to(torch.float32))
            over.append(exceeds.any())
        min_scale = torch.stack(mins).min() if mins else torch.ones(())
        binding = torch.stack(over).any() if over else torch.zeros((), dtype=torch.bool)
        return ClipDecision(scales, None, min_scale, binding)


def _commit(old: Tensor, new: Tensor, skip: Tensor | None) -> Tensor:
    return new if skip is None else torch.where(skip, old, new)


class _AdaptiveGlobal(ClipPolicy):
    """A policy that clips the global norm to a threshold it adapts each step; the one it
    used last is ``last_threshold`` (None before the first step)."""

    last_threshold: Tensor | None = None

    @property
    def threshold(self) -> Tensor | None:
        return self.last_threshold

    @property
    def has_threshold(self) -> bool:
        return True


class AutoClip(_AdaptiveGlobal):
    r"""AutoClip (Seetharaman et al. 2020; spec ``"auto:PERCENTILE"``).

    Each step appends the total gradient norm to a history (all steps, or the last
    ``history``), then clips the global norm to the ``percentile``-th percentile of that history
    (linear interpolation, as ``numpy.percentile``; the current norm included). The history lives
    on the gradients' device and the percentile is computed there: no host read.

    >>> policy = AutoClip(percentile=50)
    >>> p = torch.nn.Parameter(torch.zeros(1))
    >>> for n in [1.0, 3.0, 2.0]:
    ...     p.grad = torch.tensor([n]); _ = policy.clip_([p])
    >>> policy.last_threshold
    tensor(2., dtype=torch.float64)
    """

    name = "auto"
    stateful = True

    def __init__(self, percentile: float = 10.0, history: int | None = None) -> None:
        check_positive("percentile", percentile)
        if percentile > 100:
            raise ValueError(f"Invalid percentile: {percentile}; must be in (0, 100]")
        if history is not None and (isinstance(history, bool) or not isinstance(history, int)
                                    or history < 1):
            raise ValueError(f"Invalid history: {history!r}; must be None or an integer >= 1")
        self.percentile = float(percentile)
        self.history = history
        self._buf: Tensor | None = None
        self._count: Tensor | None = None
        self._calls = 0
        self.last_threshold: Tensor | None = None

    def _hparams(self) -> dict[str, Any]:
        return {"percentile": self.percentile, "history": self.history}

    @property
    def spec(self) -> str:
        extra = "" if self.history is None else f":history={self.history}"
        return f"auto:{_fmt(self.percentile)}{extra}"

    def _ensure(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if self._buf is None or self._count is None:
            cap = self.history if self.history is not None else 64
            self._buf = torch.full((cap,), math.inf, dtype=torch.float64, device=device)
            self._count = torch.zeros((), dtype=torch.int64, device=device)
        elif self._buf.device != device:
            self._buf, self._count = self._buf.to(device), self._count.to(device)
        if self.history is None and self._calls >= self._buf.numel():
            pad = torch.full_like(self._buf, math.inf)
            self._buf = torch.cat([self._buf, pad])
        return self._buf, self._count

    def decide(self, stats: GradStats, idx: list[int], skip: Tensor | None) -> ClipDecision:
        norm = stats.total_norm(idx)
        buf, count = self._ensure(norm.device)
        cap = buf.numel()
        pos = count % cap if self.history is not None else count
        new_buf = buf.index_copy(0, pos.view(1), norm.to(buf.dtype).view(1))
        n = torch.clamp(count + 1, max=cap)
        ordered = torch.sort(new_buf).values
        k = (self.percentile / 100.0) * (n - 1).to(torch.float64)
        lo = torch.floor(k).to(torch.int64)
        hi = torch.minimum(lo + 1, n - 1)
        v_lo, v_hi = ordered[lo], ordered[hi]
        threshold = v_lo + (k - lo.to(torch.float64)) * (v_hi - v_lo)
        self._buf = _commit(buf, new_buf, skip)
        self._count = _commit(count, count + 1, skip)
        self._calls += 1
        self.last_threshold = threshold
        n = norm.to(torch.float64)
        scale = _ratio_scale(threshold, n).to(norm.dtype)  # float64 gradients keep float64
        return ClipDecision([scale] * len(idx), None, scale, n > threshold)

    def state_dict(self) -> dict[str, Any]:
        if self._buf is None or self._count is None:
            return {}
        return {"history_buffer": self._buf, "count": self._count}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            self._buf = self._count = None
            self._calls = 0
            return
        self._buf = state_dict["history_buffer"].clone()
        self._count = state_dict["count"].clone()
        # Unknown without a host read how much of the buffer is used: assume all of it.
        self._calls = self._buf.numel()


class ZClip(_AdaptiveGlobal):
    r"""ZClip, z-score clipping of gradient-norm spikes (Kumar et al. 2025; spec ``"zclip:Z"``).

    The first ``warmup`` norms initialise the running mean :math:`\mu` and variance
    :math:`\sigma^2`. After that, with :math:`z = (n - \mu) / (\sigma + \epsilon)`:

    .. math::
        \tau = \begin{cases} \mu + \frac{z_{thres}^2}{z}\,\sigma & z > z_{thres} \\
                              \infty & \text{otherwise} \end{cases}, \qquad
        n' = \min(n, \tau), \qquad
        \mu \leftarrow \alpha\mu + (1-\alpha) n', \quad
        \sigma^2 \leftarrow \alpha\sigma^2 + (1-\alpha)(n' - \mu)^2

    (the reciprocal rule of the authors' implementation; the variance update uses the new mean).
    ``max_norm``, if given, caps :math:`\tau` at every step, warm-up included.
    """

    name = "zclip"
    stateful = True

    def __init__(
        self,
        alpha: float = 0.97,
        z_thresh: float = 2.5,
        warmup: int = 25,
        max_norm: float | None = None,
        eps: float = 1e-6,
    ) -> None:
        check_unit_interval("alpha", alpha)
        check_positive("z_thresh", z_thresh)
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"Invalid warmup: {warmup!r}; must be an integer >= 1")
        if max_norm is not None:
            check_positive("max_norm", max_norm)
        check_nonneg("eps", eps)
        self.alpha = float(alpha)
        self.z_thresh = float(z_thresh)
        self.warmup = warmup
        self.max_norm = None if max_norm is None else float(max_norm)
        self.eps = float(eps)
        self._state: dict[str, Tensor] = {}
        self.last_threshold: Tensor | None = None

    def _hparams(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "z_thresh": self.z_thresh, "warmup": self.warmup,
                "max_norm": self.max_norm, "eps": self.eps}

    @property
    def spec(self) -> str:
        parts = [f"zclip:{_fmt(self.z_thresh)}"]
        if self.alpha != 0.97:
            parts.append(f"alpha={_fmt(self.alpha)}")
        if self.warmup != 25:
            parts.append(f"warmup={self.warmup}")
        if self.max_norm is not None:
            parts.append(f"max_norm={_fmt(self.max_norm)}")
        if self.eps != 1e-6:
            parts.append(f"eps={_fmt(self.eps)}")
        return ":".join(parts)

    def _ensure(self, device: torch.device) -> dict[str, Tensor]:
        if not self._state:
            f64 = torch.float64
            self._state = {
                "count": torch.zeros((), dtype=torch.int64, device=device),
                "warmup_norms": torch.zeros(self.warmup, dtype=f64, device=device),
                "mean": torch.zeros((), dtype=f64, device=device),
                "var": torch.zeros((), dtype=f64, device=device),
            }
        elif self._state["mean"].device != device:
            self._state = {k: v.to(device) for k, v in self._state.items()}
        return self._state

    def decide(self, stats: GradStats, idx: list[int], skip: Tensor | None) -> ClipDecision:
        norm = stats.total_norm(idx)
        st = self._ensure(norm.device)
        n = norm.to(torch.float64)
        count, mean, var = st["count"], st["mean"], st["var"]
        in_warmup = count < self.warmup
        slot = torch.clamp(count, max=self.warmup - 1).view(1)
        collected = torch.where(in_warmup, st["warmup_norms"].index_copy(0, slot, n.view(1)),
                                st["warmup_norms"])
        finishing = count == self.warmup - 1
        init_mean = collected.mean()
        init_var = ((collected - init_mean) ** 2).mean()

        std = var.sqrt()
        z = (n - mean) / (std + self.eps)
        spike = z > self.z_thresh
        adaptive = torch.where(spike, mean + (self.z_thresh**2 / z) * std, math.inf)
        effective = torch.where(spike, adaptive, n)
        run_mean = self.alpha * mean + (1 - self.alpha) * effective
        run_var = self.alpha * var + (1 - self.alpha) * (effective - run_mean) ** 2

        new_mean = torch.where(in_warmup, torch.where(finishing, init_mean, mean), run_mean)
        new_var = torch.where(in_warmup, torch.where(finishing, init_var, var), run_var)
        threshold = torch.where(in_warmup, math.inf, adaptive)
        if self.max_norm is not None:
            threshold = torch.clamp(threshold, max=self.max_norm)
        new = {"count": count + 1, "warmup_norms": collected, "mean": new_mean, "var": new_var}
        self._state = {k: _commit(st[k], v, skip) for k, v in new.items()}
        self.last_threshold = threshold
        # No threshold (warm-up, no spike): divide n by itself, which is 1 exactly, rather than
        # inf by n, whose derivative (differentiable steps) is inf * 0 = NaN.
        bounded = torch.where(torch.isinf(threshold), n + _EPS, threshold)
        scale = _ratio_scale(bounded, n).to(norm.dtype)  # float64 gradients keep float64
        return ClipDecision([scale] * len(idx), None, scale, n > threshold)

    def state_dict(self) -> dict[str, Any]:
        return dict(self._state)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._state = {k: v.clone() for k, v in state_dict.items()}
