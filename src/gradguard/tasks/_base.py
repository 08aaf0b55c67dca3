"""What a task is: a model, a data split, a loss, a metric and a default budget."""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Task", "batches", "get", "load", "names", "register", "summaries"]


@dataclass(frozen=True)
class Task:
    """A training problem that ``gradguard compare`` can run.

    ``build_model()`` is called after ``torch.manual_seed(seed)`` and returns a fresh model.
    ``train`` and ``val`` are ``(inputs, targets)`` pairs of tensors whose first dimension
    indexes examples; a training batch is ``batch_size`` rows drawn at random (with
    replacement) from ``train``. ``loss_fn(model(inputs), targets)`` is the mean loss of a
    batch, ``metric_fn(model(val_inputs), val_targets)`` a number (accuracy, MSE, bits per
    character) computed without gradients over the whole validation split, in slices of
    ``eval_batch_size`` rows if that is set. A run counts as *trained* when its final metric
    is finite and at least as good as ``target`` (``>=`` when ``higher_is_better``, else
    ``<=``). ``steps``/``eval_every`` are the default budget; ``lrs`` maps an optimizer name to
    the default learning-rate grid of that optimizer on this task (where absent, the
    optimizer's general default range is used).

    >>> t = Task(name="toy", description="y = 2x", build_model=lambda: nn.Linear(1, 1),
    ...          train=(torch.randn(32, 1), torch.randn(32, 1)),
    ...          val=(torch.randn(8, 1), torch.randn(8, 1)),
    ...          loss_fn=nn.functional.mse_loss,
    ...          metric_fn=lambda out, y: nn.functional.mse_loss(out, y).item(),
    ...          metric_name="mse", higher_is_better=False, target=0.5, steps=10)
    >>> t.trained(0.25), t.trained(float("nan"))
    (True, False)
    """

    name: str
    description: str
    build_model: Callable[[], nn.Module]
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    loss_fn: Callable[[Any, Tensor], Tensor]
    metric_fn: Callable[[Any, Tensor], float]
    metric_name: str = "accuracy"
    higher_is_better: bool = True
    target: float = 0.0
    steps: int = 400
    batch_size: int = 64
    eval_every: int = 50
    eval_batch_size: int | None = None
    lrs: dict[str, tuple[float, ...]] = field(default_factory=dict)
    baseline: float | None = None  # the metric of a trivial predictor, shown in the report

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "eval_every"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Invalid task {key}: {value!r} (task {self.name!r}); must be "
                                 "a positive integer")
        for split in ("train", "val"):
            pair = getattr(self, split)
            if (not isinstance(pair, tuple) or len(pair) != 2
                    or not all(isinstance(t, Tensor) for t in pair)
                    or pair[0].shape[0] != pair[1].shape[0] or pair[0].shape[0] == 0):
                raise ValueError(f"Invalid task {split}: must be a pair (inputs, targets) of "
                                 f"tensors with the same, non-zero first dimension (task "
                                 f"{self.name!r})")

    def trained(self, metric: float | None) -> bool:
        """Whether a final ``metric`` counts as a run that trained."""
        if metric is None or not math.isfinite(metric):
            return False
        return metric >= self.target if self.higher_is_better else metric <= self.target

    def better(self, a: float, b: float) -> bool:
        """Whether metric ``a`` is strictly better than ``b`` (non-finite is worst)."""
        if not math.isfinite(a):
            return False
        if not math.isfinite(b):
            return True
        return a > b if self.higher_is_better else a < b

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> tuple[float, float]:
        """``(val_loss, metric)`` of ``model`` on the validation split, in eval mode."""
        was_training = model.training
        model.eval()
        try:
            x, y = self.val
            size = self.eval_batch_size or x.shape[0]
            outs = [model(x[i:i + size]) for i in range(0, x.shape[0], size)]
            out = outs[0] if len(outs) == 1 else torch.cat(outs)
            loss = float(self.loss_fn(out, y))
            metric = float(self.metric_fn(out, y))
        finally:
            model.train(was_training)
        return loss, metric

    def info(self) -> dict[str, Any]:
        """The task's description as plain data (for reports and ``gradguard tasks``)."""
        model = self.build_model()
        return {
            "name": self.name, "description": self.description,
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_examples": int(self.train[0].shape[0]),
            "val_examples": int(self.val[0].shape[0]),
            "metric": self.metric_name, "higher_is_better": self.higher_is_better,
            "target": self.target, "baseline": self.baseline, "steps": self.steps,
            "batch_size": self.batch_size, "eval_every": self.eval_every,
        }


def batches(task: Task, generator: torch.Generator,
            batch_size: int | None = None) -> Callable[[], tuple[Tensor, Tensor]]:
    """A function returning a fresh random training batch of ``task`` on each call:
    ``batch_size`` rows (default: the task's ``batch_size``)."""
    x, y = task.train
    n = x.shape[0]
    size = task.batch_size if batch_size is None else batch_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"Invalid batch_size: {size!r}; must be an integer >= 1")

    def draw() -> tuple[Tensor, Tensor]:
        idx = torch.randint(0, n, (size,), generator=generator)
        return x[idx], y[idx]

    return draw


_REGISTRY: dict[str, tuple[Callable[[], Task], str]] = {}
_CACHE: dict[str, Task] = {}


def register(name: str, factory: Callable[[], Task], summary: str) -> None:
    """Make ``factory`` available as the built-in task ``name``."""
    _REGISTRY[name] = (factory, summary)


def names() -> list[str]:
    """The built-in tasks' names."""
    return list(_REGISTRY)


def summaries() -> dict[str, str]:
    """One line about each built-in task."""
    return {name: summary for name, (_, summary) in _REGISTRY.items()}


def get(name: str) -> Task:
    """The built-in task ``name`` or a user's task ``"module:function"`` (see :func:`load`)."""
    if name in _CACHE:
        return _CACHE[name]
    if name in _REGISTRY:
        task = _REGISTRY[name][0]()
    elif ":" in name:
        task = load(name)
    else:
        raise ValueError(f"Invalid task: {name!r}; valid choices: {', '.join(names())}, or "
                         "module:function for your own")
    _CACHE[name] = task
    return task


def load(spec: str) -> Task:
    """Import ``"module:function"`` (the current directory is searched too, after the installed
    packages, so that a file there cannot stand in for a library) and call it: it must return a
    :class:`Task`."""
    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise ValueError(f"Invalid task: {spec!r}; a task of your own is given as "
                         "module:function")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"Invalid task: {spec!r}; cannot import {module_name!r}: {e}") from e
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ValueError(f"Invalid task: {spec!r}; {module_name!r} has no function "
                         f"{func_name!r}")
    try:
        task = func()
    except Exception as e:  # e.g. a function that needs arguments: json:dumps
        raise ValueError(f"Invalid task: {spec!r}; {func_name}() must take no arguments and "
                         f"return a gradguard.tasks.Task, but calling it raised "
                         f"{type(e).__name__}: {e}") from e
    if not isinstance(task, Task):
        raise ValueError(f"Invalid task: {spec!r}; {func_name}() returned "
                         f"{type(task).__name__}, not gradguard.tasks.Task")
    return task
