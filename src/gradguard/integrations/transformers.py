"""gradguard in the Hugging Face ``Trainer``: :func:`optimizers_from_args` builds a gradguard
optimizer and LR schedule from ``TrainingArguments`` (``Trainer(optimizers=...)`` in one line),
and :class:`GradguardTrainerCallback` puts what each step did into the Trainer's logs — its
``log_history``, the console, and every ``report_to`` backend — and stops the Trainer's own
clip (``max_grad_norm``, 1.0 by default) from clipping the gradients before gradguard's step.

Add the callback with :func:`attach`: the Trainer hands a log to its callbacks in order, and
the ``report_to`` backends come before callbacks passed as ``Trainer(callbacks=...)``, so only
a callback placed ahead of them can add to what they write.

What it adds to every training log (``prefix`` + name), from the last optimizer step before
the log: ``grad_norm`` (before clipping), ``clip_scale``, ``clipped``, ``skipped`` (1.0 or 0.0),
``clipped_steps`` and ``skipped_steps`` (gradguard's counters, which resume with the optimizer
state), ``clip_rate`` (clipped steps over the Trainer's optimizer steps, ``global_step``) and
``clip_threshold`` where the clip policy has one. Values are read on the host only at a log
(every ``logging_steps``), as the Trainer reads its loss.

Double clipping: where ``max_grad_norm > 0`` and the gradguard optimizer clips too, training
stops at its start with an error (``double_clip="error"``, the default), or the Trainer's clip
is turned off with a warning (``double_clip="disable_framework"``: ``args.max_grad_norm`` is
set to 0). Where the Trainer clips and gradguard does not, a warning says that gradguard's
numbers describe gradients the Trainer has already clipped.

>>> cb = GradguardTrainerCallback()
>>> cb.prefix, cb.double_clip
('gradguard/', 'error')
"""

from __future__ import annotations

import inspect
import json
import warnings
from typing import Any

import torch
from torch import nn

from .. import optim
from .._validation import check_choice
from ._common import DOUBLE_CLIP, clip_specs, unwrap

try:
    from transformers import Trainer, TrainerCallback, TrainingArguments, get_scheduler
    from transformers.trainer_pt_utils import get_parameter_names
except ImportError as e:  # pragma: no cover - exercised only without transformers
    raise ImportError("gradguard.integrations.transformers needs transformers: "
                      "pip install 'gradguard[transformers]'") from e

__all__ = ["DOUBLE_CLIP", "GradguardTrainerCallback", "attach", "no_decay_names",
           "optimizers_from_args"]

# Parameter names the Trainer exempts from weight decay (besides nn.LayerNorm's), as
# transformers' Trainer.get_decay_parameter_names has them.
NO_DECAY_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)",
                     r"_norm(?:$|\.)")


class GradguardTrainerCallback(TrainerCallback):
    """Put gradguard's per-step numbers into the Trainer's logs and guard against double
    clipping (see the module docstring). Add it with :func:`attach`.

    Args:
        prefix: the start of every logged name.
        double_clip: ``"error"`` or ``"disable_framework"`` (see the module docstring).
    """

    def __init__(self, prefix: str = "gradguard/", double_clip: str = "error") -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"Invalid prefix: {prefix!r}; must be a string")
        check_choice("double_clip", double_clip, DOUBLE_CLIP)
        self.prefix = prefix
        self.double_clip = double_clip
        self._opt: Any = None

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any,
                       optimizer: Any = None, **kwargs: Any) -> None:
        self._opt = unwrap(optimizer)
        if self._opt is None:
            warnings.warn("GradguardTrainerCallback: the Trainer's optimizer is not a gradguard "
                          "optimizer; nothing will be logged (build one with "
                          "gradguard.integrations.transformers.optimizers_from_args)",
                          stacklevel=2)
            return
        val = args.max_grad_norm
        if val is None or val <= 0:
            return
        specs = clip_specs(self._opt)
        if specs:
            msg = (f"TrainingArguments(max_grad_norm={val}) makes the Trainer clip the gradients "
                   "before the optimizer's step, and the gradguard optimizer clips them again ("
                   + ", ".join(f"clip={s!r}" for s in specs) + "): its clip sees gradients the "
                   "Trainer has already clipped, and its counters and records describe those.")
            if self.double_clip == "error":
                raise ValueError(msg + " Set max_grad_norm=0 (gradguard's clip takes its place; "
                                 f"clip='global_norm:{val}' is the same clip), or pass "
                                 "GradguardTrainerCallback(double_clip='disable_framework').")
            warnings.warn(msg + " The Trainer's clip is turned off (max_grad_norm=0, "
                          "double_clip='disable_framework'); gradguard's clip stays.",
                          stacklevel=2)
            args.max_grad_norm = 0.0
            return
        warnings.warn(f"TrainingArguments(max_grad_norm={val}) clips the gradients before "
                      "gradguard's optimizer step, so gradguard's grad_norm and counters describe "
                      f"already clipped gradients. Give the optimizer clip='global_norm:{val}' "
                      "and set max_grad_norm=0 to have both from gradguard.", stacklevel=2)

    def on_log(self, args: TrainingArguments, state: Any, control: Any,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        opt = self._opt
        if opt is None or logs is None or "loss" not in logs:
            return  # (evaluation logs carry eval_* keys, not the training loss)
        rec = opt._core.last_step
        if rec is None:
            return
        p = self.prefix
        values = torch.stack([
            rec.grad_norm.to(torch.float64), rec.clip_scale.to(torch.float64),
            rec.clipped.to(torch.float64), rec.skipped.to(torch.float64),
            opt.clipped_steps.to(torch.float64), opt.skipped_steps.to(torch.float64)]).tolist()
        names = ("grad_norm", "clip_scale", "clipped", "skipped", "clipped_steps",
                 "skipped_steps")
        new = {p + n: v for n, v in zip(names, values, strict=True)}
        new[p + "clip_rate"] = new[p + "clipped_steps"] / max(state.global_step, 1)
        policy = opt._core.clip
        threshold = policy.threshold if policy is not None else None
        if threshold is not None:
            new[p + "clip_threshold"] = float(threshold)
        logs.update(new)
        history = state.log_history
        if history and history[-1].get("step") == state.global_step and "loss" in history[-1]:
            history[-1].update(new)  # (the Trainer stored a copy of this log before on_log)


def attach(trainer: Trainer, callback: GradguardTrainerCallback | None = None,
           **kwargs: Any) -> GradguardTrainerCallback:
    """Add ``callback`` (or a new ``GradguardTrainerCallback(**kwargs)``) to ``trainer``
    ahead of its logging callbacks (the ``report_to`` backends and the console), so that what
    they write includes gradguard's numbers. Returns the callback."""
    if callback is None:
        callback = GradguardTrainerCallback(**kwargs)
    elif kwargs:
        raise TypeError("attach: pass a callback or its arguments, not both")
    if not isinstance(callback, GradguardTrainerCallback):
        raise TypeError(f"Invalid callback: {type(callback).__name__}; must be a "
                        "GradguardTrainerCallback")
    handler = trainer.callback_handler
    # after the flow callback (it decides when to log), before every other
    flow = [i for i, cb in enumerate(handler.callbacks) if type(cb).__name__ ==
            "DefaultFlowCallback"]
    handler.callbacks.insert(flow[0] + 1 if flow else 0, callback)
    return callback


def no_decay_names(model: nn.Module) -> set[str]:
    """The names of the parameters the Trainer exempts from weight decay: those of
    ``nn.LayerNorm`` layers, and those whose names name a bias or a norm."""
    decay = set(get_parameter_names(model, [nn.LayerNorm], list(NO_DECAY_PATTERNS)))
    return {n for n, _ in model.named_parameters() if n not in decay}


def optimizers_from_args(model: nn.Module, args: TrainingArguments, name: str = "AdamW",
                         clip: str | None = "trainer", num_training_steps: int | None = None,
                         **kwargs: Any) -> tuple[torch.optim.Optimizer, Any]:
    """A gradguard optimizer and LR schedule as the Trainer would build its own from
    ``args``, for ``Trainer(optimizers=optimizers_from_args(model, args))``.

    The optimizer (``name``: a class of :data:`gradguard.optim.REGISTRY`, e.g. ``"AdamW"``,
    ``"Lion"``) takes ``args.learning_rate``; ``args.weight_decay`` for every trainable
    parameter but biases and norms (:func:`no_decay_names`), which take none; and, where it
    has them, ``betas=(args.adam_beta1, args.adam_beta2)`` and ``eps=args.adam_epsilon``.
    ``kwargs`` go to the optimizer too. The schedule is ``args.lr_scheduler_type`` with
    ``args``' warmup over ``num_training_steps`` (default ``args.max_steps``).

    ``clip="trainer"`` (the default) moves the Trainer's clip into gradguard: the optimizer
    clips with ``global_norm:args.max_grad_norm`` and ``args.max_grad_norm`` is set to 0, so
    the Trainer does not clip as well. Any other spec is gradguard's clip (and the Trainer's
    is turned off the same way); None leaves clipping to the Trainer.
    """
    classes = {e.cls.__name__: e.cls for e in optim.REGISTRY.values()}
    if name not in classes:
        raise ValueError(f"Invalid name: {name!r}; valid choices are "
                         + ", ".join(repr(c) for c in classes))
    cls = classes[name]
    steps = num_training_steps if num_training_steps is not None else args.max_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"Invalid num_training_steps: {steps!r}; pass the number of optimizer "
                         "steps (an integer >= 1) or set TrainingArguments(max_steps=...)")
    if clip == "trainer":
        clip = (f"global_norm:{args.max_grad_norm}"
                if args.max_grad_norm is not None and args.max_grad_norm > 0 else None)
    if clip is not None:
        args.max_grad_norm = 0.0  # gradguard clips; the Trainer must not clip too
    exempt = no_decay_names(model)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in params if n not in exempt],
               "weight_decay": args.weight_decay},
              {"params": [p for n, p in params if n in exempt], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    accepted = inspect.signature(cls).parameters
    settings: dict[str, Any] = {"lr": args.learning_rate}
    if "betas" in accepted:
        settings["betas"] = (args.adam_beta1, args.adam_beta2)
    if "eps" in accepted:
        settings["eps"] = args.adam_epsilon
    settings.update(kwargs)
    optimizer = cls(groups, clip=clip, **settings)
    extra = args.lr_scheduler_kwargs or {}
    if isinstance(extra, str):  # (given on the command line: JSON)
        extra = json.loads(extra)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer,
                              num_warmup_steps=args.get_warmup_steps(steps),
                              num_training_steps=steps, scheduler_specific_kwargs=extra)
    return optimizer, scheduler
