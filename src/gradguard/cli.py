"""The ``gradguard`` command: ``compare``, ``report``, ``lr-find``, ``bench`` and ``tasks``.

``gradguard compare`` with no arguments runs the main job (see :data:`MAIN_JOB`); every
subcommand has ``--help``. Bad input exits with status 2 and a message listing the valid
choices; an interrupted sweep (Ctrl-C) keeps every finished run, writes the report of what
finished, and exits with status 130 — running the same command again resumes it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from . import __version__, tasks
from ._files import FolderBusy, folder_lock
from .clip import VALID_FORMS as CLIP_FORMS
from .compare._grid import OPTIMIZERS, RunConfig, canonical_clip
from .compare._plan import (
    HARD_LIMITS,
    LIMITS,
    MAIN_JOB,
    TASK_DEFAULTS,
    SweepPlan,
    checked_pace,
    duration,
    plan_sweep,
)
from .lr_finder import RULES
from .schedules import VALID_FORMS as SCHEDULE_FORMS

__all__ = ["MAIN_JOB", "main"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_Num = TypeVar("_Num", int, float)


def _positive(convert: Callable[[str], _Num], must: str) -> Callable[[str], _Num]:
    """An argparse ``type``: ``convert(text)``, which must be > 0 (``must`` says so in words)."""
    def parse(text: str) -> _Num:
        try:
            value: _Num | None = convert(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be {must}")
        return value

    return parse


_positive_int = _positive(int, "an integer >= 1")


def _nonempty(text: str) -> str:
    """An argparse ``type`` for names, lists and specs: an empty value is refused, never read
    as "the default"; so is a NUL character, which no name, spec or path can hold."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must not be empty (leave the "
                                         "option out for its default)")
    if "\x00" in text:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: holds a NUL character")
    return text


def _folder(text: str) -> Path:
    """An argparse ``type`` for --out: a non-empty path (an empty one would mean the current
    folder)."""
    return Path(_nonempty(text))
_positive_float = _positive(float, "a number > 0")


def _task_choices() -> str:
    return ", ".join(tasks.names()) + ", or module:function (a function returning a Task)"


def _writable_dir(ap: argparse.ArgumentParser, path: Path, option: str) -> Path:
    """Create ``path`` and check a file can be written there, or exit 2."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        why = (e.strerror if isinstance(e, OSError) else None) or e
        ap.error(f"invalid {option} {str(path)!r}: cannot write there ({why}); "
                 "choose a folder you can write to")
    return path


def _cannot_write(ap: argparse.ArgumentParser, e: OSError, folder: Path, kept: str) -> NoReturn:
    """Exit 2 for a failed write (a full disk, a folder gone read-only), naming the file and
    the folder and saying what was kept."""
    name = e.filename or "a file"
    ap.exit(EXIT_USAGE, f"{ap.prog}: error: cannot write {name} in {folder} "
                        f"({e.strerror or e}); {kept}. Free space there (or choose another "
                        "folder) and run the same command again.\n")


def _get_task(ap: argparse.ArgumentParser, name: str) -> tasks.Task:
    if name not in tasks.names() and ":" not in name:
        ap.error(f"invalid --task {name!r}; valid choices: {_task_choices()}")
    try:
        return tasks.get(name)
    except ValueError as e:
        ap.error(f"invalid --task {name!r}: {e}")
    except ImportError as e:
        ap.error(f"--task {name!r} cannot be loaded: {e}")


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


def _holder(e: FolderBusy) -> str:
    h = e.holder
    if not h:
        return "another gradguard process is writing there"
    return f"{h.get('command')!r} (pid {h.get('pid')}, started {h.get('started')}) is writing there"


def _compare_in(ap: argparse.ArgumentParser, args: argparse.Namespace, task: tasks.Task,
                plan: SweepPlan, out: Path) -> int:
    """The sweep, once ``out`` is this process's alone."""
    from .compare._report import write_report
    from .compare._run import write_json
    from .compare._sweep import load_records, run_sweep, scan_records

    configs = plan.configs
    meta = {
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
    from .compare._records import check_sweep

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
    from .compare._report import write_report
    from .compare._sweep import scan_records

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


# -- lr-find ---------------------------------------------------------------------------------
def _add_lr_find(sub: Any) -> None:
    p = sub.add_parser("lr-find", help="LR range test on a task: suggests an LR and a clip",
                       description="Run the LR range test (Smith 2017) on a task's model: the "
                                   "LR grows each step; the loss curve gives a suggested LR "
                                   "and the gradient norms a clip threshold.")
    p.add_argument("--task", default="digits", type=_nonempty,
                   help=f"the task: {_task_choices()}")
    p.add_argument("--optimizer", default="adam", choices=list(OPTIMIZERS), metavar="NAME",
                   help="one of: " + ", ".join(OPTIMIZERS) + " (default: adam)")
    p.add_argument("--clip", default="none", type=_nonempty,
                   help="clip spec used during the test (default: none); one of: " + CLIP_FORMS)
    p.add_argument("--start-lr", type=_positive_float, default=1e-7)
    p.add_argument("--end-lr", type=_positive_float, default=10.0)
    p.add_argument("--steps", type=_positive_int, default=100, help="sweep steps (100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rule", default=RULES[0], choices=list(RULES),
                   help="which suggestion to give (default: minimum, a tenth of the LR at the "
                        "smoothed loss's minimum, which trained most often on the built-in "
                        "tasks; the README has the table); all three are in lr_finder.json")
    p.add_argument("--out", type=_folder, help="folder for lr_finder.json and lr_finder.png "
                   "(default: gradguard-runs/lr-find-TASK-OPTIMIZER)")
    p.add_argument("--insist", action="store_true",
                   help=f"run a range test that takes more than {duration(LIMITS['seconds'])} "
                        "at the pace measured here")
    p.set_defaults(func=_lr_find, parser=p)


def _lr_find(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import torch

    from .compare._grid import make_optimizer
    from .lr_finder import find_lr

    task = _get_task(ap, args.task)
    try:
        clip = canonical_clip(args.clip)
    except (ValueError, TypeError) as e:
        ap.error(f"invalid --clip {args.clip!r}: {e}")
    for name, value in (("--start-lr", args.start_lr), ("--end-lr", args.end_lr)):
        if not math.isfinite(value):
            ap.error(f"invalid {name} {value:g}: must be a finite number > 0")
    if args.steps < 2:
        ap.error(f"invalid --steps {args.steps}: the range test needs at least 2 steps")
    if args.steps > HARD_LIMITS["steps"]:
        ap.error(f"invalid --steps {args.steps}: at most {HARD_LIMITS['steps']:,} (the result "
                 "keeps numbers for every step)")
    if not 0 <= args.seed < 2**63:
        ap.error(f"invalid --seed {args.seed}: must be an integer in [0, 2**63)")
    if args.start_lr >= args.end_lr:
        ap.error(f"invalid --start-lr {args.start_lr:g}: must be below --end-lr "
                 f"{args.end_lr:g}")
    out = _writable_dir(ap, args.out or Path("gradguard-runs")
                        / f"lr-find-{task.name}-{args.optimizer}", "--out")
    try:
        pace = checked_pace(task, args.optimizer, args.start_lr, clip, task.batch_size)
    except ValueError as e:
        ap.error(str(e))
    seconds = args.steps * pace.step
    print(f"plan: {args.steps} steps, about {duration(seconds)} at the pace measured here "
          f"({pace.step * 1e3:.3g} ms a step)", file=sys.stderr)
    if seconds > LIMITS["seconds"] and not args.insist:
        ap.error(f"refusing a range test this long: about {duration(seconds)} is more than "
                 f"{duration(LIMITS['seconds'])}; give fewer --steps, or add --insist")
    torch.manual_seed(args.seed)
    model = task.build_model()
    opt = make_optimizer(args.optimizer, model.parameters(), args.start_lr, clip)
    draw = tasks.batches(task, torch.Generator().manual_seed(args.seed))
    try:
        result = find_lr(model, task.loss_fn, draw, opt, start_lr=args.start_lr,
                         end_lr=args.end_lr, num_steps=args.steps, rule=args.rule,
                         output_dir=out)
    except OSError as e:
        _cannot_write(ap, e, out, "earlier files there are as they were")
    print(f"task {task.name}, {args.optimizer}, clip {clip}, {len(result.lrs)} steps "
          f"({result.stop_reason}" + (f": {result.divergence}" if result.divergence else "")
          + (f" at lr {result.lrs[result.diverged_at]:.3g})" if result.diverged_at is not None
             else ")"))
    if result.suggestion is not None:
        others = ", ".join(f"{rule} {getattr(result, rule):.3g}" for rule in RULES
                           if rule != result.rule and getattr(result, rule) is not None)
        print(f"suggested lr: {result.suggestion:.3g} ({result.rule} rule)"
              + (f"; the other rules: {others}" if others else ""))
    else:
        print("suggested lr: none — " + (result.message or "the loss never fell"))
    if result.suggested_clip is not None:
        print(f"suggested clip: global_norm:{result.suggested_clip:.3g} (90th percentile of "
              "the gradient norms before the loss minimum)")
    print(f"files: {out / 'lr_finder.json'}" + (f", {out / 'lr_finder.png'}"
                                                if (out / "lr_finder.png").exists() else ""))
    return 0


# -- bench, tasks ----------------------------------------------------------------------------
def _add_bench(sub: Any) -> None:
    from . import bench

    p = sub.add_parser("bench", help="time the clipped step against torch",
                       description=(bench.__doc__ or "").split("\n\n")[0],
                       epilog="e.g. gradguard bench --sizes 25 --optimizers adamw,rmsprop "
                              "--reps 5 --train")
    bench.add_arguments(p)
    p.set_defaults(func=lambda ap, args: bench.run(args, ap), parser=p)


def _add_tasks(sub: Any) -> None:
    p = sub.add_parser("tasks", help="list the built-in tasks",
                       description="The built-in tasks: real data shipped with Python "
                                   "packages, a model, a metric and a default budget.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_tasks, parser=p)


def _tasks(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    infos = []
    for name in tasks.names():
        try:
            infos.append(tasks.get(name).info())
        except ImportError as e:
            infos.append({"name": name, "description": str(e)})
    if args.json:
        print(json.dumps(infos, indent=2))
        return 0
    print("| task | what | parameters | train / val | metric (trained at) | steps × batch |")
    print("|---|---|---|---|---|---|")
    summaries = tasks.summaries()
    for info in infos:
        if "metric" not in info:
            print(f"| {info['name']} | {info['description']} | | | | |")
            continue
        arrow = "≥" if info["higher_is_better"] else "≤"
        print(f"| {info['name']} | {summaries[info['name']]} | {info['parameters']:,} | "
              f"{info['train_examples']:,} / {info['val_examples']:,} | {info['metric']} "
              f"({arrow} {info['target']:g}) | {info['steps']} × {info['batch_size']} |")
    print("\nA task of your own: --task module:function, where function() returns a "
          "gradguard.tasks.Task.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gradguard",
                 description="Compare optimizers, gradient clipping and schedules on real "
                             "tasks; find learning rates; benchmark the clipped step.")
    ap.add_argument("--version", action="version", version=f"gradguard {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    _add_compare(sub)
    _add_report(sub)
    _add_lr_find(sub)
    _add_bench(sub)
    _add_tasks(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gradguard`` command with ``argv`` (default: ``sys.argv[1:]``)."""
    ap = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)
    args.argv = argv
    if args.command is None:
        ap.print_help()
        return EXIT_USAGE
    sub = args.parser
    try:
        code: int = args.func(sub, args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":
    raise SystemExit(main())
