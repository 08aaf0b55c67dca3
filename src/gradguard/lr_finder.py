r"""The learning-rate range test (Smith 2017), clip-aware, with an exact restore.

:func:`find_lr` trains for ``num_steps`` optimizer steps while the LR sweeps from
``start_lr`` to ``end_lr``, records the loss, the gradient norm and what each of a few clip
policies would have done, stops when the loss diverges, suggests an LR and a clip threshold,
and puts the model, the optimizer, a scheduler and every RNG back exactly as they were.

The curve and the suggestions (:meth:`LRFinderResult.from_curves`):

- **smoothed loss**: the debiased EMA (:math:`\beta` = ``smooth``) of the losses after a
  running median of 5 steps. An EMA alone smears an isolated spike over
  :math:`\sim 1/(1-\beta)` steps, and in the first steps, where the debiased EMA weights each
  loss heavily, a spike reads as divergence; a median of 5 removes spikes of up to 2 steps and
  leaves the trend. Non-finite losses are left out. During the sweep the median is over the
  last 5 steps (causal); the stored curve uses the 5 steps centred on each step (the first or
  last 5 at the ends).
- **divergence**, judged on the raw loss and on the smoothed loss: the first step whose loss
  is not finite, or where either curve (the raw one as the causal median of the last 5
  losses, so that a spike of 1 or 2 steps does not count; the smoothed one causal too)
  exceeds :math:`b + (k - 1)|b|`, :math:`b` that curve's best value so far and :math:`k` =
  ``diverge_threshold`` (:math:`v > k\,b` for a positive loss), or is back above its value at
  step 5 by 10% of it once the loss has come down by 25% (judged on a debiased EMA of
  :math:`\beta = 0.9` of the medians, whatever ``smooth`` is, so that batch noise on a flat
  loss is not read as learning): the model lost what it learned. The smoothed curve lags
  :math:`\sim 1/(1-\beta)` steps (50 at the default 0.98), so on its own it can miss a
  blow-up at the end of a sweep; the raw curve does not.
  The sweep stops there and ``divergence`` says which test fired.
- **stable region**: the steps up to the minimum of the smoothed loss (before divergence).
- **minimum** (the default rule; fastai's ``minimum``: an order of magnitude below the LR of
  the lowest loss): :math:`\eta_{min} / 10`, :math:`\eta_{min}` the LR at the minimum of the
  smoothed loss in the stable region; none when that minimum is in the first 10% of the
  sweep's steps (the loss never fell, and its lowest point is the start). The smoothed curve
  lags, so its minimum can be only a few percent below its start on a short sweep, and still
  in the right place.
  Trained at, for its task's full budget with 3 seeds, it trained every seed on 8 of 16
  range tests (4 built-in tasks, Adam and SGD with momentum, 2 range-test seeds) and gave a
  suggestion that did not on 7; the former default (valley, else steepest) trained on 6 and
  did not on 10 (``benchmarks/lr_rules.py``; the table is in the README).
- **valley** (after fastai's ``valley``): the longest decreasing
  subsequence of the smoothed loss in the stable region, from its top :math:`s_a` to its bottom
  :math:`s_e`; the suggestion is the first step of it where the loss has come half-way down,
  :math:`s_t \le s_a - \tfrac12 (s_a - s_e)`. Measured in loss rather than in steps (fastai
  takes the middle step), so the long flat stretch at small LRs, which a smoothed curve also
  crosses slowly downhill, does not drag the suggestion towards LRs too small to learn. A
  valley must span at least 5 steps and 10% of the stable region, and fall by at least 5% of
  its top. With ``rule="valley"``, the steepest descent stands in where there is no valley.
- **steepest**: the most negative slope
  :math:`\mathrm{d}s / \mathrm{d}\log_{10}\eta` (``numpy.gradient``) in the stable region.
  The argmin of a derivative is at the mercy of noise on a short or flat curve.
- All three are heuristics: the best LR for a run depends on its length and schedule, which the
  range test does not know. Treat the suggestion as the centre of a small search.
- **suggested clip**: the 90th percentile (``clip_percentile``) of the finite gradient norms in
  the stable region. There the steps make progress without blowing up, so those norms are those
  of healthy training at this point of the run; a threshold at their upper percentile leaves
  typical steps alone and clips spikes (AutoClip's idea, computed once). Norms after the minimum
  grow with the instability and would set it too high. Gradients shrink as training goes on:
  treat it as a starting value, or use ``clip="auto:..."`` to follow them.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ._files import figure_bytes, write_atomic
from ._validation import check_choice, check_positive
from .clip import ClipPolicy, GradStats, parse
from .errors import NonFiniteGradientError
from .schedules import exponential_decay, polynomial_decay
from .schedules._functions import check_int
from .schedules._schedulers import set_lr

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["LRFinderResult", "find_lr"]

SWEEP_MODES = ("exp", "linear")
MEDIAN_WINDOW = 5
MINIMUM_DIVISOR = 10.0
#: the minimum rule gives nothing when the minimum is in this first fraction of the sweep
MINIMUM_START = 0.1
#: "back above its start": once the trend (a debiased EMA of beta TREND_BETA over the raw
#: medians) has come LEARNED below its value at step 5, a curve more than RISE above its own
#: value at step 5 has diverged (fractions of the value at step 5)
TREND_BETA = 0.9
LEARNED = 0.25
RISE = 0.1
VALLEY_POSITION = 0.5
VALLEY_MIN_DROP = 0.05
_FORMAT = "gradguard.lr_finder"


# --------------------------------------------------------------------------------------------
# The curve: smoothing, divergence, suggestions (pure functions of the recorded numbers)
# --------------------------------------------------------------------------------------------


def _lower_median(values: Sequence[float]) -> float:
    """The median; of an even count the lower middle value (so a spike among 2 or 4 values is
    never averaged in)."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


class _EMA:
    """The debiased exponential moving average: :math:`m_t = \\beta m_{t-1} + (1-\\beta)x_t`,
    reported as :math:`m_t / (1 - \\beta^{t+1})`."""

    def __init__(self, beta: float) -> None:
        self.beta = beta
        self.mean = 0.0
        self.count = 0

    def update(self, x: float) -> float:
        self.mean = self.beta * self.mean + (1.0 - self.beta) * x
        self.count += 1
        return self.mean / (1.0 - self.beta ** self.count)


class _DivergenceMonitor:
    """The online divergence test of the sweep, on the raw loss and on the smoothed loss.

    Each finite loss updates ``raw``, the causal median of the last 5 losses (spikes of up to
    2 steps do not count), ``smoothed``, the debiased EMA of ``raw`` (beta ``smooth``), and
    ``trend``, the same with beta ``TREND_BETA`` whatever ``smooth`` is. Either curve has
    diverged when it exceeds ``k`` times its best value so far (:math:`v > b + (k-1)|b|`), or
    when it is more than ``RISE`` above its value at step 5 once the trend has come
    ``LEARNED`` below its own: the model lost what it learned. The raw test sees a blow-up
    that the smoothed curve, lagging about 1/(1 - beta) steps, has not caught up with by the
    end of the sweep; the trend, not the raw loss, says whether anything was learned, so that
    batch noise on a flat loss is never read as learning and then losing it."""

    def __init__(self, beta: float, threshold: float) -> None:
        self.ema = _EMA(beta)
        self.trend = _EMA(TREND_BETA)
        self.threshold = threshold
        self.window: list[float] = []
        self.seen = 0
        self.best = {"raw": math.inf, "smoothed": math.inf, "trend": math.inf}
        self.start: dict[str, float] = {}
        self.reason = ""

    def update(self, loss: float) -> bool:
        """Feed one loss; True when it is not finite or a curve has diverged (``reason``
        says which and why)."""
        if not math.isfinite(loss):
            self.reason = f"the loss is {loss}"
            return True
        self.seen += 1
        self.window = [*self.window[-(MEDIAN_WINDOW - 1):], loss]
        raw = _lower_median(self.window)
        now = {"raw": raw, "smoothed": self.ema.update(raw), "trend": self.trend.update(raw)}
        if self.seen == MEDIAN_WINDOW:
            self.start = dict(now)
        if self.seen >= MEDIAN_WINDOW + round(1 / (1 - TREND_BETA)):  # a trend, not a start
            self.best["trend"] = min(self.best["trend"], now["trend"])
        learned = bool(self.start) and (
            self.best["trend"] <= self.start["trend"] - LEARNED * abs(self.start["trend"]))
        words = {"raw": "loss (median of the last 5 steps)", "smoothed": "smoothed loss"}
        for key in ("raw", "smoothed"):
            value, best = now[key], self.best[key]
            if math.isfinite(best) and value > best + (self.threshold - 1.0) * abs(best):
                self.reason = (f"the {words[key]} {value:.4g} exceeds {self.threshold:g}x its "
                               f"best {best:.4g}")
            elif learned and value > self.start[key] + RISE * abs(self.start[key]):
                self.reason = (f"the {words[key]} {value:.4g} is back above its starting "
                               f"value {self.start[key]:.4g}")
            if self.reason:
                return True
            self.best[key] = min(best, value)
        return False


def _divergence(losses: Sequence[float], beta: float,
                threshold: float) -> tuple[int | None, str]:
    """The step the sweep would have stopped at (None: none) and why."""
    monitor = _DivergenceMonitor(beta, threshold)
    for i, v in enumerate(losses):
        if math.isfinite(v) and monitor.update(v):
            return i, monitor.reason
    return None, ""


def smooth_curve(losses: Sequence[float], beta: float = 0.98) -> list[float]:
    """The smoothed loss at every step (NaN where the loss is not finite): the debiased EMA of
    the running median of 5 losses centred on each step (the first or last 5 at the ends), over
    the finite losses only.

    >>> [round(v, 3) for v in smooth_curve([1.0, 1.0, 50.0, 1.0, float("nan"), 1.0], 0.9)]
    [1.0, 1.0, 1.0, 1.0, nan, 1.0]
    """
    x = [float(v) for v in losses]
    finite = [i for i, v in enumerate(x) if math.isfinite(v)]
    vals = [x[i] for i in finite]
    half = MEDIAN_WINDOW // 2
    ema = _EMA(beta)
    out = [math.nan] * len(x)
    for k, i in enumerate(finite):
        # the 5 values centred on k; at the ends the first or last 5, so that two spikes at
        # the very start are still outvoted
        lo = min(max(0, k - half), max(0, len(vals) - MEDIAN_WINDOW))
        out[i] = ema.update(_lower_median(vals[lo:lo + MEDIAN_WINDOW]))
    return out


def _longest_decreasing(values: np.ndarray) -> tuple[int, int, int]:
    """(first, last, length) of the longest strictly decreasing subsequence, as positions in
    ``values``."""
    n = len(values)
    length = np.ones(n, dtype=np.int64)
    prev = np.full(n, -1, dtype=np.int64)
    for i in range(1, n):
        higher = np.nonzero(values[:i] > values[i])[0]
        if higher.size:
            j = higher[np.argmax(length[higher])]
            length[i], prev[i] = length[j] + 1, j
    last = int(np.argmax(length))
    first = last
    while prev[first] >= 0:
        first = int(prev[first])
    return first, last, int(length[last])


@dataclass
class _Suggestion:
    index: int | None = None
    rule: str | None = None
    steepest: int | None = None
    valley: int | None = None
    minimum: float | None = None
    stable_end: int | None = None
    message: str = ""


#: the suggestion rules (see the module docstring); the first is the default
RULES = ("minimum", "valley", "steepest")


def _nearest(log_lrs: np.ndarray, idx: np.ndarray, lr: float) -> int:
    """The step (of ``idx``) whose LR is nearest ``lr`` in log scale."""
    return int(idx[int(np.argmin(np.abs(log_lrs - math.log10(lr))))])


def _suggest(lrs: Sequence[float], smoothed: Sequence[float],
             diverged_at: int | None, rule: str = RULES[0]) -> _Suggestion:
    end = len(smoothed) if diverged_at is None else diverged_at
    idx = np.array([i for i in range(end) if math.isfinite(smoothed[i]) and lrs[i] > 0],
                   dtype=np.int64)
    out = _Suggestion()
    if idx.size < 3:
        out.message = "too few finite losses before divergence: widen the sweep or lower start_lr"
        return out
    s = np.asarray(smoothed, dtype=np.float64)[idx]
    log_lr = np.log10(np.asarray(lrs, dtype=np.float64)[idx])
    m = int(np.argmin(s))
    out.stable_end = int(idx[m])
    if m >= 2 and np.all(np.diff(log_lr[:m + 1]) > 0):
        slope = np.gradient(s[:m + 1], log_lr[:m + 1])
        k = int(np.argmin(slope))
        if slope[k] < 0:
            out.steepest = int(idx[k])
    first, last, length = _longest_decreasing(s[:m + 1])
    top, bottom = s[first], s[last]
    if length >= max(5, math.ceil(0.1 * (m + 1))) and top - bottom >= VALLEY_MIN_DROP * abs(top):
        level = top - VALLEY_POSITION * (top - bottom)
        k = first + int(np.argmax(s[first:last + 1] <= level))
        out.valley = int(idx[k])
    if out.stable_end >= MINIMUM_START * len(smoothed):  # else: lowest at the start, no fall
        out.minimum = float(lrs[out.stable_end]) / MINIMUM_DIVISOR
    fell = "the loss did not decrease: lower start_lr or check the model and data"
    if rule == "minimum":
        if out.minimum is not None:
            out.index, out.rule = _nearest(log_lr, idx, out.minimum), "minimum"
        else:
            out.message = (f"the smoothed loss is lowest in the first {MINIMUM_START:.0%} of "
                           "the sweep, so it never fell: " + fell.split(": ")[1])
    elif rule == "steepest" or out.valley is None:
        if out.steepest is not None:
            out.index, out.rule = out.steepest, "steepest"
            if rule == "valley":
                out.message = "no clear valley in the loss: the steepest descent was used"
        else:
            out.message = fell
    else:
        out.index, out.rule = out.valley, "valley"
    return out


def _suggest_clip(grad_norms: Sequence[float], stable_end: int | None,
                  percentile: float) -> float | None:
    if stable_end is None:
        return None
    norms = [g for g in grad_norms[:stable_end + 1] if math.isfinite(g)]
    if len(norms) < 3:
        return None
    return float(np.percentile(norms, percentile))


# --------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------


def _finite_or_none(values: Sequence[float]) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values]


def _nan_for_none(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


@dataclass
class LRFinderResult:
    """What :func:`find_lr` recorded and suggests.

    Per step ``t`` (one optimizer step): ``lrs[t]`` (the first param group's LR), ``losses[t]``
    (the mean over the accumulated micro-batches, and over ranks under DDP), ``smoothed[t]``,
    ``grad_norms[t]`` (total L2 norm before clipping) and, per simulated clip policy (by spec),
    ``clip_scales[spec][t]``, the factor it would have applied (1: no clip). ``suggestion`` is
    the suggested LR, chosen by ``rule`` (``"minimum"``, ``"valley"``, ``"steepest"`` or None
    when the curve gives none; ``message`` says why), at or nearest step ``suggestion_index``;
    ``minimum``, ``steepest`` and ``valley`` are the three rules' LRs (None where a rule has
    none). ``stable_end`` is the last step of the stable region (the minimum of the smoothed
    loss). ``suggested_clip`` is a max-norm threshold for ``"global_norm:C"``. ``diverged_at``
    is the step at which the sweep stopped for divergence (None: it ran to the end),
    ``stop_reason`` ``"completed"``, ``"diverged"`` or ``"nonfinite"``, and ``divergence`` says
    which curve diverged and how (empty when none did). The module docstring defines all of
    these.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    grad_norms: list[float]
    clip_scales: dict[str, list[float]]
    suggestion: float | None
    rule: str | None
    suggestion_index: int | None
    steepest: float | None
    valley: float | None
    suggested_clip: float | None
    stable_end: int | None
    diverged_at: int | None
    stop_reason: str
    message: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    divergence: str = ""
    minimum: float | None = None

    @classmethod
    def from_curves(cls, lrs: Sequence[float], losses: Sequence[float],
                    grad_norms: Sequence[float] | None = None,
                    clip_scales: Mapping[str, Sequence[float]] | None = None, *,
                    smooth: float = 0.98, diverge_threshold: float = 4.0,
                    diverged_at: int | None = None, stop_reason: str | None = None,
                    divergence: str = "", rule: str = "minimum",
                    clip_percentile: float = 90.0,
                    settings: dict[str, Any] | None = None) -> LRFinderResult:
        """Smooth, find the divergence (unless given) and suggest, from recorded curves.

        >>> lrs = [10 ** (-6 + 6 * t / 59) for t in range(60)]
        >>> losses = [2.0 / (1 + (lr / 1e-3) ** 2) + (lr / 0.1) ** 3 + 0.1 for lr in lrs]
        >>> r = LRFinderResult.from_curves(lrs, losses, smooth=0.6)
        >>> r.rule, 1e-5 < r.suggestion < 1e-2, r.diverged_at is not None
        ('minimum', True, True)
        """
        n = len(lrs)
        if len(losses) != n:
            raise ValueError(f"Invalid losses: {len(losses)} values for {n} LRs")
        check_beta(smooth)
        check_choice("rule", rule, RULES)
        norms = [math.nan] * n if grad_norms is None else [float(g) for g in grad_norms]
        if len(norms) != n:
            raise ValueError(f"Invalid grad_norms: {len(norms)} values for {n} LRs")
        losses_f = [float(v) for v in losses]
        if diverged_at is None:
            diverged_at, divergence = _divergence(losses_f, smooth, diverge_threshold)
        if stop_reason is None:
            stop_reason = "completed" if diverged_at is None else "diverged"
        smoothed = smooth_curve(losses_f, smooth)
        sug = _suggest([float(x) for x in lrs], smoothed, diverged_at, rule)
        scales = {k: [float(v) for v in vs] for k, vs in (clip_scales or {}).items()}

        def lr_of(i: int | None) -> float | None:
            return None if i is None else float(lrs[i])

        return cls(
            lrs=[float(x) for x in lrs], losses=losses_f, smoothed=smoothed, grad_norms=norms,
            clip_scales=scales,
            suggestion=sug.minimum if sug.rule == "minimum" else lr_of(sug.index), rule=sug.rule,
            suggestion_index=sug.index, steepest=lr_of(sug.steepest), valley=lr_of(sug.valley),
            suggested_clip=_suggest_clip(norms, sug.stable_end, clip_percentile),
            stable_end=sug.stable_end, diverged_at=diverged_at, stop_reason=stop_reason,
            message=sug.message, settings=dict(settings or {}), divergence=divergence,
            minimum=sug.minimum)

    # -- JSON -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; non-finite numbers become ``null`` (NaN when read back)."""
        d = asdict(self)
        for key in ("losses", "smoothed", "grad_norms", "lrs"):
            d[key] = _finite_or_none(d[key])
        d["clip_scales"] = {k: _finite_or_none(v) for k, v in self.clip_scales.items()}
        return {"format": _FORMAT, "version": 1, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LRFinderResult:
        """The inverse of :meth:`to_dict`."""
        if d.get("format") != _FORMAT:
            raise ValueError(f"Invalid LR finder result: format {d.get('format')!r}, expected "
                             f"{_FORMAT!r}")
        d = {k: v for k, v in d.items() if k not in ("format", "version")}
        for key in ("losses", "smoothed", "grad_norms", "lrs"):
            d[key] = _nan_for_none(d[key])
        d["clip_scales"] = {k: _nan_for_none(v) for k, v in d["clip_scales"].items()}
        return cls(**d)

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write the result as JSON (atomically: an earlier file survives a failure)."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        write_atomic(Path(path), (text + "\n").encode("utf-8"))

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> LRFinderResult:
        """Read a result written by :meth:`to_json`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    # -- plot -----------------------------------------------------------------------------
    def plot(self, path: str | os.PathLike[str] | None = None) -> Figure:
        """Loss and gradient norm against the LR (log x), the suggestion and the divergence
        marked; the lower panel shows the suggested clip threshold. Saved to ``path`` when given
        (format from the suffix). Needs matplotlib; draws with the Agg backend without touching
        pyplot's global state. Returns the figure."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("LRFinderResult.plot needs matplotlib: pip install matplotlib"
                              ) from e
        fig = Figure(figsize=(7.0, 6.0), layout="constrained")
        FigureCanvasAgg(fig)
        ax_loss, ax_norm = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
        lrs = np.asarray(self.lrs)
        ax_loss.plot(lrs, self.losses, color="C0", alpha=0.45, lw=1, label="loss (raw)")
        ax_loss.plot(lrs, self.smoothed, color="C0", lw=2, label="smoothed loss")
        ax_loss.set_xscale("log")
        ax_loss.set_ylabel("loss")
        stop = len(lrs) if self.diverged_at is None else self.diverged_at + 1
        raw = np.asarray(self.losses[:stop], dtype=np.float64)
        smooth = np.asarray(self.smoothed[:stop], dtype=np.float64)
        both = np.concatenate([raw[np.isfinite(raw)], smooth[np.isfinite(smooth)]])
        if both.size:
            # Both curves in view: from the lowest raw loss to the highest raw loss up to the
            # stop, except that a lone spike far above the rest (past 3 times the spread of
            # the loss between its start and its minimum) is drawn at the top edge as a
            # triangle instead of squashing the curves.
            lo = float(both.min())
            start = float(raw[np.isfinite(raw)][0]) if np.isfinite(raw).any() else lo
            spread = max(abs(start - lo), 1e-12 * max(abs(lo), 1.0))
            hi = min(float(both.max()), start + 3.0 * spread)
            pad = 0.05 * (hi - lo) if hi > lo else 0.05 * max(abs(lo), 1.0)
            ax_loss.set_ylim(lo - pad, hi + pad)
            above = np.isfinite(raw) & (raw > hi + pad)
            if above.any():
                ax_loss.plot(lrs[:stop][above], np.full(int(above.sum()), hi + pad), "^",
                             color="C0", alpha=0.5, clip_on=False,
                             label="loss above the axis")
        if self.suggestion_index is not None and self.suggestion is not None:
            i = self.suggestion_index
            label = f"suggested lr {self.suggestion:.3g} ({self.rule})"
            for ax in (ax_loss, ax_norm):
                ax.axvline(self.suggestion, color="C2", ls="--", lw=1)
            ax_loss.plot([self.suggestion], [self.smoothed[i]], "o", color="C2", label=label)
        if self.diverged_at is not None:
            for ax in (ax_loss, ax_norm):
                ax.axvline(lrs[self.diverged_at], color="C3", ls=":", lw=1.5)
            ax_loss.plot([], [], color="C3", ls=":", label=f"stopped ({self.stop_reason}) at "
                         f"lr {lrs[self.diverged_at]:.3g}")
        ax_loss.legend(loc="best", fontsize="small")
        norms = np.asarray(self.grad_norms, dtype=np.float64)
        ax_norm.plot(lrs, norms, color="C1", lw=1, label="gradient norm")
        if np.any(np.isfinite(norms) & (norms > 0)):
            ax_norm.set_yscale("log")
        if self.suggested_clip is not None:
            ax_norm.axhline(self.suggested_clip, color="C4", ls="--", lw=1,
                            label=f"suggested clip {self.suggested_clip:.3g}")
        ax_norm.set_xlabel("learning rate")
        ax_norm.set_ylabel("grad norm")
        ax_norm.legend(loc="best", fontsize="small")
        if path is not None:
            target = Path(path)
            write_atomic(target, figure_bytes(fig, target.suffix.lstrip(".") or "png"))
        return fig


def check_beta(smooth: float) -> None:
    if isinstance(smooth, bool) or not isinstance(smooth, int | float) or not 0 <= smooth < 1:
        raise ValueError(f"Invalid smooth: {smooth!r}; must be in [0, 1) (the EMA's beta)")


# --------------------------------------------------------------------------------------------
# Exact restore
# --------------------------------------------------------------------------------------------

# Attributes that the optimizer's own load_state_dict restores (replacing the objects).
_LOADED_ATTRS = frozenset({"state", "param_groups", "_fresh"})


class _Snapshot:
    """Everything the sweep changes, copied in memory, and put back by :meth:`restore`."""

    def __init__(self, model: nn.Module, optimizer: Optimizer,
                 scheduler: LRScheduler | None, params: list[Tensor]) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.model_state = copy.deepcopy(model.state_dict())
        self.modes = [(m, m.training) for m in model.modules()]
        self.grads = [(p, p.grad) for p in params]
        self.opt_state = copy.deepcopy(optimizer.state_dict())
        self.attrs = [(o, dict(vars(o))) for o in _optimizer_objects(optimizer)]
        self.core = _core_snapshot(optimizer)
        self.sched_state = None if scheduler is None else copy.deepcopy(scheduler.state_dict())
        self.cuda_rng = (torch.cuda.get_rng_state_all()
                         if torch.cuda.is_available() and torch.cuda.is_initialized() else None)
        self.torch_rng = torch.get_rng_state()
        self.numpy_rng = np.random.get_state()
        self.python_rng = random.getstate()

    def restore(self) -> None:
        self.model.load_state_dict(self.model_state)
        for m, training in self.modes:
            m.training = training
        for p, g in self.grads:
            p.grad = g
        self.optimizer.load_state_dict(self.opt_state)
        if self.core is not None:
            core, core_dict, policies = self.core
            for policy, saved in policies:
                policy.__dict__.clear()
                policy.__dict__.update(saved)
            core.__dict__.clear()
            core.__dict__.update(core_dict)
        for obj, saved in self.attrs:  # what the steps set on the optimizer object itself
            current = vars(obj)
            for key in [k for k in current if k not in saved]:
                delattr(obj, key)
            for key, value in saved.items():
                if key not in _LOADED_ATTRS and current.get(key) is not value:
                    setattr(obj, key, value)
        if self.scheduler is not None and self.sched_state is not None:
            self.scheduler.load_state_dict(self.sched_state)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        torch.set_rng_state(self.torch_rng)
        np.random.set_state(self.numpy_rng)
        random.setstate(self.python_rng)


def _optimizer_objects(optimizer: Optimizer) -> list[Any]:
    """The optimizer, and the torch optimizer inside a :func:`gradguard.guard` wrapper."""
    inner = getattr(optimizer, "optimizer", None)
    return [optimizer] if not isinstance(inner, Optimizer) else [optimizer, inner]


def _core_snapshot(optimizer: Optimizer) -> Any:
    """A copy of a gradguard optimizer's guard state beyond its state_dict (the last step
    record, the host mirror of the skip count, clip policies' bookkeeping)."""
    core = getattr(optimizer, "_core", None)
    if core is None:
        return None
    policies: list[ClipPolicy] = []
    for p in [getattr(core, "clip", None), *(g.get("clip") for g in optimizer.param_groups)]:
        if isinstance(p, ClipPolicy) and all(p is not q for q in policies):
            policies.append(p)
    memo: dict[int, Any] = {id(p): p for p in policies}  # policies are restored in place
    try:
        core_dict = copy.deepcopy(vars(core), memo)
    except Exception:  # e.g. a CUDA event in the host mirror: drop the mirror, it is a cache
        core_dict = {k: copy.deepcopy(v, memo) for k, v in vars(core).items() if k != "_mirror"}
        core_dict["_mirror"] = None
    return core, core_dict, [(p, copy.deepcopy(vars(p))) for p in policies]


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------


def _mean_over_ranks(values: Tensor) -> Tensor:
    """The mean of ``values`` over the ranks of the default process group (all-reduce), so
    every rank sees the same numbers and takes the same decisions; ``values`` itself when
    ``torch.distributed`` is not initialized."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return values
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def _batches(data: Iterable[Any] | Callable[[], Any]) -> Iterator[Any]:
    if callable(data) and not hasattr(data, "__iter__"):
        while True:
            yield data()
    count = 0
    while True:
        before = count
        for batch in data:
            count += 1
            yield batch
        if count == before:
            raise ValueError(f"Invalid data: it ran out after {count} batches; pass a list, a "
                             "DataLoader (anything iterable more than once) or a callable")


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, tuple | list):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _amp_dtype(amp: bool | torch.dtype, device: torch.device) -> torch.dtype | None:
    if amp is False:
        return None
    if amp is True:
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    if isinstance(amp, torch.dtype) and amp in (torch.float16, torch.bfloat16):
        return amp
    raise ValueError(f"Invalid amp: {amp!r}; must be False, True, torch.float16 or "
                     "torch.bfloat16")


def _policies(specs: Iterable[ClipPolicy | str]) -> dict[str, ClipPolicy]:
    if isinstance(specs, str | ClipPolicy):
        specs = [specs]
    out: dict[str, ClipPolicy] = {}
    for s in specs:
        if isinstance(s, str):
            try:
                policy = parse(s)
            except ValueError as e:
                raise ValueError(f"Invalid clip_policies: {e}") from None
        elif isinstance(s, ClipPolicy):
            policy = copy.deepcopy(s)
            policy.load_state_dict({})  # a fresh copy: no history from earlier training
        else:
            raise TypeError(f"Invalid clip_policies: {s!r}; expected spec strings or policies")
        if policy.spec in out:
            raise ValueError(f"Invalid clip_policies: {policy.spec!r} given twice")
        out[policy.spec] = policy
    return out


def find_lr(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    data: Iterable[Any] | Callable[[], Any],
    optimizer: Optimizer,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    mode: str = "exp",
    smooth: float = 0.98,
    diverge_threshold: float = 4.0,
    accumulation_steps: int = 1,
    amp: bool | torch.dtype = False,
    clip_policies: Iterable[ClipPolicy | str] = ("global_norm:1", "auto:10", "zclip:2.5"),
    clip_percentile: float = 90.0,
    rule: str = "minimum",
    device: torch.device | str | None = None,
    scheduler: LRScheduler | None = None,
    output_dir: str | os.PathLike[str] | None = None,
) -> LRFinderResult:
    r"""Run the LR range test (Smith 2017) and suggest an LR and a clip threshold.

    For ``t = 0 .. num_steps - 1`` the LR is set to :math:`\eta_t`, exponential
    :math:`\eta_s (\eta_e / \eta_s)^{t/(N-1)}` (``mode="exp"``) or linear
    :math:`\eta_s + (\eta_e - \eta_s)\,t/(N-1)`, in every param group with the groups' ratios to
    the first group's current LR kept; then ``accumulation_steps`` batches go forward and
    backward (``loss_fn(model(inputs), targets)``, scaled by ``1/accumulation_steps``) and the
    optimizer steps. The sweep stops early when the loss diverges or is not finite (see the
    module docstring for the smoothing, the divergence test and the suggestions).

    Args:
        start_lr, end_lr, num_steps, mode: the sweep (``end_lr > start_lr > 0``, at least 2
            steps, ``"exp"`` or ``"linear"``).
        smooth: the EMA's :math:`\beta` for the smoothed loss.
        diverge_threshold: stop when the smoothed loss exceeds this multiple of its best.
        clip_percentile: the percentile of the stable region's gradient norms suggested as the
            clip threshold.
        rule: which suggestion is ``suggestion``: ``"minimum"`` (the default: a tenth of the
            LR at the smoothed loss's minimum), ``"valley"`` (falling back to ``"steepest"``
            where there is no valley) or ``"steepest"``; all three are in the result.
        model: in train mode during the sweep; it must already be on its device. A dict of
            inputs is passed as keyword arguments, anything else as the one argument.
        loss_fn: ``loss_fn(outputs, targets)`` -> a scalar tensor.
        data: an iterable of ``(inputs, targets)`` batches (cycled when shorter than needed;
            a one-shot iterator is consumed), or a callable returning one batch.
        optimizer: a gradguard optimizer, ``gradguard.guard(...)`` or any ``torch.optim`` one.
            Its clip and guard act as in training (a skipped non-finite step stays skipped).
        clip_policies: policies (or spec strings) to simulate: fresh copies are fed each step's
            gradients and record the scale they would apply; nothing is clipped by them. The
            recorded gradient norm is the total L2 norm before clipping (after GradScaler's
            unscale), measured alongside; without policies to simulate, a gradguard
            optimizer's ``last_step.grad_norm`` is read instead.
        amp: autocast with float16 (with a ``GradScaler``) on CUDA, bfloat16 elsewhere, or the
            dtype given.
        device: where batches are moved; by default the device of the model's first parameter.
        scheduler: a scheduler attached to ``optimizer``, restored afterwards (it is not
            stepped).
        output_dir: if given, ``lr_finder.json`` and ``lr_finder.png`` (when matplotlib is
            installed) are written there; otherwise nothing touches the disk.

    Afterwards the model's parameters, buffers, gradients and train/eval modes, the optimizer
    (state_dict, and for gradguard optimizers the guard's records and clip-policy state), the
    scheduler and the torch (CPU, CUDA), numpy and ``random`` RNG states are exactly as before,
    also when the sweep raises. Under ``torch.distributed`` the per-step numbers are averaged
    over ranks before anything is decided, so every rank stops at the same step and gets the
    same suggestions (with DDP the gradients are already the same on every rank).

    >>> _ = torch.manual_seed(0)
    >>> x = torch.randn(256, 4); y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    >>> model = nn.Linear(4, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.01)
    >>> batches = [(x[i:i + 32], y[i:i + 32, None]) for i in range(0, 256, 32)]
    >>> before = [p.detach().clone() for p in model.parameters()]
    >>> result = find_lr(model, nn.functional.mse_loss, batches, opt, start_lr=1e-4,
    ...                  end_lr=10.0, num_steps=60)
    >>> result.rule, 1e-3 < result.suggestion < 1.0, result.stop_reason
    ('minimum', True, 'diverged')
    >>> all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    True
    """
    check_positive("start_lr", start_lr)
    check_positive("end_lr", end_lr)
    if end_lr <= start_lr:
        raise ValueError(f"Invalid end_lr: {end_lr}; must be greater than start_lr ({start_lr})")
    num_steps = check_int("num_steps", num_steps, 2)
    check_choice("mode", mode, SWEEP_MODES)
    check_choice("rule", rule, RULES)
    check_beta(smooth)
    check_positive("diverge_threshold", diverge_threshold)
    if diverge_threshold <= 1:
        raise ValueError(f"Invalid diverge_threshold: {diverge_threshold}; must be > 1")
    accumulation_steps = check_int("accumulation_steps", accumulation_steps, 1)
    if not 0 < clip_percentile <= 100:
        raise ValueError(f"Invalid clip_percentile: {clip_percentile}; must be in (0, 100]")
    if not isinstance(model, nn.Module):
        raise TypeError(f"Invalid model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"Invalid optimizer: expected a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    if scheduler is not None and scheduler.optimizer is not optimizer:
        raise ValueError("Invalid scheduler: it is not attached to the optimizer given")
    policies = _policies(clip_policies)
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    amp_dtype = _amp_dtype(amp, device)
    if mode == "exp":
        sweep = exponential_decay(start_lr, end_lr / start_lr, num_steps - 1)
    else:
        sweep = polynomial_decay(start_lr, num_steps - 1, end_lr, 1.0)

    opt_params = [p for g in optimizer.param_groups for p in g["params"]]
    seen = {id(p) for p in opt_params}
    params = opt_params + [p for p in model.parameters() if id(p) not in seen]
    snapshot = _Snapshot(model, optimizer, scheduler, params)
    settings = {"start_lr": float(start_lr), "end_lr": float(end_lr), "num_steps": num_steps,
                "mode": mode, "smooth": float(smooth),
                "diverge_threshold": float(diverge_threshold),
                "accumulation_steps": accumulation_steps,
                "amp": None if amp_dtype is None else str(amp_dtype),
                "clip_percentile": float(clip_percentile), "rule": rule,
                "optimizer": type(optimizer).__name__}
    try:
        rec = _sweep(model, loss_fn, data, optimizer, opt_params, params, sweep, num_steps,
                     smooth, float(diverge_threshold), accumulation_steps, amp_dtype, policies,
                     device)
    finally:
        snapshot.restore()
    lrs, losses, norms, scales, diverged_at, reason, why = rec
    result = LRFinderResult.from_curves(
        lrs, losses, norms, scales, smooth=smooth, diverge_threshold=diverge_threshold,
        diverged_at=diverged_at, stop_reason=reason, divergence=why,
        clip_percentile=clip_percentile, settings=settings, rule=rule)
    if output_dir is not None:
        out = Path(output_dir)
        result.to_json(out / "lr_finder.json")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            import warnings
            warnings.warn("matplotlib is not installed: lr_finder.png was not written "
                          "(LRFinderResult.from_json(...).plot(path) can draw it later)",
                          stacklevel=2)
        else:
            result.plot(out / "lr_finder.png")
    return result


def _sweep(model: nn.Module, loss_fn: Callable[[Any, Any], Tensor],
           data: Iterable[Any] | Callable[[], Any], optimizer: Optimizer,
           opt_params: list[Tensor], params: list[Tensor], sweep: Callable[[int], float],
           num_steps: int, smooth: float, threshold: float, accumulation_steps: int,
           amp_dtype: torch.dtype | None, policies: dict[str, ClipPolicy],
           device: torch.device) -> tuple[list[float], list[float], list[float],
                                          dict[str, list[float]], int | None, str, str]:
    groups = optimizer.param_groups
    ref = float(groups[0]["lr"])
    ratios = [float(g["lr"]) / ref if ref != 0 else 1.0 for g in groups]
    scaler = (torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None)
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                else nullcontext())
    guarded = hasattr(optimizer, "_core")
    monitor = _DivergenceMonitor(smooth, threshold)
    batches = _batches(data)
    lrs: list[float] = []
    losses: list[float] = []
    norms: list[float] = []
    scales: dict[str, list[float]] = {k: [] for k in policies}
    model.train()
    for t in range(num_steps):
        lr = sweep(t)
        for group, ratio in zip(groups, ratios, strict=True):
            set_lr(group, lr * ratio)
        for p in params:
            p.grad = None
        total = torch.zeros((), dtype=torch.float64, device=device)
        for _ in range(accumulation_steps):
            batch = next(batches)
            if not isinstance(batch, tuple | list) or len(batch) != 2:
                raise ValueError(f"Invalid data: each batch must be (inputs, targets), got "
                                 f"{type(batch).__name__}")
            inputs, targets = _to(batch[0], device), _to(batch[1], device)
            with autocast:
                out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
                loss = loss_fn(out, targets)
            scaled = loss / accumulation_steps
            (scaled if scaler is None else scaler.scale(scaled)).backward()
            total = total + loss.detach().to(device=device, dtype=torch.float64)
        if scaler is not None:
            scaler.unscale_(optimizer)
        # The pre-clip norm is measured here, after any unscale_, from the gradients the step
        # gets (the simulated policies need these statistics anyway); a gradguard optimizer's
        # own last_step.grad_norm, the same number, is read instead when nothing else needs them.
        measure = bool(policies) or not guarded or scaler is not None
        norm = torch.full((), math.nan, dtype=torch.float64, device=device)
        sim: list[Tensor] = []
        if measure:
            with_grad = [p for p in opt_params if p.grad is not None]
            grads = [p.grad for p in with_grad if p.grad is not None]
            idx = list(range(len(grads)))
            if grads:
                stats = GradStats(with_grad, grads)
                norm = stats.total_norm(idx).to(device=device, dtype=torch.float64)
                skip = ~torch.isfinite(norm)
                sim = [policy.decide(stats, idx, skip if policy.stateful else None).min_scale
                       for policy in policies.values()]
            else:
                norm = torch.zeros((), dtype=torch.float64, device=device)
                sim = [torch.ones((), device=device) for _ in policies]
        stopped_by_guard = False
        try:
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
        except NonFiniteGradientError:  # the guard gave up after repeated non-finite steps
            stopped_by_guard = True
        record = getattr(optimizer, "last_step", None)
        if not measure and record is not None:
            norm = record.grad_norm.to(device=device, dtype=torch.float64)
        values = torch.stack([total / accumulation_steps, norm,
                              *(s.to(device=device, dtype=torch.float64) for s in sim)])
        host = _mean_over_ranks(values).tolist()  # the one host read of the step
        lrs.append(float(lr))
        losses.append(host[0])
        norms.append(host[1])
        for k, v in zip(scales, host[2:], strict=True):
            scales[k].append(v)
        if not math.isfinite(host[0]) or stopped_by_guard:
            why = ("the guard stopped after repeated non-finite gradients" if stopped_by_guard
                   else f"the loss is {host[0]}")
            return lrs, losses, norms, scales, t, "nonfinite", why
        if monitor.update(host[0]):
            return lrs, losses, norms, scales, t, "diverged", monitor.reason
    return lrs, losses, norms, scales, None, "completed", ""
