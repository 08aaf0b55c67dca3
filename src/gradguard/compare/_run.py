"""One training run of a sweep, and the record it leaves on disk."""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from .._files import write_atomic
from ..clip import ClipPolicy
from ..errors import NonFiniteGradientError
from ..schedules import parse as parse_schedule
from ..schedules._spec import _takes_metrics
from ..tasks import Task, batches
from ._grid import RunConfig, make_optimizer
from ._records import derive

__all__ = ["SCHEMA", "read_record", "train_one", "write_atomic", "write_json"]

SCHEMA = 1


def _num(x: float) -> float | None:
    """A finite float rounded to 6 significant digits, or None (JSON has no NaN)."""
    x = float(x)
    return float(f"{x:.6g}") if math.isfinite(x) else None


def _nums(values: list[float]) -> list[float | None]:
    return [_num(v) for v in values]


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON (no NaN: non-finite numbers must already be None) atomically."""
    write_atomic(path, json.dumps(data, allow_nan=False, separators=(",", ":")).encode())


def read_record(path: Path) -> dict[str, Any] | None:
    """A saved run record, or None if the file is missing, unreadable or of another schema."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        return None
    return data


def train_one(task: Task, cfg: RunConfig) -> dict[str, Any]:
    """Train ``task``'s model once as ``cfg`` says and return the run's record.

    The record (plain JSON data) holds the configuration, ``status`` (``ok``; ``diverged``
    when the loss or the parameters stopped being finite, or the guard gave up after repeated
    non-finite steps; ``error`` with the message for anything else), ``trained`` (the final
    metric reached the task's target), final and best numbers, evaluation curves (train loss
    averaged over each interval, validation loss and metric, LR) and per-step gradient
    statistics (pre-clip norm, clip threshold, clipped and skipped flags).
    """
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = task.build_model()
    model.train()
    opt = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.clip)
    sched = None if cfg.schedule == "constant" else parse_schedule(cfg.schedule, opt, cfg.steps)
    takes_metrics = sched is not None and _takes_metrics(sched)
    draw = batches(task, torch.Generator().manual_seed(10_000 + cfg.seed), cfg.batch_size)
    policy: ClipPolicy | None = getattr(opt, "clip", None)
    # AutoClip and ZClip have a threshold only once they have stepped.
    has_thr = policy is not None and policy.has_threshold

    n = cfg.steps
    norms = torch.full((n,), math.nan)
    thresholds = torch.full((n,), math.nan)
    clipped = torch.zeros(n, dtype=torch.bool)
    skipped = torch.zeros(n, dtype=torch.bool)
    losses = torch.full((n,), math.nan)
    curves: dict[str, list[Any]] = {"step": [], "train_loss": [], "val_loss": [], "metric": [],
                                    "lr": []}
    status, error = "ok", None
    smooth, smooth_w = 0.0, 0.0

    def evaluate(step: int) -> None:
        val_loss, metric = task.evaluate(model)
        lo = max(0, step - cfg.eval_every)
        window = losses[lo:step]
        finite = window[torch.isfinite(window)]
        curves["step"].append(step)
        curves["train_loss"].append(_num(float(finite.mean())) if finite.numel() else None)
        curves["val_loss"].append(_num(val_loss))
        curves["metric"].append(_num(metric))
        curves["lr"].append(_num(opt.param_groups[0]["lr"]))

    done = 0
    try:
        evaluate(0)
        for t in range(n):
            x, y = draw()
            opt.zero_grad(set_to_none=True)
            loss = task.loss_fn(model(x), y)
            loss.backward()
            opt.step()
            rec = opt.last_step  # type: ignore[attr-defined]
            losses[t] = loss.detach()
            norms[t] = rec.grad_norm
            clipped[t] = rec.clipped
            skipped[t] = rec.skipped
            if has_thr:
                thr = policy.threshold if policy is not None else None
                if thr is not None:
                    thresholds[t] = thr
            done = t + 1
            if sched is not None:
                if takes_metrics:
                    value = float(loss)
                    if math.isfinite(value):
                        smooth = 0.9 * smooth + 0.1 * value
                        smooth_w = 0.9 * smooth_w + 0.1
                    sched.step(smooth / smooth_w if smooth_w else value)  # type: ignore[arg-type]
                else:
                    sched.step()
            if done % cfg.eval_every == 0 or done == n:
                evaluate(done)
                if curves["val_loss"][-1] is None and curves["train_loss"][-1] is None:
                    status = "diverged"
                    break
    except NonFiniteGradientError as e:
        status, error = "diverged", str(e).splitlines()[0]
    except (RuntimeError, ValueError, FloatingPointError) as e:
        status, error = "error", f"{type(e).__name__}: {e}"
    if status == "ok" and not all(torch.isfinite(p).all() for p in model.parameters()):
        status = "diverged"
    if status != "ok" and (not curves["step"] or curves["step"][-1] != done):
        with contextlib.suppress(RuntimeError, ValueError):
            evaluate(done)
    final_metric = curves["metric"][-1] if curves["metric"] else None
    if status != "ok":
        final_metric = None
    record = {
        "schema": SCHEMA,
        "id": cfg.run_id,
        "config": cfg.as_dict(),
        "status": status,
        "error": error,
        "final": {
            "train_loss": curves["train_loss"][-1] if curves["train_loss"] else None,
            "val_loss": curves["val_loss"][-1] if status == "ok" else None,
            "metric": final_metric,
        },
        "curves": curves,
        "grad": {
            "norm": _nums(norms[:done].tolist()),
            "threshold": _nums(thresholds[:done].tolist()) if has_thr else None,
            "clipped": [int(v) for v in clipped[:done].tolist()],
            "skipped": [int(v) for v in skipped[:done].tolist()],
        },
        "steps_done": done,
        "seconds": round(time.perf_counter() - start, 3),
    }
    # trained, best_metric, clipped_steps, skipped_steps: worked out as a report reading
    # this record back works them out, in one place
    return derive(record, {"higher_is_better": task.higher_is_better, "target": task.target})
