"""``gradguard lr-find``: the LR range test of a task's model, its plan and its checks."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from .. import tasks
from ..clip import VALID_FORMS as CLIP_FORMS
from ..compare._grid import OPTIMIZERS, canonical_clip
from ..compare._plan import HARD_LIMITS, LIMITS, checked_pace, duration
from ..lr_finder import RULES
from ._common import (
    _cannot_write,
    _folder,
    _get_task,
    _nonempty,
    _positive_float,
    _positive_int,
    _task_choices,
    _writable_dir,
)


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

    from ..compare._grid import make_optimizer
    from ..lr_finder import find_lr

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
