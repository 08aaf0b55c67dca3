"""Which LR-finder rule suggests a learning rate that trains (minimum, valley or steepest),
on every built-in task, against the best learning rate of a grid.

For each task and optimizer: ``gradguard lr-find`` (its defaults: 100 steps from 1e-7 to 10;
range-test seeds ``--finder-seeds``) gives the three rules' suggestions (minimum: a tenth of
the LR at the smoothed loss's minimum, none when the loss fell less than 5%; valley;
steepest); one ``gradguard compare`` sweep then trains the task's full budget at the
optimizer's grid of learning rates and at the suggestions, 3 seeds each, unclipped. The table
has each LR's mean final validation metric over the seeds and how many seeds reached the
task's target (— : the rule gave no suggestion); a suggestion *trains* when every seed did.

    .venv/bin/python benchmarks/lr_rules.py [--tasks digits,mnist,adding,charlm]
        [--optimizers adam,momentum] [--seeds 3] [--finder-seeds 0,1]
        [--out gradguard-runs/lr-rules]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gradguard import tasks
from gradguard.cli import main as gradguard
from gradguard.compare._grid import DEFAULT_LRS

RULES = ("minimum", "valley", "steepest")


def _lr(x: float) -> float:
    return float(f"{x:.3g}")


def _cell(entry: dict[str, Any] | None, hib: bool) -> str:
    if entry is None:
        return "—"
    mean = entry["mean"]
    # (a finite mean can still be huge: a seed that blew up without reaching inf)
    shown = "diverged" if mean is None else f"{mean:.3f}" if abs(mean) < 1e4 else f"{mean:.3g}"
    return f"{shown} ({entry['trained']}/{entry['seeds']})"


def _score(entry: dict[str, Any] | None, hib: bool) -> tuple[int, float]:
    """Bigger is better: seeds trained first, then the mean metric."""
    if entry is None or entry["mean"] is None:
        return (entry["trained"] if entry else 0, -float("inf"))
    return (entry["trained"], entry["mean"] if hib else -entry["mean"])


def one(task_name: str, optimizer: str, seeds: int, out: Path,
        finder_seed: int = 0) -> dict[str, Any]:
    task = tasks.get(task_name)
    finder = out / f"lr-find-{task_name}-{optimizer}" / f"seed{finder_seed}"
    if gradguard(["lr-find", "--task", task_name, "--optimizer", optimizer,
                  "--seed", str(finder_seed), "--out", str(finder)]) != 0:
        raise SystemExit(f"lr-find failed on {task_name} {optimizer}")
    found = json.loads((finder / "lr_finder.json").read_text())
    rules = {rule: _lr(found[rule]) for rule in RULES if found.get(rule)}
    grid = list(task.lrs.get(optimizer, DEFAULT_LRS[optimizer]))
    lrs = sorted(set(grid) | set(rules.values()))
    sweep = out / f"compare-{task_name}-{optimizer}"
    code = gradguard(["compare", "--task", task_name, "--optimizers", optimizer, "--clip",
                      "none", "--lr", ",".join(f"{x:g}" for x in lrs), "--seeds", str(seeds),
                      "--no-progress", "--out", str(sweep)])
    if code != 0:
        raise SystemExit(f"compare failed on {task_name} {optimizer}")
    summary = json.loads((sweep / "summary.json").read_text())
    (setting,) = summary["settings"]
    by_lr = {_lr(p["lr"]): p for p in setting["per_lr"]}
    hib = bool(summary["task"]["higher_is_better"])
    grid_entries = [by_lr[_lr(x)] for x in grid]
    best = max(grid_entries, key=lambda e: _score(e, hib))
    return {"task": task_name, "optimizer": optimizer, "hib": hib,
            "metric": summary["task"]["metric"], "target": summary["task"]["target"],
            "stop": found["stop_reason"], "rules": rules,
            "at": {rule: by_lr.get(lr) for rule, lr in rules.items()},
            "grid_best": best}




def table(rows: list[dict[str, Any]]) -> list[str]:
    head = "| task (metric, target) | optimizer | " + " | ".join(
        f"{r} lr | at {r}" for r in RULES) + " | grid's best lr | at grid's best | best rule |"
    lines = [head, "|" + "---|" * (5 + 2 * len(RULES))]
    wins = dict.fromkeys(RULES, 0)
    trains = dict.fromkeys(RULES, 0)
    wrong = dict.fromkeys(RULES, 0)
    for r in rows:
        hib = r["hib"]
        scores = {rule: _score(r["at"].get(rule), hib) for rule in RULES}
        top = max(scores.values())
        best = [rule for rule in RULES if scores[rule] == top]
        for rule in best:
            wins[rule] += 1
        for rule in RULES:
            e = r["at"].get(rule)
            trains[rule] += bool(e and e["trained"] == e["seeds"])
            wrong[rule] += bool(e and e["trained"] < e["seeds"])
        arrow = "≥" if hib else "≤"
        cells = " | ".join(f"{r['rules'].get(rule, '—')} | {_cell(r['at'].get(rule), hib)}"
                           for rule in RULES)
        lines.append(f"| {r['task']} ({r['metric']} {arrow} {r['target']:g}) | "
                     f"{r['optimizer']}, range test seed {r.get('finder_seed', 0)} | {cells} | "
                     f"{r['grid_best']['lr']:g} | "
                     f"{_cell(r['grid_best'], hib)} | {', '.join(best)} |")
    lines.append("")
    lines.append(f"Of {len(rows)} range tests: " + "; ".join(
        f"{rule}: best {wins[rule]}, every seed trained {trains[rule]}, a suggestion where "
        f"a seed did not train {wrong[rule]}, no suggestion "
        f"{len(rows) - trains[rule] - wrong[rule]}" for rule in RULES)
        + " (best: most seeds trained, then the best mean metric; ties count for each).")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--tasks", default=",".join(tasks.names()))
    ap.add_argument("--optimizers", default="adam,momentum")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--finder-seeds", default="0",
                    help="seeds of the range test, comma-separated (0): each gives its own "
                         "suggestions, each trained with --seeds seeds")
    ap.add_argument("--out", type=Path, default=Path("gradguard-runs/lr-rules"))
    args = ap.parse_args()
    rows = []
    for finder_seed in (int(x) for x in args.finder_seeds.split(",")):
        for task_name in args.tasks.split(","):
            for optimizer in args.optimizers.split(","):
                print(f"== {task_name} {optimizer} range test seed {finder_seed}",
                      file=sys.stderr, flush=True)
                rows.append({**one(task_name, optimizer, args.seeds, args.out, finder_seed),
                             "finder_seed": finder_seed})
            print("\n".join(table(rows)), file=sys.stderr, flush=True)
    (args.out / "lr_rules.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
