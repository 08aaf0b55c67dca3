"""The base class of gradguard's optimizers: torch.optim.Optimizer plus clip and guard."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from .._validation import check_choice
from ..clip import ClipPolicy, GradHooks, resolve
from ..clip._dist import is_dtensor, local
from ._backends import (
    BACKENDS,
    compile_available,
    compile_min_numel,
    default_backend,
    run_compiled,
    update_tensors,
)
from ._core import (
    GuardCore,
    GuardReadouts,
    attach_extras,
    detach_extras,
    export_groups,
    restore_group_clips,
)
from ._foreach import clipped_grads, update_foreach

Rule = Callable[..., tuple[Tensor, dict[str, Tensor]]]

# Group keys that are not hyperparameters of the update rule (lr is passed separately).
_NOT_HPARAMS = frozenset({"params", "param_names", "clip", "initial_lr", "lr"})
_NATIVE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class GuardedOptimizer(GuardReadouts, Optimizer):
    """A ``torch.optim.Optimizer`` whose step clips and guards.

    Subclasses name their update rule (a function of :mod:`gradguard.rules`) and how to create
    a parameter's state; everything else — param groups, state_dict, clipping, the non-finite
    guard, ``last_step`` and the counters — lives here.
    """

    _rule: ClassVar[Rule]
    # GradScaler hands us its scale and found-inf flag instead of unscaling the gradients.
    _step_supports_amp_scaling = True
    # Set where the rule needs norms of whole tensors, which a shard does not have (the reason).
    _whole_tensors: ClassVar[str | None] = None

    def __init__(
        self,
        params: Iterable[Any],
        defaults: dict[str, Any],
        *,
        clip: ClipPolicy | str | None,
        nonfinite: str,
        max_consecutive_skips: int,
        backend: str | None = None,
        measure_in_backward: bool = True,
    ) -> None:
        if defaults.get("differentiable"):
            raise ValueError("Invalid differentiable: True; gradguard optimizers do not support "
                             "differentiating through the step")
        backend = default_backend() if backend is None else backend
        check_choice("backend", backend, BACKENDS)
        self.backend = backend
        self._core = GuardCore(clip, nonfinite, max_consecutive_skips)
        self._hooks: GradHooks | None = None
        self.measure_in_backward = bool(measure_in_backward)
        # Momentum buffers that take the first gradient as is (SGD) need to know, without a
        # host read, whether a skipped step left them uninitialised.
        self._fresh: dict[Tensor, Tensor] = {}
        self._hparam_keys = tuple(defaults)
        super().__init__(params, defaults)
        self._attach_hooks()

    # -- param groups -----------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "clip" in param_group:
            param_group["clip"] = resolve(param_group["clip"], "param group clip")
        super().add_param_group(param_group)
        if self._whole_tensors is not None:
            self._check_not_sharded(self.param_groups[-1])
        if getattr(self, "_hooks", None) is not None:
            self._attach_hooks()

    def _check_not_sharded(self, group: dict[str, Any]) -> None:
        for i, p in enumerate(group["params"]):
            if is_dtensor(p) and any(pl.is_shard() for pl in p.placements):
                raise NotImplementedError(
                    f"{type(self).__name__} does not support sharded parameters (FSDP2): "
                    f"params[{i}] (shape {tuple(p.shape)}) has placements "
                    f"{tuple(p.placements)}; {self._whole_tensors}. Use it with DDP, or "
                    "another optimizer under FSDP2")

    # -- norms measured during backward -----------------------------------------------------
    def _attach_hooks(self) -> None:
        """(Re)register the backward hooks that measure what the clip policies will ask for."""
        if self._hooks is not None:
            self._hooks.remove()
            self._hooks = None
        if self.__dict__.get("measure_in_backward", True):
            self._hooks = self._core.make_hooks(self.param_groups)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        # torch keeps defaults, state and param_groups; ours too. Hooks belong to these
        # parameter objects and are made anew for the copy.
        for key in ("_core", "backend", "_fresh", "_hparam_keys", "measure_in_backward"):
            state[key] = self.__dict__[key]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "_hooks" not in self.__dict__:  # unpickled or deep-copied: hook the new parameters
            self._hooks = None
            self.__dict__.setdefault("backend", "auto")
            self.__dict__.setdefault("_fresh", {})
            self.__dict__.setdefault("_hparam_keys", tuple(self.defaults))
            if "_core" not in self.__dict__:
                self._core = GuardCore(None, "skip", 10)
            self._attach_hooks()
        # Groups saved by an older version (or by torch) get the defaults of keys they lack.
        for group in self.param_groups:
            for key in getattr(self, "_hparam_keys", ()):
                group.setdefault(key, self.defaults[key])

    # -- state ------------------------------------------------------------------------------
    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """A parameter's state before its first step (torch.optim's keys and dtypes)."""
        raise TypeError(f"{type(self).__name__} must define _init_state")

    @staticmethod
    def _step_tensor(p: Tensor) -> Tensor:
        # On the parameter's device (as torch does with capturable=True), so counting a step
        # never needs the host.
        return torch.zeros((), dtype=torch.float32, device=p.device)

    def _state_for(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        state = self.state[p]
        if not state:
            state.update(self._init_state(p, group))
        step = state.get("step")
        if isinstance(step, Tensor) and step.device != p.device:
            state["step"] = step.to(device=p.device, dtype=torch.float32)
        return state

    # -- the step ---------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Clip, guard and update. Returns the closure's loss, if a closure was given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Set by torch.amp.GradScaler.step (we declare _step_supports_amp_scaling).
        plan = self._core.plan(self.param_groups, self._hooks,
                               getattr(self, "grad_scale", None), getattr(self, "found_inf", None))
        if plan is None:
            return loss
        by_group: dict[int, list[int]] = {}
        for k, gi in enumerate(plan.owners):
            by_group.setdefault(gi, []).append(k)
        for gi, ks in by_group.items():
            group = self.param_groups[gi]
            params = [plan.params[k] for k in ks]
            states = [self._state_for(p, group) for p in params]
            fresh = [self._fresh.get(p) for p in params]
            grads = [plan.grads[k] for k in ks]
            if any(is_dtensor(p) for p in params):
                # Sharded (FSDP2): the rule runs on the local shards; the state stays DTensor.
                params_l = [local(p) for p in params]
                grads_l = [local(g) for g in grads]
                states_l = [{k: local(v) for k, v in st.items()} for st in states]
            else:
                params_l, grads_l, states_l = params, grads, states
            wrote = self._update_group(group, params_l, grads_l, states_l,
                                       [plan.scales[k] for k in ks], plan.clamps[ks[0]], fresh,
                                       plan.skip)
            if wrote and self._hooks is not None:
                # torch's fused kernels write grad / grad_scale back into .grad, without a
                # version bump: forget what the hooks measured.
                self._hooks.forget(params)
            for p, f in zip(params, fresh, strict=True):
                if f is not None:
                    self._fresh[p] = (f & plan.skip if plan.skip is not None
                                      else torch.zeros_like(f))
        self._core.finish(plan, self.param_groups)
        return loss

    def _update_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                      states: list[dict[str, Tensor]], scales: list[Tensor | None],
                      clamp: float | None, fresh: list[Tensor | None],
                      skip: Tensor | None) -> bool:
        """Run the update rule over one param group on the chosen backend: ``eager`` the
        per-tensor reference, ``foreach`` the multi-tensor eager path; ``auto`` and ``native``
        a native fused kernel where one is exact, else (like ``compiled``) the compiled update,
        else (no compiler) ``foreach``; ``auto`` also takes ``foreach`` for groups smaller
        than :func:`compile_min_numel` elements. Where ``foreach`` would run and a fused kernel
        exists but cannot take the clip as its ``grad_scale`` (per-tensor or unit-wise scales,
        a value clamp), the kernel runs on gradients clipped into temporaries instead. True
        when a fused kernel wrote into the gradients."""
        hparams = {k: v for k, v in group.items() if k not in _NOT_HPARAMS}
        lr = group["lr"]
        rule = type(self)._rule
        if self.backend == "eager":
            update_tensors(rule, params, grads, states, scales, clamp, fresh, skip, lr, hparams)
            return False
        how, shared = (self._native_plan(group, params, grads, scales, clamp)
                       if self.backend in ("auto", "native") else ("none", None))
        if how == "scale":
            self._native_update(group, params, grads, states, shared, skip)
            return shared is not None
        small = self.backend == "auto" and sum(p.numel() for p in params) < compile_min_numel()
        if how == "prescaled" and (small or not compile_available()):
            # Where the multi-tensor path would run: the fused kernel on gradients clipped into
            # temporaries costs one extra pass; the rule's multi-tensor ops, many.
            self._native_update(group, params, clipped_grads(grads, scales, clamp), states,
                                None, skip)
            return False
        if self.backend != "foreach" and not small and run_compiled(
                rule, params, grads, states, scales, clamp, fresh, skip, lr, hparams):
            return False
        update_foreach(rule, params, grads, states, scales, clamp, fresh, skip, lr, hparams)
        return False

    # -- torch's native fused kernels -------------------------------------------------------
    def _native_supported(self, group: dict[str, Any]) -> bool:
        """Whether torch has a fused kernel that is exact for this group's settings."""
        return False

    def _native_plan(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                     scales: list[Tensor | None],
                     clamp: float | None) -> tuple[str, Tensor | None]:
        """How a native fused kernel can take this step exactly: ``("scale", s)`` with the one
        0-d scale to hand it as its ``grad_scale`` (None: no scaling); ``("prescaled", None)``
        on gradients clipped into temporaries first (per-tensor or unit-wise scales, a value
        clamp); ``("none", None)`` where it cannot (no kernel for this rule or these
        settings, mixed devices or dtypes)."""
        no = ("none", None)
        if not self._native_supported(group):
            return no
        p0 = params[0]
        if p0.device.type not in ("cpu", "cuda") or p0.dtype not in _NATIVE_DTYPES:
            return no
        if any(p.device != p0.device or p.dtype != p0.dtype for p in params):
            return no
        if any(g.dtype != p0.dtype or g.layout != torch.strided for g in grads):
            return no
        shared = scales[0]
        if clamp is None and all(s is shared for s in scales) and (
                shared is None or shared.dim() == 0):
            return "scale", shared
        if any(s is None for s in scales) and any(s is not None for s in scales):
            return no
        return "prescaled", None

    def _native_update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                       states: list[dict[str, Tensor]], scale: Tensor | None,
                       skip: Tensor | None) -> None:
        raise TypeError(f"{type(self).__name__} has no native fused kernel")

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state_dict (loadable by the torch optimizer of the same name) plus a
        ``"gradguard"`` entry: clip-policy state and the clipped/skipped counters (under
        torch.distributed also carried in ``param_groups[0]``, where torch's distributed
        checkpoint utilities keep it)."""
        sd = super().state_dict()
        export_groups(sd["param_groups"])
        extra = self._core.state_dict(self.param_groups)
        index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        extra["fresh"] = {index[id(p)]: t for p, t in self._fresh.items() if id(p) in index}
        attach_extras(sd, extra)
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict of this optimizer or of the torch.optim optimizer of the same name."""
        state_dict, extra = detach_extras(state_dict)
        before = [("clip" in g, g.get("clip")) for g in self.param_groups]
        super().load_state_dict(state_dict)
        restore_group_clips(self.param_groups, before)
        self._core.load_state_dict(extra, self.param_groups)
        params = [p for g in self.param_groups for p in g["params"]]
        fresh = (extra or {}).get("fresh", {})
        self._fresh = {params[int(i)]: t.to(params[int(i)].device) for i, t in fresh.items()}
