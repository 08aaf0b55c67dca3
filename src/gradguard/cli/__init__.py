"""The ``gradguard`` command: ``compare``, ``report``, ``lr-find``, ``bench`` and ``tasks``.

``gradguard compare`` with no arguments runs the main job (see :data:`MAIN_JOB`); every
subcommand has ``--help``. Bad input exits with status 2 and a message listing the valid
choices; an interrupted sweep (Ctrl-C) keeps every finished run, writes the report of what
finished, and exits with status 130 — running the same command again resumes it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .. import __version__, tasks
from ..compare._plan import MAIN_JOB
from ._common import EXIT_INTERRUPTED, EXIT_USAGE
from ._compare import _add_compare, _add_report
from ._lr_find import _add_lr_find

__all__ = ["MAIN_JOB", "build_parser", "main"]


# -- bench, tasks ----------------------------------------------------------------------------
def _add_bench(sub: Any) -> None:
    from .. import bench

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
