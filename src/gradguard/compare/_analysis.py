"""The analysis of a ``gradguard compare`` sweep: from run records to numbers.

This module owns the judgement by numbers: from run records (as
:func:`gradguard.compare._run.train_one` returns them) to an :class:`~._summary.Analysis`
(each setting's per-LR results, best LR, stable window and rank, and the effect of clipping)
and the seed-noise test the recommendation uses too. The types are :mod:`._summary`'s; the
recommendation's prose is :mod:`._recommend`'s: this module says nothing in sentences.

Definitions (the report repeats them in plain words, :data:`._words.DEFINITIONS`):

- A *setting* is ``(optimizer, clip, schedule)`` from ``record["config"]``; its runs span
  learning rates and seeds.
- A run *trained* when its status is ``ok`` and its final validation metric reaches the
  task's target; this is worked out here from the record's numbers and the task's target
  (:func:`~gradguard.compare._records.derive`), never read from the record's ``trained``
  field, and the same holds for the best metric and the clipped and skipped step counts.
  A run *diverged* when its status is ``diverged``; a run is *finite but untrained* when
  its status is ``ok`` and it did not train; a run with status ``error`` is counted as an
  error. The three are counted separately: clipping can turn
  divergences into finite runs that still did not train.
- For a setting and a learning rate (LR), the LR *trains* when every planned seed has a record
  and every one of them trained. Planned seeds are ``grid["seeds"]`` when the grid is known,
  else the largest number of seeds any (setting, LR) has in the records: an LR whose seeds did
  not all finish (an interrupted sweep) does not count as training.
- The *best LR* of a setting: among LRs where every planned seed finished with status ``ok``
  and a finite final metric, the one with the best mean final metric (``record["final"]
  ["metric"]``, respecting ``higher_is_better``; ties within 1e-9 go to the better worst seed,
  then the lower LR). A setting with no such LR *never finished* on every seed and ranks last.
- The *stable LR window* of a setting: the longest run of consecutive grid LRs (sorted) that
  all train; low, high, number of points and width in decades ``log10(high / low)``. The LR
  grid is the sweep's grid for the optimizer when known, else every LR any of that
  optimizer's records used, so an LR missing from the records breaks a window. Equal-length
  windows: the one holding the best LR, else the lowest.
- *Ranking*: settings by mean final metric at their best LR (better first); differences under
  1e-9 are ties, broken by more window points, then by the better worst seed.
- *Seed noise*: two settings' best means differ *beyond seed noise* when the difference is
  larger than both the larger of their seed standard deviations (sample std at the best LR)
  and two standard errors of the difference ``2 * sqrt(s1**2/n1 + s2**2/n2)``. With fewer than
  two seeds on either side the noise is unknown.
- *Clipping effect*: for each (optimizer, schedule) with clip ``none`` and clipped variants,
  per clipped variant the change versus ``none`` in best mean metric, window points, diverged
  runs and finite-but-untrained runs (run counts over the (LR, seed) cells both finished).
  Clipping *helped* when the metric got better beyond seed noise or the window gained points,
  without the other getting worse; *hurt* in the mirror case; *mixed* when both; otherwise
  *no measurable effect*. When one side never finished
  every seed at any LR, the metrics are not compared (finishing without training is no gain);
  when neither side has a window, the report says the difference is between settings that
  did not train.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

from ._records import derive
from ._summary import (
    Analysis,
    ClipEffect,
    LrCell,
    Outcome,
    Setting,
    StatusCounts,
    TaskInfo,
    Verdict,
    Window,
)
from ._words import finite

__all__ = ["TIE", "Noise", "analyze", "dedupe", "is_none_clip", "known", "lr_key", "noise",
           "score", "setting_of"]

TIE = 1e-9  # metric differences smaller than this are ties


class Noise(NamedTuple):
    """A difference ``a - b`` of two best means and the seed noise it is judged against."""

    delta: float | None
    noise: float | None
    beyond_noise: bool | None


# -- small helpers ------------------------------------------------------------------------------
def lr_key(lr: Any) -> float:
    """A learning rate as a dictionary key robust to float printing round trips."""
    return float(f"{float(lr):.10g}")


def setting_of(rec: Mapping[str, Any]) -> tuple[str, str, str]:
    c = rec["config"]
    return str(c["optimizer"]), str(c["clip"]), str(c["schedule"])


def is_none_clip(clip: str) -> bool:
    return clip.strip().lower() in ("none", "")


def score(x: float, hib: bool) -> float:
    """Bigger is better, whatever the metric's direction."""
    return x if hib else -x


def known(x: float | None) -> float:
    """A statistic that exists where it is read (a best LR's mean, say)."""
    assert x is not None
    return x


def dedupe(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (setting, LR, seed); a later record replaces an earlier one."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rec in records:
        c = rec["config"]
        out[(*setting_of(rec), lr_key(c["lr"]), int(c["seed"]))] = rec
    return list(out.values())


def _outcome(r: Mapping[str, Any]) -> Outcome:
    if r["status"] == "ok":
        return "trained" if r.get("trained") else "untrained"
    return "diverged" if r["status"] == "diverged" else "error"


# -- analysis -----------------------------------------------------------------------------------
def _per_lr(recs: list[dict[str, Any]], lr: float, seeds: int, hib: bool) -> LrCell:
    rs = sorted((r for r in recs if lr_key(r["config"]["lr"]) == lr),
                key=lambda r: int(r["config"]["seed"]))
    counts = StatusCounts.of(rs)
    ok = [r for r in rs if r["status"] == "ok" and finite(r["final"]["metric"])]
    metrics = [float(r["final"]["metric"]) for r in ok]
    complete = len(rs) >= seeds and len(rs) > 0
    mean = std = low = high = worst = None
    if metrics:
        mean = statistics.fmean(metrics)
        std = statistics.stdev(metrics) if len(metrics) > 1 else 0.0
        low, high = min(metrics), max(metrics)
        worst = low if hib else high
    return LrCell(
        lr=lr, seeds=len(rs), complete=complete, counts=counts,
        trains=complete and counts.trained == len(rs),
        all_ok=complete and len(ok) == len(rs),
        metrics=tuple(float(r["final"]["metric"]) if finite(r["final"]["metric"]) else None
                      for r in rs),
        seed_ids=tuple(int(r["config"]["seed"]) for r in rs),
        outcomes=tuple(_outcome(r) for r in rs),
        mean=mean, std=std, min=low, max=high, worst=worst)


def _window(per_lr: Sequence[LrCell], best_lr: float | None) -> Window:
    runs: list[list[float]] = []
    current: list[float] = []
    for p in per_lr:
        if p.trains:
            current.append(p.lr)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    if not runs:
        return Window(low=None, high=None, points=0, decades=None, lrs=())
    longest = max(len(r) for r in runs)
    candidates = [r for r in runs if len(r) == longest]
    chosen = next((r for r in candidates if best_lr in r), candidates[0])
    return Window(low=chosen[0], high=chosen[-1], points=len(chosen),
                  decades=math.log10(chosen[-1] / chosen[0]), lrs=tuple(chosen))


def _analyze(key: tuple[str, str, str], recs: list[dict[str, Any]], grid: list[float],
             seeds: int, hib: bool) -> Setting:
    opt, clip, sched = key
    per_lr = [_per_lr(recs, lr, seeds, hib) for lr in grid]
    best: LrCell | None = None
    for p in per_lr:
        if not p.all_ok:
            continue
        if best is None:
            best = p
            continue
        d = score(known(p.mean), hib) - score(known(best.mean), hib)
        if d >= TIE or (abs(d) < TIE and score(known(p.worst), hib)
                        - score(known(best.worst), hib) >= TIE):
            best = p
    best_lr = best.lr if best is not None else None
    at_best = [r for r in recs if best_lr is not None and lr_key(r["config"]["lr"]) == best_lr]
    fractions = [r["clipped_steps"] / r["steps_done"] for r in at_best if r.get("steps_done")]
    seconds = [float(r["seconds"]) for r in recs if finite(r.get("seconds"))]
    edge: Literal["only", "low", "high"] | None = None
    if best_lr is not None:
        if len(grid) == 1:
            edge = "only"
        elif best_lr == grid[0]:
            edge = "low"
        elif best_lr == grid[-1]:
            edge = "high"
    return Setting(
        optimizer=opt, clip=clip, schedule=sched, label=f"{opt} / {clip} / {sched}", rank=0,
        lr_grid=tuple(grid), per_lr=tuple(per_lr), counts=StatusCounts.of(recs),
        complete=all(p.complete for p in per_lr),
        never_finished=best is None,
        best_lr=best_lr,
        best_lr_edge=edge,
        best_lr_trains=bool(best and best.trains),
        seeds=best.seeds if best else 0,
        trained_at_best=best.counts.trained if best else 0,
        mean=best.mean if best else None,
        std=best.std if best else None,
        worst=best.worst if best else None,
        window=_window(per_lr, best_lr),
        clipped_pct=100.0 * statistics.fmean(fractions) if fractions else None,
        skipped_steps=sum(int(r.get("skipped_steps") or 0) for r in at_best)
        if best is not None else None,
        seconds_mean=statistics.fmean(seconds) if seconds else None,
    )


def _compare(a: Setting, b: Setting, hib: bool) -> int:
    """Ranking order: -1 when setting ``a`` ranks before ``b``."""
    if a.never_finished != b.never_finished:
        return 1 if a.never_finished else -1
    if not a.never_finished:
        d = score(known(a.mean), hib) - score(known(b.mean), hib)
        if abs(d) >= TIE:
            return -1 if d > 0 else 1
        dp = a.window.points - b.window.points
        if dp:
            return -1 if dp > 0 else 1
        dw = score(known(a.worst), hib) - score(known(b.worst), hib)
        if abs(dw) >= TIE:
            return -1 if dw > 0 else 1
    else:
        dt = a.counts.trained + a.counts.untrained - b.counts.trained - b.counts.untrained
        if dt:
            return -1 if dt > 0 else 1
    return (a.label > b.label) - (a.label < b.label)


def noise(a: Setting, b: Setting) -> Noise:
    """Whether the best means of settings ``a`` and ``b`` differ beyond seed noise."""
    if a.mean is None or b.mean is None:
        return Noise(None, None, None)
    delta = a.mean - b.mean
    if min(a.seeds, b.seeds) < 2:
        return Noise(delta, None, None)
    sa, sb = known(a.std), known(b.std)
    se = math.sqrt(sa ** 2 / a.seeds + sb ** 2 / b.seeds)
    size = max(sa, sb, 2.0 * se)
    return Noise(delta, size, abs(delta) > size + TIE)


def _noise_words(n: Noise, hib: bool) -> str:
    """'within seed noise', 'better beyond seed noise', ... for a difference a - b."""
    if n.delta is None:
        return "not comparable"
    if n.beyond_noise is None:
        return "seed noise unknown with one seed"
    if not n.beyond_noise:
        return "within seed noise"
    return ("better" if score(n.delta, hib) > 0 else "worse") + " beyond seed noise"


def _clipping(settings: Sequence[Setting], hib: bool) -> list[ClipEffect]:
    out = []
    by_key = {(s.optimizer, s.schedule, s.clip): s for s in settings}
    for s in settings:
        if is_none_clip(s.clip):
            continue
        base = next((b for (o, sc, c), b in by_key.items()
                     if o == s.optimizer and sc == s.schedule and is_none_clip(c)), None)
        if base is None:
            continue
        n = noise(s, base)
        metric_better = n.beyond_noise is True and score(known(n.delta), hib) > 0
        metric_worse = n.beyond_noise is True and score(known(n.delta), hib) < 0
        # one side never finished every seed at any LR: its metric is not comparable, and
        # finishing without training is no gain (the window says whether anything trained)
        dp = s.window.points - base.window.points
        # run counts over the (LR, seed) cells both settings finished: an interrupted sweep
        # must not count missing runs as a difference
        mine = {(p.lr, sd): o for p in s.per_lr
                for sd, o in zip(p.seed_ids, p.outcomes, strict=True)}
        theirs = {(p.lr, sd): o for p in base.per_lr
                  for sd, o in zip(p.seed_ids, p.outcomes, strict=True)}
        common = mine.keys() & theirs.keys()
        div = sum(mine[c] == "diverged" for c in common)
        base_div = sum(theirs[c] == "diverged" for c in common)
        unt = sum(mine[c] == "untrained" for c in common)
        base_unt = sum(theirs[c] == "untrained" for c in common)
        good = metric_better or (dp > 0 and not metric_worse)
        bad = metric_worse or (dp < 0 and not metric_better)
        verdict: Verdict = ("mixed" if good and bad else "helped" if good else "hurt" if bad
                            else "no measurable effect")
        out.append(ClipEffect(
            optimizer=s.optimizer, schedule=s.schedule, clip=s.clip,
            label=s.label, base_label=base.label,
            metric=s.mean, base_metric=base.mean,
            best_lr=s.best_lr, base_best_lr=base.best_lr,
            delta_metric=n.delta, noise=n.noise, beyond_noise=n.beyond_noise,
            metric_words=_noise_words(n, hib),
            window_points=s.window.points, base_window_points=base.window.points,
            delta_window_points=dp,
            runs_compared=len(common),
            diverged=div, base_diverged=base_div, delta_diverged=div - base_div,
            untrained=unt, base_untrained=base_unt, delta_untrained=unt - base_unt,
            verdict=verdict,
            # neither variant had an LR where every seed trained: a better metric is still
            # not a setting that trains
            neither_trained=not s.window.points and not base.window.points,
        ))
    return out


def analyze(records: Sequence[dict[str, Any]], task: Mapping[str, Any], *,
            grid: Mapping[str, Any] | None = None, total_runs: int | None = None) -> Analysis:
    """The analysis of a sweep (see the module docstring for the definitions); the arguments
    are :func:`gradguard.compare.summarize`'s.

    >>> a = analyze([], {"name": "toy", "metric": "mse", "higher_is_better": False})
    >>> a.counts, a.settings, a.complete
    (StatusCounts(runs=0, trained=0, diverged=0, untrained=0, errors=0), (), True)
    """
    hib = bool(task.get("higher_is_better", True))
    runs = [derive(r, task) for r in dedupe(records)]
    by_setting: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        by_setting.setdefault(setting_of(r), []).append(r)
    grids: dict[str, set[float]] = {}
    if grid and grid.get("lrs"):
        for opt, lrs in grid["lrs"].items():
            grids[str(opt)] = {lr_key(x) for x in lrs}
    for r in runs:
        grids.setdefault(r["config"]["optimizer"], set()).add(lr_key(r["config"]["lr"]))
    per_cell: dict[tuple[Any, ...], int] = {}
    for r in runs:
        cell = (*setting_of(r), lr_key(r["config"]["lr"]))
        per_cell[cell] = per_cell.get(cell, 0) + 1
    seeds = int(grid["seeds"]) if grid and grid.get("seeds") else max(per_cell.values(),
                                                                      default=1)
    settings = [_analyze(key, recs, sorted(grids[key[0]]), seeds, hib)
                for key, recs in by_setting.items()]
    settings.sort(key=functools.cmp_to_key(lambda a, b: _compare(a, b, hib)))
    settings = [dataclasses.replace(s, rank=i) for i, s in enumerate(settings, 1)]
    counts = StatusCounts.of(runs)
    incomplete = ((total_runs is not None and counts.runs < total_runs)
                  or not all(s.complete for s in settings))
    return Analysis(
        task=TaskInfo.of(task),
        counts=counts,
        total_runs=total_runs,
        complete=not incomplete,
        seeds_planned=seeds,
        steps_per_run=tuple(sorted({int(r["config"]["steps"]) for r in runs
                                    if finite(r["config"].get("steps"))})),
        settings=tuple(settings),
        clipping=tuple(_clipping(settings, hib)),
    )
