"""Running a grid of training runs on all cores, saving each run as it ends, resuming."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import tasks
from ._grid import RunConfig
from ._records import check_record
from ._run import read_record, train_one, write_json

__all__ = ["SweepResult", "load_records", "run_sweep", "scan_records"]


@dataclass
class SweepResult:
    """What :func:`run_sweep` did: every record of the grid found on disk (in grid order),
    how many of them it trained now, and whether it was interrupted."""

    records: list[dict[str, Any]]
    trained_now: int
    reused: int
    interrupted: bool
    seconds: float
    missing: list[RunConfig] = field(default_factory=list)
    #: saved records that failed their check (path, what is wrong); they were trained again
    rejected: list[tuple[Path, str]] = field(default_factory=list)


def record_path(out_dir: Path, cfg: RunConfig) -> Path:
    return out_dir / "runs" / f"{cfg.run_id}.json"


def scan_records(out_dir: Path, configs: Sequence[RunConfig]
                 ) -> tuple[dict[str, dict[str, Any]], list[tuple[Path, str]]]:
    """The saved records of ``configs`` in ``out_dir`` that pass
    :func:`~gradguard.compare._records.check_record` (by run id), and the files that exist
    but fail it, each with what is wrong. A missing file is neither."""
    found: dict[str, dict[str, Any]] = {}
    rejected: list[tuple[Path, str]] = []
    for cfg in configs:
        path = record_path(out_dir, cfg)
        if not path.exists():
            continue
        rec = read_record(path)
        problem = ("not a complete JSON record of this version" if rec is None
                   else check_record(rec, cfg.as_dict()))
        if rec is not None and problem is None:
            found[cfg.run_id] = rec
        else:
            rejected.append((path, problem or ""))
    return found, rejected


def load_records(out_dir: Path, configs: Sequence[RunConfig]) -> dict[str, dict[str, Any]]:
    """The saved records of ``configs`` in ``out_dir`` (by run id) that pass their check;
    missing, incomplete, malformed files and records of another configuration are left out
    (:func:`scan_records` names them)."""
    return scan_records(out_dir, configs)[0]


# -- worker processes --------------------------------------------------------------------
_WORKER_OUT: Path | None = None


def _init_worker(out_dir: str, threads: int) -> None:
    global _WORKER_OUT
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    torch.set_num_threads(threads)
    # The current folder is not put on sys.path here: a file in it named like a library
    # (sklearn.py) would run in place of the library. tasks.load adds it, last, for a user's
    # own module:function task only.
    _WORKER_OUT = Path(out_dir)


def _run_and_save(cfg: RunConfig, out_dir: Path) -> dict[str, Any]:
    rec = train_one(tasks.get(cfg.task), cfg)
    write_json(record_path(out_dir, cfg), rec)
    return rec


def _work(cfg: RunConfig) -> dict[str, Any]:
    assert _WORKER_OUT is not None
    return _run_and_save(cfg, _WORKER_OUT)


def _describe(rec: dict[str, Any]) -> str:
    c = rec["config"]
    metric = rec["final"]["metric"]
    shown = "—" if metric is None else f"{metric:.4g}"
    return f"{c['optimizer']} {c['clip']} lr={c['lr']:g} s{c['seed']}: {rec['status']} {shown}"


class _Progress:
    """A tqdm bar on stderr (or nothing)."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar: Any = None
        if enabled and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="run", dynamic_ncols=True,
                            file=sys.stderr, smoothing=0.1)

    def update(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_sweep(configs: Sequence[RunConfig], out_dir: Path, *, workers: int | None = None,
              resume: bool = True, progress: bool = True, threads_per_worker: int = 1,
              on_record: Callable[[dict[str, Any]], None] | None = None,
              scanned: tuple[dict[str, dict[str, Any]], list[tuple[Path, str]]] | None = None
              ) -> SweepResult:
    """Train every configuration not already saved in ``out_dir/runs`` (all of them with
    ``resume=False``), ``workers`` at a time (default: one per core), each with
    ``threads_per_worker`` threads. Each finished run is written to its own file atomically as
    soon as it ends, so an interrupted sweep (Ctrl-C) keeps every finished run and the same
    call resumes where it stopped. ``scanned``: :func:`scan_records` of ``out_dir`` already
    done by the caller (who holds the folder's lock), not to be done again."""
    start = time.perf_counter()
    if workers is None:
        workers = max(1, min(os.cpu_count() or 1, 8))
    if workers < 1:
        raise ValueError(f"Invalid workers: {workers!r}; must be >= 1")
    out_dir.mkdir(parents=True, exist_ok=True)
    saved: dict[str, dict[str, Any]] = {}
    rejected: list[tuple[Path, str]] = []
    if resume:
        saved, rejected = scanned if scanned is not None else scan_records(out_dir, configs)
    todo = [c for c in configs if c.run_id not in saved]
    done: dict[str, dict[str, Any]] = dict(saved)
    bar = _Progress(len(configs), len(saved), progress)
    interrupted = False
    results: Iterator[dict[str, Any]]
    pool = None
    try:
        if workers == 1 or len(todo) <= 1:
            torch_threads = torch.get_num_threads()
            torch.set_num_threads(threads_per_worker)
            try:
                for cfg in todo:
                    rec = _run_and_save(cfg, out_dir)
                    done[cfg.run_id] = rec
                    bar.update(_describe(rec))
                    if on_record is not None:
                        on_record(rec)
            finally:
                torch.set_num_threads(torch_threads)
        else:
            ctx = mp.get_context("spawn")
            pool = ctx.Pool(min(workers, len(todo)), initializer=_init_worker,
                            initargs=(str(out_dir), threads_per_worker))
            results = pool.imap_unordered(_work, todo, chunksize=1)
            for rec in results:
                done[rec["id"]] = rec
                bar.update(_describe(rec))
                if on_record is not None:
                    on_record(rec)
            pool.close()
            pool.join()
            pool = None
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        bar.close()
    # Runs a worker finished just before an interrupt are on disk even if we never saw them.
    if interrupted:
        done.update(load_records(out_dir, [c for c in configs if c.run_id not in done]))
    records = [done[c.run_id] for c in configs if c.run_id in done]
    missing = [c for c in configs if c.run_id not in done]
    return SweepResult(records, len(records) - len(saved), len(saved), interrupted,
                       time.perf_counter() - start, missing, rejected)
