"""The base class of gradguard's optimizers: torch.optim.Optimizer plus clip and guard."""

from __future__ import annotations

import bisect
import inspect
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, TypedDict

import torch
from torch import Tensor
from torch.optim import Optimizer

try:  # torch's own check (and message) for what fused=True can take
    from torch.optim.optimizer import _device_dtype_check_for_fused
except ImportError:  # pragma: no cover - older torch
    def _device_dtype_check_for_fused(p: Tensor, cuda_unsupported: bool = False) -> None:
        if not (p.device.type in ("cpu", "cuda") and torch.is_floating_point(p)):
            raise RuntimeError("`fused=True` requires all the params to be floating point "
                               f"Tensors of supported devices but {p.dtype} and "
                               f"{p.device.type}")

from .._untraced import not_traced
from .._validation import check_choice
from ..clip import ClipPolicy, GradHooks, resolve
from ..clip._dist import any_dtensor, is_dtensor, local
from ..clip._stats import Laid
from ..rules import Rule
from . import _stats, backends
from ._core import GuardCore, GuardReadouts
from ._extras import attach_extras, detach_extras, export_groups, restore_group_clips

Params = Iterable[Any]

# Group keys that are not hyperparameters of the update rule (lr is passed separately).
_NOT_HPARAMS = frozenset({"params", "param_names", "clip", "initial_lr", "lr"})
# 0-d state entries (steps, NAdam's momentum product): kept on the parameter's device.
_SCALAR_KEYS = ("step", "mu_product")


def _scalar(value: Any) -> Any:
    """A one-element tensor hyperparameter (lr, betas) as a 0-d view, so it broadcasts like a
    number whatever its shape (``[1, 1]`` included); anything else as it is."""
    if isinstance(value, Tensor) and value.dim() > 0:
        return value.reshape(())
    if isinstance(value, tuple) and any(isinstance(v, Tensor) for v in value):
        return tuple(_scalar(v) for v in value)
    return value


def _hparams(group: dict[str, Any]) -> dict[str, Any]:
    """A group's hyperparameters of the update rule, one-element tensors as 0-d."""
    return {k: _scalar(v) for k, v in group.items() if k not in _NOT_HPARAMS}


def _group_slices(owners: list[int]) -> Iterator[tuple[int, int, int]]:
    """``(group index, start, stop)`` of each param group's run in the step's gathered
    lists (gathered group by group, so each group's entries are one slice).

    >>> list(_group_slices([0, 0, 2, 2, 2]))
    [(0, 0, 2), (2, 2, 5)]
    """
    start = 0
    while start < len(owners):
        stop = bisect.bisect_right(owners, owners[start], start)
        yield owners[start], start, stop
        start = stop


def _as_real(params: list[Tensor], grads: list[Tensor], states: list[dict[str, Tensor]],
             scales: list[Tensor | None]) -> tuple[list[Tensor], list[Tensor],
                                                   list[dict[str, Tensor]],
                                                   list[Tensor | None]]:
    """Complex tensors as real views with a trailing dimension of 2 (torch.optim's treatment:
    every update is elementwise on real and imaginary parts); unit-wise scales gain that
    dimension too, so they still broadcast."""
    def real(t: Tensor) -> Tensor:
        return torch.view_as_real(t) if t.is_complex() else t

    out_scales = [s.unsqueeze(-1) if s is not None and s.dim() > 0 and p.is_complex() else s
                  for p, s in zip(params, scales, strict=True)]
    return ([real(p) for p in params], [real(g) for g in grads],
            [{k: real(v) for k, v in st.items()} for st in states], out_scales)


_NOT_TRACED_WHY = (
    "gradguard's step runs as it does in eager mode: its flat buffers, fused kernels and "
    "per-group compiled rules are already one call each, and tracing its checks of parameter "
    "identity and settings would recompile whenever a parameter, the LR or a clip scale changes")


# ``fn`` as a call torch.compile does not trace (one graph break where it is called from
# compiled code; no guard on what it reads, so no recompile when parameters, the LR or the
# clip change). Outside compiled code it is ``fn``.
_not_traced = not_traced(_NOT_TRACED_WHY)


class GuardOptions(TypedDict, total=False):
    """The options every gradguard optimizer takes after torch's arguments, declared once (see
    :mod:`gradguard.optim._optimizers` for what each does): ``clip`` (a policy, a spec string or
    None), ``nonfinite`` (``"skip"``, ``"raise"`` or ``"off"``; default ``"skip"``),
    ``max_consecutive_skips`` (default 10), ``backend`` (default ``"auto"`` or
    ``GRADGUARD_BACKEND``) and ``measure_in_backward`` (default True)."""

    clip: ClipPolicy | str | None
    nonfinite: str
    max_consecutive_skips: int
    backend: str | None
    measure_in_backward: bool


# The options as keyword-only parameters with their defaults, for each class's signature.
_OPTION_PARAMETERS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hint)
    for name, default, hint in (("clip", None, "ClipPolicy | str | None"),
                                ("nonfinite", "skip", "str"),
                                ("max_consecutive_skips", 10, "int"),
                                ("backend", None, "str | None"),
                                ("measure_in_backward", True, "bool"))]


class GuardedOptimizer(GuardReadouts, Optimizer):
    """A ``torch.optim.Optimizer`` whose step clips and guards.

    Subclasses name their update rule (a :class:`gradguard.rules.Rule`: the state's
    initialisation beside the update), check their arguments and pass their hyperparameters
    with the guard options (:class:`GuardOptions`); everything else — param groups,
    state_dict, clipping, the non-finite guard, ``last_step`` and the counters — lives here.
    """

    rule: ClassVar[Rule]
    # torch's error for a sparse gradient (None: the optimizer has a sparse update).
    _sparse_error: ClassVar[str | None] = "{name} does not support sparse gradients"
    # GradScaler hands us its scale and found-inf flag instead of unscaling the gradients.
    _step_supports_amp_scaling = True
    # Set where the rule needs norms of whole tensors, which a shard does not have (the reason).
    _whole_tensors: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Each class's signature shows the guard options as keyword-only parameters (they are
        # declared once, in GuardOptions, and taken as **options).
        own = inspect.signature(cls.__init__).parameters.values()
        params = [p for p in own if p.kind != inspect.Parameter.VAR_KEYWORD][1:]
        cls.__signature__ = inspect.Signature(params + _OPTION_PARAMETERS)  # type: ignore[attr-defined]

    def __init__(
        self,
        params: Iterable[Any],
        defaults: dict[str, Any],
        *,
        clip: ClipPolicy | str | None = None,
        nonfinite: str = "skip",
        max_consecutive_skips: int = 10,
        backend: str | None = None,
        measure_in_backward: bool = True,
    ) -> None:
        if defaults.get("fused"):
            if defaults.get("differentiable"):
                raise RuntimeError("`fused` does not support `differentiable`")
            if defaults.get("foreach"):
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        backend = backends.default_backend() if backend is None else backend
        check_choice("backend", backend, backends.BACKENDS)
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
        # torch's load_state_dict ends here, after its load pre-hooks, with the saved state
        # keyed by our parameters: check it before anything is changed.
        self._check_state(state.get("state"), state.get("param_groups"),
                          state.get("defaults", self.__dict__.get("defaults", {})))
        super().__setstate__(state)
        self.__dict__.setdefault("_flat", {})  # rebuilt at the next step where stale
        self.__dict__["_flat_declined"] = {}
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
        # Older torch checkpoints hold steps (and NAdam's mu_product) as Python numbers, and
        # torch's SGD may hold a momentum buffer of None: make them what a step expects.
        for p, st in self.state.items():
            if not isinstance(p, Tensor) or not isinstance(st, dict):
                continue
            for key in _SCALAR_KEYS:
                value = st.get(key)
                if value is not None and not isinstance(value, Tensor):
                    st[key] = torch.tensor(float(value), dtype=torch.float32, device=p.device)
            key = type(self).rule.fresh_key
            if key is not None and key in st and st[key] is None:
                st[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
                self.__dict__.setdefault("_fresh", {})[p] = torch.ones(
                    (), dtype=torch.bool, device=p.device)

    # -- state ------------------------------------------------------------------------------
    def _state_for(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        if p not in self.state or not self.state[p]:
            init = self.rule.init(p, group)
            if not init:  # stateless (SGD without momentum): torch keeps no entry either
                return init
            self.state[p] = init
            if self.rule.fresh_key in init:
                self._fresh[p] = torch.ones((), dtype=torch.bool, device=p.device)
        state = self.state[p]
        for key in _SCALAR_KEYS:
            value = state.get(key)
            if isinstance(value, Tensor) and value.device != p.device:
                state[key] = value.to(device=p.device, dtype=torch.float32)
        return state

    # -- the step ---------------------------------------------------------------------------
    def _differentiable(self) -> bool:
        return bool(self.defaults.get("differentiable")) or any(
            g.get("differentiable") for g in self.param_groups)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Clip, guard and update. Returns the closure's loss, if a closure was given.

        Runs without autograd, except with ``differentiable=True``: then the step is recorded
        (on the per-tensor reference path) so that one can differentiate through it.

        Inside a function compiled with ``torch.compile`` (a whole training step), the update
        runs as it does outside, as one call dynamo does not trace (:func:`_not_traced`); the
        closure, if any, is traced with the rest."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._untraced_step()
        return loss

    @_not_traced
    def _untraced_step(self) -> None:
        with torch.set_grad_enabled(self._differentiable()):
            self._step()

    def _step(self) -> None:
        self._check_grads()
        differentiable = torch.is_grad_enabled()
        gathered = _stats.gather(self.param_groups)
        flats, laid = self._lay_flat(*gathered)
        # Set by torch.amp.GradScaler.step (we declare _step_supports_amp_scaling).
        plan = self._core.plan(self.param_groups, None if differentiable else self._hooks,
                               getattr(self, "grad_scale", None), getattr(self, "found_inf", None),
                               laid, gathered)
        if plan is None:
            return
        for gi, start, stop in _group_slices(plan.owners):
            group = self.param_groups[gi]
            params = plan.params[start:stop]
            grads = plan.grads[start:stop]
            scales = plan.scales[start:stop]
            clamp = plan.clamps[start]
            flat = flats.get(gi)
            if flat is not None:
                flat.step(self.rule, group, params, scales, clamp, plan.skip,
                          _scalar(group["lr"]), _hparams(group))
                if flat.fresh is not None:
                    for p in params:
                        self._fresh[p] = flat.fresh
                continue
            states = [self._state_for(p, group) for p in params]
            fresh = [self._fresh.get(p) for p in params]
            sparse = [i for i, g in enumerate(grads) if g.layout != torch.strided]
            if sparse:
                for i in sparse:
                    self._sparse_update(group, params[i], grads[i], states[i], scales[i], clamp,
                                        plan.skip)
                dense = [i for i in range(len(grads)) if i not in sparse]
                params, grads = [params[i] for i in dense], [grads[i] for i in dense]
                states, scales = [states[i] for i in dense], [scales[i] for i in dense]
                fresh = [fresh[i] for i in dense]
                if not params:
                    continue
            if any_dtensor(params):
                # Sharded (FSDP2): the rule runs on the local shards; the state stays DTensor.
                params_l = [local(p) for p in params]
                grads_l = [local(g) for g in grads]
                states_l = [{k: local(v) for k, v in st.items()} for st in states]
            else:
                params_l, grads_l, states_l = params, grads, states
            if any(p.is_complex() for p in params_l):
                params_l, grads_l, states_l, scales = _as_real(params_l, grads_l, states_l,
                                                               scales)
            self._update_group(group, params_l, grads_l, states_l, scales, clamp, fresh,
                               plan.skip)
            for p, f in zip(params, fresh, strict=True):
                if f is not None:
                    self._fresh[p] = (f & plan.skip if plan.skip is not None
                                      else torch.zeros_like(f))
        self._core.finish(plan, self.param_groups)

    def _lay_flat(self, params: list[Tensor], grads: list[Tensor], owners: list[int]
                  ) -> tuple[dict[int, backends.FlatGroup], list[Laid]]:
        """Before the plan, from the step's gathered gradients: the param groups that step
        flat (by index), their parameters and gradients copied into their buffers, and where
        those gradients lie in the step's order of gradients (for the plan's norms)."""
        flats: dict[int, backends.FlatGroup] = {}
        laid: list[Laid] = []
        for gi, start, stop in _group_slices(owners):
            ps, gs = params[start:stop], grads[start:stop]
            flat = self._flat_group(gi, self.param_groups[gi], ps, gs)
            if flat is not None:
                flat.load(ps, gs)
                flats[gi] = flat
                laid.append(flat.laid(start))
        return flats, laid

    def _flat_group(self, gi: int, group: dict[str, Any], params: list[Tensor],
                    grads: list[Tensor]) -> backends.FlatGroup | None:
        """The flat buffers this group's step runs on (built or rebuilt where the group is
        not the one they hold; see :mod:`gradguard.optim.backends.flat`), or None where it
        takes the per-tensor paths (then any buffers it had give back their shared 0-d
        entries)."""
        flats: dict[int, backends.FlatGroup] = self.__dict__.setdefault("_flat", {})
        current = flats.get(gi)
        if current is not None and current.matches(params, self.state) and \
                backends.flat.still_wanted(current, self.backend, group, grads):
            return current
        if not backends.flat.wanted(self.backend, group, params, grads):
            if current is not None:
                current.release()
                del flats[gi]
            return None
        if current is not None:
            if current.matches(params, self.state):
                return current
            current.release()
            del flats[gi]
        declined: dict[int, Any] = self.__dict__.setdefault("_flat_declined", {})
        signature = self._flat_signature(params)
        if declined.get(gi) == signature:
            return None  # this state cannot be flat (steps differ): not read again
        new_state = [p not in self.state or not self.state[p] for p in params]
        states = [self._state_for(p, group) for p in params]
        fresh = [self._fresh.get(p) for p in params]
        built = backends.FlatGroup.build(self.rule, group, params, states, fresh,
                                         all(new_state))
        if built is not None:
            flats[gi] = built
            declined.pop(gi, None)
        else:
            declined[gi] = self._flat_signature(params)
        return built

    def _flat_signature(self, params: list[Tensor]) -> tuple[Any, ...]:
        """What a declined flat build depended on: the parameters and the identity of their
        state entries (a loaded checkpoint or a replaced entry changes it)."""
        out = []
        for p in params:
            st = self.state.get(p)
            out.append((id(p), p.dtype, id(st), tuple(id(v) for v in st.values()) if st else ()))
        return tuple(out)

    def _check_grads(self) -> None:
        """torch's errors for gradients a step cannot take: sparse ones where the optimizer has
        no sparse update, and (once) parameters that ``fused=True`` cannot take."""
        for group in self.param_groups:
            fused = group.get("fused")
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if g.layout != torch.strided and self._sparse_error is not None:
                    raise RuntimeError(self._sparse_error.format(name=type(self).__name__))
                if fused and self.__dict__.get("_need_device_dtype_check_for_fused", True):
                    _device_dtype_check_for_fused(p)
        self._need_device_dtype_check_for_fused = False

    def _update_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                      states: list[dict[str, Tensor]], scales: list[Tensor | None],
                      clamp: float | None, fresh: list[Tensor | None],
                      skip: Tensor | None) -> None:
        """Run the update rule over one param group on the path :func:`backends.select`
        chooses. No path writes ``.grad``."""
        hparams = _hparams(group)
        choice = backends.select(self.backend, self.rule, group, params, grads, states, scales,
                                 clamp)
        backends.run(choice, self.rule, group, params, grads, states, scales, clamp, fresh,
                     skip, _scalar(group["lr"]), hparams)

    def _sparse_update(self, group: dict[str, Any], p: Tensor, g: Tensor,
                       state: dict[str, Tensor], scale: Tensor | None, clamp: float | None,
                       skip: Tensor | None) -> None:
        raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state_dict (loadable by the torch optimizer of the same name) plus a
        ``"gradguard"`` entry: clip-policy state and the clipped/skipped counters (under
        torch.distributed also carried in ``param_groups[0]``, where torch's distributed
        checkpoint utilities keep it)."""
        sd = super().state_dict()
        # A flat group's parameters share their 0-d entries (steps): each gets its own copy,
        # as torch's optimizers, which advance them one parameter at a time, expect.
        shared = {id(st) for flat in self.__dict__.get("_flat", {}).values()
                  for st, _ in flat.entries}
        for i, st in list(sd["state"].items()):
            if id(st) in shared:
                sd["state"][i] = {k: v.clone() if isinstance(v, Tensor) and v.dim() == 0
                                  and k in _SCALAR_KEYS else v for k, v in st.items()}
        export_groups(sd["param_groups"])
        extra = self._core.state_dict(self.param_groups)
        index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        extra["fresh"] = {index[id(p)]: t.clone() for p, t in self._fresh.items()
                          if id(p) in index}
        attach_extras(sd, extra)
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict of this optimizer or of the torch.optim optimizer of the same name.

        Every parameter's saved state is checked (after torch's load pre-hooks, which may
        convert it), and nothing is changed if any of it is wrong: ``ValueError`` names the
        parameter, the entry, what was expected and what was found (a missing entry, as in a
        checkpoint of another optimizer; a tensor of another shape; a complex entry for a real
        parameter or the reverse). Steps saved as numbers (older torch checkpoints) load as
        tensors."""
        state_dict, extra = detach_extras(state_dict)
        before = [("clip" in g, g.get("clip")) for g in self.param_groups]
        super().load_state_dict(state_dict)
        restore_group_clips(self.param_groups, before)
        self._core.load_state_dict(extra, self.param_groups)
        params = [p for g in self.param_groups for p in g["params"]]
        fresh = (extra or {}).get("fresh", {})
        self._fresh = {params[int(i)]: t.to(params[int(i)].device) for i, t in fresh.items()}

    def _check_state(self, state: Any, param_groups: Any, defaults: dict[str, Any]) -> None:
        """Raise ValueError unless every parameter's saved state holds what this optimizer's
        step reads, with the parameter's shape (torch has checked the groups' sizes)."""
        if not isinstance(state, dict) or not isinstance(param_groups, list):
            return
        index = 0
        for gi, group in enumerate(param_groups):
            for pi, p in enumerate(group["params"]):
                st = state.get(p)
                if st:
                    self._check_param_state(st, p, {**defaults, **group}, f"parameter {index} "
                                            f"(param_groups[{gi}]['params'][{pi}], shape "
                                            f"{tuple(p.shape)})")
                index += 1

    def _check_param_state(self, st: Any, p: Tensor, group: dict[str, Any], where: str) -> None:
        name = type(self).__name__
        if not isinstance(st, dict):
            raise ValueError(f"Invalid state_dict: the state of {where} is a "
                             f"{type(st).__name__}, expected a dict")
        meta = torch.empty(p.shape, dtype=p.dtype, device="meta")
        expected = self.rule.init(meta, group)
        for key, like in expected.items():
            if key not in st:
                raise ValueError(f"Invalid state_dict: the state of {where} has no {key!r}; "
                                 f"{name} with these settings needs {sorted(expected)}, found "
                                 f"{sorted(st)} (saved by another optimizer or settings?)")
            value = st[key]
            if like.dim() == 0:
                ok = (isinstance(value, int | float) and not isinstance(value, bool)) or (
                    isinstance(value, Tensor) and value.numel() == 1)
                if not ok:
                    raise ValueError(f"Invalid state_dict: {where} {key!r} must be a number or a "
                                     f"one-element tensor, found {_describe(value)}")
                continue
            if value is None and key == self.rule.fresh_key:
                continue  # torch's SGD before the parameter's first step
            if not isinstance(value, Tensor):
                raise ValueError(f"Invalid state_dict: {where} {key!r} must be a tensor of shape "
                                 f"{tuple(like.shape)}, found {_describe(value)}")
            if tuple(value.shape) != tuple(like.shape):
                raise ValueError(f"Invalid state_dict: {where} {key!r} has shape "
                                 f"{tuple(value.shape)}, expected {tuple(like.shape)} (the "
                                 "parameter's shape)")
            if value.is_complex() != like.is_complex() or not (
                    value.is_floating_point() or value.is_complex()):
                raise ValueError(f"Invalid state_dict: {where} {key!r} has dtype {value.dtype}, "
                                 f"expected a {'complex' if like.is_complex() else 'floating'} "
                                 f"dtype like the parameter's ({p.dtype})")


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"
