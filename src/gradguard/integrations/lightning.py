"""gradguard in PyTorch Lightning: :class:`GradguardCallback` logs what gradguard's optimizers
did at each step through the LightningModule's loggers, and stops the Trainer's own
gradient clipping from clipping the gradients before gradguard's step does.

What it logs, per gradguard optimizer and optimizer step (``prefix`` + name; with several
gradguard optimizers, ``prefix`` + ``opt{i}/`` + name), as Lightning logs any ``on_step``
metric (every ``Trainer(log_every_n_steps=...)`` steps):

- ``grad_norm``: the total L2 norm of the gradients before clipping;
- ``clip_scale``: the smallest factor clipping applied to any gradient entry (1: none);
- ``clipped``, ``skipped``: 1.0 where this step was clipped / skipped (non-finite gradients);
- ``clipped_steps``, ``skipped_steps``: gradguard's counters (they resume with the optimizer's
  state), and ``clip_rate``: clipped steps over the optimizer steps this callback has seen
  (its count resumes with the checkpoint too);
- ``clip_threshold``: the norm the optimizer's clip policy clips to, where it has one (a fixed
  global-norm limit, AutoClip's or ZClip's adaptive one);
- ``findings/<kind>``: with ``monitor=True``, how many findings of each kind gradguard's
  :class:`~gradguard.Monitor` has made (``explosion``, ``vanishing``, ``clip_always``,
  ``clip_never``, ``skips``); each finding is also warned once, with its advice.

Reading these values costs no host read of gradguard's: they are handed to Lightning as
tensors, and Lightning reads them when it writes its logs.

Double clipping: ``Trainer(gradient_clip_val=...)`` clips the gradients in Lightning's
``configure_gradient_clipping``, before the optimizer's step. Where a gradguard optimizer
clips as well, the callback raises at the start of ``fit`` (``double_clip="error"``, the
default), or turns the Trainer's clip off with a warning (``double_clip="disable_framework"``:
gradguard's clip is the one that stays). Where the Trainer clips and gradguard does not, it
warns that gradguard's numbers then describe gradients Lightning has already clipped.

>>> import lightning.pytorch as pl
>>> cb = GradguardCallback(prefix="gg/")
>>> isinstance(cb, pl.Callback), cb.double_clip
(True, 'error')
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

import torch
from torch import Tensor

from .._validation import check_choice

try:
    import lightning.pytorch as pl
    from lightning.fabric.utilities.exceptions import MisconfigurationException
except ImportError as e:  # pragma: no cover - exercised only without Lightning
    raise ImportError("gradguard.integrations.lightning needs Lightning 2: "
                      "pip install 'gradguard[lightning]'") from e

from ..monitor import Monitor
from ._common import DOUBLE_CLIP, clip_specs, unwrap

__all__ = ["DOUBLE_CLIP", "GradguardCallback"]


class GradguardCallback(pl.Callback):
    """Log gradguard's per-step numbers through Lightning and guard against double clipping
    (see the module docstring).

    Args:
        prefix: the start of every metric's name.
        double_clip: what to do when ``Trainer(gradient_clip_val=...)`` and a gradguard clip
            are both set: ``"error"`` (raise at the start of ``fit``) or
            ``"disable_framework"`` (turn the Trainer's clip off, with a warning).
        monitor: also run a :class:`~gradguard.Monitor` on each gradguard optimizer and log
            and warn its findings.
        monitor_interval: the Monitor's interval, in optimizer steps.
    """

    def __init__(self, prefix: str = "gradguard/", double_clip: str = "error",
                 monitor: bool = False, monitor_interval: int = 10) -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"Invalid prefix: {prefix!r}; must be a string")
        check_choice("double_clip", double_clip, DOUBLE_CLIP)
        if not isinstance(monitor, bool):
            raise TypeError(f"Invalid monitor: {monitor!r}; must be True or False")
        if (isinstance(monitor_interval, bool) or not isinstance(monitor_interval, int)
                or monitor_interval < 1):
            raise ValueError(f"Invalid monitor_interval: {monitor_interval!r}; must be an "
                             "integer >= 1")
        self.prefix = prefix
        self.double_clip = double_clip
        self.monitor = monitor
        self.monitor_interval = monitor_interval
        self.steps: dict[int, int] = {}  # optimizer index -> optimizer steps seen (resumed)
        self._guarded: list[tuple[int, Any]] = []
        self._seen: dict[int, Any] = {}
        self._monitors: dict[int, Monitor] = {}
        self._warned: dict[int, int] = {}

    # -- the start of fit: which optimizers, and who clips ------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        found = [(i, unwrap(o)) for i, o in enumerate(trainer.optimizers)]
        self._guarded = [(i, o) for i, o in found if o is not None]
        if not self._guarded:
            warnings.warn("GradguardCallback: none of the Trainer's optimizers is a gradguard "
                          "optimizer; nothing will be logged", stacklevel=2)
            return
        self._check_clipping(trainer)
        self._seen = {i: o._core.last_step for i, o in self._guarded}
        if self.monitor:
            for i, opt in self._guarded:
                self._monitors[i] = Monitor(pl_module, opt, interval=self.monitor_interval,
                                            warn=False, print_summary=False)
                self._warned[i] = 0

    def _check_clipping(self, trainer: pl.Trainer) -> None:
        val = trainer.gradient_clip_val
        if val is None or val <= 0:
            return
        algorithm = trainer.gradient_clip_algorithm
        kind = "value" if algorithm is not None and str(algorithm.value) == "value" else "norm"
        same = f"{'value' if kind == 'value' else 'global_norm'}:{val}"
        clipping = {i: specs for i, o in self._guarded if (specs := clip_specs(o))}
        if clipping:
            named = ", ".join(f"clip={s!r}" for ss in clipping.values() for s in ss)
            msg = (f"Trainer(gradient_clip_val={val}) clips the gradients (by {kind}) before "
                   f"the optimizer's step, and the gradguard optimizer clips them again "
                   f"({named}): its clip sees gradients Lightning has already clipped, and its "
                   "counters, last_step and Monitor describe those.")
            if self.double_clip == "error":
                raise MisconfigurationException(
                    msg + " Remove Trainer(gradient_clip_val=...) (gradguard's clip takes its "
                    f"place; clip={same!r} is the same clip), or pass "
                    "GradguardCallback(double_clip='disable_framework') to have it turned off.")
            warnings.warn(msg + " Lightning's clip is turned off (double_clip="
                          "'disable_framework'); gradguard's clip stays.", stacklevel=2)
            trainer.gradient_clip_val = None
            return
        warnings.warn(f"Trainer(gradient_clip_val={val}) clips the gradients before gradguard's "
                      "optimizer step, so gradguard's grad_norm, counters and Monitor describe "
                      f"gradients Lightning has already clipped. Pass clip={same!r} to the "
                      "gradguard optimizer instead, and remove gradient_clip_val, to have both "
                      "the clip and the numbers from gradguard.", stacklevel=2)

    # -- each batch: log the steps taken ----------------------------------------------------
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        many = len(self._guarded) > 1
        for i, opt in self._guarded:
            core = opt._core
            rec = core.last_step
            if rec is None or rec is self._seen.get(i):
                continue  # no optimizer step since the last batch (gradient accumulation)
            self._seen[i] = rec
            steps = self.steps[i] = self.steps.get(i, 0) + 1
            if not trainer.loggers:
                continue  # (Trainer(logger=False): nothing would write them)
            name = self.prefix + (f"opt{i}/" if many else "")
            clipped_steps = opt.clipped_steps.to(torch.float32)
            metrics: dict[str, Tensor] = {
                name + "grad_norm": rec.grad_norm,
                name + "clip_scale": rec.clip_scale.to(torch.float32),
                name + "clipped": rec.clipped.to(torch.float32),
                name + "skipped": rec.skipped.to(torch.float32),
                name + "clipped_steps": clipped_steps,
                name + "skipped_steps": opt.skipped_steps.to(torch.float32),
                name + "clip_rate": clipped_steps / steps,
            }
            policy = core.clip
            threshold = policy.threshold if policy is not None else None
            if threshold is not None:
                metrics[name + "clip_threshold"] = torch.as_tensor(threshold,
                                                                   dtype=torch.float32)
            if i in self._monitors:
                metrics.update(self._findings(i, name))
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=False,
                               logger=True, batch_size=1)

    def _findings(self, i: int, name: str) -> dict[str, Tensor]:
        mon = self._monitors[i]
        for finding in mon.findings[self._warned[i]:]:
            warnings.warn(f"gradguard Monitor (optimizer {i}), step {finding.step}: "
                          f"{finding.message}", stacklevel=2)
        self._warned[i] = len(mon.findings)
        counts = Counter(f.kind for f in mon.findings)
        return {f"{name}findings/{k}": torch.tensor(float(n)) for k, n in counts.items()}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for mon in self._monitors.values():
            mon.close()
        self._monitors = {}

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"steps": dict(self.steps)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        steps = state_dict.get("steps", {})
        if not isinstance(steps, dict) or not all(
                isinstance(k, int) and isinstance(v, int) and v >= 0 for k, v in steps.items()):
            raise ValueError(f"Invalid GradguardCallback state: steps={steps!r}; expected a "
                             "dict of optimizer index to a count of steps >= 0")
        self.steps = dict(steps)
