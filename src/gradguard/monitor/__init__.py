"""Training-health monitor: per-step and per-layer gradient statistics from what the guarded
step already gathered, detectors with actionable messages, writers (JSONL, CSV, TensorBoard),
plots and a summary. See :class:`Monitor` and :func:`report`."""

from ._detectors import (
    ClipRate,
    Detector,
    Explosion,
    Finding,
    Skips,
    Vanishing,
    default_detectors,
)
from ._monitor import Monitor, MonitorWarning
from ._writers import (
    CSVWriter,
    JSONLWriter,
    Report,
    TensorBoardWriter,
    Writer,
    flatten,
    load_records,
    plot_records,
    report,
    summarize,
)

__all__ = [
    "CSVWriter",
    "ClipRate",
    "Detector",
    "Explosion",
    "Finding",
    "JSONLWriter",
    "Monitor",
    "MonitorWarning",
    "Report",
    "Skips",
    "TensorBoardWriter",
    "Vanishing",
    "Writer",
    "default_detectors",
    "flatten",
    "load_records",
    "plot_records",
    "report",
    "summarize",
]
