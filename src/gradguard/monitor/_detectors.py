"""Detectors: rules over the interval records that say what is wrong and what to do about it.

Each detector looks at the history of records (the newest last) and returns :class:`Finding`
objects. A detector fires when its condition starts to hold and stays quiet while it keeps
holding (it re-arms once the condition clears), so a long problem gives one message, not one
per interval.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

Record = dict[str, Any]


@dataclass(frozen=True)
class Finding:
    """One detected problem: ``kind`` (``"explosion"``, ``"vanishing"``, ``"clip_always"``,
    ``"clip_never"``, ``"skips"``), the optimizer step of the record that raised it, an
    actionable ``message`` and the layers concerned (if any)."""

    kind: str
    step: int
    message: str
    layers: tuple[str, ...] = field(default_factory=tuple)


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"Invalid {name}: {value!r}; must be a number > 0")


def _check_count(name: str, value: int, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"Invalid {name}: {value!r}; must be an integer >= {low}")


def _span(records: Sequence[Record]) -> str:
    return f"steps {records[0]['step_first']}..{records[-1]['step']}"


class Detector:
    """Base class: subclasses implement :meth:`conditions`, a dict ``key -> Finding`` of what
    holds now; :meth:`check` reports the keys that were not holding at the previous check."""

    def __init__(self) -> None:
        self._active: set[str] = set()

    def conditions(self, history: Sequence[Record]) -> dict[str, Finding]:
        raise TypeError(f"{type(self).__name__} must define conditions()")

    def check(self, history: Sequence[Record]) -> list[Finding]:
        if not history:
            return []
        now = self.conditions(history)
        new = [f for key, f in now.items() if key not in self._active]
        self._active = set(now)
        return new

    def reset(self) -> None:
        self._active = set()


class Explosion(Detector):
    """A spike (an interval's largest norm ``spike`` times the median of the previous
    ``window`` intervals' mean norms) or sustained growth (the mean norm grew ``growth`` times
    over the last ``window`` intervals, rising in at least 70% of them).

    >>> recs = [{"step_first": 10 * i + 1, "step": 10 * i + 10, "grad_norm_mean": 1.0,
    ...          "grad_norm_max": 1.0} for i in range(5)]
    >>> recs.append({"step_first": 51, "step": 60, "grad_norm_mean": 5.0, "grad_norm_max": 50.0})
    >>> Explosion().check(recs)[0].kind
    'explosion'
    """

    def __init__(self, spike: float = 10.0, growth: float = 10.0, window: int = 10,
                 min_history: int = 3) -> None:
        super().__init__()
        _check_positive("spike", spike)
        _check_positive("growth", growth)
        _check_count("window", window, 2)
        _check_count("min_history", min_history)
        self.spike, self.growth, self.window, self.min_history = spike, growth, window, min_history

    def conditions(self, history: Sequence[Record]) -> dict[str, Finding]:
        out: dict[str, Finding] = {}
        cur = history[-1]
        prev = [r["grad_norm_mean"] for r in history[-self.window - 1:-1]
                if r.get("grad_norm_mean") is not None]
        peak = cur.get("grad_norm_max")
        if peak is not None and len(prev) >= self.min_history:
            base = statistics.median(prev)
            if base > 0 and peak > self.spike * base:
                out["spike"] = Finding("explosion", cur["step"], (
                    f"gradient norm spiked to {peak:.3g} in {_span([cur])}, {peak / base:.0f}x "
                    f"the recent median {base:.3g}; lower the LR or clip the spikes: "
                    f"clip='global_norm:{2 * base:.3g}' or clip='zclip:2.5'"))
        recent = [r for r in history[-self.window:] if r.get("grad_norm_mean") is not None]
        if len(recent) >= max(self.min_history, self.window // 2):
            first, last = recent[0]["grad_norm_mean"], recent[-1]["grad_norm_mean"]
            rises = sum(b["grad_norm_mean"] > a["grad_norm_mean"]
                        for a, b in itertools.pairwise(recent))
            if first > 0 and last >= self.growth * first and rises >= 0.7 * (len(recent) - 1):
                steps = recent[-1]["step"] - recent[0]["step_first"] + 1
                out["growth"] = Finding("explosion", cur["step"], (
                    f"gradient norm grew {last / first:.0f}x over {steps} steps "
                    f"({_span(recent)}: {first:.3g} -> {last:.3g}); lower the LR or enable "
                    "clip='zclip:2.5'"))
        return out


class Vanishing(Detector):
    """A layer whose mean gradient norm stays below ``ratio`` times the median layer's for
    ``patience`` intervals in a row (a zero gradient counts).

    >>> rec = {"step_first": 1, "step": 10, "layers": {
    ...     "a": {"grad_norm": 1.0}, "b": {"grad_norm": 2.0}, "c": {"grad_norm": 0.0}}}
    >>> [f.layers for f in Vanishing(patience=1).check([rec])]
    [('c',)]
    """

    def __init__(self, ratio: float = 1e-3, patience: int = 3) -> None:
        super().__init__()
        _check_positive("ratio", ratio)
        _check_count("patience", patience)
        self.ratio, self.patience = ratio, patience

    def _low(self, rec: Record) -> dict[str, tuple[float, float]]:
        norms = {n: v["grad_norm"] for n, v in rec.get("layers", {}).items()
                 if v.get("grad_norm") is not None}
        if len(norms) < 2:
            return {}
        med = statistics.median(norms.values())
        return {n: (g, med) for n, g in norms.items() if med > 0 and g < self.ratio * med}

    def conditions(self, history: Sequence[Record]) -> dict[str, Finding]:
        recent = history[-self.patience:]
        if len(recent) < self.patience:
            return {}
        lows = [self._low(r) for r in recent]
        names = set(lows[0]).intersection(*lows[1:])
        out: dict[str, Finding] = {}
        for name in sorted(names):
            g, med = lows[-1][name]
            out[name] = Finding("vanishing", history[-1]["step"], (
                f"layer {name!r} has a vanishing gradient: norm {g:.3g}, "
                f"{g / med:.2g}x the median layer's {med:.3g}, for {self.patience} intervals "
                f"({_span(recent)}); check for saturated activations or dead ReLUs, the "
                "initialisation, or a detached path; normalisation layers or residual "
                "connections help, or give this layer its own LR"), (name,))
        return out


class ClipRate(Detector):
    """Clipping on at least ``always`` of the applied steps over the last ``window`` intervals
    (the threshold is too low), or never on while a clip policy is set (it does nothing). Needs
    ``min_steps`` applied steps in the window.

    >>> recs = [{"step_first": 1, "step": 100, "applied": 100, "clipped": 100,
    ...          "grad_norm_mean": 4.0, "grad_norm_max": 5.0, "clip": "global_norm:1",
    ...          "clip_threshold": 1.0}]
    >>> ClipRate().check(recs)[0].kind
    'clip_always'
    """

    def __init__(self, always: float = 0.95, window: int = 10, min_steps: int = 100) -> None:
        super().__init__()
        if isinstance(always, bool) or not isinstance(always, int | float) or \
                not 0 < always <= 1:
            raise ValueError(f"Invalid always: {always!r}; must be in (0, 1]")
        _check_count("window", window)
        _check_count("min_steps", min_steps)
        self.always, self.window, self.min_steps = always, window, min_steps

    def conditions(self, history: Sequence[Record]) -> dict[str, Finding]:
        recent = history[-self.window:]
        cur = recent[-1]
        spec = cur.get("clip")
        applied = sum(r["applied"] for r in recent)
        if spec is None or applied < self.min_steps:
            return {}
        rate = sum(r["clipped"] for r in recent) / applied
        means = [r["grad_norm_mean"] for r in recent if r.get("grad_norm_mean") is not None]
        peaks = [r["grad_norm_max"] for r in recent if r.get("grad_norm_max") is not None]
        typical = statistics.median(means) if means else float("nan")
        thr = cur.get("clip_threshold")
        thr_txt = "" if thr is None else f" {thr:.3g}"
        if rate >= self.always:
            return {"always": Finding("clip_always", cur["step"], (
                f"clipping is always on: {rate:.0%} of the {applied} steps in {_span(recent)} "
                f"were clipped by clip={spec!r}; the threshold{thr_txt} is below the typical "
                f"gradient norm ({typical:.3g}), so clipping rescales every step like a lower "
                f"LR. Raise it (clip='global_norm:{2 * typical:.3g}'), lower the LR, or use an "
                "adaptive policy (clip='zclip:2.5' or clip='auto:10')"))}
        if rate == 0:
            peak = max(peaks) if peaks else float("nan")
            return {"never": Finding("clip_never", cur["step"], (
                f"clipping never fired in the {applied} steps of {_span(recent)}: the largest "
                f"gradient norm {peak:.3g} stayed below the threshold{thr_txt} of clip={spec!r}, "
                f"so it protects nothing; lower it to about 2x the typical norm "
                f"(clip='global_norm:{2 * typical:.3g}') or use clip='zclip:2.5'"))}
        return {}


class Skips(Detector):
    """At least ``min_skips`` steps skipped for non-finite gradients within the last ``window``
    intervals; the message names the layers whose gradients were not finite.

    >>> recs = [{"step_first": 1, "step": 10, "skipped": 2, "nonfinite_layers": ["fc.bias"]}]
    >>> Skips().check(recs)[0].layers
    ('fc.bias',)
    """

    def __init__(self, min_skips: int = 2, window: int = 5) -> None:
        super().__init__()
        _check_count("min_skips", min_skips)
        _check_count("window", window)
        self.min_skips, self.window = min_skips, window

    def conditions(self, history: Sequence[Record]) -> dict[str, Finding]:
        recent = history[-self.window:]
        skipped = sum(r["skipped"] for r in recent)
        if skipped < self.min_skips or not recent[-1]["skipped"]:
            return {}
        layers: list[str] = []
        for r in recent:
            layers += [n for n in r.get("nonfinite_layers", []) if n not in layers]
        where = ", ".join(layers) if layers else "unknown layers"
        return {"skips": Finding("skips", recent[-1]["step"], (
            f"{skipped} steps skipped for non-finite gradients in {_span(recent)}; NaN/Inf "
            f"gradients came from: {where}. Check the inputs and the loss for NaN/Inf (log, "
            "division, sqrt of a negative), lower the LR, and with float16 use a GradScaler or "
            "bfloat16"), tuple(layers))}


def default_detectors() -> list[Detector]:
    """Fresh instances of every detector with default settings."""
    return [Explosion(), Vanishing(), ClipRate(), Skips()]
