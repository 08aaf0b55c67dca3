"""What every guarded step shares: gathering the gradients, asking the clip policies, deciding
the non-finite skip, counting, and the error after too many skipped steps in a row.

Used by gradguard's own optimizers (:mod:`gradguard.optim._base`) and by :func:`gradguard.guard`
around any other optimizer. Nothing on a healthy step reads a value on the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from .._validation import check_choice
from ..clip import AGC, ClipPolicy, GlobalNorm, GradHooks, GradStats, Norm, Value, resolve
from ..clip._dist import is_dtensor
from ..errors import NonFiniteGradientError

NONFINITE_MODES = ("skip", "raise", "off")


class StepRecord(NamedTuple):
    """What the last step did, as 0-d tensors that nobody has to read.

    ``grad_norm``: total L2 norm of the gradients before clipping; ``clip_scale``: the smallest
    factor clipping applied to any gradient entry (1 when nothing was clipped); ``clipped``:
    whether clipping changed the gradients of an applied step; ``skipped``: whether the step was
    skipped because a gradient was not finite.
    """

    grad_norm: Tensor
    clip_scale: Tensor
    clipped: Tensor
    skipped: Tensor


@dataclass
class StepPlan:
    """The gradients of one step and what to do with them.

    ``skip``: leave parameters, state and clip history as they are (a non-finite gradient, or
    a step that can change nothing); ``nonfinite``: the part of it that is a bad step, counted
    and reported (None when nothing checks for it); ``blame``: the part of ``nonfinite`` that
    counts towards the error after repeated bad steps, that is, all of it but GradScaler's
    found-inf steps while its scale is above 1 (it backs off and recovers by itself).
    """

    params: list[Tensor]
    grads: list[Tensor]
    owners: list[int]  # param-group index of each entry
    scales: list[Tensor | None]
    clamps: list[float | None]
    skip: Tensor | None
    stats: GradStats
    record: StepRecord
    nonfinite: Tensor | None = None
    blame: Tensor | None = None


def commit(dst: Tensor, new: Tensor, skip: Tensor | None) -> None:
    """Write ``new`` into ``dst``, or keep ``dst`` where ``skip`` is true (no host read)."""
    if skip is None:
        dst.copy_(new)
    else:
        dst.copy_(torch.where(skip, dst, new))


class _HostMirror:
    """A host copy of a small device counter, refreshed without waiting for the device.

    On CUDA the copy goes to pinned memory with ``non_blocking=True`` and is read only once its
    event has completed; on the CPU the copy is complete when it returns. Either way, reading it
    never blocks a step.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.host = torch.zeros((), dtype=torch.int64, pin_memory=device.type == "cuda")
        self.event: Any = None
        self.fresh = False

    def push(self, value: Tensor) -> None:
        self.host.copy_(value.detach(), non_blocking=True)
        if self.device.type == "cuda":
            self.event = torch.cuda.Event()
            self.event.record()
        self.fresh = True

    def peek(self) -> int | None:
        """The last pushed value if its copy has completed, else None."""
        if not self.fresh or (self.event is not None and not self.event.query()):
            return None
        self.fresh = False
        return int(self.host.numpy())


def param_names(param_groups: list[dict[str, Any]]) -> dict[int, str]:
    """Names by ``id(param)``: the names given with ``named_parameters()``, else positions."""
    names: dict[int, str] = {}
    for gi, group in enumerate(param_groups):
        given = group.get("param_names")
        for pi, p in enumerate(group["params"]):
            if given is not None and pi < len(given):
                names[id(p)] = str(given[pi])
            else:
                names[id(p)] = f"param_groups[{gi}]['params'][{pi}] (shape {tuple(p.shape)})"
    return names


class GuardCore:
    """Clip policies, non-finite guard and counters of one optimizer."""

    def __init__(self, clip: ClipPolicy | str | None, nonfinite: str,
                 max_consecutive_skips: int) -> None:
        check_choice("nonfinite", nonfinite, NONFINITE_MODES)
        if (isinstance(max_consecutive_skips, bool) or not isinstance(max_consecutive_skips, int)
                or max_consecutive_skips < 1):
            raise ValueError(f"Invalid max_consecutive_skips: {max_consecutive_skips!r}; must be "
                             "an integer >= 1")
        self.clip = resolve(clip, "clip")
        self.nonfinite = nonfinite
        self.max_consecutive_skips = max_consecutive_skips
        self.clipped_steps: Tensor | None = None
        self.skipped_steps: Tensor | None = None
        self.consecutive_skips: Tensor | None = None
        self.last_step: StepRecord | None = None
        # (parameters, their gradient norms) of the last step, for gradguard.Monitor.
        self.last_stats: tuple[list[Tensor], list[Tensor]] | None = None
        self._mirror: _HostMirror | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_mirror"] = None  # pinned memory and CUDA events do not copy
        state["last_stats"] = None  # references to this step's parameters; not state
        return state

    # -- policies -------------------------------------------------------------------------
    def policy_of(self, group: dict[str, Any]) -> ClipPolicy | None:
        """A group's own ``clip`` if it has the key (None there means: do not clip this group),
        else the optimizer's."""
        if "clip" in group:
            policy: ClipPolicy | None = group["clip"]
            return policy
        return self.clip

    def make_hooks(self, param_groups: list[dict[str, Any]]) -> GradHooks:
        """Backward hooks on every parameter, measuring what the clip policies will ask for:
        the 2-norm always (the guard and the record need it), the inf-norm for Value or an
        inf-norm policy, unit-wise norms for AGC."""
        policies = [self.clip] + [g.get("clip") for g in param_groups]
        norm_types = {2.0}
        for p in policies:
            if isinstance(p, Value):
                norm_types.add(float("inf"))
            elif isinstance(p, Norm | GlobalNorm):
                norm_types.add(p.norm_type)
        units = any(isinstance(p, AGC) for p in policies)
        params = [p for g in param_groups for p in g["params"]]
        return GradHooks(params, norm_types=norm_types, units=units)

    # -- a step -----------------------------------------------------------------------------
    def plan(self, param_groups: list[dict[str, Any]], hooks: GradHooks | None = None,
             grad_scale: Tensor | None = None,
             found_inf: Tensor | None = None) -> StepPlan | None:
        """Gather the gradients, decide the clip and the skip. None when no parameter has a
        gradient.

        ``hooks`` supplies norms measured during backward. ``grad_scale`` and ``found_inf`` are
        what torch.amp.GradScaler hands an optimizer that declares
        ``_step_supports_amp_scaling``: the gradients are still scaled, so every norm is taken
        times the inverse scale, the inverse scale joins the clip scale, and a found inf skips
        the step. ``found_inf`` without ``grad_scale`` means GradScaler.unscale_ already ran: it
        rescaled the gradients in place without bumping their version counters (on the CPU),
        so the norms measured in backward are not used.
        """
        self.poll(param_groups)
        if found_inf is not None and grad_scale is None:
            hooks = None
        multiplier = None if grad_scale is None else 1.0 / grad_scale.to(torch.float32)
        params: list[Tensor] = []
        grads: list[Tensor] = []
        owners: list[int] = []
        for gi, group in enumerate(param_groups):
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                params.append(p)
                grads.append(g)
                owners.append(gi)
        if not params:
            return None
        buckets: dict[int, tuple[ClipPolicy, list[int]]] = {}
        for k, gi in enumerate(owners):
            policy = self.policy_of(param_groups[gi])
            if policy is not None:
                buckets.setdefault(id(policy), (policy, []))[1].append(k)
        # Sharded gradients: AGC's vector parameter norms join the one all-reduce of the norms.
        param_norms = [k for policy, idx in buckets.values() if isinstance(policy, AGC)
                       for k in idx] if any(is_dtensor(g) for g in grads) else []
        stats = GradStats(params, grads, hooks, multiplier, param_norms)
        grad_norm = stats.total_norm(list(range(len(grads))))
        nonfinite = None if self.nonfinite == "off" else ~torch.isfinite(grad_norm)
        blame = nonfinite
        if found_inf is not None:
            # GradScaler has checked every gradient entry: its found-inf is the skip, so that
            # every skipped step reaches it and its scale backs off.
            nonfinite = found_inf.to(device=grad_norm.device, dtype=torch.bool)
            if grad_scale is None:  # after unscale_: the scale is not known here
                blame = torch.zeros_like(nonfinite)
            else:
                blame = nonfinite & (grad_scale.to(grad_norm.device) <= 1)
        skip = nonfinite
        if all(isinstance(g.get("lr"), float | int) and g["lr"] == 0 for g in param_groups):
            # A step that can change nothing (lr 0, zero gradients: what torch's distributed
            # checkpoint runs to create optimizer state) enters no clip history.
            idle = grad_norm == 0
            skip = idle if skip is None else skip | idle

        scales: list[Tensor | None] = [None] * len(grads)
        clamps: list[float | None] = [None] * len(grads)
        mins: list[Tensor] = []
        binding: list[Tensor] = []
        for policy, idx in buckets.values():
            decision = policy.decide(stats, idx, skip)
            for k, s in zip(idx, decision.scales, strict=True):
                scales[k] = s
                clamps[k] = decision.clamp
            mins.append(decision.min_scale.to(torch.float32))
            binding.append(decision.binding.to(device=grad_norm.device))
        if multiplier is not None:  # fold GradScaler's unscale into the clip scale
            folded: dict[int, Tensor] = {}
            for k, s in enumerate(scales):
                key = id(s)
                if key not in folded:
                    folded[key] = multiplier if s is None else s * multiplier.to(s.dtype)
                scales[k] = folded[key]
        device = grad_norm.device
        clip_scale = torch.stack(mins).min() if mins else torch.ones((), device=device)
        clipped = (torch.stack(binding).any() if binding
                   else torch.zeros((), dtype=torch.bool, device=device))
        if skip is not None:
            clipped = clipped & ~skip
        skipped = (nonfinite if nonfinite is not None
                   else torch.zeros((), dtype=torch.bool, device=device))
        record = StepRecord(grad_norm.to(torch.float32), clip_scale, clipped, skipped)
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
        if self.clipped_steps.device != device:  # loaded from a checkpoint on another device
            self.clipped_steps, self.skipped_steps, self.consecutive_skips = (
                t.to(device) for t in (self.clipped_steps, self.skipped_steps,
                                       self.consecutive_skips))
        self.clipped_steps = self.clipped_steps + rec.clipped.to(torch.int64)
        self.skipped_steps = self.skipped_steps + rec.skipped.to(torch.int64)
        blame = rec.skipped if plan.blame is None else plan.blame.to(device)
        # A step GradScaler is recovering from neither adds to the count nor resets it.
        self.consecutive_skips = torch.where(
            blame, self.consecutive_skips + 1,
            torch.where(rec.skipped, self.consecutive_skips, 0))
        self.last_step = rec
        self.last_stats = (plan.params, plan.stats.norms())
        if self.nonfinite == "raise":
            if bool(blame):  # the user asked for an error on every bad step: one read
                raise self._error(plan.params, plan.stats, param_groups, 1, " (nonfinite='raise')")
        elif self.nonfinite == "skip":
            if self._mirror is None or self._mirror.device != device:
                self._mirror = _HostMirror(device)
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
            raise self._error(params, stats, param_groups, count, "")

    def _error(self, params: list[Tensor], stats: GradStats, param_groups: list[dict[str, Any]],
               count: int, reason: str) -> NonFiniteGradientError:
        names = param_names(param_groups)
        norms = stats.norms()
        bad = torch.stack([~torch.isfinite(n) for n in norms]).cpu().tolist()
        return NonFiniteGradientError(
            [names[id(p)] for p, b in zip(params, bad, strict=True) if b], count, reason)

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
        self.__dict__.clear()
        self.__dict__.update(copy.deepcopy(snapshot["core"], memo))
        self.last_stats = snapshot["last_stats"]
        if clip is not None and snapshot["clip"] is not None:
            clip.restore(snapshot["clip"])


EXTRAS_KEY = "gradguard"


def _to_cpu(tree: Any) -> Any:
    if isinstance(tree, Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: _to_cpu(v) for k, v in tree.items()}
    return tree


def attach_extras(sd: dict[str, Any], extra: dict[str, Any]) -> None:
    """Put gradguard's entry (clip state, counters) into a packed state_dict under
    ``"gradguard"``. Where ``torch.distributed`` is initialized, also as a CPU copy in
    ``param_groups[0]["gradguard"]``, wrapped in a 1-tuple: torch's distributed checkpoint
    utilities (``get_optimizer_state_dict``, ``set_optimizer_state_dict``) keep only ``state``
    and ``param_groups``, and DCP saves a tuple as one opaque object, so the entry survives
    whatever shapes its tensors have. (Not in single-process state_dicts, whose param groups
    hold hyperparameters only.)"""
    sd[EXTRAS_KEY] = extra
    if sd["param_groups"] and dist.is_available() and dist.is_initialized():
        sd["param_groups"][0][EXTRAS_KEY] = (_to_cpu(extra),)


def detach_extras(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The state_dict without gradguard's entry (the caller's dict is not changed), and that
    entry: the top-level one, else the copy carried in the param groups."""
    state_dict = dict(state_dict)
    extra = state_dict.pop(EXTRAS_KEY, None)
    groups = state_dict.get("param_groups")
    if isinstance(groups, list) and any(EXTRAS_KEY in g for g in groups):
        carried = [g[EXTRAS_KEY] for g in groups if EXTRAS_KEY in g]
        state_dict["param_groups"] = [{k: v for k, v in g.items() if k != EXTRAS_KEY}
                                      for g in groups]
        if extra is None and isinstance(carried[0], tuple | list) and carried[0]:
            extra = carried[0][0]
    return state_dict, extra


def export_groups(groups: list[dict[str, Any]]) -> None:
    """Replace clip policy objects in packed param groups by their spec strings (in place)."""
    for g in groups:
        if "clip" in g and isinstance(g["clip"], ClipPolicy):
            g["clip"] = g["clip"].spec


def restore_group_clips(param_groups: list[dict[str, Any]],
                        before: list[tuple[bool, ClipPolicy | None]]) -> None:
    """After torch's load_state_dict replaced our groups: keep the policy objects the user gave
    (their state is loaded separately), and parse saved specs for groups that had none."""
    for group, (had, policy) in zip(param_groups, before, strict=True):
        if had:
            group["clip"] = policy
        elif "clip" in group:
            group["clip"] = resolve(group["clip"], "param group clip")


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
