"""``gradguard compare`` and ``gradguard report``: the options, the sweep's folder and
messages. What the sweep runs is :func:`gradguard.compare.plan_sweep`'s to decide."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__, tasks
from .._files import FolderBusy, folder_lock
from ..clip import VALID_FORMS as CLIP_FORMS
from ..compare._grid import OPTIMIZERS, RunConfig
from ..compare._plan import LIMITS, MAIN_JOB, TASK_DEFAULTS, SweepPlan, duration, plan_sweep
from ..schedules import VALID_FORMS as SCHEDULE_FORMS
from ._common import (
    EXIT_INTERRUPTED,
    _cannot_write,
    _folder,
    _get_task,
    _nonempty,
    _positive_int,
    _task_choices,
    _writable_dir,
)


# -- compare ---------------------------------------------------------------------------------
def _add_compare(sub: Any) -> None:
    p = sub.add_parser(
        "compare", help="train a task with a grid of settings and write a report",
        description="Train a task's model with every combination of optimizers x clip specs x "
                    "schedules x learning rates x seeds, save each run as it ends, and write "
                    "a report (report.html, report.md) ranking the settings. With no "
                    "arguments: the main job (digits; Adam with five clip settings and four "
                    "other optimizers with and without global-norm clipping; 3 seeds). "
                    "Re-running the same command resumes: finished runs are not trained again.",
        epilog="examples:\n  gradguard compare\n  gradguard compare --task adding "
               "--optimizers adam,sgd,rmsprop --clip none,global_norm:1,zclip:2.5 "
               "--lr 1e-4:1:9 --seeds 3",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", type=_nonempty,
                   help=f"the task: {_task_choices()} (default: digits)")
    p.add_argument("--optimizers", type=_nonempty,
                   help="comma-separated, from: " + ", ".join(OPTIMIZERS)
                   + f" (default with --task: {TASK_DEFAULTS['optimizers']})")
    p.add_argument("--clip", type=_nonempty,
                   help="comma-separated clip specs, each one of: " + CLIP_FORMS
                   + f" (default with --task: {TASK_DEFAULTS['clip']})")
    p.add_argument("--schedule", action="append", type=_nonempty,
                   help="a schedule spec; repeat the option (or separate specs with ';') for "
                        "several (default: constant). Forms: " + SCHEDULE_FORMS)
    p.add_argument("--lr", default="auto",
                   help="learning rates: LO:HI:N (N log-spaced from LO to HI), a "
                        "comma-separated list, or auto: each optimizer's default range for the "
                        "task (default: auto)")
    p.add_argument("--seeds", type=_positive_int, help="seeds per learning rate (default: 2; "
                   "3 for the main job)")
    p.add_argument("--steps", type=_positive_int, help="training steps per run (default: the "
                   "task's budget)")
    p.add_argument("--batch-size", type=_positive_int, help="default: the task's")
    p.add_argument("--eval-every", type=_positive_int, help="steps between evaluations "
                   "(default: the task's)")
    p.add_argument("--workers", type=_positive_int,
                   help=f"parallel training processes (default: one per core, {os.cpu_count()})")
    p.add_argument("--out", type=_folder, help="output folder (default: gradguard-runs/TASK)")
    p.add_argument("--fresh", action="store_true",
                   help="train every run again instead of reusing finished runs in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--insist", action="store_true",
                   help=f"run a sweep past the sizes called absurd (more than "
                        f"{LIMITS['runs']:,} runs, or more than "
                        f"{duration(LIMITS['seconds'])} at the pace measured here)")
    p.set_defaults(func=_compare, parser=p)


def _compare(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    task = _get_task(ap, args.task or MAIN_JOB["task"])
    try:
        plan = plan_sweep(args.task, optimizers=args.optimizers, clips=args.clip,
                          schedules=args.schedule, lrs=args.lr, seeds=args.seeds,
                          steps=args.steps, batch_size=args.batch_size,
                          eval_every=args.eval_every, insist=args.insist)
    except ValueError as e:
        ap.error(str(e))
    default_out = Path("gradguard-runs") / ("main" if plan.main_job else task.name)
    out = _writable_dir(ap, args.out or default_out, "--out")
    command = "gradguard " + shlex.join(args.argv)
    try:
        with folder_lock(out, command):
            return _compare_in(ap, args, task, plan, out)
    except FolderBusy as e:
        ap.error(f"--out {str(out)!r} is in use: {_holder(e)}. Wait for it to end (then this "
                 "command reuses its finished runs), or choose another --out")


def _compare_in(ap: argparse.ArgumentParser, args: argparse.Namespace, task: tasks.Task,
                plan: SweepPlan, out: Path) -> int:
    """The sweep, once ``out`` is this process's alone."""
    from ..compare._report import write_report
    from ..compare._run import write_json
    from ..compare._sweep import load_records, run_sweep, scan_records

    configs = plan.configs
    meta: dict[str, Any] = {
        "grid": plan.grid,
        "total_runs": len(configs),
        "task": task.info(),
        "command": "gradguard " + shlex.join(args.argv),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "configs": [c.as_dict() for c in configs],
        "version": __version__,
    }
    workers = args.workers or os.cpu_count() or 1
    print(f"gradguard compare: task {task.name} — {len(configs)} runs "
          f"({len(plan.optimizers)} optimizers, {len(plan.clips)} clip settings, "
          f"{len(plan.schedules)} schedules, {plan.seeds} seeds), {plan.steps} steps each, "
          f"{workers} workers -> {out}", file=sys.stderr)
    scanned = None if args.fresh else scan_records(out, configs)
    try:
        estimate = plan.estimate(workers, () if scanned is None else scanned[0])
        print(estimate.describe(), file=sys.stderr)
        estimate.check(args.insist)
    except ValueError as e:
        ap.error(str(e))
    try:
        write_json(out / "sweep.json", meta)
    except OSError as e:
        _cannot_write(ap, e, out, "nothing was trained and earlier results there are kept")
    try:
        result = run_sweep(configs, out, workers=workers, resume=not args.fresh,
                           progress=not args.no_progress, scanned=scanned)
    except OSError as e:
        saved = len(load_records(out, configs))
        _cannot_write(ap, e, out, f"the sweep stopped; {saved} of {len(configs)} finished runs "
                                  f"are saved in {out / 'runs'}")
    if result.reused:
        print(f"reused {result.reused} finished runs from {out / 'runs'}", file=sys.stderr)
    if result.rejected:
        print(f"{len(result.rejected)} saved records failed their check and were trained "
              f"again: " + _named(result.rejected), file=sys.stderr)
    if not result.records:
        print("interrupted before any run finished; nothing to report", file=sys.stderr)
        return EXIT_INTERRUPTED if result.interrupted else 1
    try:
        paths = write_report(out, result.records, meta)
    except OSError as e:
        _cannot_write(ap, e, out, f"all {len(result.records)} finished runs are saved in "
                                  f"{out / 'runs'} and the earlier report, if any, is as it was")
    _print_summary(paths)
    if result.interrupted:
        if len(result.records) == len(configs):  # Ctrl-C came after the last run
            print(f"\ninterrupted after the last run: all {len(configs)} runs are saved in "
                  f"{out / 'runs'} and the report is complete", file=sys.stderr)
        else:
            print(f"\ninterrupted: {len(result.records)} of {len(configs)} runs are saved in "
                  f"{out / 'runs'}; run the same command again to finish the sweep",
                  file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"\n{len(configs)} runs ({result.trained_now} trained now, {result.reused} reused) "
          f"in {result.seconds:.0f} s", file=sys.stderr)
    return 0


def _holder(e: FolderBusy) -> str:
    h = e.holder
    if not h:
        return "another gradguard process is writing there"
    return f"{h.get('command')!r} (pid {h.get('pid')}, started {h.get('started')}) is writing there"


def _named(rejected: Sequence[tuple[Path, str]], shown: int = 5) -> str:
    """``file (what is wrong)`` for the first few rejected records."""
    text = "; ".join(f"{path.name} ({problem})" for path, problem in rejected[:shown])
    return text + (f"; and {len(rejected) - shown} more" if len(rejected) > shown else "")


def _print_summary(paths: dict[str, Any]) -> None:
    print(Path(paths["markdown"]).read_text())
    print(f"report: {paths['html']}\nsummary: {paths['markdown']}", file=sys.stderr)


# -- report ----------------------------------------------------------------------------------
def _add_report(sub: Any) -> None:
    p = sub.add_parser("report", help="write the report again from a compare folder",
                       description="Rebuild report.html, report.md and summary.json from the "
                                   "runs saved in a `gradguard compare` output folder.")
    p.add_argument("folder", type=Path, help="the --out folder of gradguard compare")
    p.set_defaults(func=_report, parser=p)


def _report(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from ..compare._records import check_sweep

    sweep_file = args.folder / "sweep.json"
    try:
        meta = json.loads(sweep_file.read_text())
    except (OSError, ValueError) as e:
        ap.error(f"invalid folder {str(args.folder)!r}: no readable sweep.json of gradguard "
                 f"compare there ({e})")
    problem = check_sweep(meta)
    if problem:
        ap.error(f"invalid folder {str(args.folder)!r}: {sweep_file} is not a sweep.json of "
                 f"gradguard compare: {problem}")
    configs = [RunConfig(**c) for c in meta["configs"]]
    _writable_dir(ap, args.folder, "folder")
    try:
        with folder_lock(args.folder, "gradguard " + shlex.join(args.argv)):
            return _report_in(ap, args, meta, configs)
    except FolderBusy as e:
        ap.error(f"invalid folder {str(args.folder)!r}: {_holder(e)}; its report is written "
                 "when it ends (or run this again then)")


def _report_in(ap: argparse.ArgumentParser, args: argparse.Namespace, meta: dict[str, Any],
               configs: list[RunConfig]) -> int:
    from ..compare._report import write_report
    from ..compare._sweep import scan_records

    found, rejected = scan_records(args.folder, configs)
    if rejected:
        print(f"left out {len(rejected)} saved records that failed their check: "
              + _named(rejected), file=sys.stderr)
        meta["left_out"] = [{"file": str(path.relative_to(args.folder)), "problem": problem}
                            for path, problem in rejected]
    records = [found[c.run_id] for c in configs if c.run_id in found]
    if not records:
        ap.error(f"invalid folder {str(args.folder)!r}: none of its {len(configs)} runs has "
                 "a finished record that passes its check")
    try:
        paths = write_report(args.folder, records, meta)
    except OSError as e:
        _cannot_write(ap, e, args.folder, "the runs and the earlier report, if any, are as "
                                          "they were")
    _print_summary(paths)
    return 0
