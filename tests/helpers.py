"""Shared test utilities: a tiny model, a deterministic data stream, training loops and
comparison helpers. Nothing in here depends on gradguard."""

from __future__ import annotations

import copy
import io
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

IN_FEATURES, HIDDEN, OUT_FEATURES, BATCH = 6, 12, 3, 16
STEPS = 100

Batch = tuple[torch.Tensor, torch.Tensor]
GradHook = Callable[[int, nn.Module], None]


class TinyNet(nn.Module):
    """Two-layer tanh network: 84 + 39 = 123 parameters in four tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(IN_FEATURES, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, OUT_FEATURES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def make_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> TinyNet:
    """A TinyNet whose parameters come from a seeded generator (no global RNG use)."""
    model = TinyNet()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
    return model.to(dtype)


_TEACHER = torch.randn(
    IN_FEATURES, OUT_FEATURES, generator=torch.Generator().manual_seed(1234), dtype=torch.float64
)


def make_batch(step: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Batch:
    """Fresh random data for every step, a deterministic function of (seed, step)."""
    gen = torch.Generator().manual_seed(seed * 100_003 + step)
    x = torch.randn(BATCH, IN_FEATURES, generator=gen, dtype=torch.float64)
    y = torch.sin(x @ _TEACHER) + 0.1 * torch.randn(
        BATCH, OUT_FEATURES, generator=gen, dtype=torch.float64
    )
    return x.to(dtype), y.to(dtype)


def make_batches(n: int = STEPS, seed: int = 0, dtype: torch.dtype = torch.float32) -> list[Batch]:
    return [make_batch(i, seed, dtype) for i in range(n)]


def compute_grads(model: nn.Module, batch: Batch, sign: float = 1.0) -> torch.Tensor:
    """Zero the gradients, then backpropagate ``sign * mse`` on ``batch``."""
    for p in model.parameters():
        p.grad = None
    x, y = batch
    loss = sign * F.mse_loss(model(x), y)
    loss.backward()
    return loss.detach()


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batches: Iterable[Batch],
    *,
    sign: float = 1.0,
    hook: GradHook | None = None,
    scheduler: Any = None,
) -> list[float]:
    """Plain training loop; ``hook(step, model)`` runs between backward and ``opt.step()``."""
    losses = []
    for i, batch in enumerate(batches):
        loss = compute_grads(model, batch, sign)
        if hook is not None:
            hook(i, model)
        opt.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(float(loss))
    return losses


def eval_loss(model: nn.Module, seed: int = 987) -> float:
    """Loss of ``model`` on a fixed evaluation batch, computed in float64."""
    ref = copy.deepcopy(model).to(torch.float64)
    x, y = make_batch(0, seed, torch.float64)
    with torch.no_grad():
        return float(F.mse_loss(ref(x), y))


def clone_params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_tensors_close(
    actual: Sequence[torch.Tensor],
    expected: Sequence[torch.Tensor],
    *,
    rtol: float,
    atol: float,
    what: str = "tensor",
) -> None:
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert a.shape == e.shape, f"{what} {i}: shape {a.shape} != {e.shape}"
        torch.testing.assert_close(
            a.detach().to(torch.float64),
            e.detach().to(torch.float64),
            rtol=rtol,
            atol=atol,
            msg=lambda m, i=i: f"{what} {i}: {m}",
        )


def assert_params_close(a: nn.Module, b: nn.Module, *, rtol: float, atol: float) -> None:
    assert_tensors_close(
        list(a.parameters()), list(b.parameters()), rtol=rtol, atol=atol, what="param"
    )


def assert_params_equal(a: nn.Module, b: nn.Module) -> None:
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert pa.dtype == pb.dtype
        assert torch.equal(pa, pb), f"{name} differs: max abs diff {(pa - pb).abs().max()}"


def _as_float64(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64)
    return torch.tensor(float(value), dtype=torch.float64)


def assert_states_close(
    opt_a: torch.optim.Optimizer,
    params_a: Iterable[torch.Tensor],
    opt_b: torch.optim.Optimizer,
    params_b: Iterable[torch.Tensor],
    *,
    rtol: float,
    atol: float,
) -> None:
    """Per-parameter optimizer state: identical keys, numerically close values.

    ``atol`` is relative to the largest magnitude in each reference state tensor: states such
    as momentum buffers of normalized updates are sums of O(1) terms, and entries that end up
    near zero by cancellation carry the float rounding of those terms, not of their result."""
    for i, (pa, pb) in enumerate(zip(params_a, params_b, strict=True)):
        sa = dict(opt_a.state.get(pa, {}))
        sb = dict(opt_b.state.get(pb, {}))
        assert sorted(sa) == sorted(sb), f"param {i}: state keys {sorted(sa)} != {sorted(sb)}"
        for key, vb in sb.items():
            va = sa[key]
            if vb is None or va is None:
                assert va is None and vb is None, f"param {i} state {key!r}: {va!r} vs {vb!r}"
                continue
            ta, tb = _as_float64(va), _as_float64(vb)
            assert ta.shape == tb.shape, f"param {i} state {key!r}: shape {ta.shape} != {tb.shape}"
            scale = max(1.0, float(tb.abs().max())) if tb.numel() else 1.0
            torch.testing.assert_close(
                ta,
                tb,
                rtol=rtol,
                atol=atol * scale,
                msg=lambda m, i=i, k=key: f"param {i} {k!r}: {m}",
            )


def assert_tree_equal(a: Any, b: Any, path: str = "") -> None:
    """Recursive bitwise equality of nested dicts/lists/tuples of tensors and plain values."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), f"{path}: type differs"
        assert a.dtype == b.dtype, f"{path}: dtype {a.dtype} != {b.dtype}"
        assert a.shape == b.shape, f"{path}: shape {a.shape} != {b.shape}"
        assert torch.equal(a, b) or (
            a.is_floating_point()
            and bool(torch.isnan(a).eq(torch.isnan(b)).all())
            and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))
        ), f"{path}: tensors differ"
    elif isinstance(a, dict):
        assert isinstance(b, dict), f"{path}: {type(b)} is not a dict"
        assert set(a) == set(b), f"{path}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"
        for key in a:
            assert_tree_equal(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), f"{path}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_tree_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        assert math.isnan(b), f"{path}: {a!r} != {b!r}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def snapshot(obj: Any) -> Any:
    """A deep copy that shares no storage with ``obj`` (e.g. of a state_dict)."""
    return copy.deepcopy(obj)


def save_load(obj: Any) -> Any:
    """torch.save then torch.load(weights_only=True) through memory."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def total_norm64(tensors: Iterable[torch.Tensor], norm_type: float = 2.0) -> float:
    """Total ``norm_type`` norm in float64 of the given tensors (max abs for inf)."""
    flat = [t.detach().to(torch.float64).reshape(-1) for t in tensors]
    if not flat:
        return 0.0
    cat = torch.cat(flat)
    if math.isinf(norm_type):
        return float(cat.abs().max()) if cat.numel() else 0.0
    return float(cat.abs().pow(norm_type).sum().pow(1.0 / norm_type))


def grads_of(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def poison_grad(model: nn.Module, param_index: int, flat_index: int, value: float) -> str:
    """Write ``value`` (NaN/Inf) into one element of one parameter's gradient.

    Returns the parameter's name."""
    name, p = list(model.named_parameters())[param_index]
    assert p.grad is not None
    p.grad.view(-1)[flat_index % p.grad.numel()] = value
    return name


HOST_READS = ("item", "__bool__", "__float__", "__int__", "tolist")


def wrap_counting(m: pytest.MonkeyPatch, counts: Counter[str], owner: Any, name: str,
                  key: str | None = None) -> None:
    """Replace ``owner.name`` (through ``m``) by a wrapper that counts calls under ``key``
    (default: ``name``) and calls the original."""
    original = getattr(owner, name)

    def counting(*args: Any, _o: Any = original, _k: str = key or name, **kwargs: Any) -> Any:
        counts[_k] += 1
        return _o(*args, **kwargs)

    m.setattr(owner, name, counting)


@contextmanager
def count_calls(monkeypatch: pytest.MonkeyPatch,
                targets: Iterable[tuple[Any, str]]) -> Iterator[Counter[str]]:
    """Count calls of ``owner.name`` for every ``(owner, name)`` in ``targets``."""
    counts: Counter[str] = Counter()
    with monkeypatch.context() as m:
        for owner, name in targets:
            wrap_counting(m, counts, owner, name)
        yield counts


def count_host_reads(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Count calls of the methods that read a tensor's value on the host."""
    return count_calls(monkeypatch, [(torch.Tensor, name) for name in HOST_READS])


def load_example(name: str) -> Any:
    """The module of ``examples/<name>.py``, imported from its file."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
