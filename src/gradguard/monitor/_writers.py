"""Where monitor records go: JSONL, CSV, TensorBoard; plots and the summary; ``report``."""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from .._files import figure_bytes, write_atomic
from ._detectors import Detector, Finding, Record, default_detectors


class Writer(Protocol):
    """Anything with ``write(record)`` and ``close()``."""

    def write(self, record: Record) -> None: ...

    def close(self) -> None: ...


class JSONLWriter:
    """One JSON object per record and line, flushed after each record (a crashed run keeps what
    it logged). Reload with :func:`load_records`.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "log.jsonl"
    >>> w = JSONLWriter(path); w.write({"step": 10, "grad_norm": 1.5}); w.close()
    >>> load_records(path)
    [{'step': 10, 'grad_norm': 1.5}]
    """

    def __init__(self, path: str | os.PathLike[str], append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = open(self.path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115

    def write(self, record: Record) -> None:
        if self._file is None:
            raise ValueError(f"JSONLWriter({str(self.path)!r}) is closed")
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def flatten(record: Record) -> dict[str, Any]:
    """A record as one flat row: ``layers`` become ``<layer>/<stat>`` columns, lists are joined
    with ``;``.

    >>> flatten({"step": 1, "layers": {"fc.weight": {"grad_norm": 2.0}}, "findings": []})
    {'step': 1, 'fc.weight/grad_norm': 2.0, 'findings': ''}
    """
    row: dict[str, Any] = {}
    for key, value in record.items():
        if key == "layers":
            for name, stats in value.items():
                for stat, v in stats.items():
                    row[f"{name}/{stat}"] = v
        elif isinstance(value, list):
            row[key] = ";".join("" if v is None else str(v) for v in value)
        else:
            row[key] = value
    return row


class CSVWriter:
    """One row per record (see :func:`flatten`); the columns are those of the first record.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "log.csv"
    >>> w = CSVWriter(path); w.write({"step": 10, "lr": 0.1}); w.close()
    >>> path.read_text().splitlines()
    ['step,lr', '10,0.1']
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = open(self.path, "w", encoding="utf-8", newline="")  # noqa: SIM115
        self._writer: csv.DictWriter[str] | None = None

    def write(self, record: Record) -> None:
        if self._file is None:
            raise ValueError(f"CSVWriter({str(self.path)!r}) is closed")
        row = flatten(record)
        if self._writer is None:
            self._writer = csv.DictWriter(self._file, fieldnames=list(row), extrasaction="ignore")
            self._writer.writeheader()
        self._writer.writerow(row)
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TensorBoardWriter:
    """Scalars for TensorBoard (needs the ``tensorboard`` package; imported when made).

    Tags: ``grad_norm/pre_clip`` (every step), ``grad_norm/post_clip``, ``clip/rate``,
    ``clip/scale_min``, ``clip/threshold``, ``steps/skipped``, ``lr``, and per layer
    ``layer_grad_norm/<name>``, ``param_norm/<name>``, ``update_ratio/<name>``; findings as
    text under ``findings``.
    """

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("TensorBoardWriter needs tensorboard: pip install tensorboard") from e
        self.log_dir = str(log_dir)
        self._w: Any = SummaryWriter(log_dir=self.log_dir)

    def write(self, record: Record) -> None:
        step = record["step"]
        for i, v in enumerate(record.get("grad_norm_steps", [])):
            if v is not None:
                self._w.add_scalar("grad_norm/pre_clip", v, record["step_first"] + i)
        for tag, key in (("grad_norm/post_clip", "grad_norm_clipped"), ("clip/rate", "clip_rate"),
                         ("clip/scale_min", "clip_scale_min"),
                         ("clip/threshold", "clip_threshold"), ("steps/skipped", "skipped"),
                         ("lr", "lr")):
            if record.get(key) is not None:
                self._w.add_scalar(tag, record[key], step)
        for name, stats in record.get("layers", {}).items():
            for stat, tag in (("grad_norm", "layer_grad_norm"), ("param_norm", "param_norm"),
                              ("update_ratio", "update_ratio")):
                if stats.get(stat) is not None:
                    self._w.add_scalar(f"{tag}/{name}", stats[stat], step)
        for text in record.get("findings", []):
            self._w.add_text("findings", text, step)
        self._w.flush()

    def close(self) -> None:
        self._w.close()


def load_records(path: str | os.PathLike[str]) -> list[Record]:
    """The records of a JSONL log written by :class:`JSONLWriter`."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Invalid log_path: {str(path)!r}; no such file")
    out: list[Record] = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"Invalid log_path: {str(path)!r}; line {n} is not JSON "
                                     f"({e.msg})") from e
    return out


# -- summary ---------------------------------------------------------------------------------
def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def summarize(records: Sequence[Record], findings: Sequence[Finding] = ()) -> str:
    """A plain-text summary of a run: steps, gradient norms, clipping, skips, LR, per-layer
    table (last record) and the findings.

    >>> print(summarize([]))
    gradguard monitor: no steps recorded
    """
    if not records:
        return "gradguard monitor: no steps recorded"
    norms = [v for r in records for v in r.get("grad_norm_steps", []) if v is not None]
    applied = sum(r["applied"] for r in records)
    clipped = sum(r["clipped"] for r in records)
    skipped = sum(r["skipped"] for r in records)
    last = records[-1]
    lines = [f"gradguard monitor: {last['step']} steps, {len(records)} records",
             f"  grad norm (pre-clip): first {_fmt(norms[0] if norms else None)}, median "
             f"{_fmt(statistics.median(norms) if norms else None)}, max "
             f"{_fmt(max(norms) if norms else None)}, last {_fmt(last.get('grad_norm'))}",
             f"  clip {last.get('clip')}: {clipped}/{applied} applied steps clipped "
             f"({clipped / applied:.1%})" if applied else f"  clip {last.get('clip')}: -",
             f"  skipped steps (non-finite): {skipped}",
             f"  lr: {_fmt(records[0].get('lr'))} -> {_fmt(last.get('lr'))}"]
    layers = last.get("layers", {})
    if layers:
        width = max(12, *(len(n) for n in layers))
        lines.append(f"  {'layer':<{width}}  {'grad norm':>10}  {'param norm':>10}  "
                     f"{'update/param':>12}")
        for name, s in layers.items():
            lines.append(f"  {name:<{width}}  {_fmt(s.get('grad_norm')):>10}  "
                         f"{_fmt(s.get('param_norm')):>10}  {_fmt(s.get('update_ratio')):>12}")
    if findings:
        lines.append(f"  findings ({len(findings)}):")
        lines += [f"  - [{f.kind}] step {f.step}: {f.message}" for f in findings]
    else:
        lines.append("  findings: none")
    return "\n".join(lines)


# -- plots ------------------------------------------------------------------------------------
def _save(fig: Any, path: Path) -> Path:
    """Write a figure atomically (a failed write leaves an earlier file intact)."""
    write_atomic(path, figure_bytes(fig, path.suffix.lstrip(".") or "png"))
    return path


def _nan(x: float | None) -> float:
    return math.nan if x is None else x


def plot_records(records: Sequence[Record], out_dir: str | os.PathLike[str]) -> list[Path]:
    """PNG plots of a run in ``out_dir``: ``grad_norm.png`` (pre- and post-clip norm per step,
    the clip threshold), ``layer_grad_norms.png`` (log10 per-layer norms, a heatmap),
    ``clip_skips.png`` (clip rate and skipped steps per interval) and ``lr.png``."""
    from matplotlib.figure import Figure

    if not records:
        raise ValueError("Invalid records: []; nothing to plot")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    steps = [r["step_first"] + i for r in records for i in range(len(r["grad_norm_steps"]))]
    pre = [_nan(v) for r in records for v in r["grad_norm_steps"]]
    ends = [r["step"] for r in records]

    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    ax.plot(steps, pre, lw=0.8, label="grad norm (pre-clip)")
    ax.plot(ends, [_nan(r.get("grad_norm_clipped")) for r in records], "o", ms=3,
            label="grad norm (post-clip, interval end)")
    thr = [_nan(r.get("clip_threshold")) for r in records]
    if any(not math.isnan(t) for t in thr):
        ax.step(ends, thr, "r--", where="post", label="clip threshold")
    if any(v > 0 for v in pre if not math.isnan(v)):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("L2 norm")
    ax.legend(loc="best", fontsize=8)
    paths.append(_save(fig, out / "grad_norm.png"))

    names = list(records[-1].get("layers", {}))
    if names:
        grid = [[math.log10(g) if (g := r["layers"].get(n, {}).get("grad_norm")) else math.nan
                 for r in records] for n in names]
        fig = Figure(figsize=(8, 1.5 + 0.3 * len(names)))
        ax = fig.add_subplot()
        im = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis",
                       extent=(records[0]["step_first"] - 0.5, ends[-1] + 0.5, len(names) - 0.5,
                               -0.5))
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("step")
        fig.colorbar(im, ax=ax, label="log10 grad norm")
        fig.tight_layout()
        paths.append(_save(fig, out / "layer_grad_norms.png"))

    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    ax.plot(ends, [_nan(r.get("clip_rate")) for r in records], "-o", ms=3, label="clip rate")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("step")
    ax.set_ylabel("fraction of applied steps clipped")
    ax2 = ax.twinx()
    ax2.bar(ends, [r["skipped"] for r in records], width=max(1, records[0]["steps"]) * 0.8,
            color="tab:red", alpha=0.4, label="skipped steps")
    ax2.set_ylabel("skipped steps per interval")
    fig.legend(loc="upper right", fontsize=8)
    paths.append(_save(fig, out / "clip_skips.png"))

    fig = Figure(figsize=(8, 3))
    ax = fig.add_subplot()
    ax.plot(ends, [_nan(r.get("lr")) for r in records])
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate (group 0)")
    paths.append(_save(fig, out / "lr.png"))
    return paths


@dataclass
class Report:
    """What :func:`report` produced."""

    summary: str
    findings: list[Finding]
    plots: list[Path]
    summary_path: Path


def report(log_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
           detectors: Sequence[Detector] | None = None) -> Report:
    """Plots and a summary (``summary.txt``) in ``out_dir`` from a JSONL monitor log; the
    detectors run again over the saved records (defaults unless given).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> w = JSONLWriter(d / "log.jsonl")
    >>> w.write({"step": 2, "step_first": 1, "steps": 2, "applied": 2, "grad_norm": 1.0,
    ...          "grad_norm_mean": 1.5, "grad_norm_max": 2.0, "grad_norm_clipped": 1.0,
    ...          "clip_rate": 0.5, "clipped": 1, "skipped": 0, "lr": 0.1, "clip": None,
    ...          "grad_norm_steps": [2.0, 1.0], "layers": {}, "findings": []}); w.close()
    >>> r = report(d / "log.jsonl", d / "out")
    >>> sorted(p.name for p in r.plots), r.summary_path.name
    (['clip_skips.png', 'grad_norm.png', 'lr.png'], 'summary.txt')
    """
    records = load_records(log_path)
    if not records:
        raise ValueError(f"Invalid log_path: {str(log_path)!r}; the log has no records")
    dets = default_detectors() if detectors is None else list(detectors)
    findings: list[Finding] = []
    for i in range(len(records)):
        history = records[max(0, i - 63):i + 1]
        for det in dets:
            findings += det.check(history)
    plots = plot_records(records, out_dir)
    text = summarize(records, findings)
    path = Path(out_dir) / "summary.txt"
    write_atomic(path, (text + "\n").encode("utf-8"))
    return Report(text, findings, plots, path)
