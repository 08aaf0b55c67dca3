"""The pages of a ``gradguard compare`` report: ``report.html`` and ``report.md``.

This module owns the rendering of a :class:`~._summary.Summary` for people: the tables and
lists both pages share (what was run, the ranking, the clipping effect, the stable windows, the
runs) and the two pages themselves. HTML is built with :func:`el`, which escapes every text
and attribute value it is given unless it is already :class:`Html`; only :func:`el`,
:func:`_cat` (which escapes too), the line end and the fixed style sheet make :class:`Html`,
so no value of the user's (a custom task's name, the command) reaches the page raw. The
markdown page escapes HTML in every line but the command's code block. Figures come in as PNG
bytes (:mod:`._plots`) and are embedded as base64.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ._analysis import dedupe, setting_of
from ._plots import PLOT_NAMES, captions
from ._summary import Summary
from ._words import DEFINITIONS, decades, finite, num, rate, target_words

__all__ = ["Html", "clipping_table", "el", "ranking_table", "render_html", "render_markdown",
           "run_rows", "what_ran", "windows_lines"]

Table = tuple[list[str], list[list[str]]]  # header, rows of text


# -- HTML elements ------------------------------------------------------------------------------
class Html(str):
    """Text that is HTML already: :func:`el` puts it in as it is."""

    __slots__ = ()


def _text(x: str) -> str:
    return x if isinstance(x, Html) else html.escape(x)


def el(tag: str, *children: str, void: bool = False, **attrs: str) -> Html:
    """``<tag attrs>children</tag>``; plain-text children and every attribute value are
    escaped, :class:`Html` children are not. ``class_`` is the ``class`` attribute; a void
    element (``<img>``) has no children and no end tag.

    >>> el("td", "a < b", class_="x")
    '<td class="x">a &lt; b</td>'
    >>> el("p", el("code", "&"), " & more")
    '<p><code>&amp;</code> &amp; more</p>'
    """
    start = "".join(f' {k.rstrip("_")}="{html.escape(v)}"' for k, v in attrs.items())
    if void:
        return Html(f"<{tag}{start}>")
    return Html(f"<{tag}{start}>{''.join(_text(c) for c in children)}</{tag}>")


def _cat(*parts: str) -> Html:
    """The parts one after the other (plain text escaped)."""
    return Html("".join(_text(p) for p in parts))


NL = Html("\n")


def _lines(children: Iterable[str], close: bool = True) -> Html:
    """The children (plain text escaped), each on a line of its own, and a line end after the
    last one when ``close``: what goes inside a block element."""
    return _cat(*(_cat(NL, c) for c in children), *([NL] if close else []))


def _html_table(table: Table, cls: str = "") -> Html:
    head, rows = table
    parts = (el("thead", el("tr", *(el("th", h) for h in head))),
             el("tbody", *(el("tr", *(el("td", c) for c in row)) for row in rows)))
    return el("table", *parts, class_=cls) if cls else el("table", *parts)


# -- markdown -----------------------------------------------------------------------------------
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> list[str]:
    head, rows = table
    lines = ["| " + " | ".join(_md_cell(h) for h in head) + " |",
             "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


# -- what both pages show -----------------------------------------------------------------------
def _target(summary: Summary) -> str:
    t = summary.task
    return target_words(t.metric, t.higher_is_better, t.target)


def ranking_table(summary: Summary) -> Table:
    """One row per setting, in ranking order."""
    metric = summary.task.metric
    head = ["rank", "optimizer", "clip", "schedule", "best LR", f"mean {metric} ± std",
            "worst seed", "stable LR window", "trained / runs", "diverged",
            "finite, untrained", "errors", "% steps clipped", "skipped steps", "s / run"]
    rows = []
    for s in summary.settings:
        w = s.window
        window = ("none" if not w.points else f"{rate(w.low)} (1 pt)" if w.points == 1
                  else f"{rate(w.low)}–{rate(w.high)} ({w.points} pts)")
        mean = ("never finished on every seed" if s.never_finished
                else f"{num(s.mean, 4)} ± {num(s.std, 2)}")
        rows.append([str(s.rank), s.optimizer, s.clip, s.schedule,
                     rate(s.best_lr), mean, num(s.worst, 4), window,
                     f"{s.counts.trained} / {s.counts.runs}", str(s.counts.diverged),
                     str(s.counts.untrained), str(s.counts.errors),
                     "—" if s.clipped_pct is None else f"{s.clipped_pct:.1f}",
                     "—" if s.skipped_steps is None else str(s.skipped_steps),
                     num(s.seconds_mean, 3)])
    return head, rows


def clipping_table(summary: Summary) -> Table:
    """One row per clipped setting against its unclipped counterpart."""
    metric = summary.task.metric
    head = ["optimizer", "schedule", "clip", f"best {metric}: clip vs none", "Δ",
            "vs seed noise", "window points: clip vs none", "runs compared",
            "diverged: clip vs none", "finite untrained: clip vs none", "verdict"]
    rows = []
    for e in summary.clipping:
        delta = "—" if e.delta_metric is None else f"{e.delta_metric:+.3g}"
        rows.append([e.optimizer, e.schedule, e.clip,
                     f"{num(e.metric, 4)} vs {num(e.base_metric, 4)}", delta,
                     e.metric_words,
                     f"{e.window_points} vs {e.base_window_points} "
                     f"({e.delta_window_points:+d})", str(e.runs_compared),
                     f"{e.diverged} vs {e.base_diverged} ({e.delta_diverged:+d})",
                     f"{e.untrained} vs {e.base_untrained} ({e.delta_untrained:+d})",
                     e.verdict + (" (neither trained)" if e.neither_trained else "")])
    return head, rows


def windows_lines(summary: Summary) -> list[str]:
    """Each setting's stable window, and its LRs that train outside it."""
    out = []
    for s in summary.settings:
        w = s.window
        trains = [p.lr for p in s.per_lr if p.trains]
        if w.points == 1:
            text = f"{rate(w.low)} only: 1 grid point"
        elif w.points:
            text = (f"{rate(w.low)} to {rate(w.high)}: {w.points} grid points, "
                    f"{decades(w.decades)}")
        else:
            text = "none (no learning rate trained every seed)"
        grid = ", ".join(rate(x) for x in s.lr_grid)
        extra = (f"; LRs that train: {', '.join(rate(x) for x in trains)}"
                 if len(trains) > w.points else "")
        out.append(f"#{s.rank} {s.label}: {text} (grid: {grid}{extra})")
    return out


def run_rows(summary: Summary, records: Sequence[dict[str, Any]]) -> Table:
    """One row per run (the last record of each), by rank, LR and seed."""
    order = {s.label: s.rank for s in summary.settings}
    head = ["rank", "optimizer", "clip", "schedule", "lr", "seed", "status", "trained",
            f"final {summary.task.metric}", "% clipped", "skipped", "steps",
            "seconds", "error"]
    rows = []
    for r in sorted(dedupe(records), key=lambda r: (
            order.get(" / ".join(setting_of(r)), 0), float(r["config"]["lr"]),
            int(r["config"]["seed"]))):
        c = r["config"]
        done = r.get("steps_done") or 0
        rows.append([str(order.get(" / ".join(setting_of(r)), "")), str(c["optimizer"]),
                     str(c["clip"]), str(c["schedule"]), rate(float(c["lr"])), str(c["seed"]),
                     str(r["status"]), "yes" if r.get("trained") else "no",
                     num(r["final"]["metric"] if finite(r["final"]["metric"]) else None, 4),
                     f"{100.0 * r['clipped_steps'] / done:.1f}" if done else "—",
                     str(r.get("skipped_steps", "—")), f"{done}/{c.get('steps', '?')}",
                     num(r.get("seconds") if finite(r.get("seconds")) else None, 3),
                     str(r.get("error") or "")])
    return head, rows


def what_ran(summary: Summary, meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, text) items: the task, the grid, the runs, the command and its time."""
    grid = meta.get("grid") or {}
    counts = summary.counts
    total = meta.get("total_runs")
    finished = (f"{counts.runs} of {total} runs finished" if total is not None
                else f"{counts.runs} runs finished")
    if total is not None and counts.runs < total:
        finished += " (the sweep is incomplete)"
    lrs = grid.get("lrs") or {}
    task = summary.task
    items = [
        ("task", f"{task.name}: {_target(summary)}"
                 + (f"; trivial baseline {task.baseline:g}" if finite(task.baseline) else "")),
        ("optimizers", ", ".join(map(str, grid.get("optimizers") or [])) or "—"),
        ("clips", ", ".join(map(str, grid.get("clips") or [])) or "—"),
        ("schedules", ", ".join(map(str, grid.get("schedules") or [])) or "—"),
        ("learning rates", "; ".join(f"{k}: {', '.join(rate(float(v)) for v in vs)}"
                                     for k, vs in lrs.items()) or "—"),
        ("seeds", str(grid.get("seeds", summary.seeds_planned))),
        ("steps per run", ", ".join(str(n) for n in summary.steps_per_run) or "—"),
        ("runs", f"{finished}: {counts.trained} trained, {counts.diverged} diverged, "
                 f"{counts.untrained} finite but untrained, {counts.errors} errors"),
        ("command", str(meta.get("command") or "—")),
        ("created", str(meta.get("created") or "—")),
    ]
    left_out = meta.get("left_out") or []
    if left_out:
        named = "; ".join(f"{item['file']}: {item['problem']}" for item in left_out[:5])
        more = f"; and {len(left_out) - 5} more" if len(left_out) > 5 else ""
        items.insert(-2, ("left out", f"{len(left_out)} saved records failed their check and "
                                      f"are not counted ({named}{more})"))
    return items


# -- the pages ----------------------------------------------------------------------------------
_CSS = Html("""
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:0.85em;margin:0.6em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f2f2f2}tr:nth-child(even) td{background:#fafafa}
.rec{background:#eef6ee;border-left:4px solid #3a7d3a;padding:0.6em 1em}
.warn{background:#fff4e0;border-left:4px solid #d08a00;padding:0.6em 1em}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:0.9em;color:#444}code,pre{background:#f4f4f4;padding:2px 4px}
pre{white-space:pre-wrap;word-break:break-all}dt{font-weight:bold}dd{margin:0 0 0.5em 1em}
""")

_WARN_FLAGS = {"incomplete", "nothing_trained", "nothing_ran"}


def render_html(summary: Summary, meta: Mapping[str, Any], records: Sequence[dict[str, Any]],
                pngs: Mapping[str, bytes]) -> str:
    """The self-contained HTML page: inline style, figures as data URIs, nothing external."""
    task = summary.task
    rec = summary.recommendation
    title = f"gradguard compare: {task.name}"
    body: list[str] = [el("h1", title)]
    if task.description:
        body.append(el("p", " ".join(str(task.description).split())))
    body.append(_cat(el("h2", "What was run"), el("dl", _lines(
        _cat(el("dt", k), el("dd", el("code", v) if k == "command" else v))
        for k, v in what_ran(summary, meta)))))
    cls = "warn" if set(rec.flags) & _WARN_FLAGS else "rec"
    body.append(_cat(el("h2", "Recommendation"),
                     el("div", _lines(el("p", line) for line in rec.lines), class_=cls)))
    body.append(el("p", f"{_target(summary).capitalize()}."))
    body += [el("h2", "Ranking"), _html_table(ranking_table(summary), "ranking"),
             el("h2", "Clipping effect")]
    body.append(_html_table(clipping_table(summary), "clipping") if summary.clipping else
                el("p", "No clipped setting has an unclipped counterpart (same optimizer and "
                        "schedule with clip none) in this sweep."))
    body.append(_cat(el("h2", "Stable learning-rate windows"),
                     el("ul", _lines(el("li", line) for line in windows_lines(summary))),
                     el("h2", "Figures")))
    text = captions(summary)
    for name in PLOT_NAMES:
        data = base64.b64encode(pngs[name]).decode("ascii")
        body.append(el("figure", el("img", void=True, alt=name,
                                    src=f"data:image/png;base64,{data}"),
                       el("figcaption", text[name])))
    body.append(_cat(el("h2", "Definitions"), el("dl", _lines(
        _cat(el("dt", k), el("dd", v)) for k, v in DEFINITIONS))))
    runs = run_rows(summary, records)
    body.append(_cat(el("h2", "Runs"), el(
        "details", el("summary", f"All {len(runs[1])} finished runs"), NL,
        _html_table(runs, "runs"), NL)))
    head = el("head", el("meta", void=True, charset="utf-8"), NL, el("title", title), NL,
              el("style", _CSS))
    page = el("html", head, el("body", _lines(body, close=False)), lang="en")
    return f"<!DOCTYPE html>\n{page}\n"


def render_markdown(summary: Summary, meta: Mapping[str, Any]) -> str:
    """The markdown page; its figures are links to ``plots/*.png``."""
    task = summary.task
    lines = [f"# gradguard compare: {task.name}", ""]
    command: list[str] = []
    if meta.get("command"):  # a code block, shown as it is: not escaped, kept on one line
        command = ["```", " ".join(str(meta["command"]).split()).replace("`", "'"), "```", ""]
    for k, v in what_ran(summary, meta):
        if k != "command":
            lines.append(f"- **{k}**: {v}")
    lines += ["", "## Recommendation", ""]
    for line in summary.recommendation.lines:
        lines += [line, ""]
    lines += [f"{_target(summary).capitalize()}.", "", "## Ranking", ""]
    lines += _md_table(ranking_table(summary))
    lines += ["", "## Clipping effect", ""]
    if summary.clipping:
        lines += _md_table(clipping_table(summary))
    else:
        lines.append("No clipped setting has an unclipped counterpart in this sweep.")
    lines += ["", "## Stable learning-rate windows", ""]
    lines += [f"- {line}" for line in windows_lines(summary)]
    lines += ["", "## Figures", ""]
    text = captions(summary)
    for name in PLOT_NAMES:
        lines += [f"![{name}](plots/{name}.png)", "", text[name], ""]
    lines += ["## Definitions", ""]
    lines += [f"- **{k}**: {v}" for k, v in DEFINITIONS]
    # Task names, descriptions and metric names are the user's text (a custom task's): no HTML
    # of theirs reaches a renderer of report.md. Our own markdown uses none.
    lines = [html.escape(line, quote=False) for line in lines]
    return "\n".join(lines[:2] + command + lines[2:]) + "\n"
