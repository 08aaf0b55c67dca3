"""The figures of a ``gradguard compare`` report, and their captions.

This module owns the four matplotlib figures (:data:`PLOT_NAMES`), each drawn from a
:class:`~._summary.Summary` (and, for the per-step figures, the records of each setting) into
PNG bytes on an off-screen Agg canvas, so it works without a display and leaves pyplot's state
alone; and the caption that explains each figure in the HTML and Markdown reports.
matplotlib is imported only when a figure is drawn (it is an optional dependency).
"""

from __future__ import annotations

import itertools
import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from .._files import figure_bytes
from ._analysis import lr_key
from ._summary import Setting, Summary
from ._words import finite, rate, target_words

__all__ = ["PLOT_NAMES", "TOP", "captions", "plot_curves", "plot_grad_norms",
           "plot_metric_vs_lr", "plot_windows", "top_settings"]

TOP = 8  # settings shown in the per-step figures
PLOT_NAMES = ("metric_vs_lr", "curves", "grad_norms", "windows")

RunsBySetting = Mapping[str, Sequence[Mapping[str, Any]]]  # a setting's label -> its records


def top_settings(summary: Summary) -> list[Setting]:
    """The settings of the per-step figures: the first :data:`TOP` that finished."""
    return [s for s in summary.settings if not s.never_finished][:TOP]


def captions(summary: Summary) -> dict[str, str]:
    """Each figure's caption, by name."""
    shown = len(top_settings(summary))
    total = len(summary.settings)
    top = (f"the top {shown} of {total} settings by rank" if shown < total
           else "every setting that finished")
    metric = summary.task.metric
    return {
        "metric_vs_lr": f"Final validation {metric} against learning rate, one line per "
                        "setting (mean over seeds, band from the worst to the best seed). "
                        "Filled dots: every seed trained; × at the bottom: a seed diverged "
                        "or failed. The dashed line is the target. This is the LR "
                        "sensitivity figure: a flat, high plateau is a wide stable window.",
        "curves": f"Validation {metric} (left) and training loss (right) against step, for "
                  f"{top}, each at its best learning rate (mean over seeds, band min–max).",
        "grad_norms": f"Pre-clip gradient norm per step for {top}, first seed at the best "
                      "learning rate: faint raw values, solid running median, dashed clip "
                      "threshold of the same colour (where the clip has one), ▼ skipped "
                      "steps.",
        "windows": "Stable learning-rate windows: every grid learning rate as a dot (filled "
                   "when every seed trained), the window as a bar, the best LR as ▼, red × "
                   "where a seed diverged or failed.",
    }


# -- helpers ----------------------------------------------------------------------------------
def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(max(n, 1))]


def _empty(fig: Any, ax: Any, message: str) -> bytes:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return figure_bytes(fig)


def _nan(x: Any) -> float:
    return float(x) if finite(x) else math.nan


def _aligned(recs: Sequence[Mapping[str, Any]], key: str) -> tuple[Any, Any]:
    """(steps, array seeds × steps) of ``curves[key]``, NaN where missing or non-finite."""
    import numpy as np

    steps = sorted({int(s) for r in recs for s in r["curves"]["step"]})
    index = {s: i for i, s in enumerate(steps)}
    arr = np.full((len(recs), len(steps)), np.nan)
    for i, r in enumerate(recs):
        for s, v in zip(r["curves"]["step"], r["curves"][key], strict=False):
            arr[i, index[int(s)]] = _nan(v)
    return np.asarray(steps, dtype=float), arr


def _band(arr: Any) -> tuple[Any, Any, Any]:
    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(arr, 0), np.nanmin(arr, 0), np.nanmax(arr, 0)


def _best_runs(s: Setting, by_setting: RunsBySetting) -> list[Mapping[str, Any]]:
    return sorted((r for r in by_setting.get(s.label, [])
                   if s.best_lr is not None and lr_key(r["config"]["lr"]) == s.best_lr),
                  key=lambda r: int(r["config"]["seed"]))


def _running_median(values: Any, window: int) -> Any:
    import numpy as np

    if window <= 1 or len(values) < window:
        return values
    pad = window // 2
    padded = np.concatenate([np.full(pad, np.nan), values, np.full(window - 1 - pad, np.nan)])
    view = np.lib.stride_tricks.sliding_window_view(padded, window)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(view, axis=1)


# -- the figures ------------------------------------------------------------------------------
def plot_metric_vs_lr(summary: Summary) -> bytes:
    """Final metric against LR, one line per setting (mean, min–max band), × for divergence."""
    from matplotlib.transforms import blended_transform_factory

    task = summary.task
    settings = summary.settings
    wide = len(settings) > 12
    ncol = 1 + len(settings) // 30
    rows = -(-(len(settings) + 2) // ncol)
    fig = _new_figure(12 + 2.5 * (ncol - 1), max(5.5, 1.2 + 0.15 * rows))
    ax = fig.add_subplot()
    if not settings:
        return _empty(fig, ax, "no finished runs")
    colors = _colors(len(settings))
    edge = blended_transform_factory(ax.transData, ax.transAxes)
    values: list[float] = []
    for s, c in zip(settings, colors, strict=False):
        xs = [p.lr for p in s.per_lr]
        mean = [_nan(p.mean) for p in s.per_lr]
        values += [v for v in mean if not math.isnan(v)]
        ax.plot(xs, mean, "-", color=c, lw=1.5, label=f"#{s.rank} {s.label}")
        ax.fill_between(xs, [_nan(p.min) for p in s.per_lr],
                        [_nan(p.max) for p in s.per_lr], color=c, alpha=0.15, lw=0)
        for p in s.per_lr:
            if p.mean is not None:
                ax.plot([p.lr], [p.mean], "o", ms=6, color=c,
                        mfc=c if p.trains else "white", mew=1.5)
        div = [p.lr for p in s.per_lr if p.counts.diverged or p.counts.errors]
        if div:
            ax.plot(div, [0.03] * len(div), "x", color=c, ms=9, mew=2, transform=edge,
                    clip_on=False)
    target = task.target
    if finite(target):
        ax.axhline(target, ls="--", color="black", lw=1,
                   label=f"target ({'≥' if task.higher_is_better else '≤'} {target:g})")
    if finite(task.baseline):
        ax.axhline(task.baseline, ls=":", color="grey", lw=1.2,
                   label=f"trivial baseline ({task.baseline:g})")
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) / min(positive) > 100:
        ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"final validation {task.metric}\n(mean over seeds, band: min–max)")
    ax.set_title(f"{task.name}: final {task.metric} vs learning rate\n"
                 "filled dot: every seed trained; hollow: not every seed; "
                 "× at the bottom: a seed diverged or failed", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7 if wide else 8,
              ncol=ncol, frameon=False)
    fig.tight_layout()
    return figure_bytes(fig)


def plot_curves(summary: Summary, by_setting: RunsBySetting) -> bytes:
    """Validation metric and training loss against step at each top setting's best LR."""
    task = summary.task
    top = top_settings(summary)
    fig = _new_figure(14, 5.5)
    ax_m, ax_l = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    if not top:
        ax_l.set_axis_off()
        return _empty(fig, ax_m, "no setting finished every seed at any learning rate")
    losses: list[float] = []
    for s, c in zip(top, _colors(len(summary.settings)), strict=False):
        recs = _best_runs(s, by_setting)
        label = f"#{s.rank} {s.label} @ lr {rate(s.best_lr)}"
        for ax, key in ((ax_m, "metric"), (ax_l, "train_loss")):
            steps, arr = _aligned(recs, key)
            if not len(steps):
                continue
            mean, lo, hi = _band(arr)
            ax.plot(steps, mean, color=c, lw=1.6, label=label)
            ax.fill_between(steps, lo, hi, color=c, alpha=0.15, lw=0)
            if key == "train_loss":
                losses += [float(v) for v in mean if math.isfinite(v)]
    if finite(task.target):
        ax_m.axhline(task.target, ls="--", color="black", lw=1, label="target")
    if losses and min(losses) > 0:
        ax_l.set_yscale("log")
    ax_m.set_xlabel("step")
    ax_m.set_ylabel(f"validation {task.metric} (mean over seeds, band: min–max)")
    ax_m.set_title(f"validation {task.metric} at each setting's best LR", fontsize=10)
    ax_l.set_xlabel("step")
    ax_l.set_ylabel("training loss, mean over each eval interval")
    ax_l.set_title("training loss at each setting's best LR", fontsize=10)
    for ax in (ax_m, ax_l):
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax_m.get_legend_handles_labels()
    ncol = min(3, len(labels))
    rows = -(-len(labels) // ncol)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    shown = len(top)
    total = len(summary.settings)
    fig.suptitle(f"{task.name}: learning curves of the top {shown} of {total} "
                 "settings" if shown < total else
                 f"{task.name}: learning curves, every setting at its best LR")
    fig.set_figheight(5.5 + 0.22 * rows)
    fig.tight_layout(rect=(0, 0.01 + 0.045 * rows, 1, 1))
    return figure_bytes(fig)


def plot_grad_norms(summary: Summary, by_setting: RunsBySetting) -> bytes:
    """Pre-clip gradient norm per step, first seed at the best LR of each top setting."""
    import numpy as np
    from matplotlib.transforms import blended_transform_factory

    task = summary.task
    top = top_settings(summary)
    fig = _new_figure(12, 5.5)
    ax = fig.add_subplot()
    if not top:
        return _empty(fig, ax, "no setting finished every seed at any learning rate")
    edge = blended_transform_factory(ax.transData, ax.transAxes)
    any_positive = False
    window = 1
    for s, c in zip(top, _colors(len(summary.settings)), strict=False):
        recs = _best_runs(s, by_setting)
        if not recs:
            continue
        r = recs[0]
        norms = np.asarray([_nan(v) for v in r["grad"]["norm"]], dtype=float)
        if not len(norms):
            continue
        steps = np.arange(1, len(norms) + 1)
        window = max(1, len(norms) // 50)
        any_positive = any_positive or bool(np.any(norms[np.isfinite(norms)] > 0))
        ax.plot(steps, norms, color=c, lw=0.6, alpha=0.25)
        ax.plot(steps, _running_median(norms, window), color=c, lw=1.6,
                label=f"#{s.rank} {s.label} @ lr {rate(s.best_lr)}, "
                      f"seed {r['config']['seed']}")
        thr = r["grad"].get("threshold")
        if thr:
            t = np.asarray([_nan(v) for v in thr], dtype=float)
            if np.isfinite(t).any():
                ax.plot(steps[:len(t)], t, "--", color=c, lw=1.1)
        skipped = [i + 1 for i, v in enumerate(r["grad"].get("skipped") or []) if v]
        if skipped:
            ax.plot(skipped, [0.97] * len(skipped), "v", color=c, ms=7, transform=edge,
                    clip_on=False)
    if any_positive:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("pre-clip gradient L2 norm")
    shown, total = len(top), len(summary.settings)
    ax.set_title(f"{task.name}: gradient norm per step"
                 + (f" (top {shown} of {total} settings)" if shown < total else "")
                 + f"\nfaint: raw; solid: running median over {window} steps; dashed: clip "
                   "threshold (same colour); ▼ at the top: a skipped step", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    return figure_bytes(fig)


def plot_windows(summary: Summary) -> bytes:
    """One row per setting: grid LRs, the LRs that train, the stable window, the best LR."""
    from matplotlib.lines import Line2D

    task = summary.task
    settings = summary.settings
    fig = _new_figure(10, 1.6 + 0.42 * max(len(settings), 1))
    ax = fig.add_subplot()
    if not settings:
        return _empty(fig, ax, "no finished runs")
    n = len(settings)
    for i, (s, c) in enumerate(zip(settings, _colors(n), strict=False)):
        y = n - 1 - i
        w = s.window
        if w.points and w.low is not None and w.high is not None:
            grid = s.lr_grid
            ratios = [b / a for a, b in itertools.pairwise(grid) if a > 0]
            half = statistics.median(ratios) ** 0.25 if ratios else 10 ** 0.25
            ax.plot([w.low / half, w.high * half], [y, y], "-", color=c, lw=11,
                    alpha=0.35, solid_capstyle="butt")
        for p in s.per_lr:
            if not p.seeds:
                ax.plot([p.lr], [y], "s", ms=4, color="lightgrey")
                continue
            ax.plot([p.lr], [y], "o", ms=7, mec="dimgrey" if not p.trains else c,
                    mfc=c if p.trains else "white", mew=1.2)
            if p.counts.diverged or p.counts.errors:
                ax.plot([p.lr], [y], "x", ms=8, mew=2, color="tab:red")
        if s.best_lr is not None:
            ax.plot([s.best_lr], [y + 0.28], "v", ms=8, color="black")
    ax.set_yticks(range(n), [f"#{s.rank} {s.label}" for s in reversed(settings)],
                  fontsize=8)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (grid points as dots)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    handles = [Line2D([], [], marker="o", ls="", mfc="tab:blue", mec="tab:blue",
                      label="every seed trained"),
               Line2D([], [], marker="o", ls="", mfc="white", mec="dimgrey",
                      label="not every seed trained"),
               Line2D([], [], marker="x", ls="", color="tab:red", mew=2,
                      label="a seed diverged or failed"),
               Line2D([], [], marker="s", ls="", ms=4, color="lightgrey",
                      label="no finished run (yet)"),
               Line2D([], [], marker="v", ls="", color="black", label="best LR"),
               Line2D([], [], lw=8, alpha=0.35, color="tab:blue", label="stable LR window")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              frameon=False)
    words = target_words(task.metric, task.higher_is_better, task.target)
    ax.set_title(f"{task.name}: stable learning-rate windows ({words})", fontsize=10)
    fig.tight_layout()
    return figure_bytes(fig)
