"""Clip policies: how much to shrink the gradients at a step, as tensors.

A policy looks at the step's :class:`GradStats` and returns a :class:`ClipDecision`: a scale per
gradient tensor (a 0-d tensor, or one value per unit for AGC), or an elementwise bound for
:class:`Value`. The optimizer multiplies the gradient by the scale inside its update, so the
gradients are never rewritten; :meth:`ClipPolicy.clip_` applies the same decision in place for
use outside a gradguard optimizer. Nothing here reads a value on the host, and stateful
policies (AutoClip, ZClip, in :mod:`gradguard.clip._adaptive`) keep their statistics as tensors
on the gradients' device.

Every policy declares what the rest of gradguard needs to know about it, so that no caller
tests its type: its spec form (registered in :data:`POLICIES`, from which
:mod:`gradguard.clip._parse` builds the grammar), the statistics it reads
(:attr:`ClipPolicy.needs`) and the threshold it clips to (:attr:`ClipPolicy.threshold`).
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._validation import check_nonneg, check_positive
from ._apply import apply_clip_
from ._stats import GradStats, StatNeeds

__all__ = [
    "AGC",
    "POLICIES",
    "ClipDecision",
    "ClipPolicy",
    "GlobalNorm",
    "NoClip",
    "Norm",
    "Value",
]

_EPS = 1e-6  # as in torch.nn.utils.clip_grad_norm_: scale = max_norm / (norm + 1e-6)


@dataclass
class ClipDecision:
    """What a policy decided for one step.

    ``scales[k]`` multiplies the gradient at ``idx[k]`` (None: leave it), ``clamp`` bounds every
    entry to ``[-clamp, clamp]`` after scaling, and ``min_scale`` is the smallest factor applied
    to any gradient entry (1 when nothing was clipped). ``binding`` (a bool tensor) says whether
    a norm or entry exceeded the policy's threshold: the step counts as clipped only then, not
    when ``min_scale`` is below 1 only through the ``1e-6`` of ``c / (norm + 1e-6)`` (a norm at
    or just under ``c``, which ``clip_grad_norm_`` also scales by about ``1 - 1e-6 / c``).
    """

    scales: list[Tensor | None]
    clamp: float | None
    min_scale: Tensor
    binding: Tensor


def _ratio_scale(threshold: Tensor | float, norm: Tensor) -> Tensor:
    """``min(1, threshold / (norm + 1e-6))``, the factor that brings ``norm`` to ``threshold``."""
    return torch.clamp(threshold / (norm + _EPS), max=1.0)


def _fmt(x: float | int | None) -> str:
    if x is None:
        return "None"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return repr(x)  # repr round-trips floats exactly


POLICIES: dict[str, type[ClipPolicy]] = {}
"""The policies of the spec grammar by spec name, in the order ``VALID_FORMS`` lists them: a
subclass of :class:`ClipPolicy` that declares its ``spec_usage`` is added when it is defined."""


def _defaults(cls: type[ClipPolicy]) -> dict[str, Any]:
    """The default values of ``cls.__init__``'s arguments."""
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _register(cls: type[ClipPolicy]) -> None:
    """Add ``cls`` to :data:`POLICIES`, checking that its spec form fits its ``__init__``."""
    where = f"clip policy {cls.__name__}"
    if not cls.name or cls.name != cls.name.lower() or ":" in cls.name:
        raise TypeError(f"{where}: spec name {cls.name!r} must be a non-empty lower-case word")
    if cls.name in POLICIES:
        raise TypeError(f"{where}: spec name {cls.name!r} is taken by "
                        f"{POLICIES[cls.name].__name__}")
    args = ([cls.spec_first] if cls.spec_first is not None else []) + list(cls.spec_options)
    params = inspect.signature(cls.__init__).parameters
    unknown = [a for a in args if a not in params] + sorted(set(cls.spec_ints) - set(args))
    if unknown:
        raise TypeError(f"{where}: spec arguments {unknown} are not arguments of its __init__ "
                        "named in spec_first or spec_options")
    POLICIES[cls.name] = cls


class ClipPolicy:
    """Base class. Subclasses implement :meth:`decide` and, if stateful, the state methods.

    A subclass says what its callers need to know, so that none tests its type: the
    statistics it reads (:attr:`needs`), the threshold it clips to (:attr:`threshold`),
    whether it keeps state (``stateful``) and whether it ever changes a gradient (``clips``;
    :func:`gradguard.clip.resolve` turns a policy that does not into None). It joins the spec
    grammar of :func:`gradguard.clip.parse` by declaring its form, and is then registered in
    :data:`POLICIES` when it is defined:

    - ``name``: the spec name;
    - ``spec_usage``: its form as ``VALID_FORMS`` lists it (``"global_norm:C[:norm_type=P]"``);
    - ``spec_first``: the ``__init__`` argument the value after the name sets (None: none);
    - ``spec_options``: the ``key=value`` options allowed after it, named as in ``__init__``
      and held in attributes of those names, in the order :attr:`spec` writes them;
    - ``spec_ints``: those of the arguments that are integers (the others are floats).
    """

    name: ClassVar[str] = ""
    stateful: ClassVar[bool] = False
    clips: ClassVar[bool] = True
    spec_usage: ClassVar[str] = ""
    spec_first: ClassVar[str | None] = None
    spec_options: ClassVar[tuple[str, ...]] = ()
    spec_ints: ClassVar[frozenset[str]] = frozenset()
    _spec_defaults: ClassVar[dict[str, Any]] = {}  # __init__'s defaults, for spec

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._spec_defaults = _defaults(cls)
        if "spec_usage" in cls.__dict__:
            _register(cls)

    def decide(self, stats: GradStats, idx: list[int], skip: Tensor | None) -> ClipDecision:
        """The clipping for the gradients at ``idx``. A stateful policy updates its state here,
        unless ``skip`` (a bool tensor) is true: a skipped step leaves the state unchanged."""
        raise TypeError(f"{type(self).__name__} must define decide()")

    # -- what it reads ----------------------------------------------------------------------
    @property
    def needs(self) -> StatNeeds:
        """The statistics :meth:`decide` asks :class:`GradStats` for, so that the optimizer
        measures them in backward and reduces them together (nothing, here)."""
        return StatNeeds()

    # -- the threshold ------------------------------------------------------------------
    @property
    def threshold(self) -> Tensor | float | None:
        """The norm of all gradients together that this policy clips to now, for logs and
        plots; None for a policy without one (per-tensor ones, or a global norm other than
        the L2 norm) and for an adaptive one before its first step."""
        return None

    @property
    def has_threshold(self) -> bool:
        """Whether :attr:`threshold` is (or, for an adaptive policy, will be) a number."""
        return self.threshold is not None

    # -- identity -------------------------------------------------------------------------
    def _hparams(self) -> dict[str, Any]:
        return {}

    @property
    def spec(self) -> str:
        """A spec string that :func:`gradguard.clip.parse` maps back to an equal policy: the
        name, the value of ``spec_first``, then each of ``spec_options`` whose value is not
        its default."""
        parts = [self.name]
        if self.spec_first is not None:
            parts.append(_fmt(getattr(self, self.spec_first)))
        defaults = self._spec_defaults
        for key in self.spec_options:
            value = getattr(self, key)
            if key not in defaults or value != defaults[key]:
                parts.append(f"{key}={_fmt(value)}")
        return ":".join(parts)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._hparams().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClipPolicy) or type(self) is not type(other):
            return False
        return self._hparams() == other._hparams()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self._hparams().items()))))

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The policy's running state (tensors); empty for stateless policies."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if state_dict:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state_dict)}")

    def snapshot(self) -> dict[str, Any]:
        """A deep copy of everything this policy keeps between steps (its hyperparameters and
        running statistics), for :meth:`restore`: the LR finder puts a policy back as it found
        it."""
        return copy.deepcopy(self.__dict__)

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Put back what :meth:`snapshot` took (copies, so one snapshot restores many times)."""
        self.__dict__.clear()
        self.__dict__.update(copy.deepcopy(snapshot))

    # -- standalone use --------------------------------------------------------------------------
    @torch.no_grad()
    def clip_(self, parameters: Tensor | Iterable[Tensor]) -> Tensor:
        """Clip the ``.grad`` of ``parameters`` in place; return their total L2 norm before.

        A step whose gradients are not finite does not enter a stateful policy's history.
        """
        if isinstance(parameters, Tensor):
            parameters = [parameters]
        params = [p for p in parameters if p.grad is not None]
        if not params:
            return torch.zeros(())
        grads = [p.grad for p in params if p.grad is not None]
        stats = GradStats(params, grads)
        idx = list(range(len(grads)))
        total = stats.total_norm(idx)
        skip = ~torch.isfinite(total) if self.stateful else None
        decision = self.decide(stats, idx, skip)
        for g, s in zip(grads, decision.scales, strict=True):
            apply_clip_(g, s, decision.clamp)
        return total


class NoClip(ClipPolicy):
    """No clipping (spec ``"none"``)."""

    name = "none"
    spec_usage = "none"
    clips = False

    def decide(self, stats: GradStats, idx: list[int], skip: Tensor | None) -> ClipDecision:
        device = stats.grads[idx[0]].device if idx else None
        return ClipDecision([None] * len(idx), None, torch.ones((), device=device),
                            torch.zeros((), dtype=torch.bool, device=device))


class Value(ClipPolicy):
    r"""Clip every gradient entry to :math:`[-c, c]` (spec ``"value:C"``).

    The same as ``torch.nn.utils.clip_grad_value_``.

    >>> p = torch.nn.Parameter(torch.zeros(3)); p.grad = torch.tensor([-2.0, 0.1, 3.0])
    >>> _ = Value(0.5).clip_([p]); p.grad
    tensor([-0.5000,  0.1000,  0.5000])
    """

    name = "value"
    spec_usage = "value:C"
    spec_first = "c"

    def __init__(self, c: float) -> None:
        check_positive("c", c, "clip value")
        self.c = float(c)

    def _hparams(self) -> dict[str, Any]:
        return {"c": self.c}

    @property
    def needs(self) -> StatNeeds:
        return StatNeeds(frozenset({math.inf}))

    def decide(self, stats: GradStats, idx: list[int], skip: Tensor | None) -> ClipDecision:
        absmax = stats.total_norm(idx, math.inf)
        # The smallest factor any entry sees is c / max|g| (1 when nothing exceeds c).
        return ClipDecision([None] * len(idx), self.c, torch.clamp(self.c / absmax, max=1.0),
                            absmax > self.c)


class _NormPolicy(ClipPolicy):
    """Shared by Norm and GlobalNorm: a max norm ``c`` and a ``norm_type``."""

    spec_first = "c"
    spec_options = ("norm_type",)

    def __init__(self, c: float, norm_type: float = 2.0) -> None:
        check_positive("c", c, "max norm")
        if not math.isinf(norm_type):
            check_positive("norm_type", norm_type)
        self.c = float(c)
        self.norm_type = float(norm_type)

    def _hparams(self) -> dict[str, Any]:
        return {"c": self.c, "norm_type": self.norm_type}

    @property
    def needs(self) -> StatNeeds:
        return StatNeeds(frozenset({self.norm_type}))


class Norm(_NormPolicy):
    r"""Clip each gradient tensor's norm to ``c`` separately (spec ``"norm:C"``).

    .. math:: g_i \leftarrow g_i \cdot \min\left(1, \frac{c}{\|g_i\|_p + 10^{-6}}\right)
    """

    name = "norm"
    spec_usage = "norm:C"

    def decide(self, stats: GradStats, idx: list[int], skip: Tensor | None) -> ClipDecision:
        norms = stats.norms(self.norm_type)
        scales = [_ratio_scale(self.c, norms[i]) for i in idx]
        binding = torch.stack([norms[i] for i in idx]).max() > self.c
        return ClipDecision(list(scales), None, torch.stack(scales).min(), binding)


class GlobalNorm(_NormPolicy):
    r"""Clip the norm of all gradients taken together (Pascanu et al. 2013; spec
    ``"global_norm:C"``), exactly as ``torch.nn.utils.clip_grad_norm_``.

    .. math:: g \leftarrow g \cdot \min\left(1, \frac{c}{\|g\|_p + 10^{-6}}\right)

    >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.tensor([3.0, 4.0])
    >>> GlobalNorm(1.0).clip_([p])
    tensor(5.)
    >>> p.grad
    tensor([0.6000, 0.8000])
    """

    name = "global_norm"
    spec_usage = "global_norm:C[:norm_type=P]"

    @property
    def threshold(self) -> float | None:
        return float(self.c) if self.norm_type == 2.0 else None

    def decide(self, stats: GradStats, idx: list[int], skip: Tensor | None) -> ClipDecision:
        norm = stats.total_norm(idx, self.norm_type)
        scale = _ratio_scale(self.c, norm)
        return ClipDecision([scale] * len(idx), None, scale, norm > self.c)


class AGC(ClipPolicy):
    r"""Adaptive gradient clipping, unit-wise (Brock et al. 2021; spec ``"agc:CLIPPING"``).

    For every unit :math:`i` (a row/filter: a slice along dim 0; a whole vector for biases):

    .. math::
        g_i \leftarrow g_i \cdot \min\left(1,
            \lambda \frac{\max(\|w_i\|, \epsilon)}{\max(\|g_i\|, 10^{-6})}\right)

    Brock et al. do not clip the final linear layer: give it a param group with ``clip=None``.
    """

    name = "agc"
    spec_usage = "agc:CLIPPING[:eps=E]"
    spec_first = "clipping"
    spec_options = ("eps",)

    def __init__(self, clipping: float = 0.01, eps: float = 1e-3) -> None:
        check_positive("clipping", clipping)
        check_nonneg("eps", eps)
        self.clipping = float(clipping)
        self.eps = float(eps)

    def _hparams(self) -> dict[str, Any]:
        return {"clipping": self.clipping, "eps": self.eps}

    @property
    def needs(self) -> StatNeeds:
        return StatNeeds(units=True, param_norms=True)

    def decide(self, stats: GradStats, idx: list[int], skip: Tensor | None) -> ClipDecision:
        together = stats.units_together(idx)
        if together is not None:  # every unit of every tensor at once
            g_all, p_all, counts, shapes = together
            max_all = p_all.clamp_min(self.eps) * self.clipping
            over_all = g_all > max_all
            s_all = torch.where(over_all, max_all / g_all.clamp_min(_EPS), 1.0)
            parts: list[Tensor | None] = [
                v.view(shape) for v, shape in zip(s_all.split(counts), shapes, strict=True)]
            return ClipDecision(parts, None, s_all.min().to(torch.float32), over_all.any())
        scales: list[Tensor | None] = []
        mins: list[Tensor] = []
        over: list[Tensor] = []
        for i in idx:
            g_norm = stats.unit_norms(i)
            max_norm = stats.param_unit_norms(i).clamp_min(self.eps) * self.clipping
            exceeds = g_norm > max_norm
            s = torch.where(exceeds, max_norm / g_norm.clamp_min(_EPS), 1.0)
            scales.append(s)
            mins.append(s.min().to(torch.float32))
            over.append(exceeds.any())
        min_scale = torch.stack(mins).min() if mins else torch.ones(())
        binding = torch.stack(over).any() if over else torch.zeros((), dtype=torch.bool)
        return ClipDecision(scales, None, min_scale, binding)
