"""How big a piece of work is before it starts: what a sweep will run (:func:`plan_sweep`),
the measured pace of a task's training step, what a sweep or a range test will take at that
pace (:meth:`SweepPlan.estimate`), and the sizes called absurd.

A command states its plan (runs, steps, the time they take here) before it starts, and refuses
a plan past :data:`LIMITS` unless the user insists (``--insist``). Sizes that cannot be held in
memory at all (:data:`HARD_LIMITS`) are refused even then.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import tasks
from ..clip import VALID_FORMS as CLIP_FORMS
from ..schedules import VALID_FORMS as SCHEDULE_FORMS
from ..tasks import Task, batches
from ._grid import (
    DEFAULT_LRS,
    MAX_LRS,
    OPTIMIZERS,
    RunConfig,
    canonical_clip,
    check_schedule,
    expand,
    make_optimizer,
    parse_lrs,
    parse_names,
)

__all__ = ["HARD_LIMITS", "LIMITS", "MAIN_JOB", "TASK_DEFAULTS", "Pace", "SweepEstimate",
           "SweepPlan", "checked_pace", "duration", "measure_pace", "plan_sweep"]

#: past these a command asks for ``--insist``
LIMITS = {"runs": 10_000, "seconds": 24 * 3600.0}
#: past these nothing runs: the plan itself (sweep.json lists every run; a record holds a
#: number per step) would not fit in memory
HARD_LIMITS = {"runs": 1_000_000, "steps": 10_000_000, "batch_size": 1_000_000}

#: The main job, what :func:`plan_sweep` plans when none of the grid is given (and
#: ``gradguard compare`` runs with no arguments): Adam with every kind of clipping, and four
#: other classic optimizers with and without global-norm clipping, on the deep tanh MLP of the
#: digits task, 3 seeds each: 234 runs of 800 steps, 3 to 4.5 minutes on 2 cores.
MAIN_JOB: dict[str, Any] = {
    "task": "digits",
    "grids": [
        (["adam"], ["none", "global_norm:1", "agc:0.05", "zclip:2.5", "auto:10"]),
        (["sgd", "momentum", "adamw", "rmsprop"], ["none", "global_norm:1"]),
    ],
    "seeds": 3,
}
#: what :func:`plan_sweep` uses for the parts of the grid left out when some of it is given
TASK_DEFAULTS: dict[str, Any] = {"optimizers": "adam,momentum", "clip": "none,global_norm:1",
                                 "seeds": 2}


@dataclass(frozen=True)
class Pace:
    """Seconds per training step and per evaluation of a task's model, measured here on one
    thread (as each sweep worker runs)."""

    step: float
    evaluation: float

    def run_seconds(self, steps: int, eval_every: int) -> float:
        """One run of ``steps`` steps evaluated every ``eval_every`` steps (and at 0)."""
        return steps * self.step + (math.ceil(steps / eval_every) + 1) * self.evaluation


def measure_pace(task: Task, optimizer: str, lr: float, clip: str, batch_size: int,
                 steps: int = 8, budget: float = 1.0) -> Pace:
    """Time ``task``'s training step (``optimizer`` with ``clip`` at ``lr``, ``batch_size``
    rows) and its evaluation on one thread: a warm-up step, then up to ``steps`` steps or
    ``budget`` seconds, whichever ends first. Errors of the step itself (a batch too large
    for memory) propagate: the caller turns them into a message."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = task.build_model()
        opt = make_optimizer(optimizer, model.parameters(), lr, clip)
        draw = batches(task, torch.Generator().manual_seed(0), batch_size)

        def step() -> None:
            x, y = draw()
            opt.zero_grad(set_to_none=True)
            task.loss_fn(model(x), y).backward()
            opt.step()

        step()
        start, n = time.perf_counter(), 0
        while n < steps and time.perf_counter() - start < budget:
            step()
            n += 1
        per_step = (time.perf_counter() - start) / max(n, 1)
        start = time.perf_counter()
        task.evaluate(model)
        per_eval = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return Pace(per_step, per_eval)


def duration(seconds: float) -> str:
    """A duration for people: ``45 s``, ``12 min``, ``3.5 h``, ``40 days``.

    >>> duration(45), duration(720), duration(12600), duration(3.5e6)
    ('45 s', '12 min', '3.5 h', '41 days')
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds < 365 * 86400 * 100:
        return f"{seconds / 86400:.0f} days"
    return f"{seconds / (365 * 86400):.2g} years"


def checked_pace(task: Task, optimizer: str, lr: float, clip: str, batch_size: int) -> Pace:
    """:func:`measure_pace`, with a step that fails outright (a batch too large for memory, a
    model that does not build) raised as a ValueError that names the task, the optimizer and
    the batch size."""
    try:
        return measure_pace(task, optimizer, lr, clip, batch_size)
    except (RuntimeError, MemoryError, ValueError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"a training step of task {task.name} ({optimizer}, batch size "
                         f"{batch_size}) fails here: {type(e).__name__}: {first}") from e


@dataclass(frozen=True)
class SweepEstimate:
    """What a sweep will take here (see :meth:`SweepPlan.estimate`): the runs still to train,
    how many are already saved, and the seconds they take on ``cores`` cores at ``pace``."""

    todo: tuple[RunConfig, ...]
    saved: int
    workers: int
    cores: int
    seconds: float
    pace: Pace

    def describe(self) -> str:
        """The plan in one line, as ``gradguard compare`` prints it.

        >>> SweepEstimate((), 4, 2, 1, 0.0, Pace(0.005, 0.006)).describe()
        'plan: 0 runs to train (4 already saved), about 0 s on 1 core at the pace measured here (5 ms a step, 6 ms an evaluation)'
        """  # noqa: E501
        cores = self.cores
        return (f"plan: {len(self.todo)} runs to train ({self.saved} already saved), about "
                f"{duration(self.seconds)} on {cores} core{'s' if cores > 1 else ''} at the "
                f"pace measured here ({self.pace.step * 1e3:.3g} ms a step, "
                f"{self.pace.evaluation * 1e3:.3g} ms an evaluation)")

    def check(self, insist: bool = False) -> None:
        """Raise ValueError when the sweep is past :data:`LIMITS` (more than a day of work
        here, or more than 4 workers a core) and not ``insist``. (A sweep of more runs than
        :data:`LIMITS` allows was refused by :func:`plan_sweep`, before its grid was built.)"""
        too_long = self.seconds > LIMITS["seconds"]
        too_wide = self.workers > 4 * (os.cpu_count() or 1)
        if (too_long or too_wide) and not insist:
            why = "; ".join(w for w, bad in (
                (f"about {duration(self.seconds)} is more than {duration(LIMITS['seconds'])}",
                 too_long),
                (f"--workers {self.workers} is more than 4 per core ({os.cpu_count()} cores)",
                 too_wide)) if bad)
            raise ValueError(f"refusing a sweep this size: {why}. Give fewer seeds, learning "
                             "rates, settings or steps, or add --insist to run it anyway")


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep runs (made by :func:`plan_sweep`): its :class:`RunConfig` list, each run
    once, in the order they are trained, and the grid they come from.

    ``optimizers`` and ``clips`` are as given, each once, written the way gradguard writes
    them (``global_norm:1`` is ``global_norm:1.0``); ``schedules`` are as given (a schedule
    given twice is listed twice, its runs planned once); ``lrs`` is each optimizer's learning
    rates; ``eval_every`` is at most ``steps``. ``main_job`` says the plan is
    :data:`MAIN_JOB` (nothing of the grid was given)."""

    task: str
    configs: tuple[RunConfig, ...]
    optimizers: tuple[str, ...]
    clips: tuple[str, ...]
    schedules: tuple[str, ...]
    lrs: Mapping[str, tuple[float, ...]]
    seeds: int
    steps: int
    batch_size: int
    eval_every: int
    main_job: bool = False

    @property
    def grid(self) -> dict[str, Any]:
        """The grid as plain data: the ``grid`` of ``sweep.json``."""
        return {"optimizers": list(self.optimizers), "clips": list(self.clips),
                "schedules": list(self.schedules),
                "lrs": {name: list(lrs) for name, lrs in self.lrs.items()},
                "seeds": self.seeds, "steps": self.steps, "batch_size": self.batch_size,
                "eval_every": self.eval_every}

    def estimate(self, workers: int | None = None, saved: Collection[str] = (),
                 pace: Pace | None = None) -> SweepEstimate:
        """How long the runs not in ``saved`` (run ids, e.g. the keys of
        :func:`~gradguard.compare.load_records` of the output folder) take on ``workers``
        processes (default: one per core), at ``pace`` (default: measured here now, on the
        first run's setting). Raises ValueError when a training step of the task fails
        outright; :meth:`SweepEstimate.check` says whether the sweep is past the limits."""
        if workers is None:
            workers = os.cpu_count() or 1
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"invalid --workers {workers!r}: must be an integer >= 1")
        saved = set(saved)
        todo = tuple(c for c in self.configs if c.run_id not in saved)
        if pace is None:
            first = self.configs[0]
            pace = checked_pace(tasks.get(self.task), first.optimizer, first.lr, first.clip,
                                first.batch_size)
        cores = min(workers, os.cpu_count() or 1, max(len(todo), 1))
        seconds = sum(pace.run_seconds(c.steps, c.eval_every) for c in todo) / cores
        return SweepEstimate(todo, len(self.configs) - len(todo), workers, cores, seconds, pace)


def _joined(value: str | Sequence[str], sep: str, option: str) -> str:
    """``value`` as the command line gives it: one string, its items separated by ``sep``."""
    if isinstance(value, str):
        return value
    items: list[Any]
    try:
        items = list(value)
    except TypeError:  # not a list at all
        items = [value]
    if not all(isinstance(v, str) for v in items):
        raise ValueError(f"invalid {option} {value!r}: must be a string or a list of strings")
    return sep.join(items)


def _count(value: int | None, option: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
        raise ValueError(f"invalid {option} {value!r}: must be an integer >= 1")


def _lr_grid(lrs: str | Sequence[float] | None) -> tuple[float, ...] | None:
    if lrs is None or isinstance(lrs, str):
        return parse_lrs("auto" if lrs is None else lrs)
    try:
        values = list(lrs)
    except TypeError:  # a number, say, not a list of them
        values = []
    if not values or len(values) > MAX_LRS or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            and v > 0 for v in values):
        raise ValueError(f"Invalid --lr: {lrs!r}; give a list of 1 to {MAX_LRS:,} learning "
                         "rates, each a finite number > 0, or a string LO:HI:N, a "
                         "comma-separated list or auto")
    return tuple(sorted({float(v) for v in values}))


def plan_sweep(task: str | None = None, *, optimizers: str | Sequence[str] | None = None,
               clips: str | Sequence[str] | None = None,
               schedules: str | Sequence[str] | None = None,
               lrs: str | Sequence[float] | None = None, seeds: int | None = None,
               steps: int | None = None, batch_size: int | None = None,
               eval_every: int | None = None, insist: bool = False) -> SweepPlan:
    """The runs of a sweep, what ``gradguard compare`` plans from its options of the same
    names (``clips`` is ``--clip``, ``schedules`` is ``--schedule``, ``lrs`` is ``--lr``).

    ``task`` is a built-in task's name or ``"module:function"``; ``optimizers`` and ``clips``
    are comma-separated strings or lists of names and clip specs; ``schedules`` a
    ``;``-separated string or a list of schedule specs; ``lrs`` ``"LO:HI:N"``, a
    comma-separated string, a list of numbers, or ``"auto"`` (each optimizer's range for the
    task); ``seeds`` runs per learning rate; ``steps``, ``batch_size`` and ``eval_every``
    default to the task's. With none of ``task``, ``optimizers``, ``clips``, ``schedules``,
    ``lrs`` (other than ``"auto"``) and ``seeds`` given, the plan is :data:`MAIN_JOB`;
    otherwise the task is digits and the rest defaults to :data:`TASK_DEFAULTS` (Adam and
    momentum SGD, with and without ``global_norm:1``, 2 seeds) and the constant schedule.

    A bad value raises ValueError naming the option (as ``gradguard compare`` spells it), the
    value and what is valid; so does a grid past :data:`HARD_LIMITS` ``["runs"]`` runs, or
    past :data:`LIMITS` ``["runs"]`` without ``insist``, both counted before the grid is
    built. A task that cannot be loaded raises as :func:`gradguard.tasks.get` does.

    >>> plan = plan_sweep("digits", optimizers="adam", clips="none,global_norm:1",
    ...                   lrs=[1e-3, 1e-2], seeds=2, steps=100)
    >>> len(plan.configs), plan.clips, plan.lrs
    (8, ('none', 'global_norm:1.0'), {'adam': (0.001, 0.01)})
    >>> plan.configs[1]
    RunConfig(task='digits', optimizer='adam', clip='none', schedule='constant', lr=0.001, seed=1, steps=100, batch_size=..., eval_every=...)
    >>> plan_sweep("digits", optimizers="adam,rmsprp")
    Traceback (most recent call last):
    ValueError: Invalid --optimizers: 'rmsprp'; valid choices: sgd, momentum, ...
    >>> main = plan_sweep()
    >>> len(main.configs), main.main_job, main.optimizers
    (234, True, ('adam', 'sgd', 'momentum', 'adamw', 'rmsprop'))
    """  # noqa: E501
    for option, value in (("--seeds", seeds), ("--steps", steps), ("--batch-size", batch_size),
                          ("--eval-every", eval_every)):
        _count(value, option)
    main_job = (task is None and optimizers is None and clips is None and schedules is None
                and seeds is None and lrs in (None, "auto"))
    spec = MAIN_JOB["task"] if task is None else task
    if not isinstance(spec, str):
        raise ValueError(f"invalid --task {spec!r}: must be a task's name or module:function")
    the_task = tasks.get(spec)
    steps = steps or the_task.steps
    batch = batch_size or the_task.batch_size
    every = min(eval_every or the_task.eval_every, steps)
    for option, number, why in (("--steps", steps, "a record keeps numbers for every step"),
                                ("--batch-size", batch, "one batch would not fit in memory")):
        limit = HARD_LIMITS[option[2:].replace("-", "_")]
        if number > limit:
            raise ValueError(f"invalid {option} {number}: at most {limit:,} ({why})")
    lr_grid = _lr_grid(lrs)
    scheds = ["constant"]
    if schedules is not None:
        text = _joined(schedules, ";", "--schedule")
        scheds = [s.strip() for s in text.split(";") if s.strip()]
        if not scheds:
            raise ValueError(f"invalid --schedule {text!r}: no schedule spec; valid forms: "
                             f"{SCHEDULE_FORMS}")
    for sched in scheds:
        try:
            check_schedule(sched, steps)
        except (ValueError, TypeError) as e:
            raise ValueError(f"invalid --schedule {sched!r}: {e}") from e
    grids: list[tuple[list[str], str]]
    if main_job:
        grids = [(names, ",".join(specs)) for names, specs in MAIN_JOB["grids"]]
        seeds = MAIN_JOB["seeds"]
    else:
        names = parse_names(_joined(TASK_DEFAULTS["optimizers"] if optimizers is None
                                    else optimizers, ",", "--optimizers"),
                            OPTIMIZERS, "--optimizers")
        grids = [(names, _joined(TASK_DEFAULTS["clip"] if clips is None else clips, ",",
                                 "--clip"))]
        seeds = seeds or TASK_DEFAULTS["seeds"]
    return _build(spec, the_task, grids, scheds, lr_grid, seeds, steps, batch, every, insist,
                  main_job)


def _build(spec: str, task: Task, grids: list[tuple[list[str], str]], schedules: list[str],
           lrs: tuple[float, ...] | None, seeds: int, steps: int, batch: int, every: int,
           insist: bool, main_job: bool) -> SweepPlan:
    """The plan of ``grids`` (optimizer names, comma-separated clip specs), once its clip specs
    are read and its size is within the limits."""
    all_clips: list[str] = []
    parsed: list[tuple[list[str], list[str]]] = []
    planned = 0
    for names, clip_text in grids:
        clips = []
        for text in clip_text.split(","):
            if not text.strip():
                continue
            try:
                clips.append(canonical_clip(text.strip()))
            except (ValueError, TypeError) as e:
                raise ValueError(f"invalid --clip {text.strip()!r}: {e}") from e
        if not clips:
            raise ValueError(f"invalid --clip {clip_text!r}: no clip spec; valid forms: "
                             f"{CLIP_FORMS}")
        all_clips += [c for c in clips if c not in all_clips]
        parsed.append((names, clips))
        for name in names:  # counted before the grid is built: it may be astronomical
            n_lrs = len(lrs) if lrs is not None else len(task.lrs.get(name, DEFAULT_LRS[name]))
            planned += len(clips) * len(schedules) * n_lrs * seeds
    if planned > HARD_LIMITS["runs"]:
        raise ValueError(f"the grid plans {planned:,} runs, more than the "
                         f"{HARD_LIMITS['runs']:,} one sweep can hold (sweep.json lists every "
                         "run), even with --insist; give fewer --seeds, learning rates, "
                         "optimizers, clips or schedules, or split it")
    if planned > LIMITS["runs"] and not insist:
        raise ValueError(f"refusing a sweep this size: {planned:,} runs is more than "
                         f"{LIMITS['runs']:,}. Give fewer seeds, learning rates or settings, "
                         "or add --insist to run it anyway")
    configs: list[RunConfig] = []
    for names, clips in parsed:
        configs += expand(spec, names, clips, schedules, lrs, seeds, steps, batch, every,
                          task.lrs)
    unique = tuple({c.run_id: c for c in configs}.values())
    lr_table: dict[str, dict[float, None]] = {}  # each optimizer's learning rates, in order
    for c in unique:
        lr_table.setdefault(c.optimizer, {})[c.lr] = None
    return SweepPlan(spec, unique, tuple(lr_table), tuple(all_clips), tuple(schedules),
                     {name: tuple(grid) for name, grid in lr_table.items()}, seeds, steps,
                     batch, every, main_job)
