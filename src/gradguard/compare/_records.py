"""Run records read back from disk: checked field by field, verdicts derived from the numbers.

A record on disk is a claim anyone can edit. :func:`check_record` checks every field's type
and value and the fields' agreement with each other and with the run's configuration;
:func:`derive` recomputes what follows from the numbers (``trained`` from the final metric
and the task's target, ``best_metric`` from the evaluation curve, the clipped and skipped
step counts from the per-step flags), so a hand-edited ``"trained": true`` changes nothing.
:func:`check_task_info` checks the task description a sweep saved (``sweep.json``), which
holds the target.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["STATUSES", "check_config", "check_record", "check_sweep", "check_task_info",
           "derive", "reached"]

STATUSES = ("ok", "diverged", "error")
_CURVES = ("step", "train_loss", "val_loss", "metric", "lr")


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _finite(x: Any) -> bool:
    return _is_num(x) and math.isfinite(x)


def _opt_finite(x: Any) -> bool:
    """A finite number or None (a record writes non-finite numbers as None)."""
    return x is None or _finite(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_task_info(info: Any) -> str | None:
    """What is wrong with a saved task description (``Task.info()``'s dict), or None.

    >>> check_task_info({"name": "t", "metric": "mse", "higher_is_better": False,
    ...                  "target": 0.05})
    >>> check_task_info({"name": "t", "metric": "mse", "higher_is_better": "no",
    ...                  "target": 0.05})
    "task.higher_is_better is 'no'; expected true or false"
    """
    if not isinstance(info, Mapping):
        return f"task is {info!r}; expected an object"
    if not isinstance(info.get("name"), str) or not info["name"]:
        return f"task.name is {info.get('name')!r}; expected a non-empty string"
    if not isinstance(info.get("metric"), str):
        return f"task.metric is {info.get('metric')!r}; expected a string"
    if not isinstance(info.get("higher_is_better"), bool):
        return f"task.higher_is_better is {info.get('higher_is_better')!r}; expected true or false"
    if not _finite(info.get("target")):
        return f"task.target is {info.get('target')!r}; expected a finite number"
    if not _opt_finite(info.get("baseline")):
        return f"task.baseline is {info.get('baseline')!r}; expected a finite number or null"
    return None


_CONFIG_TYPES: dict[str, str] = {"task": "str", "optimizer": "str", "clip": "str",
                                 "schedule": "str", "lr": "num", "seed": "int", "steps": "int",
                                 "batch_size": "int", "eval_every": "int"}


def check_config(cfg: Any, where: str = "config") -> str | None:
    """What is wrong with a saved run configuration (``RunConfig.as_dict()``), or None."""
    if not isinstance(cfg, Mapping):
        return f"{where} is {_short(cfg)}; expected an object"
    if set(cfg) != set(_CONFIG_TYPES):
        return (f"{where} has the fields {sorted(cfg)}; expected "
                f"{sorted(_CONFIG_TYPES)}")
    for key, kind in _CONFIG_TYPES.items():
        v = cfg[key]
        if kind == "str" and not (isinstance(v, str) and v):
            return f"{where}.{key} is {_short(v)}; expected a non-empty string"
        if kind == "num" and not (_finite(v) and v > 0):
            return f"{where}.{key} is {_short(v)}; expected a finite number > 0"
        if kind == "int" and not (_is_int(v) and v >= (0 if key == "seed" else 1)):
            return (f"{where}.{key} is {_short(v)}; expected an integer >= "
                    f"{0 if key == 'seed' else 1}")
    return None


def check_sweep(meta: Any) -> str | None:
    """What is wrong with a sweep's ``sweep.json`` (as ``gradguard compare`` writes it), or
    None: the task, the list of run configurations, the grid's seeds and learning rates and
    the planned number of runs are checked."""
    if not isinstance(meta, Mapping):
        return f"the file holds {_short(meta)}; expected an object"
    problem = check_task_info(meta.get("task"))
    if problem:
        return problem
    configs = meta.get("configs")
    if not isinstance(configs, list) or not configs:
        return f"configs is {_short(configs)}; expected a non-empty list"
    for i, cfg in enumerate(configs):
        problem = check_config(cfg, f"configs[{i}]")
        if problem:
            return problem
    grid = meta.get("grid")
    if not isinstance(grid, Mapping):
        return f"grid is {_short(grid)}; expected an object"
    if not (_is_int(grid.get("seeds")) and grid["seeds"] >= 1):
        return f"grid.seeds is {_short(grid.get('seeds'))}; expected an integer >= 1"
    lrs = grid.get("lrs")
    if not isinstance(lrs, Mapping) or not all(
            isinstance(v, list) and v and all(_finite(x) and x > 0 for x in v)
            for v in lrs.values()):
        return f"grid.lrs is {_short(lrs)}; expected {{optimizer: [learning rates > 0]}}"
    total = meta.get("total_runs")
    if not (_is_int(total) and total == len(configs)):
        return f"total_runs is {_short(total)}; expected {len(configs)} (the configs listed)"
    return None


def reached(metric: Any, task: Mapping[str, Any]) -> bool:
    """Whether ``metric`` (a final validation metric) reaches ``task``'s target: finite and
    ``>= target`` when higher is better, ``<= target`` otherwise (as :meth:`Task.trained`).

    >>> reached(0.81, {"higher_is_better": True, "target": 0.8})
    True
    >>> reached(None, {"higher_is_better": True, "target": 0.8})
    False
    """
    target = task.get("target")
    if not _finite(metric) or not _finite(target):
        return False
    hib = task.get("higher_is_better", True)
    return bool(metric >= target) if hib else bool(metric <= target)


def _check_list(where: str, values: Any, n: int | None,
                ok: Any, expected: str) -> str | None:
    if not isinstance(values, list):
        return f"{where} is {_short(values)}; expected a list"
    if n is not None and len(values) != n:
        return f"{where} has {len(values)} entries; expected {n}"
    for i, v in enumerate(values):
        if not ok(v):
            return f"{where}[{i}] is {_short(v)}; expected {expected}"
    return None


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def check_record(rec: Any, config: Mapping[str, Any] | None = None) -> str | None:
    """What is wrong with a run record read from disk, or None when it holds together.

    Checked: every field ``train_one`` writes has its type (numbers are finite or null,
    flags are 0 or 1, counts are integers); ``status`` is one of :data:`STATUSES`; a run with
    status ``ok`` did every step and has a finite final validation loss and metric equal to
    its curve's last point, a run without has no final metric; the curves have one entry per
    evaluation and their steps rise from 0 to ``steps_done``; the per-step gradient lists
    have ``steps_done`` entries; and, when ``config`` is given, the record is that run's.
    """
    if not isinstance(rec, Mapping):
        return f"the record is {_short(rec)}; expected an object"
    cfg: Any = rec.get("config")
    problem = check_config(cfg)
    if problem:
        return problem
    if config is not None and dict(cfg) != dict(config):
        return "config is not this run's configuration"
    if not isinstance(rec.get("id"), str):
        return f"id is {_short(rec.get('id'))}; expected a string"
    steps = cfg["steps"]
    status = rec.get("status")
    if status not in STATUSES:
        return f"status is {_short(status)}; expected one of {', '.join(STATUSES)}"
    if not (rec.get("error") is None or isinstance(rec.get("error"), str)):
        return f"error is {_short(rec.get('error'))}; expected a string or null"
    done: Any = rec.get("steps_done")
    if not _is_int(done) or not 0 <= done <= steps:
        return f"steps_done is {_short(done)}; expected an integer from 0 to {steps}"
    if status == "ok" and done != steps:
        return f"status is ok but steps_done is {done} of {steps}"
    if not _opt_finite(rec.get("seconds")) or (rec.get("seconds") or 0) < 0:
        return f"seconds is {_short(rec.get('seconds'))}; expected a number >= 0"

    final = rec.get("final")
    if not isinstance(final, Mapping):
        return f"final is {_short(final)}; expected an object"
    for key in ("train_loss", "val_loss", "metric"):
        if not _opt_finite(final.get(key)):
            return f"final.{key} is {_short(final.get(key))}; expected a finite number or null"
    if status == "ok":
        for key in ("val_loss", "metric"):
            if final.get(key) is None:
                return f"status is ok but final.{key} is null"
    elif final.get("metric") is not None:
        return f"status is {status} but final.metric is {final['metric']!r}; expected null"

    curves = rec.get("curves")
    if not isinstance(curves, Mapping):
        return f"curves is {_short(curves)}; expected an object"
    points = curves.get("step")
    if not isinstance(points, list) or not points:
        return f"curves.step is {_short(points)}; expected a non-empty list"
    problem = _check_list("curves.step", points, None,
                          lambda v: _is_int(v) and 0 <= v <= done,
                          f"an integer from 0 to steps_done ({done})")
    if problem:
        return problem
    if points[0] != 0 or any(b <= a for a, b in itertools.pairwise(points)):
        return "curves.step does not rise from 0"
    if status == "ok" and points[-1] != done:
        return f"curves.step ends at {points[-1]}; a finished run's ends at {done}"
    for key in _CURVES[1:]:
        problem = _check_list(f"curves.{key}", curves.get(key), len(points), _opt_finite,
                              "a finite number or null")
        if problem:
            return problem
    if status == "ok" and curves["metric"][-1] != final["metric"]:
        return (f"final.metric is {final['metric']!r} but the curve ends at "
                f"{curves['metric'][-1]!r}")

    grad = rec.get("grad")
    if not isinstance(grad, Mapping):
        return f"grad is {_short(grad)}; expected an object"
    problem = _check_list("grad.norm", grad.get("norm"), done,
                          lambda v: v is None or (_finite(v) and v >= 0),
                          "a finite number >= 0 or null")
    if problem:
        return problem
    if grad.get("threshold") is not None:
        problem = _check_list("grad.threshold", grad["threshold"], done,
                              lambda v: v is None or (_finite(v) and v >= 0),
                              "a finite number >= 0 or null")
        if problem:
            return problem
    for key in ("clipped", "skipped"):
        problem = _check_list(f"grad.{key}", grad.get(key), done,
                              lambda v: _is_int(v) and v in (0, 1), "0 or 1")
        if problem:
            return problem
    return None


def derive(rec: Mapping[str, Any], task: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a checked record whose verdicts are recomputed from its numbers: ``trained``
    (status ok and the final metric reaches ``task``'s target), ``best_metric`` (the best
    finite point of the metric curve), ``clipped_steps`` and ``skipped_steps`` (sums of the
    per-step flags). Whatever the record said of them is replaced.

    >>> rec = {"status": "ok", "trained": True, "final": {"metric": 0.5},
    ...        "curves": {"metric": [0.1, 0.5]}, "grad": {"clipped": [1, 0], "skipped": [0, 0]}}
    >>> d = derive(rec, {"higher_is_better": True, "target": 0.8})
    >>> d["trained"], d["best_metric"], d["clipped_steps"]
    (False, 0.5, 1)
    """
    hib = bool(task.get("higher_is_better", True))
    metrics = [m for m in rec["curves"]["metric"] if _finite(m)]
    best = (max(metrics) if hib else min(metrics)) if metrics else None
    return {
        **rec,
        "trained": rec["status"] == "ok" and reached(rec["final"]["metric"], task),
        "best_metric": best,
        "clipped_steps": sum(rec["grad"]["clipped"]),
        "skipped_steps": sum(rec["grad"]["skipped"]),
    }
