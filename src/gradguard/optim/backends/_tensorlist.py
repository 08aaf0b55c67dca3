"""TensorList: a list of tensors that the update rules of :mod:`gradguard.rules` take as if it
were one tensor, so the multi-tensor path (:mod:`.foreach`) has no second copy of their math.

A rule is written per tensor. Called with :class:`TensorList` arguments instead, every
operation it performs (``a * b``, ``torch.lerp``, ``torch.linalg.vector_norm``, ...) is applied
to all the tensors at once: as torch's multi-tensor ``torch._foreach_*`` op where one exists
(one call for the whole list; on CUDA a handful of kernel launches instead of one per tensor),
else as a loop over the tensors. Per-tensor scalars (step counts, bias corrections, trust
ratios) become TensorLists of 0-d tensors, which broadcast against the full tensors item by
item. On the CPU the ``_foreach_*`` ops call the same kernels as the per-tensor ops, so this
path agrees bitwise with the reference :func:`gradguard.optim.backends.eager.update_tensors`.

A rule that uses an operation not mapped here fails loudly: a torch function raises
``TypeError`` naming it, a tensor method ``AttributeError``; map it below.

>>> import torch
>>> from gradguard import rules
>>> params = TensorList([torch.tensor([1.0, -2.0]), torch.tensor(3.0)])
>>> grads = TensorList([torch.tensor([0.5, 0.5]), torch.tensor(1.0)])
>>> new_p, _ = rules.sgd(params, grads, {}, lr=0.1, momentum=0.0, dampening=0.0,
...                      weight_decay=0.0, nesterov=False, maximize=False)
>>> new_p
TensorList([tensor([ 0.9500, -2.0500]), tensor(2.9000)])
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.overrides import resolve_name

# _foreach_* binary ops with an overload taking one (0-d) tensor as the other operand
_TENSOR_OVERLOAD = frozenset({"add", "mul", "div"})
# Exactly rounded binary ops: one op over a vector gives the per-tensor values bit for bit
# (``pow`` does not: its vectorized kernel may differ from the scalar one in the last bit)
_EXACT = frozenset({"add", "sub", "mul", "div"})


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, Tensor)


class TensorList:
    """A list of tensors that behaves, for the operations the update rules use, like one tensor.

    ``a op b`` with ``a`` or ``b`` a TensorList applies ``op`` index by index; the other operand
    may be a TensorList of the same length (0-d items broadcast against full ones), a tensor
    (typically 0-d: a tensor learning rate or beta) or a Python number. ``dtype``, ``device``
    and ``dim()`` are those common to all items (an error where they differ: the runner groups
    tensors so that they do not).

    Multi-tensor (``torch._foreach_*``): ``+ - * /`` (``other / x`` by a Python number loops),
    ``**`` (also ``number ** x``), unary minus, ``sqrt``, ``abs``, ``sign``, ``reciprocal``,
    ``torch.lerp``, ``torch.maximum``/``minimum``, ``torch.linalg.vector_norm``. Looped per
    tensor: comparisons, ``& | ~``, ``torch.where``, ``ones_like``/``zeros_like``, ``.to``.
    """

    __slots__ = ("_items", "_vec")

    def __init__(self, items: Iterable[Tensor]) -> None:
        self._items: list[Tensor] | None = list(items)
        self._vec: Tensor | bool | None = None  # None: not tried yet; False: not stackable
        if not self._items:
            raise ValueError("Invalid items: a TensorList needs at least one tensor")

    @classmethod
    def _of_vector(cls, vec: Tensor) -> TensorList:
        """A list of 0-d tensors held as one 1-D tensor (see :meth:`_vector`)."""
        out = cls.__new__(cls)
        out._items = None
        out._vec = vec
        return out

    @property
    def items(self) -> list[Tensor]:
        """The tensors (0-d views of the vector, for a list held as one)."""
        if self._items is None:
            assert isinstance(self._vec, Tensor)
            self._items = list(self._vec.unbind(0))
        return self._items

    def _vector(self) -> Tensor | None:
        """The items as one 1-D tensor when they are all 0-d of one dtype and device (the
        per-tensor step counts and coefficients), else None. Arithmetic among such lists then
        costs one op instead of one per tensor; only exactly rounded ops take this path, so
        the values are those of the per-tensor ops bit for bit."""
        if self._vec is None:
            items = self.items
            t0 = items[0]
            same = all(t.dim() == 0 and t.dtype == t0.dtype and t.device == t0.device
                       for t in items)
            self._vec = torch.stack(items) if same else False
        return self._vec if isinstance(self._vec, Tensor) else None

    def _vector_with(self, other: Any) -> tuple[Tensor, Any] | None:
        """``(vector, operand)`` for an exactly rounded op of this list of 0-d tensors with
        ``other``: a Python number, a 0-d tensor of the same dtype and device, or another such
        list. None where the op must go tensor by tensor (also where type promotion between
        0-d tensors and a 1-D one would differ)."""
        vec = self._vector()
        if vec is None:
            return None
        if _is_number(other):
            return vec, other
        if isinstance(other, TensorList):
            operand = other._vector()
            if operand is None or len(operand) != len(vec):
                return None
        elif isinstance(other, Tensor) and other.dim() == 0:
            operand = other
        else:
            return None
        if operand.dtype != vec.dtype or operand.device != vec.device:
            return None
        return vec, operand

    def __len__(self) -> int:
        if self._items is None:
            assert isinstance(self._vec, Tensor)
            return len(self._vec)
        return len(self._items)

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.items)

    def __repr__(self) -> str:
        return f"TensorList({self.items!r})"

    def __bool__(self) -> bool:
        raise TypeError("the truth value of a TensorList is ambiguous (and reading it would "
                        "wait for the device); an update rule must not branch on tensor values")

    __hash__ = object.__hash__

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes the class does not define.
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"TensorList has no attribute {name!r}: an update rule uses a tensor method the "
            "multi-tensor path does not map yet; add it to gradguard/optim/backends/_tensorlist.py")

    # -- what the rules read ---------------------------------------------------------------
    def _common(self, what: str, values: list[Any]) -> Any:
        first = values[0]
        if any(v != first for v in values[1:]):
            differ = sorted(set(map(str, values)))
            raise TypeError(f"TensorList.{what}: the tensors differ ({differ}); the runner "
                            "must group them by it")
        return first

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of every item."""
        dtype: torch.dtype = self._common("dtype", [t.dtype for t in self.items])
        return dtype

    @property
    def device(self) -> torch.device:
        """The device of every item."""
        device: torch.device = self._common("device", [t.device for t in self.items])
        return device

    def dim(self) -> int:
        """The number of dimensions of every item."""
        dim: int = self._common("dim()", [t.dim() for t in self.items])
        return dim

    def to(self, *args: Any, **kwargs: Any) -> TensorList:
        """``Tensor.to`` on every item (a loop: torch has no multi-tensor cast; one cast for a
        list of 0-d tensors)."""
        vec = self._vector()
        if vec is not None:
            return TensorList._of_vector(vec.to(*args, **kwargs))
        return TensorList([t.to(*args, **kwargs) for t in self.items])

    # -- unary -----------------------------------------------------------------------------
    def _unary(self, name: str) -> TensorList:
        """``torch.<name>`` on every item: one op for a list of 0-d tensors (these ops are
        exactly rounded, the same values as per tensor), else ``torch._foreach_<name>``."""
        vec = self._vector()
        if vec is not None:
            return TensorList._of_vector(getattr(torch, name)(vec))
        return TensorList(getattr(torch, f"_foreach_{name}")(self.items))

    def sqrt(self) -> TensorList:
        return self._unary("sqrt")

    def abs(self) -> TensorList:
        return self._unary("abs")

    def sign(self) -> TensorList:
        return self._unary("sign")

    def reciprocal(self) -> TensorList:
        return self._unary("reciprocal")

    def __neg__(self) -> TensorList:
        return self._unary("neg")

    def __invert__(self) -> TensorList:
        return TensorList([~t for t in self.items])

    # -- binary ----------------------------------------------------------------------------
    def _operands(self, other: Any) -> list[Any]:
        """``other`` per item: a TensorList's items (same length), else ``other`` itself."""
        if isinstance(other, TensorList):
            if len(other) != len(self):
                raise ValueError(f"TensorLists of different lengths: {len(self)} and "
                                 f"{len(other)}")
            return other.items
        return [other] * len(self)

    def _foreach(self, name: str, other: Any) -> TensorList:
        """``self <name> other`` through ``torch._foreach_<name>`` (one op, for lists of 0-d
        tensors and the exactly rounded ``add sub mul div``)."""
        if name in _EXACT:
            pair = self._vector_with(other)
            if pair is not None:
                return TensorList._of_vector(getattr(torch, name)(*pair))
        fn = getattr(torch, f"_foreach_{name}")
        if _is_number(other):
            return TensorList(fn(self.items, other))
        if isinstance(other, Tensor):
            # The one-tensor overload skips type promotion (a 0-d bfloat16 item times a 0-d
            # float32 tensor stays bfloat16): only where there is nothing to promote.
            if (other.dim() == 0 and name in _TENSOR_OVERLOAD
                    and all(t.dtype == other.dtype and t.device == other.device
                            for t in self.items)):
                return TensorList(fn(self.items, other))
            return TensorList(fn(self.items, [other] * len(self)))
        if isinstance(other, TensorList):
            return TensorList(fn(self.items, self._operands(other)))
        return NotImplemented

    def _reflected(self, name: str, other: Any) -> TensorList:
        """``other <name> self`` for a commutative op. A number commutes, as in torch's own
        ``number * tensor``; a tensor stays on the left: for a low-precision ``self`` a 0-d
        float32 tensor on the right is applied in float32, on the left it is rounded first."""
        if isinstance(other, Tensor):
            pair = self._vector_with(other) if name in _EXACT else None
            if pair is not None:
                return TensorList._of_vector(getattr(torch, name)(other, pair[0]))
            fn = getattr(torch, f"_foreach_{name}")
            return TensorList(fn([other] * len(self), self.items))
        return self._foreach(name, other)

    def _loop(self, op: Callable[[Any, Any], Tensor], other: Any,
              reflected: bool = False) -> TensorList:
        """``op`` tensor by tensor (``op(other, self)`` when ``reflected``)."""
        if not (_is_number(other) or isinstance(other, Tensor | TensorList)):
            return NotImplemented
        pairs = zip(self.items, self._operands(other), strict=True)
        return TensorList([op(b, a) if reflected else op(a, b) for a, b in pairs])

    def __add__(self, other: Any) -> TensorList:
        return self._foreach("add", other)

    def __radd__(self, other: Any) -> TensorList:
        return self._reflected("add", other)

    def __sub__(self, other: Any) -> TensorList:
        return self._foreach("sub", other)

    def __rsub__(self, other: Any) -> TensorList:
        pair = self._vector_with(other)
        if pair is not None:
            return TensorList._of_vector(operator.sub(pair[1], pair[0]))
        if _is_number(other):
            # number - x == (-x) + number exactly (IEEE subtraction adds the negation)
            return TensorList(torch._foreach_add(torch._foreach_neg(self.items), other))
        if isinstance(other, Tensor | TensorList):
            return TensorList(torch._foreach_sub(self._operands(other), self.items))
        return NotImplemented

    def __mul__(self, other: Any) -> TensorList:
        return self._foreach("mul", other)

    def __rmul__(self, other: Any) -> TensorList:
        return self._reflected("mul", other)

    def __truediv__(self, other: Any) -> TensorList:
        return self._foreach("div", other)

    def __rtruediv__(self, other: Any) -> TensorList:
        pair = self._vector_with(other)
        if pair is not None:
            # as ``number / tensor`` itself computes it (torch: ``reciprocal() * number``)
            return TensorList._of_vector(operator.truediv(pair[1], pair[0]))
        if _is_number(other):  # no multi-tensor op divides a number by tensors exactly
            return self._loop(operator.truediv, other, reflected=True)
        if isinstance(other, Tensor | TensorList):
            return TensorList(torch._foreach_div(self._operands(other), self.items))
        return NotImplemented

    def __pow__(self, other: Any) -> TensorList:
        if isinstance(other, Tensor):
            return TensorList(torch._foreach_pow(self.items, [other] * len(self)))
        return self._foreach("pow", other)

    def __rpow__(self, other: Any) -> TensorList:
        if _is_number(other):
            return TensorList(torch._foreach_pow(other, self.items))
        if isinstance(other, Tensor | TensorList):
            return TensorList(torch._foreach_pow(self._operands(other), self.items))
        return NotImplemented

    def __gt__(self, other: Any) -> TensorList:
        return self._loop(operator.gt, other)

    def __ge__(self, other: Any) -> TensorList:
        return self._loop(operator.ge, other)

    def __lt__(self, other: Any) -> TensorList:
        return self._loop(operator.lt, other)

    def __le__(self, other: Any) -> TensorList:
        return self._loop(operator.le, other)

    def __eq__(self, other: Any) -> TensorList:  # type: ignore[override]
        return self._loop(operator.eq, other)

    def __ne__(self, other: Any) -> TensorList:  # type: ignore[override]
        return self._loop(operator.ne, other)

    def __and__(self, other: Any) -> TensorList:
        return self._loop(operator.and_, other)

    __rand__ = __and__

    def __or__(self, other: Any) -> TensorList:
        return self._loop(operator.or_, other)

    __ror__ = __or__

    # -- torch functions -------------------------------------------------------------------
    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        """torch functions called with TensorList arguments, and tensor operators whose left
        operand is a tensor (``lr * x`` calls ``Tensor.mul(lr, x)``): mapped in
        :data:`_TORCH_FUNCTIONS`, anything else is a ``TypeError`` naming the function."""
        handler = _TORCH_FUNCTIONS.get(func)
        if handler is None:
            raise TypeError(
                f"{resolve_name(func) or repr(func)} is not mapped for TensorList: an update rule "
                "uses an operation the multi-tensor path does not know yet; add it to "
                "gradguard/optim/_foreach.py (a torch._foreach_* op or a per-tensor loop)")
        return handler(*args, **(kwargs or {}))


# -- the torch functions a rule may call on TensorLists ------------------------------------------

def _per_item(fn: Callable[..., Tensor], n: int, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> TensorList:
    """``fn`` tensor by tensor, TensorList arguments indexed, the others passed as they are."""
    def pick(a: Any, i: int) -> Any:
        return a.items[i] if isinstance(a, TensorList) else a

    return TensorList([fn(*(pick(a, i) for a in args),
                          **{k: pick(v, i) for k, v in kwargs.items()}) for i in range(n)])


def _first_list(*args: Any) -> TensorList:
    lists = [a for a in args if isinstance(a, TensorList)]
    for other in lists[1:]:
        lists[0]._operands(other)  # checks the lengths
    return lists[0]


def _as_list(x: Any, n: int) -> list[Any]:
    return x.items if isinstance(x, TensorList) else [x] * n


def _binary(op: Callable[[Any, Any], Any], reflected: str) -> Callable[..., Any]:
    """Handler for ``op(a, b)`` where ``a`` (a tensor) or ``b`` is a TensorList: the
    TensorList's own operator (``reflected`` when it is the right operand)."""
    def handler(a: Any, b: Any) -> Any:
        if isinstance(a, TensorList):
            return op(a, b)
        return getattr(b, reflected)(a)

    return handler


def _swapped(handler: Callable[..., Any]) -> Callable[..., Any]:
    """``Tensor.__rsub__(a, b)`` means ``b - a``."""
    def swapped(a: Any, b: Any) -> Any:
        return handler(b, a)

    return swapped


def _lerp(start: Any, end: Any, weight: Any) -> TensorList:
    n = len(_first_list(start, end, weight))
    starts, ends = _as_list(start, n), _as_list(end, n)
    if _is_number(weight):
        return TensorList(torch._foreach_lerp(starts, ends, weight))
    return TensorList(torch._foreach_lerp(starts, ends, _as_list(weight, n)))


def _extremum(name: str) -> Callable[..., TensorList]:
    def handler(a: Any, b: Any) -> TensorList:
        n = len(_first_list(a, b))
        return TensorList(getattr(torch, f"_foreach_{name}")(_as_list(a, n), _as_list(b, n)))

    return handler


def _unary(name: str) -> Callable[..., TensorList]:
    def handler(x: TensorList) -> TensorList:
        return TensorList(getattr(torch, f"_foreach_{name}")(x.items))

    return handler


def _vector_norm(x: TensorList, ord: float = 2, dim: Any = None, keepdim: bool = False, *,
                 dtype: torch.dtype | None = None) -> TensorList:
    if dim is None and not keepdim:
        return TensorList(torch._foreach_norm(x.items, ord, dtype=dtype))
    return TensorList([torch.linalg.vector_norm(t, ord, dim, keepdim, dtype=dtype)
                       for t in x.items])


def _looped(fn: Callable[..., Tensor]) -> Callable[..., TensorList]:
    def handler(*args: Any, **kwargs: Any) -> TensorList:
        return _per_item(fn, len(_first_list(*args, *kwargs.values())), args, kwargs)

    return handler


def _register() -> dict[Any, Callable[..., Any]]:
    table: dict[Any, Callable[..., Any]] = {}
    # Tensor operators with a tensor on the left, and the torch functions of the same ops
    binary = {
        "add": (operator.add, "__radd__"), "sub": (operator.sub, "__rsub__"),
        "mul": (operator.mul, "__rmul__"), "multiply": (operator.mul, "__rmul__"),
        "div": (operator.truediv, "__rtruediv__"),
        "true_divide": (operator.truediv, "__rtruediv__"),
        "pow": (operator.pow, "__rpow__"),
        "gt": (operator.gt, "__lt__"), "lt": (operator.lt, "__gt__"),
        "ge": (operator.ge, "__le__"), "le": (operator.le, "__ge__"),
        "eq": (operator.eq, "__eq__"), "ne": (operator.ne, "__ne__"),
        "logical_and": (operator.and_, "__rand__"), "logical_or": (operator.or_, "__ror__"),
    }
    dunder = {"__add__": "add", "__sub__": "sub", "__mul__": "mul", "__truediv__": "div",
              "__div__": "div", "__pow__": "pow", "__gt__": "gt", "__lt__": "lt",
              "__ge__": "ge", "__le__": "le", "__eq__": "eq", "__ne__": "ne",
              "__and__": "logical_and", "__or__": "logical_or",
              "bitwise_and": "logical_and", "bitwise_or": "logical_or"}
    reflected = {"__radd__": "add", "__rsub__": "sub", "__rmul__": "mul",
                 "__rtruediv__": "div", "__rdiv__": "div", "__rpow__": "pow",
                 "__rand__": "logical_and", "__ror__": "logical_or"}
    owners = (torch.Tensor, torch._C.TensorBase)
    for name, (op, rname) in binary.items():
        handler = _binary(op, rname)
        for owner in (*owners, torch):
            if hasattr(owner, name):
                table[getattr(owner, name)] = handler
    for name, base in dunder.items():
        for owner in owners:
            if hasattr(owner, name):
                table[getattr(owner, name)] = _binary(*binary[base])
    for name, base in reflected.items():
        for owner in owners:
            if hasattr(owner, name):
                table[getattr(owner, name)] = _swapped(_binary(*binary[base]))
    table[torch.lerp] = _lerp
    table[torch.maximum] = _extremum("maximum")
    table[torch.minimum] = _extremum("minimum")
    for name in ("sqrt", "abs", "sign", "neg", "reciprocal"):
        table[getattr(torch, name)] = _unary(name)
    table[torch.linalg.vector_norm] = _vector_norm
    for fn in (torch.where, torch.ones_like, torch.zeros_like, torch.logical_not):
        table[fn] = _looped(fn)
    return table


_TORCH_FUNCTIONS: dict[Any, Callable[..., Any]] = _register()
