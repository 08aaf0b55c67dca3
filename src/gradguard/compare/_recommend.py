"""The recommendation of a ``gradguard compare`` sweep: what to use, and its caveats, in
sentences.

This module owns the judgement and the prose drawn from an :class:`~._summary.Analysis`:
the recommended setting and LR (or why there is none), what clipping did for it and across
the sweep, whether the runner-up is within seed noise, a best LR at the grid's edge and a
result no better than the trivial baseline. Each caveat also sets a flag
(:attr:`~._summary.Recommendation.flags`) that tests and tools can read without parsing
the text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._analysis import TIE, is_none_clip, known, noise, score
from ._summary import Analysis, ClipEffect, Recommendation, Setting
from ._words import decades, finite, num, rate, target_words

__all__ = ["recommend"]

_VERDICT_WORDS = {"helped": "clipping helped", "hurt": "clipping hurt",
                  "mixed": "clipping's effect was mixed",
                  "no measurable effect": "clipping had no measurable effect"}


def _describe(s: Setting, say_schedule: bool) -> str:
    clip = "without clipping" if is_none_clip(s.clip) else f"with clip {s.clip}"
    sched = f" and schedule {s.schedule}" if say_schedule else ""
    return f"{s.optimizer} {clip}{sched}"


def _window_words(s: Setting) -> str:
    win = s.window
    if win.points == 1:
        return f"every seed trained only at lr {rate(win.low)} (1 grid point)"
    return (f"every seed trained at learning rates from {rate(win.low)} to "
            f"{rate(win.high)} ({win.points} grid points, {decades(win.decades)})")


def _s(n: int) -> str:
    return "s" if n != 1 else ""


def _done(lines: list[str], flags: list[str], best: Setting | None) -> Recommendation:
    return Recommendation(text=" ".join(lines), lines=tuple(lines), flags=tuple(flags),
                          setting=best.label if best else None,
                          lr=best.best_lr if best else None)


def recommend(analysis: Analysis, task: Mapping[str, Any]) -> Recommendation:
    """The recommendation for ``analysis``. ``task`` is the task's dict as given to the
    analysis (:meth:`Task.info`); a missing direction reads as higher is better.

    >>> from gradguard.compare._analysis import analyze
    >>> rec = recommend(analyze([], {}, total_runs=4), {})
    >>> rec.flags, rec.lines[-1]
    (('incomplete', 'nothing_ran'), 'No runs finished, so there is nothing to recommend.')
    """
    hib = bool(task.get("higher_is_better", True))
    mw = f"validation {task.get('metric', 'metric')}"
    target = target_words(task.get("metric", "metric"), task.get("higher_is_better", True),
                          task.get("target"))
    ranked = analysis.settings
    counts = analysis.counts
    schedules = {s.schedule for s in ranked}
    say_sched = len(schedules) > 1 or any(s != "constant" for s in schedules)
    lines: list[str] = []
    flags: list[str] = []
    finished = counts.runs
    if not analysis.complete:
        flags.append("incomplete")
        total = analysis.total_runs
        planned = f"{finished} of {total}" if total is not None else f"{finished}"
        lines.append(f"The sweep is incomplete: {planned} runs finished. Everything below "
                     "covers the finished runs only; a learning rate whose seeds did not all "
                     "finish counts as not trained.")
    if not ranked:
        flags.append("nothing_ran")
        lines.append("No runs finished, so there is nothing to recommend.")
        return _done(lines, flags, None)
    qualified = [s for s in ranked if not s.never_finished]
    if not qualified:
        flags.append("nothing_trained")
        lines.append(f"Nothing trained: no setting had a learning rate at which every seed "
                     f"finished ({counts.diverged} of {finished} runs diverged, "
                     f"{counts.untrained} finished but did not train, {counts.errors} "
                     "failed with an error).")
        return _done(lines, flags, None)
    best = qualified[0]
    desc = _describe(best, say_sched)
    numbers = (f"mean {mw} {num(best.mean)} over {best.seeds} seed{_s(best.seeds)} "
               f"(worst {num(best.worst)})")
    win = best.window
    win_words = _window_words(best)
    if not any(s.window.points for s in ranked):
        flags.append("nothing_trained")
        lines.append(f"Nothing trained: at no learning rate of any setting did every seed "
                     f"reach the target ({target}); {counts.trained} of "
                     f"{finished} runs trained. The closest was {desc} at lr "
                     f"{rate(best.best_lr)}: {numbers}.")
    elif best.best_lr_trains:
        lines.append(f"Use {desc} at lr {rate(best.best_lr)}: {numbers}, and {win_words}.")
    else:
        k, n = best.trained_at_best, best.seeds
        tail = (f"; {win_words}" if win.points else
                "; at no learning rate did every seed of this setting train")
        lines.append(f"Best mean: {desc} at lr {rate(best.best_lr)}: {numbers}, but only "
                     f"{k} of {n} seeds reached the target there{tail}.")
        inside = [p for p in best.per_lr if p.trains and p.lr in win.lrs]
        reliable = next((s for s in qualified if s.best_lr_trains), None)
        if inside:
            p = max(inside, key=lambda p: score(known(p.mean), hib))
            lines.append(f"For every seed to train, use lr {rate(p.lr)} inside its stable "
                         f"window: mean {num(p.mean)} (worst {num(p.worst)}).")
        elif reliable is not None:
            lines.append(f"For every seed to train, use {_describe(reliable, say_sched)} at lr "
                         f"{rate(reliable.best_lr)} (rank {reliable.rank}): mean "
                         f"{num(reliable.mean)} (worst {num(reliable.worst)}); "
                         f"{_window_words(reliable)}.")
        flags.append("best_not_reliable")
    lines += _clipping_lines(best, analysis.clipping, hib, flags)
    # runner-up
    if len(qualified) > 1:
        second = qualified[1]
        n_ = noise(best, second)
        if n_.beyond_noise is False or (n_.delta is not None and abs(n_.delta) < TIE):
            flags.append("top_two_within_noise")
            lines.append(f"The runner-up, {_describe(second, say_sched)} at lr "
                         f"{rate(second.best_lr)} (mean {num(second.mean)}, worst "
                         f"{num(second.worst)}), is within seed noise of it: this sweep "
                         "does not separate the top two.")
        elif n_.beyond_noise is None:
            lines.append(f"The runner-up is {_describe(second, say_sched)} at lr "
                         f"{rate(second.best_lr)} (mean {num(second.mean)}); with one seed "
                         "the sweep cannot tell whether the gap is more than seed noise.")
    # grid edge
    edge = best.best_lr_edge
    if edge == "only":
        flags.append("single_lr")
        lines.append("Only one learning rate was tried, so nothing is known about how "
                     "sensitive the result is to it; sweep a range.")
    elif edge is not None:
        word = "highest" if edge == "high" else "lowest"
        way = "above" if edge == "high" else "below"
        flags.append(f"best_lr_at_{edge}_edge")
        lines.append(f"The best learning rate, {rate(best.best_lr)}, is the {word} in the "
                     f"grid: the optimum may lie {way} it; extend the grid {way} "
                     f"{rate(best.best_lr)}.")
    baseline = task.get("baseline")
    if (baseline is not None and finite(baseline)
            and not score(known(best.mean), hib) > score(float(baseline), hib) + TIE):
        flags.append("no_better_than_baseline")
        lines.append(f"That is no better than the trivial baseline ({num(baseline)}).")
    return _done(lines, flags, best)


def _clipping_lines(best: Setting, effects: tuple[ClipEffect, ...], hib: bool,
                    flags: list[str]) -> list[str]:
    """What clipping did for the recommended optimizer and across the sweep (adds flags)."""
    lines: list[str] = []
    mine = [e for e in effects if e.optimizer == best.optimizer
            and e.schedule == best.schedule]
    if not is_none_clip(best.clip):
        e = next((e for e in mine if e.clip == best.clip), None)
        if e is not None:
            if e.base_metric is None:
                lines.append(f"Without clipping {best.optimizer} never finished every seed "
                             f"at any learning rate ({e.base_diverged} diverged runs).")
            else:
                if e.beyond_noise:
                    side = "better" if score(known(e.delta_metric), hib) < 0 else "worse"
                    versus = f"{side} than the clipped {num(e.metric)} beyond seed noise"
                elif e.beyond_noise is None:
                    versus = f"clipped {num(e.metric)}; seed noise unknown with one seed"
                else:
                    versus = f"within seed noise of the clipped {num(e.metric)}"
                lines.append(f"Without clipping {best.optimizer} reached "
                             f"{num(e.base_metric)} ({versus}) and trained at "
                             f"{e.base_window_points} grid point{_s(e.base_window_points)} "
                             f"versus {e.window_points}: {_VERDICT_WORDS[e.verdict]} here.")
            if e.delta_diverged or e.delta_untrained:
                lines.append(f"Of {e.runs_compared} runs with the same learning rates "
                             f"and seeds, {e.diverged} diverged with clipping and "
                             f"{e.base_diverged} without; {e.untrained} with clipping and "
                             f"{e.base_untrained} without finished but did not train.")
    elif mine:
        parts = [(f"with {e.clip} it reached {num(e.metric)} ({e.metric_words})"
                  if e.metric is not None else
                  f"with {e.clip} it never finished every seed at any learning rate")
                 + f" and trained at {e.window_points} grid point{_s(e.window_points)} "
                 f"versus {e.base_window_points}: {_VERDICT_WORDS[e.verdict]}"
                 for e in mine[:3]]
        helped = any(e.verdict == "helped" for e in mine)
        head = ("Clipping did not help " if not helped else "Against unclipped ")
        lines.append(f"{head}{best.optimizer}: " + "; ".join(parts)
                     + (f"; and {len(mine) - 3} more clip settings (see the table)"
                        if len(mine) > 3 else "") + ".")
        if not helped:
            flags.append("clipping_did_not_help")
    if effects:
        tally = {v: sum(e.verdict == v for e in effects)
                 for v in ("helped", "hurt", "mixed", "no measurable effect")}
        n_eff = len(effects)
        lines.append(f"Across {n_eff} clipped setting{_s(n_eff)} compared with "
                     f"the same optimizer and schedule unclipped, clipping helped in "
                     f"{tally['helped']}, "
                     f"hurt in {tally['hurt']}, was mixed in {tally['mixed']} and had no "
                     f"measurable effect in {tally['no measurable effect']}.")
        idle = [e for e in effects if e.verdict != "no measurable effect" and e.neither_trained]
        if idle:
            lines.append(f"In {len(idle)} of these neither the clipped nor the unclipped "
                         "variant trained every seed at any learning rate, so the difference "
                         "is between settings that did not train.")
        if not tally["helped"]:
            flags.append("clipping_never_helped")
        converted = [e for e in effects if e.delta_diverged < 0 < e.delta_untrained]
        if converted:
            names = ", ".join(f"{e.optimizer} with {e.clip}" for e in converted[:3])
            lines.append(f"Clipping turned divergences into finite runs that still did not "
                         f"train for {names}: fewer runs diverged, more finished untrained.")
        more = [e for e in effects if e.delta_diverged > 0]
        if more:
            names = ", ".join(f"{e.optimizer} with {e.clip} ({e.diverged} versus "
                              f"{e.base_diverged})" for e in more[:3])
            lines.append(f"Clipping increased the number of diverged runs for {names}.")
    return lines
