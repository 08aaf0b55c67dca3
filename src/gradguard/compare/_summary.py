"""The types of a ``gradguard compare`` sweep's summary: typed, frozen data in place of JSON
dicts.

This module owns the shapes: an :class:`Analysis` (:mod:`._analysis` computes it) is the
task, the run counts and each :class:`Setting` with its :class:`LrCell` per grid LR and its
:class:`Window`, and each :class:`ClipEffect`; a :class:`Summary` adds the
:class:`Recommendation` (:mod:`._recommend` writes it). :func:`to_json` turns any of them into
the plain JSON data of ``summary.json`` (the object keys in field order, as ``summary.json``
has always had them) and each type's ``from_json`` reads that back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["Analysis", "ClipEffect", "LrCell", "Outcome", "Recommendation", "Setting",
           "StatusCounts", "Summary", "TaskInfo", "Verdict", "Window", "to_json"]

Outcome = Literal["trained", "untrained", "diverged", "error"]
Verdict = Literal["helped", "hurt", "mixed", "no measurable effect"]

_FLAT = {"flatten": True}  # a field whose own fields sit in its owner's JSON object


# -- JSON ---------------------------------------------------------------------------------------
def to_json(obj: Any) -> Any:
    """Plain JSON data of a summary type (dataclasses as objects in field order, tuples as
    lists); other values as they are.

    >>> to_json(Window(low=0.1, high=1.0, points=2, decades=1.0, lrs=(0.1, 1.0)))
    {'low': 0.1, 'high': 1.0, 'points': 2, 'decades': 1.0, 'lrs': [0.1, 1.0]}
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = to_json(getattr(obj, f.name))
            if f.metadata.get("flatten"):
                out.update(value)
            else:
                out[f.name] = value
        return out
    if isinstance(obj, list | tuple):
        return [to_json(x) for x in obj]
    return obj


_T = TypeVar("_T", bound="DataclassInstance")


def _load(cls: type[_T], data: Mapping[str, Any], **convert: Callable[[Any], Any]) -> _T:
    """``cls`` from its JSON form: each field from ``data[name]`` (a flattened field from
    ``data`` itself), passed through ``convert[name]`` when there is one."""
    kw = {}
    for f in dataclasses.fields(cls):
        raw = data if f.metadata.get("flatten") else data[f.name]
        kw[f.name] = convert[f.name](raw) if f.name in convert else raw
    return cls(**kw)


def _tuple_of(load: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, ...]]:
    return lambda xs: tuple(load(x) for x in xs)


# -- the types ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskInfo:
    """The task as the summary restates it (from ``Task.info()``); None where it is missing."""

    name: str | None
    description: str | None
    metric: str | None
    higher_is_better: bool | None
    target: float | None
    baseline: float | None
    steps: int | None

    @classmethod
    def of(cls, task: Mapping[str, Any]) -> TaskInfo:
        return _load(cls, {f.name: task.get(f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskInfo:
        return _load(cls, data)


@dataclass(frozen=True)
class StatusCounts:
    """Runs by outcome; ``trained + untrained`` are the runs with status ok."""

    runs: int
    trained: int
    diverged: int
    untrained: int
    errors: int

    @classmethod
    def of(cls, recs: Sequence[Mapping[str, Any]]) -> StatusCounts:
        diverged = sum(r["status"] == "diverged" for r in recs)
        ok = sum(r["status"] == "ok" for r in recs)
        trained = sum(bool(r.get("trained")) and r["status"] == "ok" for r in recs)
        return cls(runs=len(recs), trained=trained, diverged=diverged, untrained=ok - trained,
                   errors=len(recs) - ok - diverged)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StatusCounts:
        return _load(cls, data)


@dataclass(frozen=True)
class LrCell:
    """One setting at one learning rate: its seeds' outcomes and final metrics (in seed
    order) and their statistics (None without a finite metric)."""

    lr: float
    seeds: int
    complete: bool  # every planned seed has a record
    counts: StatusCounts = field(metadata=_FLAT)
    trains: bool  # complete, and every seed trained
    all_ok: bool  # complete, and every seed finished with a finite metric
    metrics: tuple[float | None, ...]
    seed_ids: tuple[int, ...]
    outcomes: tuple[Outcome, ...]
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    worst: float | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LrCell:
        return _load(cls, data, counts=StatusCounts.from_json, metrics=tuple,
                     seed_ids=tuple, outcomes=tuple)


@dataclass(frozen=True)
class Window:
    """A setting's stable LR window; ``points == 0`` (and None ends) when it has none."""

    low: float | None
    high: float | None
    points: int
    decades: float | None
    lrs: tuple[float, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Window:
        return _load(cls, data, lrs=tuple)


@dataclass(frozen=True)
class Setting:
    """One (optimizer, clip, schedule): its results at every grid LR and at its best LR.

    ``mean``, ``std``, ``worst``, ``seeds`` and ``trained_at_best`` are those of the best LR
    (None, or 0, when the setting never finished every seed at any LR)."""

    optimizer: str
    clip: str
    schedule: str
    label: str
    rank: int
    lr_grid: tuple[float, ...]
    per_lr: tuple[LrCell, ...]
    counts: StatusCounts = field(metadata=_FLAT)
    complete: bool
    never_finished: bool
    best_lr: float | None
    best_lr_edge: Literal["only", "low", "high"] | None
    best_lr_trains: bool
    seeds: int
    trained_at_best: int
    mean: float | None
    std: float | None
    worst: float | None
    window: Window
    clipped_pct: float | None
    skipped_steps: int | None
    seconds_mean: float | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Setting:
        return _load(cls, data, lr_grid=tuple, per_lr=_tuple_of(LrCell.from_json),
                     counts=StatusCounts.from_json, window=Window.from_json)


@dataclass(frozen=True)
class ClipEffect:
    """A clipped setting against the same optimizer and schedule unclipped (``base_*``);
    run counts over the (LR, seed) cells both finished."""

    optimizer: str
    schedule: str
    clip: str
    label: str
    base_label: str
    metric: float | None
    base_metric: float | None
    best_lr: float | None
    base_best_lr: float | None
    delta_metric: float | None
    noise: float | None
    beyond_noise: bool | None
    metric_words: str
    window_points: int
    base_window_points: int
    delta_window_points: int
    runs_compared: int
    diverged: int
    base_diverged: int
    delta_diverged: int
    untrained: int
    base_untrained: int
    delta_untrained: int
    verdict: Verdict
    neither_trained: bool  # neither variant had an LR where every seed trained

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClipEffect:
        return _load(cls, data)


@dataclass(frozen=True)
class Analysis:
    """A sweep's numbers: ``settings`` in ranking order, ``clipping`` one entry per clipped
    setting with an unclipped counterpart."""

    task: TaskInfo
    counts: StatusCounts
    total_runs: int | None
    complete: bool
    seeds_planned: int
    steps_per_run: tuple[int, ...]
    settings: tuple[Setting, ...]
    clipping: tuple[ClipEffect, ...]


@dataclass(frozen=True)
class Recommendation:
    """What to use, as sentences (``text`` is the ``lines`` joined), with machine-readable
    ``flags``; ``setting`` and ``lr`` are the recommended label and LR, None when nothing
    finished."""

    text: str
    lines: tuple[str, ...]
    flags: tuple[str, ...]
    setting: str | None
    lr: float | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Recommendation:
        return _load(cls, data, lines=tuple, flags=tuple)


@dataclass(frozen=True)
class Summary(Analysis):
    """The analysis and its recommendation: ``summary.json`` is ``to_json(summary)``."""

    recommendation: Recommendation

    @classmethod
    def of(cls, analysis: Analysis, recommendation: Recommendation) -> Summary:
        parts = {f.name: getattr(analysis, f.name) for f in dataclasses.fields(Analysis)}
        return cls(**parts, recommendation=recommendation)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Summary:
        """The summary whose JSON form is ``data``: the inverse of :func:`to_json`.

        >>> from gradguard.compare._report import summary_of
        >>> s = summary_of([], {"name": "toy", "metric": "mse", "target": 0.5})
        >>> Summary.from_json(to_json(s)) == s
        True
        """
        return _load(cls, data, task=TaskInfo.from_json, counts=StatusCounts.from_json,
                     steps_per_run=tuple, settings=_tuple_of(Setting.from_json),
                     clipping=_tuple_of(ClipEffect.from_json),
                     recommendation=Recommendation.from_json)
