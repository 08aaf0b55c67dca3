"""The analysis and the report of a ``gradguard compare`` sweep.

:func:`summarize` turns run records (as :func:`gradguard.compare._run.train_one` returns them)
into plain JSON data; :func:`write_report` writes ``report.html`` (self-contained),
``report.md``, ``summary.json`` and ``plots/*.png``, each file atomically.

Definitions (the report repeats them in plain words):

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

import base64
import functools
import html
import itertools
import json
import math
import statistics
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._files import figure_bytes, write_files
from ._records import derive

__all__ = ["DEFINITIONS", "PLOT_NAMES", "summarize", "write_report"]

TIE = 1e-9  # metric differences smaller than this are ties
TOP = 8  # settings shown in the per-step figures
PLOT_NAMES = ("metric_vs_lr", "curves", "grad_norms", "windows")

DEFINITIONS: tuple[tuple[str, str], ...] = (
    ("setting", "an (optimizer, clip, schedule) combination; its runs span learning rates and "
                "seeds."),
    ("trained", "a run trained when it finished without diverging and its final validation "
                "metric reached the task's target."),
    ("diverged", "the loss or the parameters stopped being finite, or the guard gave up after "
                 "repeated non-finite steps."),
    ("finite but untrained", "the run finished with finite numbers but did not reach the "
                             "target. A run that did not diverge is not a run that trained; "
                             "both are counted separately."),
    ("an LR trains", "every planned seed of the setting has a finished run at that learning "
                     "rate, and every one of them trained."),
    ("best LR", "among learning rates where every seed finished (status ok, finite metric), "
                "the one with the best mean final metric. A setting without one never "
                "finished on every seed and ranks last."),
    ("stable LR window", "the longest run of consecutive grid learning rates that all train; "
                         "its width in decades is log10(high / low)."),
    ("ranking", "settings by mean final metric at their best LR; differences under 1e-9 are "
                "ties, broken by more window points, then by the better worst seed."),
    ("seed noise", "two means differ beyond seed noise when the gap exceeds both the larger "
                   "seed standard deviation and two standard errors of the difference; with "
                   "one seed the noise is unknown."),
    ("clipping effect", "a clipped setting against the same optimizer and schedule without "
                        "clipping (run counts over the learning rates and seeds both "
                        "finished): it helped when the metric improved beyond seed noise or "
                        "the window gained points without the other getting worse, hurt in "
                        "the mirror case, mixed when both, and otherwise had no measurable "
                        "effect."),
    ("% steps clipped", "clipped steps / steps done, averaged over the setting's runs at its "
                        "best LR."),
)


# -- small helpers ----------------------------------------------------------------------------
def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _lr_key(lr: Any) -> float:
    """A learning rate as a dictionary key robust to float printing round trips."""
    return float(f"{float(lr):.10g}")


def _setting_of(rec: dict[str, Any]) -> tuple[str, str, str]:
    c = rec["config"]
    return str(c["optimizer"]), str(c["clip"]), str(c["schedule"])


def _is_none_clip(clip: str) -> bool:
    return clip.strip().lower() in ("none", "")


def _f(x: float | None, digits: int = 3) -> str:
    """A number for people: ``digits`` significant digits, '—' for None."""
    if x is None:
        return "—"
    return f"{x:.{digits}g}"


def _lr(x: float | None) -> str:
    return "—" if x is None else f"{x:g}"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def _score(x: float, hib: bool) -> float:
    """Bigger is better, whatever the metric's direction."""
    return x if hib else -x


def _worst(values: Sequence[float], hib: bool) -> float:
    return min(values) if hib else max(values)


def _metric_words(task: dict[str, Any]) -> str:
    return f"validation {task.get('metric', 'metric')}"


def _target_words(task: dict[str, Any]) -> str:
    op = "≥" if task.get("higher_is_better", True) else "≤"
    target = task.get("target")
    if target is None:
        return "a run counts as trained when the task says so"
    return f"a run counts as trained when {_metric_words(task)} {op} {target:g}"


# -- analysis ---------------------------------------------------------------------------------
def _dedupe(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (setting, LR, seed); a later record replaces an earlier one."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rec in records:
        c = rec["config"]
        out[(*_setting_of(rec), _lr_key(c["lr"]), int(c["seed"]))] = rec
    return list(out.values())


def _status_counts(recs: Sequence[dict[str, Any]]) -> dict[str, int]:
    diverged = sum(r["status"] == "diverged" for r in recs)
    ok = sum(r["status"] == "ok" for r in recs)
    trained = sum(bool(r.get("trained")) and r["status"] == "ok" for r in recs)
    return {"runs": len(recs), "trained": trained, "diverged": diverged,
            "untrained": ok - trained, "errors": len(recs) - ok - diverged}


def _outcome(r: dict[str, Any]) -> str:
    """'trained', 'untrained' (finite), 'diverged' or 'error'."""
    if r["status"] == "ok":
        return "trained" if r.get("trained") else "untrained"
    return "diverged" if r["status"] == "diverged" else "error"


def _per_lr(recs: list[dict[str, Any]], lr: float, seeds: int,
            hib: bool) -> dict[str, Any]:
    rs = sorted((r for r in recs if _lr_key(r["config"]["lr"]) == lr),
                key=lambda r: int(r["config"]["seed"]))
    counts = _status_counts(rs)
    ok = [r for r in rs if r["status"] == "ok" and _finite(r["final"]["metric"])]
    metrics = [float(r["final"]["metric"]) for r in ok]
    complete = len(rs) >= seeds and len(rs) > 0
    entry: dict[str, Any] = {
        "lr": lr, "seeds": len(rs), "complete": complete, **counts,
        "trains": complete and counts["trained"] == len(rs),
        "all_ok": complete and len(ok) == len(rs),
        "metrics": [float(r["final"]["metric"]) if _finite(r["final"]["metric"]) else None
                    for r in rs],
        "seed_ids": [int(r["config"]["seed"]) for r in rs],
        "outcomes": [_outcome(r) for r in rs],
        "mean": None, "std": None, "min": None, "max": None, "worst": None,
    }
    if metrics:
        mean, std = _mean_std(metrics)
        entry.update(mean=mean, std=std, min=min(metrics), max=max(metrics),
                     worst=_worst(metrics, hib))
    return entry


def _window(per_lr: list[dict[str, Any]], best_lr: float | None) -> dict[str, Any]:
    runs: list[list[float]] = []
    current: list[float] = []
    for p in per_lr:
        if p["trains"]:
            current.append(p["lr"])
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    if not runs:
        return {"low": None, "high": None, "points": 0, "decades": None, "lrs": []}
    longest = max(len(r) for r in runs)
    candidates = [r for r in runs if len(r) == longest]
    chosen = next((r for r in candidates if best_lr in r), candidates[0])
    return {"low": chosen[0], "high": chosen[-1], "points": len(chosen),
            "decades": math.log10(chosen[-1] / chosen[0]), "lrs": chosen}


def _analyze(key: tuple[str, str, str], recs: list[dict[str, Any]], grid: list[float],
             seeds: int, hib: bool) -> dict[str, Any]:
    opt, clip, sched = key
    per_lr = [_per_lr(recs, lr, seeds, hib) for lr in grid]
    best: dict[str, Any] | None = None
    for p in per_lr:
        if not p["all_ok"]:
            continue
        if best is None:
            best = p
            continue
        d = _score(p["mean"], hib) - _score(best["mean"], hib)
        if d >= TIE or (abs(d) < TIE and _score(p["worst"], hib) - _score(best["worst"], hib)
                        >= TIE):
            best = p
    best_lr = best["lr"] if best is not None else None
    at_best = [r for r in recs if best_lr is not None and _lr_key(r["config"]["lr"]) == best_lr]
    fractions = [r["clipped_steps"] / r["steps_done"] for r in at_best if r.get("steps_done")]
    seconds = [float(r["seconds"]) for r in recs if _finite(r.get("seconds"))]
    edge = None
    if best_lr is not None:
        if len(grid) == 1:
            edge = "only"
        elif best_lr == grid[0]:
            edge = "low"
        elif best_lr == grid[-1]:
            edge = "high"
    return {
        "optimizer": opt, "clip": clip, "schedule": sched,
        "label": f"{opt} / {clip} / {sched}",
        "rank": 0,
        "lr_grid": list(grid),
        "per_lr": per_lr,
        **_status_counts(recs),
        "complete": all(p["complete"] for p in per_lr),
        "never_finished": best is None,
        "best_lr": best_lr,
        "best_lr_edge": edge,
        "best_lr_trains": bool(best and best["trains"]),
        "seeds": best["seeds"] if best else 0,
        "trained_at_best": best["trained"] if best else 0,
        "mean": best["mean"] if best else None,
        "std": best["std"] if best else None,
        "worst": best["worst"] if best else None,
        "window": _window(per_lr, best_lr),
        "clipped_pct": 100.0 * statistics.fmean(fractions) if fractions else None,
        "skipped_steps": sum(int(r.get("skipped_steps") or 0) for r in at_best)
        if best is not None else None,
        "seconds_mean": statistics.fmean(seconds) if seconds else None,
    }


def _compare(a: dict[str, Any], b: dict[str, Any], hib: bool) -> int:
    """Ranking order: -1 when setting ``a`` ranks before ``b``."""
    if a["never_finished"] != b["never_finished"]:
        return 1 if a["never_finished"] else -1
    if not a["never_finished"]:
        d = _score(a["mean"], hib) - _score(b["mean"], hib)
        if abs(d) >= TIE:
            return -1 if d > 0 else 1
        dp = a["window"]["points"] - b["window"]["points"]
        if dp:
            return -1 if dp > 0 else 1
        dw = _score(a["worst"], hib) - _score(b["worst"], hib)
        if abs(dw) >= TIE:
            return -1 if dw > 0 else 1
    else:
        dt = a["trained"] + a["untrained"] - b["trained"] - b["untrained"]
        if dt:
            return -1 if dt > 0 else 1
    return (a["label"] > b["label"]) - (a["label"] < b["label"])


def _noise(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Whether the best means of settings ``a`` and ``b`` differ beyond seed noise."""
    if a["mean"] is None or b["mean"] is None:
        return {"delta": None, "noise": None, "beyond_noise": None}
    delta = a["mean"] - b["mean"]
    if min(a["seeds"], b["seeds"]) < 2:
        return {"delta": delta, "noise": None, "beyond_noise": None}
    se = math.sqrt(a["std"] ** 2 / a["seeds"] + b["std"] ** 2 / b["seeds"])
    noise = max(a["std"], b["std"], 2.0 * se)
    return {"delta": delta, "noise": noise, "beyond_noise": abs(delta) > noise + TIE}


def _noise_words(n: dict[str, Any], hib: bool) -> str:
    """'within seed noise', 'better beyond seed noise', ... for a difference a - b."""
    if n["delta"] is None:
        return "not comparable"
    if n["beyond_noise"] is None:
        return "seed noise unknown with one seed"
    if not n["beyond_noise"]:
        return "within seed noise"
    return ("better" if _score(n["delta"], hib) > 0 else "worse") + " beyond seed noise"


def _clipping(settings: list[dict[str, Any]], hib: bool) -> list[dict[str, Any]]:
    out = []
    by_key = {(s["optimizer"], s["schedule"], s["clip"]): s for s in settings}
    for s in settings:
        if _is_none_clip(s["clip"]):
            continue
        base = next((b for (o, sc, c), b in by_key.items()
                     if o == s["optimizer"] and sc == s["schedule"] and _is_none_clip(c)), None)
        if base is None:
            continue
        n = _noise(s, base)
        metric_better = n["beyond_noise"] is True and _score(n["delta"], hib) > 0
        metric_worse = n["beyond_noise"] is True and _score(n["delta"], hib) < 0
        # one side never finished every seed at any LR: its metric is not comparable, and
        # finishing without training is no gain (the window says whether anything trained)
        dp = s["window"]["points"] - base["window"]["points"]
        # run counts over the (LR, seed) cells both settings finished: an interrupted sweep
        # must not count missing runs as a difference
        mine = {(p["lr"], sd): o for p in s["per_lr"]
                for sd, o in zip(p["seed_ids"], p["outcomes"], strict=True)}
        theirs = {(p["lr"], sd): o for p in base["per_lr"]
                  for sd, o in zip(p["seed_ids"], p["outcomes"], strict=True)}
        common = mine.keys() & theirs.keys()
        div = sum(mine[c] == "diverged" for c in common)
        base_div = sum(theirs[c] == "diverged" for c in common)
        unt = sum(mine[c] == "untrained" for c in common)
        base_unt = sum(theirs[c] == "untrained" for c in common)
        good = metric_better or (dp > 0 and not metric_worse)
        bad = metric_worse or (dp < 0 and not metric_better)
        verdict = ("mixed" if good and bad else "helped" if good else "hurt" if bad
                   else "no measurable effect")
        out.append({
            "optimizer": s["optimizer"], "schedule": s["schedule"], "clip": s["clip"],
            "label": s["label"], "base_label": base["label"],
            "metric": s["mean"], "base_metric": base["mean"],
            "best_lr": s["best_lr"], "base_best_lr": base["best_lr"],
            "delta_metric": n["delta"], "noise": n["noise"], "beyond_noise": n["beyond_noise"],
            "metric_words": _noise_words(n, hib),
            "window_points": s["window"]["points"], "base_window_points":
                base["window"]["points"], "delta_window_points": dp,
            "runs_compared": len(common),
            "diverged": div, "base_diverged": base_div, "delta_diverged": div - base_div,
            "untrained": unt, "base_untrained": base_unt, "delta_untrained": unt - base_unt,
            "verdict": verdict,
            # neither variant had an LR where every seed trained: a better metric is still
            # not a setting that trains
            "neither_trained": not s["window"]["points"] and not base["window"]["points"],
        })
    return out


def _describe(s: dict[str, Any], say_schedule: bool) -> str:
    clip = "without clipping" if _is_none_clip(s["clip"]) else f"with clip {s['clip']}"
    sched = f" and schedule {s['schedule']}" if say_schedule else ""
    return f"{s['optimizer']} {clip}{sched}"


_VERDICT_WORDS = {"helped": "clipping helped", "hurt": "clipping hurt",
                  "mixed": "clipping's effect was mixed",
                  "no measurable effect": "clipping had no measurable effect"}


def _decades(value: float) -> str:
    text = _f(value, 2)
    return f"{text} decade" if text == "1" else f"{text} decades"


def _window_words(win: dict[str, Any]) -> str:
    if win["points"] == 1:
        return f"every seed trained only at lr {_lr(win['low'])} (1 grid point)"
    return (f"every seed trained at learning rates from {_lr(win['low'])} to "
            f"{_lr(win['high'])} ({win['points']} grid points, {_decades(win['decades'])})")


def _recommend(ranked: list[dict[str, Any]], effects: list[dict[str, Any]],
               task: dict[str, Any], counts: dict[str, int], total_runs: int | None,
               incomplete: bool) -> dict[str, Any]:
    hib = bool(task.get("higher_is_better", True))
    mw = _metric_words(task)
    schedules = {s["schedule"] for s in ranked}
    say_sched = len(schedules) > 1 or any(s != "constant" for s in schedules)
    lines: list[str] = []
    flags: list[str] = []
    finished = counts["runs"]
    if incomplete:
        flags.append("incomplete")
        planned = f"{finished} of {total_runs}" if total_runs is not None else f"{finished}"
        lines.append(f"The sweep is incomplete: {planned} runs finished. Everything below "
                     "covers the finished runs only; a learning rate whose seeds did not all "
                     "finish counts as not trained.")
    if not ranked:
        flags.append("nothing_ran")
        lines.append("No runs finished, so there is nothing to recommend.")
        return {"text": " ".join(lines), "lines": lines, "flags": flags, "setting": None,
                "lr": None}
    qualified = [s for s in ranked if not s["never_finished"]]
    if not qualified:
        flags.append("nothing_trained")
        lines.append(f"Nothing trained: no setting had a learning rate at which every seed "
                     f"finished ({counts['diverged']} of {finished} runs diverged, "
                     f"{counts['untrained']} finished but did not train, {counts['errors']} "
                     "failed with an error).")
        return {"text": " ".join(lines), "lines": lines, "flags": flags, "setting": None,
                "lr": None}
    best = qualified[0]
    desc = _describe(best, say_sched)
    numbers = (f"mean {mw} {_f(best['mean'])} over {best['seeds']} seed"
               f"{'s' if best['seeds'] != 1 else ''} (worst {_f(best['worst'])})")
    win = best["window"]
    win_words = _window_words(win)
    if not any(s["window"]["points"] for s in ranked):
        flags.append("nothing_trained")
        lines.append(f"Nothing trained: at no learning rate of any setting did every seed "
                     f"reach the target ({_target_words(task)}); {counts['trained']} of "
                     f"{finished} runs trained. The closest was {desc} at lr "
                     f"{_lr(best['best_lr'])}: {numbers}.")
    elif best["best_lr_trains"]:
        lines.append(f"Use {desc} at lr {_lr(best['best_lr'])}: {numbers}, and {win_words}.")
    else:
        k, n = best["trained_at_best"], best["seeds"]
        tail = (f"; {win_words}" if win["points"] else
                "; at no learning rate did every seed of this setting train")
        lines.append(f"Best mean: {desc} at lr {_lr(best['best_lr'])}: {numbers}, but only "
                     f"{k} of {n} seeds reached the target there{tail}.")
        inside = [p for p in best["per_lr"] if p["trains"] and p["lr"] in win["lrs"]]
        reliable = next((s for s in qualified if s["best_lr_trains"]), None)
        if inside:
            p = max(inside, key=lambda p: _score(p["mean"], hib))
            lines.append(f"For every seed to train, use lr {_lr(p['lr'])} inside its stable "
                         f"window: mean {_f(p['mean'])} (worst {_f(p['worst'])}).")
        elif reliable is not None:
            rw = reliable["window"]
            lines.append(f"For every seed to train, use {_describe(reliable, say_sched)} at lr "
                         f"{_lr(reliable['best_lr'])} (rank {reliable['rank']}): mean "
                         f"{_f(reliable['mean'])} (worst {_f(reliable['worst'])}); "
                         f"{_window_words(rw)}.")
        flags.append("best_not_reliable")
    # clipping, for the recommended optimizer
    mine = [e for e in effects if e["optimizer"] == best["optimizer"]
            and e["schedule"] == best["schedule"]]
    if not _is_none_clip(best["clip"]):
        e = next((e for e in mine if e["clip"] == best["clip"]), None)
        if e is not None:
            if e["base_metric"] is None:
                lines.append(f"Without clipping {best['optimizer']} never finished every seed "
                             f"at any learning rate ({e['base_diverged']} diverged runs).")
            else:
                if e["beyond_noise"]:
                    side = "better" if _score(e["delta_metric"], hib) < 0 else "worse"
                    versus = f"{side} than the clipped {_f(e['metric'])} beyond seed noise"
                elif e["beyond_noise"] is None:
                    versus = f"clipped {_f(e['metric'])}; seed noise unknown with one seed"
                else:
                    versus = f"within seed noise of the clipped {_f(e['metric'])}"
                lines.append(f"Without clipping {best['optimizer']} reached "
                             f"{_f(e['base_metric'])} ({versus}) and trained at "
                             f"{e['base_window_points']} grid point"
                             f"{'s' if e['base_window_points'] != 1 else ''} versus "
                             f"{e['window_points']}: {_VERDICT_WORDS[e['verdict']]} here.")
            if e["delta_diverged"] or e["delta_untrained"]:
                lines.append(f"Of {e['runs_compared']} runs with the same learning rates "
                             f"and seeds, {e['diverged']} diverged with clipping and "
                             f"{e['base_diverged']} without; {e['untrained']} with clipping and "
                             f"{e['base_untrained']} without finished but did not train.")
    elif mine:
        parts = [(f"with {e['clip']} it reached {_f(e['metric'])} ({e['metric_words']})"
                  if e["metric"] is not None else
                  f"with {e['clip']} it never finished every seed at any learning rate")
                 + f" and trained at {e['window_points']} grid point"
                 f"{'s' if e['window_points'] != 1 else ''} versus "
                 f"{e['base_window_points']}: {_VERDICT_WORDS[e['verdict']]}"
                 for e in mine[:3]]
        helped = any(e["verdict"] == "helped" for e in mine)
        head = ("Clipping did not help " if not helped else "Against unclipped ")
        lines.append(f"{head}{best['optimizer']}: " + "; ".join(parts)
                     + (f"; and {len(mine) - 3} more clip settings (see the table)"
                        if len(mine) > 3 else "") + ".")
        if not helped:
            flags.append("clipping_did_not_help")
    if effects:
        tally = {v: sum(e["verdict"] == v for e in effects)
                 for v in ("helped", "hurt", "mixed", "no measurable effect")}
        n_eff = len(effects)
        lines.append(f"Across {n_eff} clipped setting{'s' if n_eff != 1 else ''} compared with "
                     f"the same optimizer and schedule unclipped, clipping helped in "
                     f"{tally['helped']}, "
                     f"hurt in {tally['hurt']}, was mixed in {tally['mixed']} and had no "
                     f"measurable effect in {tally['no measurable effect']}.")
        idle = [e for e in effects if e["verdict"] != "no measurable effect"
                and e["neither_trained"]]
        if idle:
            lines.append(f"In {len(idle)} of these neither the clipped nor the unclipped "
                         "variant trained every seed at any learning rate, so the difference "
                         "is between settings that did not train.")
        if not tally["helped"]:
            flags.append("clipping_never_helped")
        converted = [e for e in effects if e["delta_diverged"] < 0 < e["delta_untrained"]]
        if converted:
            names = ", ".join(f"{e['optimizer']} with {e['clip']}" for e in converted[:3])
            lines.append(f"Clipping turned divergences into finite runs that still did not "
                         f"train for {names}: fewer runs diverged, more finished untrained.")
        more = [e for e in effects if e["delta_diverged"] > 0]
        if more:
            names = ", ".join(f"{e['optimizer']} with {e['clip']} ({e['diverged']} versus "
                              f"{e['base_diverged']})" for e in more[:3])
            lines.append(f"Clipping increased the number of diverged runs for {names}.")
    # runner-up
    if len(qualified) > 1:
        second = qualified[1]
        n = _noise(best, second)
        if n["beyond_noise"] is False or (n["delta"] is not None and abs(n["delta"]) < TIE):
            flags.append("top_two_within_noise")
            lines.append(f"The runner-up, {_describe(second, say_sched)} at lr "
                         f"{_lr(second['best_lr'])} (mean {_f(second['mean'])}, worst "
                         f"{_f(second['worst'])}), is within seed noise of it: this sweep "
                         "does not separate the top two.")
        elif n["beyond_noise"] is None:
            lines.append(f"The runner-up is {_describe(second, say_sched)} at lr "
                         f"{_lr(second['best_lr'])} (mean {_f(second['mean'])}); with one seed "
                         "the sweep cannot tell whether the gap is more than seed noise.")
    # grid edge
    edge = best["best_lr_edge"]
    if edge == "only":
        flags.append("single_lr")
        lines.append("Only one learning rate was tried, so nothing is known about how "
                     "sensitive the result is to it; sweep a range.")
    elif edge is not None:
        word = "highest" if edge == "high" else "lowest"
        way = "above" if edge == "high" else "below"
        flags.append(f"best_lr_at_{edge}_edge")
        lines.append(f"The best learning rate, {_lr(best['best_lr'])}, is the {word} in the "
                     f"grid: the optimum may lie {way} it; extend the grid {way} "
                     f"{_lr(best['best_lr'])}.")
    baseline = task.get("baseline")
    if (baseline is not None and _finite(baseline)
            and not _score(best["mean"], hib) > _score(float(baseline), hib) + TIE):
        flags.append("no_better_than_baseline")
        lines.append(f"That is no better than the trivial baseline ({_f(baseline)}).")
    return {"text": " ".join(lines), "lines": lines, "flags": flags, "setting": best["label"],
            "lr": best["best_lr"]}


def summarize(records: list[dict[str, Any]], task: dict[str, Any], *,
              grid: dict[str, Any] | None = None,
              total_runs: int | None = None) -> dict[str, Any]:
    """The analysis of a sweep as plain JSON-serializable data (see the module docstring for
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
    hib = bool(task.get("higher_is_better", True))
    runs = [derive(r, task) for r in _dedupe(records)]
    by_setting: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        by_setting.setdefault(_setting_of(r), []).append(r)
    grids: dict[str, set[float]] = {}
    if grid and grid.get("lrs"):
        for opt, lrs in grid["lrs"].items():
            grids[str(opt)] = {_lr_key(x) for x in lrs}
    for r in runs:
        grids.setdefault(r["config"]["optimizer"], set()).add(_lr_key(r["config"]["lr"]))
    per_cell: dict[tuple[Any, ...], int] = {}
    for r in runs:
        cell = (*_setting_of(r), _lr_key(r["config"]["lr"]))
        per_cell[cell] = per_cell.get(cell, 0) + 1
    seeds = int(grid["seeds"]) if grid and grid.get("seeds") else max(per_cell.values(),
                                                                      default=1)
    settings = [_analyze(key, recs, sorted(grids[key[0]]), seeds, hib)
                for key, recs in by_setting.items()]
    settings.sort(key=functools.cmp_to_key(lambda a, b: _compare(a, b, hib)))
    for i, s in enumerate(settings, 1):
        s["rank"] = i
    counts = _status_counts(runs)
    incomplete = ((total_runs is not None and counts["runs"] < total_runs)
                  or not all(s["complete"] for s in settings))
    effects = _clipping(settings, hib)
    rec = _recommend(settings, effects, task, counts, total_runs, incomplete)
    return {
        "task": {k: task.get(k) for k in ("name", "description", "metric", "higher_is_better",
                                          "target", "baseline", "steps")},
        "counts": counts,
        "total_runs": total_runs,
        "complete": not incomplete,
        "seeds_planned": seeds,
        "steps_per_run": sorted({int(r["config"]["steps"]) for r in runs
                                 if _finite(r["config"].get("steps"))}),
        "settings": settings,
        "clipping": effects,
        "recommendation": rec,
    }


# -- plots ------------------------------------------------------------------------------------
def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    return figure_bytes(fig)


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(max(n, 1))]


def _empty(fig: Any, ax: Any, message: str) -> bytes:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return _png(fig)


def _nan(x: Any) -> float:
    return float(x) if _finite(x) else math.nan


def _plot_metric_vs_lr(summary: dict[str, Any]) -> bytes:
    """Final metric against LR, one line per setting (mean, min–max band), × for divergence."""
    from matplotlib.transforms import blended_transform_factory

    task = summary["task"]
    settings = summary["settings"]
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
        xs = [p["lr"] for p in s["per_lr"]]
        mean = [_nan(p["mean"]) for p in s["per_lr"]]
        values += [v for v in mean if not math.isnan(v)]
        ax.plot(xs, mean, "-", color=c, lw=1.5, label=f"#{s['rank']} {s['label']}")
        ax.fill_between(xs, [_nan(p["min"]) for p in s["per_lr"]],
                        [_nan(p["max"]) for p in s["per_lr"]], color=c, alpha=0.15, lw=0)
        for p in s["per_lr"]:
            if p["mean"] is not None:
                ax.plot([p["lr"]], [p["mean"]], "o", ms=6, color=c,
                        mfc=c if p["trains"] else "white", mew=1.5)
        div = [p["lr"] for p in s["per_lr"] if p["diverged"] or p["errors"]]
        if div:
            ax.plot(div, [0.03] * len(div), "x", color=c, ms=9, mew=2, transform=edge,
                    clip_on=False)
    target = task.get("target")
    if _finite(target):
        ax.axhline(target, ls="--", color="black", lw=1,
                   label=f"target ({'≥' if task.get('higher_is_better', True) else '≤'} "
                         f"{target:g})")
    if _finite(task.get("baseline")):
        ax.axhline(task["baseline"], ls=":", color="grey", lw=1.2,
                   label=f"trivial baseline ({task['baseline']:g})")
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) / min(positive) > 100:
        ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"final validation {task.get('metric')}\n(mean over seeds, band: min–max)")
    ax.set_title(f"{task.get('name')}: final {task.get('metric')} vs learning rate\n"
                 "filled dot: every seed trained; hollow: not every seed; "
                 "× at the bottom: a seed diverged or failed", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7 if wide else 8,
              ncol=ncol, frameon=False)
    fig.tight_layout()
    return _png(fig)


def _aligned(recs: Sequence[dict[str, Any]], key: str) -> tuple[Any, Any]:
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


def _best_runs(s: dict[str, Any], by_setting: dict[str, list[dict[str, Any]]]
               ) -> list[dict[str, Any]]:
    return sorted((r for r in by_setting.get(s["label"], [])
                   if s["best_lr"] is not None and _lr_key(r["config"]["lr"]) == s["best_lr"]),
                  key=lambda r: int(r["config"]["seed"]))


def _top(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in summary["settings"] if not s["never_finished"]][:TOP]


def _plot_curves(summary: dict[str, Any], by_setting: dict[str, list[dict[str, Any]]]
                 ) -> bytes:
    """Validation metric and training loss against step at each top setting's best LR."""
    task = summary["task"]
    top = _top(summary)
    fig = _new_figure(14, 5.5)
    ax_m, ax_l = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    if not top:
        ax_l.set_axis_off()
        return _empty(fig, ax_m, "no setting finished every seed at any learning rate")
    losses: list[float] = []
    for s, c in zip(top, _colors(len(summary["settings"])), strict=False):
        recs = _best_runs(s, by_setting)
        label = f"#{s['rank']} {s['label']} @ lr {_lr(s['best_lr'])}"
        for ax, key in ((ax_m, "metric"), (ax_l, "train_loss")):
            steps, arr = _aligned(recs, key)
            if not len(steps):
                continue
            mean, lo, hi = _band(arr)
            ax.plot(steps, mean, color=c, lw=1.6, label=label)
            ax.fill_between(steps, lo, hi, color=c, alpha=0.15, lw=0)
            if key == "train_loss":
                losses += [float(v) for v in mean if math.isfinite(v)]
    if _finite(task.get("target")):
        ax_m.axhline(task["target"], ls="--", color="black", lw=1, label="target")
    if losses and min(losses) > 0:
        ax_l.set_yscale("log")
    ax_m.set_xlabel("step")
    ax_m.set_ylabel(f"validation {task.get('metric')} (mean over seeds, band: min–max)")
    ax_m.set_title(f"validation {task.get('metric')} at each setting's best LR", fontsize=10)
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
    total = len(summary["settings"])
    fig.suptitle(f"{task.get('name')}: learning curves of the top {shown} of {total} "
                 "settings" if shown < total else
                 f"{task.get('name')}: learning curves, every setting at its best LR")
    fig.set_figheight(5.5 + 0.22 * rows)
    fig.tight_layout(rect=(0, 0.01 + 0.045 * rows, 1, 1))
    return _png(fig)


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


def _plot_grad_norms(summary: dict[str, Any], by_setting: dict[str, list[dict[str, Any]]]
                     ) -> bytes:
    """Pre-clip gradient norm per step, first seed at the best LR of each top setting."""
    import numpy as np
    from matplotlib.transforms import blended_transform_factory

    task = summary["task"]
    top = _top(summary)
    fig = _new_figure(12, 5.5)
    ax = fig.add_subplot()
    if not top:
        return _empty(fig, ax, "no setting finished every seed at any learning rate")
    edge = blended_transform_factory(ax.transData, ax.transAxes)
    any_positive = False
    window = 1
    for s, c in zip(top, _colors(len(summary["settings"])), strict=False):
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
                label=f"#{s['rank']} {s['label']} @ lr {_lr(s['best_lr'])}, "
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
    shown, total = len(top), len(summary["settings"])
    ax.set_title(f"{task.get('name')}: gradient norm per step"
                 + (f" (top {shown} of {total} settings)" if shown < total else "")
                 + f"\nfaint: raw; solid: running median over {window} steps; dashed: clip "
                   "threshold (same colour); ▼ at the top: a skipped step", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _plot_windows(summary: dict[str, Any]) -> bytes:
    """One row per setting: grid LRs, the LRs that train, the stable window, the best LR."""
    from matplotlib.lines import Line2D

    task = summary["task"]
    settings = summary["settings"]
    fig = _new_figure(10, 1.6 + 0.42 * max(len(settings), 1))
    ax = fig.add_subplot()
    if not settings:
        return _empty(fig, ax, "no finished runs")
    n = len(settings)
    for i, (s, c) in enumerate(zip(settings, _colors(n), strict=False)):
        y = n - 1 - i
        w = s["window"]
        if w["points"]:
            grid = s["lr_grid"]
            ratios = [b / a for a, b in itertools.pairwise(grid) if a > 0]
            half = statistics.median(ratios) ** 0.25 if ratios else 10 ** 0.25
            ax.plot([w["low"] / half, w["high"] * half], [y, y], "-", color=c, lw=11,
                    alpha=0.35, solid_capstyle="butt")
        for p in s["per_lr"]:
            if not p["seeds"]:
                ax.plot([p["lr"]], [y], "s", ms=4, color="lightgrey")
                continue
            ax.plot([p["lr"]], [y], "o", ms=7, mec="dimgrey" if not p["trains"] else c,
                    mfc=c if p["trains"] else "white", mew=1.2)
            if p["diverged"] or p["errors"]:
                ax.plot([p["lr"]], [y], "x", ms=8, mew=2, color="tab:red")
        if s["best_lr"] is not None:
            ax.plot([s["best_lr"]], [y + 0.28], "v", ms=8, color="black")
    ax.set_yticks(range(n), [f"#{s['rank']} {s['label']}" for s in reversed(settings)],
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
    ax.set_title(f"{task.get('name')}: stable learning-rate windows "
                 f"({_target_words(task)})", fontsize=10)
    fig.tight_layout()
    return _png(fig)


# -- tables -----------------------------------------------------------------------------------
def _ranking_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    metric = summary["task"].get("metric")
    head = ["rank", "optimizer", "clip", "schedule", "best LR", f"mean {metric} ± std",
            "worst seed", "stable LR window", "trained / runs", "diverged",
            "finite, untrained", "errors", "% steps clipped", "skipped steps", "s / run"]
    rows = []
    for s in summary["settings"]:
        w = s["window"]
        window = ("none" if not w["points"] else f"{_lr(w['low'])} (1 pt)" if w["points"] == 1
                  else f"{_lr(w['low'])}–{_lr(w['high'])} ({w['points']} pts)")
        mean = ("never finished on every seed" if s["never_finished"]
                else f"{_f(s['mean'], 4)} ± {_f(s['std'], 2)}")
        rows.append([str(s["rank"]), s["optimizer"], s["clip"], s["schedule"],
                     _lr(s["best_lr"]), mean, _f(s["worst"], 4), window,
                     f"{s['trained']} / {s['runs']}", str(s["diverged"]), str(s["untrained"]),
                     str(s["errors"]),
                     "—" if s["clipped_pct"] is None else f"{s['clipped_pct']:.1f}",
                     "—" if s["skipped_steps"] is None else str(s["skipped_steps"]),
                     _f(s["seconds_mean"], 3)])
    return head, rows


def _clipping_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    metric = summary["task"].get("metric")
    head = ["optimizer", "schedule", "clip", f"best {metric}: clip vs none", "Δ",
            "vs seed noise", "window points: clip vs none", "runs compared",
            "diverged: clip vs none", "finite untrained: clip vs none", "verdict"]
    rows = []
    for e in summary["clipping"]:
        delta = "—" if e["delta_metric"] is None else f"{e['delta_metric']:+.3g}"
        rows.append([e["optimizer"], e["schedule"], e["clip"],
                     f"{_f(e['metric'], 4)} vs {_f(e['base_metric'], 4)}", delta,
                     e["metric_words"],
                     f"{e['window_points']} vs {e['base_window_points']} "
                     f"({e['delta_window_points']:+d})", str(e["runs_compared"]),
                     f"{e['diverged']} vs {e['base_diverged']} ({e['delta_diverged']:+d})",
                     f"{e['untrained']} vs {e['base_untrained']} ({e['delta_untrained']:+d})",
                     e["verdict"] + (" (neither trained)" if e["neither_trained"] else "")])
    return head, rows


def _windows_lines(summary: dict[str, Any]) -> list[str]:
    out = []
    for s in summary["settings"]:
        w = s["window"]
        trains = [p["lr"] for p in s["per_lr"] if p["trains"]]
        if w["points"] == 1:
            text = f"{_lr(w['low'])} only: 1 grid point"
        elif w["points"]:
            text = (f"{_lr(w['low'])} to {_lr(w['high'])}: {w['points']} grid points, "
                    f"{_decades(w['decades'])}")
        else:
            text = "none (no learning rate trained every seed)"
        grid = ", ".join(_lr(x) for x in s["lr_grid"])
        extra = (f"; LRs that train: {', '.join(_lr(x) for x in trains)}"
                 if len(trains) > w["points"] else "")
        out.append(f"#{s['rank']} {s['label']}: {text} (grid: {grid}{extra})")
    return out


def _run_rows(summary: dict[str, Any], records: Sequence[dict[str, Any]]
              ) -> tuple[list[str], list[list[str]]]:
    order = {s["label"]: s["rank"] for s in summary["settings"]}
    head = ["rank", "optimizer", "clip", "schedule", "lr", "seed", "status", "trained",
            f"final {summary['task'].get('metric')}", "% clipped", "skipped", "steps",
            "seconds", "error"]
    rows = []
    for r in sorted(_dedupe(records), key=lambda r: (
            order.get(" / ".join(_setting_of(r)), 0), float(r["config"]["lr"]),
            int(r["config"]["seed"]))):
        c = r["config"]
        done = r.get("steps_done") or 0
        rows.append([str(order.get(" / ".join(_setting_of(r)), "")), str(c["optimizer"]),
                     str(c["clip"]), str(c["schedule"]), _lr(float(c["lr"])), str(c["seed"]),
                     str(r["status"]), "yes" if r.get("trained") else "no",
                     _f(r["final"]["metric"] if _finite(r["final"]["metric"]) else None, 4),
                     f"{100.0 * r['clipped_steps'] / done:.1f}" if done else "—",
                     str(r.get("skipped_steps", "—")), f"{done}/{c.get('steps', '?')}",
                     _f(r.get("seconds") if _finite(r.get("seconds")) else None, 3),
                     str(r.get("error") or "")])
    return head, rows


# -- markdown and HTML ------------------------------------------------------------------------
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in head) + " |",
             "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def _what_ran(summary: dict[str, Any], meta: dict[str, Any]) -> list[tuple[str, str]]:
    grid = meta.get("grid") or {}
    counts = summary["counts"]
    total = meta.get("total_runs")
    finished = (f"{counts['runs']} of {total} runs finished" if total is not None
                else f"{counts['runs']} runs finished")
    if total is not None and counts["runs"] < total:
        finished += " (the sweep is incomplete)"
    lrs = grid.get("lrs") or {}
    items = [
        ("task", f"{summary['task'].get('name')}: {_target_words(summary['task'])}"
                 + (f"; trivial baseline {summary['task']['baseline']:g}"
                    if _finite(summary["task"].get("baseline")) else "")),
        ("optimizers", ", ".join(map(str, grid.get("optimizers") or [])) or "—"),
        ("clips", ", ".join(map(str, grid.get("clips") or [])) or "—"),
        ("schedules", ", ".join(map(str, grid.get("schedules") or [])) or "—"),
        ("learning rates", "; ".join(f"{k}: {', '.join(_lr(float(v)) for v in vs)}"
                                     for k, vs in lrs.items()) or "—"),
        ("seeds", str(grid.get("seeds", summary.get("seeds_planned")))),
        ("steps per run", ", ".join(str(n) for n in summary.get("steps_per_run") or []) or "—"),
        ("runs", f"{finished}: {counts['trained']} trained, {counts['diverged']} diverged, "
                 f"{counts['untrained']} finite but untrained, {counts['errors']} errors"),
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


def _captions(summary: dict[str, Any]) -> dict[str, str]:
    shown = len(_top(summary))
    total = len(summary["settings"])
    top = (f"the top {shown} of {total} settings by rank" if shown < total
           else "every setting that finished")
    metric = summary["task"].get("metric")
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


_CSS = """
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
"""


def _html_table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    e = html.escape
    out = [f'<table class="{e(cls)}">' if cls else "<table>", "<thead><tr>"]
    out += [f"<th>{e(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _render_html(summary: dict[str, Any], meta: dict[str, Any], records: Sequence[dict[str, Any]],
                 pngs: dict[str, bytes]) -> str:
    e = html.escape
    task = summary["task"]
    rec = summary["recommendation"]
    captions = _captions(summary)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>gradguard compare: {e(str(task.get('name')))}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>gradguard compare: {e(str(task.get('name')))}</h1>"]
    if task.get("description"):
        parts.append(f"<p>{e(' '.join(str(task['description']).split()))}</p>")
    parts.append("<h2>What was run</h2><dl>")
    parts += [f"<dt>{e(k)}</dt><dd>{'<code>' + e(v) + '</code>' if k == 'command' else e(v)}"
              "</dd>" for k, v in _what_ran(summary, meta)]
    parts.append("</dl>")
    cls = "warn" if set(rec["flags"]) & {"incomplete", "nothing_trained", "nothing_ran"} \
        else "rec"
    parts.append(f'<h2>Recommendation</h2><div class="{cls}">')
    parts += [f"<p>{e(line)}</p>" for line in rec["lines"]]
    parts.append("</div>")
    parts.append(f"<p>{e(_target_words(task).capitalize())}.</p>")
    parts.append("<h2>Ranking</h2>")
    parts.append(_html_table(*_ranking_table(summary), cls="ranking"))
    parts.append("<h2>Clipping effect</h2>")
    if summary["clipping"]:
        parts.append(_html_table(*_clipping_table(summary), cls="clipping"))
    else:
        parts.append("<p>No clipped setting has an unclipped counterpart (same optimizer and "
                     "schedule with clip none) in this sweep.</p>")
    parts.append("<h2>Stable learning-rate windows</h2><ul>")
    parts += [f"<li>{e(line)}</li>" for line in _windows_lines(summary)]
    parts.append("</ul><h2>Figures</h2>")
    for name in PLOT_NAMES:
        data = base64.b64encode(pngs[name]).decode("ascii")
        parts.append(f'<figure><img alt="{e(name)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{e(captions[name])}</figcaption></figure>")
    parts.append("<h2>Definitions</h2><dl>")
    parts += [f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in DEFINITIONS]
    parts.append("</dl>")
    head, rows = _run_rows(summary, records)
    parts.append(f"<h2>Runs</h2><details><summary>All {len(rows)} finished runs</summary>")
    parts.append(_html_table(head, rows, cls="runs"))
    parts.append("</details></body></html>")
    return "\n".join(parts) + "\n"


def _render_markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    task = summary["task"]
    rec = summary["recommendation"]
    lines = [f"# gradguard compare: {task.get('name')}", ""]
    command: list[str] = []
    if meta.get("command"):  # a code block, shown as it is: not escaped, kept on one line
        command = ["```", " ".join(str(meta["command"]).split()).replace("`", "'"), "```", ""]
    for k, v in _what_ran(summary, meta):
        if k != "command":
            lines.append(f"- **{k}**: {v}")
    lines += ["", "## Recommendation", ""]
    for line in rec["lines"]:
        lines += [line, ""]
    lines += [f"{_target_words(task).capitalize()}.", "", "## Ranking", ""]
    lines += _md_table(*_ranking_table(summary))
    lines += ["", "## Clipping effect", ""]
    if summary["clipping"]:
        lines += _md_table(*_clipping_table(summary))
    else:
        lines.append("No clipped setting has an unclipped counterpart in this sweep.")
    lines += ["", "## Stable learning-rate windows", ""]
    lines += [f"- {line}" for line in _windows_lines(summary)]
    lines += ["", "## Figures", ""]
    captions = _captions(summary)
    for name in PLOT_NAMES:
        lines += [f"![{name}](plots/{name}.png)", "", captions[name], ""]
    lines += ["## Definitions", ""]
    lines += [f"- **{k}**: {v}" for k, v in DEFINITIONS]
    # Task names, descriptions and metric names are the user's text (a custom task's): no HTML
    # of theirs reaches a renderer of report.md. Our own markdown uses none.
    lines = [html.escape(line, quote=False) for line in lines]
    return "\n".join(lines[:2] + command + lines[2:]) + "\n"


# -- writing ----------------------------------------------------------------------------------
def write_report(out_dir: Path, records: list[dict[str, Any]],
                 meta: dict[str, Any]) -> dict[str, Any]:
    """Write the sweep's report into ``out_dir`` and return the paths written.

    Files: ``report.html`` (self-contained: plots embedded as base64 PNG, inline CSS, no
    external resources), ``report.md`` (links ``plots/*.png``), ``summary.json``
    (:func:`summarize`'s output) and ``plots/{metric_vs_lr,curves,grad_norms,windows}.png``.
    Everything is rendered in memory first and the files are replaced as one set
    (:func:`~gradguard.compare._run.write_files`), so a failure (a full disk) leaves the
    previous report, plots included, as it was.

    ``meta``: ``{"task": Task.info(), "grid": {"optimizers", "clips", "schedules", "lrs":
    {optimizer: [lrs]}, "seeds"}, "command": str, "created": ISO time, "total_runs": int}``.
    ``records`` may be fewer than ``total_runs`` (an interrupted sweep); the report says so.

    Returns ``{"html": Path, "markdown": Path, "summary": Path, "plots": [Path, ...]}``.
    """
    out = Path(out_dir)
    task = meta.get("task") or {}
    summary = summarize(records, task, grid=meta.get("grid"), total_runs=meta.get("total_runs"))
    records = [derive(r, task) for r in records]
    by_setting: dict[str, list[dict[str, Any]]] = {}
    for r in _dedupe(records):
        by_setting.setdefault(" / ".join(_setting_of(r)), []).append(r)
    renderers: dict[str, Callable[[], bytes]] = {
        "metric_vs_lr": lambda: _plot_metric_vs_lr(summary),
        "curves": lambda: _plot_curves(summary, by_setting),
        "grad_norms": lambda: _plot_grad_norms(summary, by_setting),
        "windows": lambda: _plot_windows(summary),
    }
    pngs = {name: renderers[name]() for name in PLOT_NAMES}
    summary_bytes = json.dumps(summary, indent=1, allow_nan=False).encode()
    markdown = _render_markdown(summary, meta).encode()
    page = _render_html(summary, meta, records, pngs).encode()

    plots = [out / "plots" / f"{name}.png" for name in PLOT_NAMES]
    paths = {"summary": out / "summary.json", "markdown": out / "report.md",
             "html": out / "report.html"}
    # One set: the plots, summary and pages all land, or (a full disk) none of them does.
    write_files({**{p: pngs[name] for p, name in zip(plots, PLOT_NAMES, strict=True)},
                 paths["summary"]: summary_bytes, paths["markdown"]: markdown,
                 paths["html"]: page})
    return {**paths, "plots": plots}
