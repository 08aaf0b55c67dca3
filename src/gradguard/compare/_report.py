"""The report of a ``gradguard compare`` sweep: the entry points that put the parts together.

:func:`summarize` turns run records (as :func:`gradguard.compare._run.train_one` returns them)
into plain JSON data; :func:`write_report` writes ``report.html`` (self-contained),
``report.md``, ``summary.json`` and ``plots/*.png`` as one set of files. This module owns only
that assembly and the writing; the parts are elsewhere:

- :mod:`._analysis`: the numbers (its docstring has the definitions), typed as in
  :mod:`._summary`;
- :mod:`._recommend`: the recommendation and its prose;
- :mod:`._plots`: the figures and their captions;
- :mod:`._render`: the HTML and Markdown pages;
- :mod:`._words`: how numbers and the target are written, and the plain-words definitions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .._files import write_files
from ._analysis import analyze, dedupe, setting_of
from ._plots import PLOT_NAMES
from ._plots import plot_curves as _plot_curves
from ._plots import plot_grad_norms as _plot_grad_norms
from ._plots import plot_metric_vs_lr as _plot_metric_vs_lr
from ._plots import plot_windows as _plot_windows
from ._recommend import recommend
from ._records import derive
from ._render import ranking_table, render_html, render_markdown
from ._summary import Summary, to_json
from ._words import DEFINITIONS

__all__ = ["DEFINITIONS", "PLOT_NAMES", "summarize", "summary_of", "write_report"]


def summary_of(records: list[dict[str, Any]], task: Mapping[str, Any], *,
               grid: Mapping[str, Any] | None = None,
               total_runs: int | None = None) -> Summary:
    """:func:`summarize`'s summary as typed data (``to_json`` of it is :func:`summarize`'s)."""
    analysis = analyze(records, task, grid=grid, total_runs=total_runs)
    return Summary.of(analysis, recommend(analysis, task))


def summarize(records: list[dict[str, Any]], task: dict[str, Any], *,
              grid: dict[str, Any] | None = None,
              total_runs: int | None = None) -> dict[str, Any]:
    """The analysis of a sweep as plain JSON-serializable data (see :mod:`._analysis` for
    the definitions).

    ``records`` are run records as :func:`~gradguard.compare._run.train_one` returns them (a
    repeated (setting, LR, seed) keeps the last); ``task`` is :meth:`Task.info`'s dict (keys
    ``name``, ``metric``, ``higher_is_better``, ``target``, ``baseline``, ...). The optional
    ``grid`` (``{"lrs": {optimizer: [lrs]}, "seeds": n, ...}``) gives the planned LR grid and
    seeds, so that runs missing from an interrupted sweep count as not trained; ``total_runs``
    is the number of runs planned.

    Returns a dict with ``task``, ``counts`` (runs, trained, diverged, untrained, errors),
    ``total_runs``, ``complete``, ``settings`` (in ranking order, each with its per-LR numbers,
    best LR, window and totals), ``clipping`` (one entry per clipped setting that has an
    unclipped counterpart) and ``recommendation`` (``text``, ``lines``, ``flags``).

    >>> summarize([], {"name": "toy", "metric": "mse", "higher_is_better": False,
    ...                "target": 0.1})["recommendation"]["text"]
    'No runs finished, so there is nothing to recommend.'
    """
    result: dict[str, Any] = to_json(summary_of(records, task, grid=grid,
                                                total_runs=total_runs))
    return result


def _ranking_table(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The ranking table (header, rows) of a summary in :func:`summarize`'s JSON form."""
    return ranking_table(Summary.from_json(summary))


def write_report(out_dir: Path, records: list[dict[str, Any]],
                 meta: dict[str, Any]) -> dict[str, Any]:
    """Write the sweep's report into ``out_dir`` and return the paths written.

    Files: ``report.html`` (self-contained: plots embedded as base64 PNG, inline CSS, no
    external resources), ``report.md`` (links ``plots/*.png``), ``summary.json``
    (:func:`summarize`'s output) and ``plots/{metric_vs_lr,curves,grad_norms,windows}.png``.
    Everything is rendered in memory first and the files are replaced as one set
    (:func:`~gradguard._files.write_files`), so a failure (a full disk) leaves the
    previous report, plots included, as it was.

    ``meta``: ``{"task": Task.info(), "grid": {"optimizers", "clips", "schedules", "lrs":
    {optimizer: [lrs]}, "seeds"}, "command": str, "created": ISO time, "total_runs": int}``.
    ``records`` may be fewer than ``total_runs`` (an interrupted sweep); the report says so.

    Returns ``{"html": Path, "markdown": Path, "summary": Path, "plots": [Path, ...]}``.
    """
    out = Path(out_dir)
    task = meta.get("task") or {}
    summary = summary_of(records, task, grid=meta.get("grid"),
                         total_runs=meta.get("total_runs"))
    records = [derive(r, task) for r in records]
    by_setting: dict[str, list[dict[str, Any]]] = {}
    for r in dedupe(records):
        by_setting.setdefault(" / ".join(setting_of(r)), []).append(r)
    # looked up here when called, so that a test can make one of them fail
    renderers: dict[str, Callable[[], bytes]] = {
        "metric_vs_lr": lambda: _plot_metric_vs_lr(summary),
        "curves": lambda: _plot_curves(summary, by_setting),
        "grad_norms": lambda: _plot_grad_norms(summary, by_setting),
        "windows": lambda: _plot_windows(summary),
    }
    pngs = {name: renderers[name]() for name in PLOT_NAMES}
    summary_bytes = json.dumps(to_json(summary), indent=1, allow_nan=False).encode()
    markdown = render_markdown(summary, meta).encode()
    page = render_html(summary, meta, records, pngs).encode()

    plots = [out / "plots" / f"{name}.png" for name in PLOT_NAMES]
    paths = {"summary": out / "summary.json", "markdown": out / "report.md",
             "html": out / "report.html"}
    # One set: the plots, summary and pages all land, or (a full disk) none of them does.
    write_files({**{p: pngs[name] for p, name in zip(plots, PLOT_NAMES, strict=True)},
                 paths["summary"]: summary_bytes, paths["markdown"]: markdown,
                 paths["html"]: page})
    return {**paths, "plots": plots}
