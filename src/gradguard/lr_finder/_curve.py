"""The curve of the range test: the smoothing, the divergence monitor and the suggestion rules
(:data:`RULES`), as pure functions of the recorded numbers.

Owns the numbers that define them (the median window, the trend's beta, the rules'
thresholds); the package docstring (:mod:`gradguard.lr_finder`) defines each of them in words.
Nothing here touches a model or an optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MEDIAN_WINDOW = 5
MINIMUM_DIVISOR = 10.0
#: the minimum rule gives nothing when the minimum is in this first fraction of the sweep
MINIMUM_START = 0.1
#: "back above its start": once the trend (a debiased EMA of beta TREND_BETA over the raw
#: medians) has come LEARNED below its value at step 15, a curve more than RISE above its own
#: value at step 5 has diverged (fractions of the value at step 5)
TREND_BETA = 0.9
LEARNED = 0.25
RISE = 0.1
#: ... and by more than NOISE_SIGMAS times the batch noise (the loss's standard deviation
#: from one step to the next): on a flat loss the trend drifts that far by chance (none of
#: 40,000 flat 300-step sweeps at 15-20% noise did, against 12 of 20,000 before;
#: benchmarks/flat_noise.py)
NOISE_SIGMAS = 3.0
#: the memory of that noise estimate (steps ~ 1 / (1 - beta))
JITTER_BETA = 0.98
VALLEY_POSITION = 0.5
VALLEY_MIN_DROP = 0.05


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
    r"""The online divergence test of the sweep, on the raw loss and on the smoothed loss.

    Each finite loss updates ``raw``, the causal median of the last 5 losses (spikes of up to
    2 steps do not count), ``smoothed``, the debiased EMA of ``raw`` (beta ``smooth``), and
    ``trend``, the same with beta ``TREND_BETA`` whatever ``smooth`` is. Either curve has
    diverged when it exceeds ``k`` times its best value so far (:math:`v > b + (k-1)|b|`), or
    when it is more than ``RISE`` above its value at step 5 once the trend has come
    ``LEARNED`` below its own (taken at step 15, once it is a trend) and by more than
    ``NOISE_SIGMAS`` times the batch noise (:math:`1.25/\sqrt2` times the mean absolute change
    of the loss from one step to the next): the model lost what it learned. Best values count
    from step 5, when the median has 5 losses (the lower median of fewer is their minimum: one
    low batch made a best that ordinary noise then exceeded 4 times over). The raw test sees
    a blow-up that the smoothed curve, lagging about 1/(1 - beta) steps, has not caught up
    with by the end of the sweep; the trend, not the raw loss, says whether anything was
    learned, so that batch noise on a flat loss is never read as learning and then losing
    it."""

    def __init__(self, beta: float, threshold: float) -> None:
        self.ema = _EMA(beta)
        self.trend = _EMA(TREND_BETA)
        self.jitter = _EMA(JITTER_BETA)  # mean absolute change from one loss to the next
        self.last: float | None = None
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
        if self.seen == MEDIAN_WINDOW + round(1 / (1 - TREND_BETA)):  # a trend, not a start
            self.start["trend"] = now["trend"]
        if self.seen >= MEDIAN_WINDOW + round(1 / (1 - TREND_BETA)):
            self.best["trend"] = min(self.best["trend"], now["trend"])
        if self.last is not None:  # the batch noise: sigma ~ 1.25 * mean |change| / sqrt(2)
            self.jitter.update(abs(loss - self.last))
        self.last = loss
        noise = 1.25 * self.jitter.mean / (1.0 - self.jitter.beta ** max(self.jitter.count, 1))
        noise /= math.sqrt(2.0)
        drop = max(LEARNED * abs(self.start["trend"]), NOISE_SIGMAS * noise) if self.start else 0
        learned = bool(self.start) and self.best["trend"] <= self.start["trend"] - drop
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
            if self.seen >= MEDIAN_WINDOW:
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


#: the suggestion rules (see the package docstring); the first is the default
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


def check_beta(smooth: float) -> None:
    if isinstance(smooth, bool) or not isinstance(smooth, int | float) or not 0 <= smooth < 1:
        raise ValueError(f"Invalid smooth: {smooth!r}; must be in [0, 1) (the EMA's beta)")
