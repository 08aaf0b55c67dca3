"""The guard core: the stages every guarded step shares, in order — statistics
(:mod:`._stats`), clip decision (:mod:`._decide`), guard (:mod:`._guard`), record
(:mod:`._record`) — and the state they keep between steps (counters, policies, checkpoint
extras via :mod:`._extras`).

Used by gradguard's own optimizers (:mod:`gradguard.optim._base`) and by :func:`gradguard.guard`
around any other optimizer. Nothing on a healthy step reads a value on the host.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ..clip import ClipPolicy, GradHooks, GradStats, resolve
from ..clip._stats import Laid
from . import _decide, _guard, _stats
from ._record import StepPlan, StepRecord, make_record


def _on(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device`` (the call skipped where it is there already: a step's few 0-d
    tensors, where the call costs more than the work)."""
    return t if t.device == device else t.to(device)


class GuardCore:
    """Clip policies, non-finite guard and counters of one optimizer."""

    def __init__(self, clip: ClipPolicy | str | None, nonfinite: str,
                 max_consecutive_skips: int) -> None:
        _guard.check_options(nonfinite, max_consecutive_skips)
        self.clip = resolve(clip, "clip")
        self.nonfinite = nonfinite
        self.max_consecutive_skips = max_consecutive_skips
        self.clipped_steps: Tensor | None = None
        self.skipped_steps: Tensor | None = None
        self.consecutive_skips: Tensor | None = None
        self.last_step: StepRecord | None = None
        # (parameters, their gradient norms) of the last step, for gradguard.Monitor: kept
        # while a Monitor reads them (norm_readers > 0), else None (the per-tensor norms of a
        # step that needs only their total are never computed).
        self.last_stats: tuple[list[Tensor], list[Tensor]] | None = None
        self.norm_readers = 0
        self._mirror: _guard.HostMirror | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_mirror"] = None  # pinned memory and CUDA events do not copy
        state["last_stats"] = None  # references to this step's parameters; not state
        return state

    def policy_of(self, group: dict[str, Any]) -> ClipPolicy | None:
        """A group's own ``clip`` if it has the key (None there means: do not clip this group),
        else the optimizer's."""
        if "clip" in group:
            policy: ClipPolicy | None = group["clip"]
            return policy
        return self.clip

    def make_hooks(self, param_groups: list[dict[str, Any]]) -> GradHooks:
        """Backward hooks measuring what this optimizer's clip policies will ask for."""
        return _stats.make_hooks([self.clip] + [g.get("clip") for g in param_groups],
                                 param_groups)

    # -- a step -----------------------------------------------------------------------------
    def plan(self, param_groups: list[dict[str, Any]], hooks: GradHooks | None = None,
             grad_scale: Tensor | None = None, found_inf: Tensor | None = None,
             laid: Iterable[Laid] = (),
             gathered: tuple[list[Tensor], list[Tensor], list[int]] | None = None
             ) -> StepPlan | None:
        """Gather the gradients, decide the clip and the skip. None when no parameter has a
        gradient.

        ``hooks`` supplies norms measured during backward. ``grad_scale`` and ``found_inf`` are
        what torch.amp.GradScaler hands an optimizer that declares
        ``_step_supports_amp_scaling``: the gradients are still scaled, so every norm is taken
        times the inverse scale, the inverse scale joins the clip scale, and a found inf skips
        the step. ``found_inf`` without ``grad_scale`` means GradScaler.unscale_ already ran: it
        rescaled the gradients in place without bumping their version counters (on the CPU),
        so the norms measured in backward are not used. ``laid``: runs of the gradients (in
        the order of the param groups) already copied into flat buffers, whose norms are then
        taken over the buffers. ``gathered``: :func:`._stats.gather`'s result where the caller
        has it already.
        """
        self.poll(param_groups)
        params, grads, owners = _stats.gather(param_groups) if gathered is None else gathered
        if not params:
            return None
        if found_inf is not None and grad_scale is None:
            hooks = None
        multiplier = None if grad_scale is None else 1.0 / grad_scale.to(torch.float32)
        buckets = _decide.buckets(owners, param_groups, self.policy_of)
        stats = _stats.measure(params, grads, hooks, multiplier, buckets, laid)
        grad_norm = stats.total_norm(list(range(len(grads))))
        skip, nonfinite, blame = _guard.skip_of(grad_norm, self.nonfinite, param_groups,
                                                grad_scale, found_inf)
        scales, clamps, mins, binding = _decide.decide(buckets, stats, len(grads), skip,
                                                       multiplier, grad_norm.device)
        record = make_record(grad_norm, mins, binding, skip, nonfinite)
        return StepPlan(params, grads, owners, scales, clamps, skip, stats, record, nonfinite,
                        blame)

    def finish(self, plan: StepPlan, param_groups: list[dict[str, Any]]) -> None:
        """Count the step, publish ``last_step``, and raise after too many skips in a row."""
        rec = plan.record
        device = rec.grad_norm.device
        if self.clipped_steps is None or self.skipped_steps is None or \
                self.consecutive_skips is None:
            self._zero_counters(device)
        assert self.clipped_steps is not None and self.skipped_steps is not None
        assert self.consecutive_skips is not None
        blame = rec.skipped if plan.blame is None else _on(plan.blame, device)
        # (.to: counters loaded from a checkpoint on another device)
        self.clipped_steps, self.skipped_steps, self.consecutive_skips = _guard.counted(
            (_on(self.clipped_steps, device), _on(self.skipped_steps, device),
             _on(self.consecutive_skips, device)), rec.clipped, rec.skipped, blame)
        self.last_step = rec
        self.last_stats = ((plan.params, plan.stats.norms())
                           if getattr(self, "norm_readers", 0) else None)
        if self.nonfinite == "raise":
            if bool(blame):  # the user asked for an error on every bad step: one read
                raise _guard.error(plan.params, plan.stats, param_groups, 1,
                                   " (nonfinite='raise')")
        elif self.nonfinite == "skip":
            if self._mirror is None or self._mirror.device != device:
                self._mirror = _guard.HostMirror(device)
            self._mirror.push(self.consecutive_skips)
            self.poll(param_groups, plan)

    def poll(self, param_groups: list[dict[str, Any]], plan: StepPlan | None = None) -> None:
        """Raise NonFiniteGradientError if the mirrored count of consecutive skips is too high."""
        if self._mirror is None:
            return
        count = self._mirror.peek()
        if count is not None and count >= self.max_consecutive_skips:
            params = plan.params if plan is not None else [
                p for g in param_groups for p in g["params"] if p.grad is not None]
            stats = plan.stats if plan is not None else GradStats(
                params, [p.grad for p in params if p.grad is not None])
            raise _guard.error(params, stats, param_groups, count, "")

    def _zero_counters(self, device: torch.device) -> None:
        zero = torch.zeros((), dtype=torch.int64, device=device)
        self.clipped_steps, self.skipped_steps, self.consecutive_skips = zero, zero, zero

    # -- state ------------------------------------------------------------------------------
    def state_dict(self, param_groups: list[dict[str, Any]]) -> dict[str, Any]:
        if self.clipped_steps is None:
            self._zero_counters(torch.device("cpu"))
        group_clip = {}
        for gi, group in enumerate(param_groups):
            policy = group.get("clip")
            if policy is not None:
                group_clip[gi] = policy.state_dict()
        return {
            "clipped_steps": self.clipped_steps,
            "skipped_steps": self.skipped_steps,
            "consecutive_skips": self.consecutive_skips,
            "clip": self.clip.state_dict() if self.clip is not None else {},
            "group_clip": group_clip,
        }

    def load_state_dict(self, extra: dict[str, Any] | None,
                        param_groups: list[dict[str, Any]]) -> None:
        if not extra:
            self._zero_counters(torch.device("cpu"))
            return
        self.clipped_steps = extra["clipped_steps"].clone()
        self.skipped_steps = extra["skipped_steps"].clone()
        self.consecutive_skips = extra.get("consecutive_skips",
                                           torch.zeros((), dtype=torch.int64)).clone()
        if self.clip is not None:
            self.clip.load_state_dict(extra.get("clip", {}))
        for gi, sd in extra.get("group_clip", {}).items():
            policy = param_groups[int(gi)].get("clip")
            if policy is not None:
                policy.load_state_dict(sd)

    # -- snapshot ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """A deep copy of what this core keeps between steps (its settings, the counters,
        ``last_step`` and the state of its own clip policy), for :meth:`restore`: the LR finder
        puts an optimizer back as it found it. Not the host mirror, a cache rebuilt at the next
        step, nor ``last_stats``, references to the last step's parameters, which is kept as
        the reference it is (as ``__getstate__`` leaves both out). The param groups' own
        policies are not in it: each offers its own :meth:`ClipPolicy.snapshot`."""
        import copy

        clip = self.clip
        # The clip policy stays the same object (restored in place, below); one deepcopy of
        # the rest keeps tensors shared between the counters shared.
        memo: dict[int, Any] = {} if clip is None else {id(clip): clip}
        state = dict(self.__dict__, _mirror=None, last_stats=None)
        return {"core": copy.deepcopy(state, memo), "last_stats": self.last_stats,
                "clip": None if clip is None else clip.snapshot()}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Put back what :meth:`snapshot` took (copies, so one snapshot restores many times),
        its own clip policy in place; the host mirror is dropped, and the param groups'
        policies are left alone."""
        import copy

        clip = snapshot["core"].get("clip")
        memo: dict[int, Any] = {} if clip is None else {id(clip): clip}
        readers = getattr(self, "norm_readers", 0)  # Monitors attached now, not then
        self.__dict__.clear()
        self.__dict__.update(copy.deepcopy(snapshot["core"], memo))
        self.norm_readers = readers
        self.last_stats = snapshot["last_stats"]
        if clip is not None and snapshot["clip"] is not None:
            clip.restore(snapshot["clip"])


class GuardReadouts:
    """The read-outs shared by gradguard's optimizers and :func:`gradguard.guard`'s wrapper."""

    _core: GuardCore

    @property
    def clip(self) -> ClipPolicy | None:
        """The optimizer-level clip policy (param groups may override it)."""
        return self._core.clip

    @property
    def nonfinite(self) -> str:
        return self._core.nonfinite

    @property
    def last_step(self) -> StepRecord | None:
        """Tensors describing the most recent step (None before the first)."""
        return self._core.last_step

    @property
    def clipped_steps(self) -> Tensor:
        """How many applied steps were clipped (a 0-d int64 tensor)."""
        return self._counter(self._core.clipped_steps)

    @property
    def skipped_steps(self) -> Tensor:
        """How many steps were skipped for non-finite gradients (a 0-d int64 tensor)."""
        return self._counter(self._core.skipped_steps)

    @staticmethod
    def _counter(value: Tensor | None) -> Tensor:
        return torch.zeros((), dtype=torch.int64) if value is None else value
