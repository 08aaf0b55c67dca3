"""Adaptive clip policies: AutoClip and ZClip clip the global norm to a threshold they adapt
from the history of gradient norms. Their statistics are tensors on the gradients' device, and
a skipped step (``skip`` true) leaves them as they were; nothing here reads a value on the
host.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._validation import check_nonneg, check_positive, check_unit_interval
from ._apply import kept
from ._policies import _EPS, ClipDecision, ClipPolicy, _ratio_scale
from ._stats import GradStats, StatNeeds

__all__ = ["AutoClip", "ZClip"]


class _AdaptiveGlobal(ClipPolicy):
    """A policy that clips the global norm to a threshold it adapts each step; the one it
    used last is ``last_threshold`` (None before the first step)."""

    last_threshold: Tensor | None = None

    @property
    def needs(self) -> StatNeeds:
        return StatNeeds(frozenset({2.0}))  # the total norm of the gradients

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
    spec_usage = "auto:PERCENTILE[:history=N]"
    spec_first = "percentile"
    spec_options = ("history",)
    spec_ints = frozenset({"history"})
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
        self._buf = kept(buf, new_buf, skip)
        self._count = kept(count, count + 1, skip)
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
    spec_usage = "zclip:Z[:alpha=A][:warmup=N][:max_norm=M][:eps=E]"
    spec_first = "z_thresh"
    spec_options = ("alpha", "warmup", "max_norm", "eps")
    spec_ints = frozenset({"warmup"})
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
        self._state = {k: kept(st[k], v, skip) for k, v in new.items()}
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
