"""gradguard.compare's report: summarize()'s numbers against an independent recomputation from
real training records (digits, a few short runs), the ranking in both metric directions, the
situations the recommendation must name (diverged and finite-but-untrained runs, a setting
that never finished, nothing trained, seed noise, an incomplete sweep, the grid's edge), and
the files: a self-contained HTML page, a markdown table that agrees with summary.json, atomic
replacement of an earlier report.

Records for specific situations are copies of real records with their outcome changed, so
they keep the real schema, curves and gradient statistics."""

from __future__ import annotations

import base64
import copy
import dataclasses
import itertools
import json
import math
import statistics
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch

from gradguard.compare import _report
from gradguard.compare._grid import RunConfig
from gradguard.compare._records import check_record
from gradguard.compare._report import summarize, write_report
from gradguard.compare._run import train_one
from gradguard.tasks import get

PNG = b"\x89PNG\r\n\x1a\n"
LRS = (1e-3, 1e-2)
CLIPS = ("none", "global_norm:1.0")
SEEDS = 2
STEPS = 60


# -- real records -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Adam on digits, 2 LRs x 2 clips x 2 seeds, 60 steps. The target is lowered to 0.3 so
    that a 60-step run can train (at lr 1e-3 digits reaches ~0.43, at 1e-2 ~0.1-0.35)."""
    task = dataclasses.replace(get("digits"), target=0.3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a sweep runs them; many threads on a busy machine crawl
    try:
        records = [train_one(task, RunConfig("digits", "adam", clip, "constant", lr, seed,
                                             STEPS, 64, 20))
                   for clip in CLIPS for lr in LRS for seed in range(SEEDS)]
    finally:
        torch.set_num_threads(threads)
    return records, task.info()


def _meta(info: dict[str, Any], records: list[dict[str, Any]],
          total: int | None = None) -> dict[str, Any]:
    lrs = sorted({r["config"]["lr"] for r in records})
    return {"task": info,
            "grid": {"optimizers": ["adam"], "clips": list(CLIPS), "schedules": ["constant"],
                     "lrs": {"adam": lrs}, "seeds": SEEDS},
            "command": "gradguard compare digits --optimizers adam --clip none,global_norm:1.0",
            "created": "2025-01-01T00:00:00",
            "total_runs": len(records) if total is None else total}


def _template(real_records: list[dict[str, Any]], clip: str, seed: int) -> dict[str, Any]:
    return next(r for r in real_records
                if r["config"]["clip"] == clip and r["config"]["seed"] == seed)


def _outcome(rec: dict[str, Any], lr: float, result: float | str | None,
             trained: bool | None = None) -> dict[str, Any]:
    """A copy of a real record moved to ``lr`` with its outcome changed: a metric (status ok,
    trained as given), ``"diverged"`` (non-finite tail, like a guard stop) or ``"error"``."""
    r = copy.deepcopy(rec)
    r["config"]["lr"] = lr
    if isinstance(result, float | int):
        r["status"], r["trained"] = "ok", bool(trained)
        r["final"]["metric"] = float(result)
        r["curves"]["metric"][-1] = float(result)
        return r
    half = len(r["grad"]["norm"]) // 2
    r["status"], r["trained"] = str(result), False
    r["error"] = ("non-finite gradients for 3 consecutive steps" if result == "diverged"
                  else "RuntimeError: boom")
    r["final"] = {"train_loss": None, "val_loss": None, "metric": None}
    # the curves stop where the run stopped, with a last evaluation of its non-finite end
    keep = sum(step < half + 1 for step in r["curves"]["step"])
    r["curves"] = {key: values[:keep] for key, values in r["curves"].items()}
    r["curves"]["step"].append(half + 1)
    for key in ("train_loss", "val_loss", "metric", "lr"):
        r["curves"][key].append(None if key != "lr" else r["curves"]["lr"][-1])
    r["grad"]["norm"] = [*r["grad"]["norm"][:half], None]
    if r["grad"]["threshold"] is not None:
        r["grad"]["threshold"] = [*r["grad"]["threshold"][:half], None]
    r["grad"]["clipped"] = [*r["grad"]["clipped"][:half], 0]
    r["grad"]["skipped"] = [*r["grad"]["skipped"][:half], 1]
    r["steps_done"], r["skipped_steps"] = half + 1, 1
    r["clipped_steps"] = sum(r["grad"]["clipped"])
    return r


Spec = dict[str, dict[float, list[Any]]]


def _build(real_records: list[dict[str, Any]], spec: Spec,
           target: tuple[bool, float] = (True, 0.3)) -> list[dict[str, Any]]:
    """Records from ``{clip: {lr: [outcome per seed]}}``; an outcome is ``(metric, trained)``,
    ``"diverged"``, ``"error"`` or None (that seed has no record). ``trained`` states what the
    metric means under ``target`` (higher is better, target value), which the report derives
    on its own; a spec whose flag disagrees with its metric is a broken test."""
    hib, value = target
    out = []
    for clip, by_lr in spec.items():
        for lr, seeds in by_lr.items():
            for seed, o in enumerate(seeds):
                if o is None:
                    continue
                rec = _template(real_records, clip, seed)
                if isinstance(o, tuple):
                    metric, trained = o
                    assert trained == (metric >= value if hib else metric <= value), o
                    out.append(_outcome(rec, lr, metric, trained))
                else:
                    out.append(_outcome(rec, lr, o))
                assert check_record(out[-1]) is None, check_record(out[-1])
    return out


def _setting(summary: dict[str, Any], clip: str) -> dict[str, Any]:
    return next(s for s in summary["settings"] if s["clip"] == clip)


# -- an independent recomputation -------------------------------------------------------------
def _reference(records: list[dict[str, Any]], hib: bool, seeds: int,
               target: float) -> dict[Any, Any]:
    """The summary's numbers recomputed from the records' numbers; a run trained when its
    status is ok and its final metric is on the right side of ``target`` (whatever its
    ``trained`` field says)."""
    records = [{**r, "trained": r["status"] == "ok" and (
        r["final"]["metric"] >= target if hib else r["final"]["metric"] <= target)}
        for r in records]
    cells: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    grids: dict[str, set[float]] = defaultdict(set)
    for r in records:
        c = r["config"]
        cells[(c["optimizer"], c["clip"], c["schedule"]), c["lr"]].append(r)
        grids[c["optimizer"]].add(c["lr"])
    out = {}
    for key in {k for k, _ in cells}:
        grid = sorted(grids[key[0]])
        stats, trains = {}, []
        for lr in grid:
            rs = cells.get((key, lr), [])
            full = len(rs) == seeds
            trains.append(full and all(r["trained"] for r in rs))
            if full and all(r["status"] == "ok" for r in rs):
                ms = [r["final"]["metric"] for r in rs]
                stats[lr] = (sum(ms) / len(ms), statistics.stdev(ms) if len(ms) > 1 else 0.0,
                             min(ms) if hib else max(ms))
        pick = max if hib else min
        best: float | None = pick(stats, key=lambda lr: stats[lr][0]) if stats else None
        window: tuple[int, float | None, float | None] = (0, None, None)
        i = 0
        while i < len(grid):
            j = i
            while trains[i] and j + 1 < len(grid) and trains[j + 1]:
                j += 1
            if trains[i] and j - i + 1 > window[0]:
                window = (j - i + 1, grid[i], grid[j])
            i = j + 1
        mine = [r for (k, _), rs in cells.items() if k == key for r in rs]
        at_best = [r for r in mine if r["config"]["lr"] == best]
        out[key] = {
            "best_lr": best, "stats": None if best is None else stats[best], "window": window,
            "runs": len(mine),
            "trained": sum(r["trained"] for r in mine),
            "diverged": sum(r["status"] == "diverged" for r in mine),
            "untrained": sum(r["status"] == "ok" and not r["trained"] for r in mine),
            "clipped_pct": (100 * sum(r["clipped_steps"] / r["steps_done"] for r in at_best)
                            / len(at_best)) if at_best else None,
            "skipped": sum(r["skipped_steps"] for r in at_best) if at_best else None,
        }
    return out


def _check_against_reference(summary: dict[str, Any], records: list[dict[str, Any]],
                             hib: bool, seeds: int = SEEDS) -> None:
    ref = _reference(records, hib, seeds, summary["task"]["target"])
    assert len(summary["settings"]) == len(ref)
    for s in summary["settings"]:
        r = ref[s["optimizer"], s["clip"], s["schedule"]]
        assert s["best_lr"] == r["best_lr"]
        assert s["never_finished"] == (r["best_lr"] is None)
        if r["stats"] is not None:
            assert s["mean"] == pytest.approx(r["stats"][0], abs=1e-12)
            assert s["std"] == pytest.approx(r["stats"][1], abs=1e-12)
            assert s["worst"] == pytest.approx(r["stats"][2], abs=1e-12)
        points, low, high = r["window"]
        assert (s["window"]["points"], s["window"]["low"], s["window"]["high"]) == \
            (points, low, high)
        if points:
            assert s["window"]["decades"] == pytest.approx(math.log10(high / low))
        for key in ("runs", "trained", "diverged", "untrained"):
            assert s[key] == r[key], key
        if r["clipped_pct"] is None:
            assert s["clipped_pct"] is None
        else:
            assert s["clipped_pct"] == pytest.approx(r["clipped_pct"])
        assert s["skipped_steps"] == r["skipped"]
    finished = [s for s in summary["settings"] if not s["never_finished"]]
    sign = 1 if hib else -1
    for a, b in itertools.pairwise(finished):
        assert sign * a["mean"] >= sign * b["mean"] - 1e-9
    assert [s["rank"] for s in summary["settings"]] == list(range(1, len(ref) + 1))
    assert all(s["never_finished"] for s in summary["settings"][len(finished):])


# -- summarize --------------------------------------------------------------------------------
def test_summary_of_real_runs_matches_recomputation(real: Any) -> None:
    records, info = real
    summary = summarize(records, info)
    _check_against_reference(summary, records, hib=True)
    assert summary["counts"]["runs"] == len(records) == 8
    assert summary["counts"]["trained"] == sum(r["trained"] for r in records)
    assert summary["complete"] and "incomplete" not in summary["recommendation"]["flags"]
    json.dumps(summary, allow_nan=False)  # plain JSON data
    effects = summary["clipping"]
    assert len(effects) == 1 and effects[0]["clip"] == "global_norm:1.0"
    none, clip = _setting(summary, "none"), _setting(summary, "global_norm:1.0")
    assert effects[0]["delta_metric"] == pytest.approx(clip["mean"] - none["mean"])
    assert effects[0]["delta_window_points"] == (clip["window"]["points"]
                                                 - none["window"]["points"])


def test_diverged_and_untrained_are_counted_apart_and_exclude_an_lr(real: Any) -> None:
    records, info = real
    lrs = (1e-4, 1e-3, 1e-2)
    spec: Spec = {"none": {lrs[0]: [(0.35, True), (0.33, True)],
                     lrs[1]: [(0.9, True), "diverged"],  # best seed anywhere, but not all ok
                     lrs[2]: [(0.2, False), (0.25, False)]},
            "global_norm:1.0": {lrs[0]: [(0.31, True), (0.32, True)],
                                lrs[1]: [(0.6, True), (0.5, True)],
                                lrs[2]: ["error", (0.1, False)]}}
    recs = _build(records, spec)
    summary = summarize(recs, info)
    _check_against_reference(summary, recs, hib=True)
    none, clip = _setting(summary, "none"), _setting(summary, "global_norm:1.0")
    assert none["best_lr"] == lrs[0] and none["diverged"] == 1 and none["untrained"] == 2
    assert none["window"]["points"] == 1
    assert clip["best_lr"] == lrs[1] and clip["errors"] == 1 and clip["untrained"] == 1
    assert clip["diverged"] == 0 and clip["window"]["points"] == 2
    assert summary["counts"] == {"runs": 12, "trained": 7, "diverged": 1, "untrained": 3,
                                 "errors": 1}
    assert [s["clip"] for s in summary["settings"]] == ["global_norm:1.0", "none"]


def test_window_is_the_longest_run_and_a_missing_run_breaks_it(real: Any) -> None:
    records, info = real
    lrs = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
    t, f = (0.5, True), (0.1, False)
    spec: Spec = {"none": {lrs[0]: [t, t], lrs[1]: [t, f], lrs[2]: [t, t], lrs[3]: [t, t],
                     lrs[4]: [f, f]},
            "global_norm:1.0": {lrs[0]: [t, t], lrs[1]: [t, None], lrs[2]: [t, t],
                                lrs[3]: [t, t], lrs[4]: [t, t]}}
    recs = _build(records, spec)
    summary = summarize(recs, info)
    _check_against_reference(summary, recs, hib=True)
    none, clip = _setting(summary, "none"), _setting(summary, "global_norm:1.0")
    assert (none["window"]["low"], none["window"]["high"], none["window"]["points"]) == \
        (lrs[2], lrs[3], 2)
    assert none["window"]["decades"] == pytest.approx(math.log10(3))
    # one seed of lrs[1] never finished: that LR does not train, and cannot be the best
    assert (clip["window"]["low"], clip["window"]["high"], clip["window"]["points"]) == \
        (lrs[2], lrs[4], 3)
    assert not clip["complete"] and not summary["complete"]
    assert "incomplete" in summary["recommendation"]["flags"]
    # the planned grid says where runs are missing even when no record has that LR
    grid = {"lrs": {"adam": [*lrs, 3e-2]}, "seeds": 2}
    s2 = summarize(_build(records, {"none": {lr: [t, t] for lr in lrs}}), info, grid=grid)
    assert s2["settings"][0]["window"]["points"] == 5
    assert s2["settings"][0]["lr_grid"] == [*lrs, 3e-2] and not s2["complete"]


def test_equal_windows_prefer_the_one_with_the_best_lr(real: Any) -> None:
    records, info = real
    lrs = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
    spec: Spec = {"none": {lrs[0]: [(0.5, True)] * 2, lrs[1]: [(0.5, True)] * 2,
                     lrs[2]: [(0.1, False)] * 2, lrs[3]: [(0.6, True)] * 2,
                     lrs[4]: [(0.55, True)] * 2}}
    s = summarize(_build(records, spec), info)["settings"][0]
    assert s["best_lr"] == lrs[3]
    assert (s["window"]["low"], s["window"]["high"]) == (lrs[3], lrs[4])


def test_ranking_respects_the_metric_direction_and_breaks_ties(real: Any) -> None:
    records, info = real
    spec: Spec = {"none": {1e-3: [(0.2, True), (0.22, True)], 1e-2: [(0.3, True), (0.31, True)]},
            "global_norm:1.0": {1e-3: [(0.4, True), (0.41, True)],
                                1e-2: [(0.5, True), (0.52, True)]}}
    recs = _build(records, spec, target=(True, 0.1))
    high = summarize(recs, {**info, "target": 0.1})
    _check_against_reference(high, recs, hib=True)
    assert [s["clip"] for s in high["settings"]] == ["global_norm:1.0", "none"]
    assert _setting(high, "global_norm:1.0")["best_lr"] == 1e-2
    mse = {**info, "metric": "mse", "higher_is_better": False, "target": 0.6,
           "baseline": 1.0}
    low = summarize(recs, mse)
    _check_against_reference(low, recs, hib=False)
    assert [s["clip"] for s in low["settings"]] == ["none", "global_norm:1.0"]
    best = low["settings"][0]
    assert best["best_lr"] == 1e-3 and best["mean"] == pytest.approx(0.21)
    assert best["worst"] == pytest.approx(0.22)
    assert "mse 0.21" in low["recommendation"]["text"]
    # equal means: more window points first, although its label sorts later
    tie: Spec = {"none": {1e-3: [(0.5, True)] * 2, 1e-2: [(0.5, True)] * 2},
           "global_norm:1.0": {1e-3: [(0.5, True)] * 2, 1e-2: [(0.2, False)] * 2}}
    s = summarize(_build(records, tie), info)
    assert [x["clip"] for x in s["settings"]] == ["none", "global_norm:1.0"]
    # a real but small difference decides before the window does; 1e-10 does not
    small: Spec = {"none": {1e-3: [(0.5, True)] * 2, 1e-2: [(0.5, True)] * 2},
             "global_norm:1.0": {1e-3: [(0.51, True)] * 2, 1e-2: [(0.2, False)] * 2}}
    s = summarize(_build(records, small), info)
    assert [x["clip"] for x in s["settings"]] == ["global_norm:1.0", "none"]
    small["global_norm:1.0"][1e-3] = [(0.5 + 1e-10, True)] * 2
    s = summarize(_build(records, small), info)
    assert [x["clip"] for x in s["settings"]] == ["none", "global_norm:1.0"]
    # equal means and windows: the better worst seed first
    tie2: Spec = {"none": {1e-3: [(0.4, True), (0.6, True)]},
            "global_norm:1.0": {1e-3: [(0.5, True), (0.5, True)]}}
    s = summarize(_build(records, tie2), info)
    assert [x["clip"] for x in s["settings"]] == ["global_norm:1.0", "none"]
    s = summarize(_build(records, tie2), {**info, "higher_is_better": False, "target": 1.0})
    assert [x["clip"] for x in s["settings"]] == ["global_norm:1.0", "none"]


def test_a_setting_that_never_finished_ranks_last(real: Any) -> None:
    records, info = real
    spec: Spec = {"none": {1e-3: ["diverged", "diverged"], 1e-2: ["diverged", (0.1, False)]},
            "global_norm:1.0": {1e-3: [(0.2, False), (0.25, False)],
                                1e-2: [(0.15, False), (0.1, False)]}}
    recs = _build(records, spec)
    summary = summarize(recs, info)
    _check_against_reference(summary, recs, hib=True)
    last = summary["settings"][-1]
    assert last["clip"] == "none" and last["never_finished"] and last["best_lr"] is None
    assert last["diverged"] == 3 and last["untrained"] == 1
    rec = summary["recommendation"]
    # nothing reached the target: say so, and name the closest setting
    assert "nothing_trained" in rec["flags"]
    assert rec["text"].startswith("Nothing trained")
    assert "global_norm:1.0" in rec["text"] and "0.225" in rec["text"]
    assert "Without clipping adam never finished every seed" in rec["text"]
    # finishing without training is no gain: clipping did not help, it converted divergences
    (effect,) = summary["clipping"]
    assert effect["verdict"] == "no measurable effect" and effect["delta_metric"] is None
    assert (effect["delta_diverged"], effect["delta_untrained"]) == (-3, 3)
    assert "turned divergences into finite runs that still did not train" in rec["text"]
    assert "clipping_never_helped" in rec["flags"]
    head, rows = _report._ranking_table(summary)
    assert rows[-1][head.index("mean accuracy ± std")] == "never finished on every seed"


def test_nothing_finished(real: Any) -> None:
    records, info = real
    spec: Spec = {"none": {1e-3: ["diverged", "error"]}}
    summary = summarize(_build(records, spec), info)
    rec = summary["recommendation"]
    assert rec["setting"] is None and "nothing_trained" in rec["flags"]
    assert "Nothing trained: no setting had a learning rate at which every seed finished" \
        in rec["text"]
    assert "1 of 2 runs diverged" in rec["text"]


def test_clipping_within_noise_helped_and_hurt(real: Any) -> None:
    records, info = real
    noisy: Spec = {"none": {1e-3: [(0.5, True), (0.7, True)], 1e-2: [(0.1, False)] * 2},
             "global_norm:1.0": {1e-3: [(0.55, True), (0.7, True)],
                                 1e-2: [(0.1, False)] * 2}}
    summary = summarize(_build(records, noisy), info)
    (effect,) = summary["clipping"]
    assert effect["metric_words"] == "within seed noise"
    assert effect["verdict"] == "no measurable effect"
    text = summary["recommendation"]["text"]
    assert "global_norm:1.0" in text and "within seed noise" in text
    assert "top_two_within_noise" in summary["recommendation"]["flags"]
    assert "runner-up" in text
    # clipping helps beyond seed noise and widens the window
    helped: Spec = {"none": {1e-3: [(0.5, True), (0.51, True)], 1e-2: ["diverged", "diverged"]},
              "global_norm:1.0": {1e-3: [(0.8, True), (0.81, True)],
                                  1e-2: [(0.7, True), (0.72, True)]}}
    summary = summarize(_build(records, helped), info)
    (effect,) = summary["clipping"]
    assert effect["metric_words"] == "better beyond seed noise"
    assert effect["verdict"] == "helped" and effect["delta_window_points"] == 1
    assert effect["delta_diverged"] == -2 and effect["delta_untrained"] == 0
    assert effect["delta_metric"] == pytest.approx(0.3)
    text = summary["recommendation"]["text"]
    assert text.startswith("Use adam with clip global_norm:1.0 at lr 0.001")
    assert "Without clipping adam reached 0.505 (worse than the clipped 0.805 beyond seed " \
        "noise) and trained at 1 grid point versus 2: clipping helped here." in text
    assert "clipping helped here" in text
    assert "top_two_within_noise" not in summary["recommendation"]["flags"]
    # clipping hurts, and turns divergences into finite runs that do not train
    hurt: Spec = {"none": {1e-3: [(0.8, True), (0.81, True)], 1e-2: ["diverged", "diverged"]},
            "global_norm:1.0": {1e-3: [(0.5, True), (0.51, True)],
                                1e-2: [(0.1, False), (0.1, False)]}}
    summary = summarize(_build(records, hurt), info)
    (effect,) = summary["clipping"]
    assert effect["verdict"] == "hurt" and effect["metric_words"] == "worse beyond seed noise"
    assert (effect["delta_diverged"], effect["delta_untrained"]) == (-2, 2)
    rec = summary["recommendation"]
    assert rec["text"].startswith("Use adam without clipping at lr 0.001")
    assert "Clipping did not help adam" in rec["text"]
    assert "clipping_never_helped" in rec["flags"]
    assert "turned divergences into finite runs that still did not train" in rec["text"]
    # clipping makes more runs diverge
    worse: Spec = {"none": {1e-3: [(0.8, True), (0.81, True)], 1e-2: [(0.2, False)] * 2},
                   "global_norm:1.0": {1e-3: [(0.8, True), "diverged"],
                                       1e-2: ["diverged", "diverged"]}}
    summary = summarize(_build(records, worse), info)
    (effect,) = summary["clipping"]
    assert effect["delta_diverged"] == 3 and effect["verdict"] == "hurt"
    assert "Clipping increased the number of diverged runs for adam with global_norm:1.0 " \
        "(3 versus 0)" in summary["recommendation"]["text"]


@pytest.mark.parametrize(("clipped", "unclipped", "words"), [
    ((0.525, 0.545), (0.50, 0.52), "within seed noise"),  # > either std, < 2 standard errors
    ((0.53, 0.55), (0.50, 0.52), "better beyond seed noise"),  # > 2 standard errors
    ((0.65, 0.65), (0.50, 0.70), "within seed noise"),  # < the larger std
    ((0.35, 0.35), (0.50, 0.70), "worse beyond seed noise"),
])
def test_seed_noise(real: Any, clipped: tuple[float, float], unclipped: tuple[float, float],
                    words: str) -> None:
    records, info = real
    spec: Spec = {"none": {1e-3: [(m, True) for m in unclipped]},
            "global_norm:1.0": {1e-3: [(m, True) for m in clipped]}}
    (effect,) = summarize(_build(records, spec), info)["clipping"]
    assert effect["metric_words"] == words
    a, b = statistics.stdev(clipped), statistics.stdev(unclipped)
    assert effect["noise"] == pytest.approx(max(a, b, 2 * math.sqrt(a**2 / 2 + b**2 / 2)))


def test_best_lr_at_the_grid_edge_and_baseline(real: Any) -> None:
    records, info = real
    spec: Spec = {"none": {1e-3: [(0.2, False)] * 2, 1e-2: [(0.5, True), (0.6, True)]}}
    rec = summarize(_build(records, spec), info)["recommendation"]
    assert "best_lr_at_high_edge" in rec["flags"]
    assert "highest in the grid" in rec["text"] and "extend the grid above 0.01" in rec["text"]
    spec = {"none": {1e-3: [(0.08, False)] * 2, 1e-2: [(0.05, False)] * 2}}
    rec = summarize(_build(records, spec), info)["recommendation"]
    assert "best_lr_at_low_edge" in rec["flags"] and "no_better_than_baseline" in rec["flags"]
    assert "extend the grid below 0.001" in rec["text"]


# -- the files --------------------------------------------------------------------------------
class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.open: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in ("meta", "img", "br", "hr", "link", "input"):
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, (tag, self.open[-5:])
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _md_ranking(md: str) -> list[dict[str, str]]:
    section = md.split("## Ranking\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    head = [c.strip() for c in rows[0].strip("|").split(" | ")]
    return [dict(zip(head, (c.strip() for c in row.strip("|").split(" | ")), strict=True))
            for row in rows[2:]]


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]


def test_write_report_files(real: Any, tmp_path: Path) -> None:
    records, info = real
    lrs = (1e-4, *LRS)
    # the real runs plus an LR where one seed diverged (None in its curves and norms)
    extra = _build(records, {"none": {1e-4: [(0.31, True), "diverged"]},
                             "global_norm:1.0": {1e-4: [(0.2, False), (0.25, False)]}})
    recs = records + extra
    meta = _meta(info, recs)
    meta["grid"]["lrs"]["adam"] = list(lrs)
    paths = write_report(tmp_path, recs, meta)
    assert set(paths) == {"html", "markdown", "summary", "plots"}
    assert [p.name for p in paths["plots"]] == [f"{n}.png" for n in _report.PLOT_NAMES]
    assert not _leftovers(tmp_path)

    summary = json.loads(paths["summary"].read_text())
    expected = summarize(recs, info, grid=meta["grid"], total_runs=meta["total_runs"])
    assert summary == json.loads(json.dumps(expected))
    _check_against_reference(summary, recs, hib=True)

    page = paths["html"].read_text()
    parser = _Tags()
    parser.feed(page)
    parser.close()
    assert not parser.open
    names = [t for t, _ in parser.tags]
    assert {"html", "head", "style", "title", "body", "table", "details", "figure"} <= set(names)
    assert "script" not in names and "link" not in names
    imgs = [a for t, a in parser.tags if t == "img"]
    assert len(imgs) == len(paths["plots"]) == 4
    files = {p.read_bytes() for p in paths["plots"]}
    for attrs in imgs:
        src = attrs["src"] or ""
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data.startswith(PNG) and data in files
    for _, attrs in parser.tags:
        for key in ("src", "href"):
            value = (attrs.get(key) or "").lower()
            assert not value.startswith(("http:", "https:", "//")), value
    text = " ".join(" ".join(parser.text).split())
    assert f"{len(recs)} of {len(recs)} runs finished" in text
    assert "a run counts as trained when validation accuracy ≥ 0.3" in text
    assert summary["recommendation"]["lines"][0] in text
    assert meta["command"] in text
    # the per-run table holds every run, inside <details>
    details = page.split("<details>", 1)[1]
    assert details.count("<tr>") == len(recs) + 1
    assert "non-finite gradients for 3 consecutive steps" in details

    md = paths["markdown"].read_text()
    for name in _report.PLOT_NAMES:
        assert f"](plots/{name}.png)" in md
    assert meta["command"] in md and summary["recommendation"]["lines"][0] in md
    rows = _md_ranking(md)
    assert len(rows) == len(summary["settings"])
    for row, s in zip(rows, summary["settings"], strict=True):
        assert int(row["rank"]) == s["rank"]
        assert (row["optimizer"], row["clip"], row["schedule"]) == \
            (s["optimizer"], s["clip"], s["schedule"])
        if s["never_finished"]:
            assert row["best LR"] == "—"
            continue
        assert float(row["best LR"]) == s["best_lr"]
        mean, std = (float(x) for x in row["mean accuracy ± std"].split(" ± "))
        assert mean == pytest.approx(s["mean"], rel=1e-3)
        assert std == pytest.approx(s["std"], rel=1e-2, abs=1e-9)
        assert float(row["worst seed"]) == pytest.approx(s["worst"], rel=1e-3)
        assert row["trained / runs"] == f"{s['trained']} / {s['runs']}"
        assert int(row["diverged"]) == s["diverged"]
        assert int(row["finite, untrained"]) == s["untrained"]
        assert float(row["% steps clipped"]) == pytest.approx(s["clipped_pct"], abs=0.05)
        assert int(row["skipped steps"]) == s["skipped_steps"]
        w = s["window"]
        assert row["stable LR window"] == (
            "none" if not w["points"] else f"{w['low']:g} (1 pt)" if w["points"] == 1
            else f"{w['low']:g}–{w['high']:g} ({w['points']} pts)")
    best = summary["settings"][0]
    rec = summary["recommendation"]["text"]
    desc = "without clipping" if best["clip"] == "none" else f"with clip {best['clip']}"
    assert f"adam {desc} at lr {best['best_lr']:g}" in rec
    assert f"lr {best['best_lr']:g}" in rec and f"{best['mean']:.3g}" in rec


def test_incomplete_sweep_is_reported(real: Any, tmp_path: Path) -> None:
    records, info = real
    recs = records[:-1]  # the last seed of the last setting never finished
    meta = _meta(info, recs, total=len(records) + 4)
    paths = write_report(tmp_path, recs, meta)
    summary = json.loads(paths["summary"].read_text())
    assert not summary["complete"] and summary["total_runs"] == 12
    rec = summary["recommendation"]
    assert "incomplete" in rec["flags"]
    assert rec["lines"][0].startswith("The sweep is incomplete: 7 of 12 runs finished")
    md = paths["markdown"].read_text()
    assert "7 of 12 runs finished" in md and "incomplete" in md
    assert "7 of 12 runs finished" in paths["html"].read_text()
    last = _setting(summary, records[-1]["config"]["clip"])
    cell = next(p for p in last["per_lr"] if p["lr"] == records[-1]["config"]["lr"])
    assert cell["seeds"] == 1 and not cell["complete"] and not cell["trains"]
    assert not cell["all_ok"]


def test_failed_report_leaves_the_old_one_intact(real: Any, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    records, info = real
    paths = write_report(tmp_path, records, _meta(info, records))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert len(before) == 7

    def broken(*args: Any) -> bytes:
        raise RuntimeError("plot failed")

    monkeypatch.setattr(_report, "_plot_grad_norms", broken)
    with pytest.raises(RuntimeError, match="plot failed"):
        write_report(tmp_path, records[:3], _meta(info, records[:3], total=8))
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
    assert "8 of 8 runs finished" in paths["html"].read_text()
    assert not _leftovers(tmp_path)
    # a failure while writing (after rendering) leaves no temp file behind either
    monkeypatch.undo()

    def failing_replace(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_report(tmp_path, records[:3], _meta(info, records[:3], total=8))
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_empty_sweep_report(real: Any, tmp_path: Path) -> None:
    _, info = real
    paths = write_report(tmp_path / "new", [], _meta(info, [], total=6))
    summary = json.loads(paths["summary"].read_text())
    assert summary["settings"] == [] and summary["recommendation"]["setting"] is None
    md = paths["markdown"].read_text()
    assert "0 of 6 runs finished" in md and "No runs finished" in md
    assert all(p.read_bytes().startswith(PNG) for p in paths["plots"])


def test_markdown_escapes_the_users_text(real: Any, tmp_path: Path) -> None:
    """A custom task's name, description and metric name are the user's text: report.md must
    not carry their HTML raw (issue 14, item 9); report.html escapes it too."""
    records, info = real
    hostile = "<img src=x onerror=alert(1)>"
    info = {**info, "name": f"mine{hostile}", "description": f"about {hostile} & more",
            "metric": f"acc<b>{hostile}"}
    meta = _meta(info, records)
    meta["command"] = f"gradguard compare --task 'mine:make' # {hostile}"
    paths = write_report(tmp_path, records, meta)
    md = paths["markdown"].read_text()
    body = md.split("```")[0] + md.split("```")[-1]  # outside the command's code block
    assert "<img" not in body and "<b>" not in body
    assert "mine&lt;img src=x onerror=alert(1)&gt;" in md
    assert hostile in md.split("```")[1]  # the command, shown as typed, in its code block
    assert hostile not in paths["html"].read_text()
