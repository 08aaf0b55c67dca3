"""The result of a range test, :class:`LRFinderResult`: built from recorded curves (the
smoothing and the suggestions are :mod:`._curve`'s), written to and read from JSON, and
plotted.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._files import figure_bytes, write_atomic
from .._validation import check_choice
from ._curve import RULES, _divergence, _suggest, _suggest_clip, check_beta, smooth_curve

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_FORMAT = "gradguard.lr_finder"


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
    which curve diverged and how (empty when none did). The docstring of
    :mod:`gradguard.lr_finder` defines all of these.
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

