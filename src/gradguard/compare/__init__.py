"""Sweeps of training runs and their report: what ``gradguard compare`` is made of.

- :func:`plan_sweep` turns a request (task, optimizers, clip specs, schedules, learning rates,
  seeds, steps) into a :class:`SweepPlan`: its run configurations, checked and counted against
  the limits, as ``gradguard compare`` plans them; :meth:`SweepPlan.estimate` says how many
  runs are left to train and how long they take here (:class:`SweepEstimate`);
- :func:`expand` builds the grid of :class:`RunConfig` (optimizers x clip specs x schedules x
  learning rates x seeds) for a task (:mod:`gradguard.tasks`);
- :func:`train_one` trains one configuration and returns its record (plain JSON data);
- :func:`run_sweep` trains a grid on all cores, writing each record atomically as it ends, so
  an interrupted sweep resumes where it stopped;
- :func:`summarize` ranks the settings, finds each one's stable learning-rate window and the
  effect of clipping; :func:`write_report` writes ``report.html`` (plots embedded),
  ``report.md`` and ``summary.json``.
"""

from ._grid import DEFAULT_LRS, OPTIMIZERS, RunConfig, expand, log_grid, make_optimizer, parse_lrs
from ._plan import MAIN_JOB, Pace, SweepEstimate, SweepPlan, plan_sweep
from ._report import summarize, write_report
from ._run import read_record, train_one, write_json
from ._sweep import SweepResult, load_records, run_sweep

__all__ = [
    "DEFAULT_LRS",
    "MAIN_JOB",
    "OPTIMIZERS",
    "Pace",
    "RunConfig",
    "SweepEstimate",
    "SweepPlan",
    "SweepResult",
    "expand",
    "load_records",
    "log_grid",
    "make_optimizer",
    "parse_lrs",
    "plan_sweep",
    "read_record",
    "run_sweep",
    "summarize",
    "train_one",
    "write_json",
    "write_report",
]
