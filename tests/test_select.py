"""backends.select: one explicit choice per param group, for every case the drop-in work found.

Each case builds the tensors a step would hand the selection (the group's settings, its
parameters, gradients, state and clip scales) and checks the path; the last tests check that
an optimizer's step takes the path select() names."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import gradguard
from gradguard.optim import backends
from gradguard.optim.backends import compiled
from gradguard.rules import RULES


def _tensors(kind: str = "contiguous", dtype: torch.dtype = torch.float32, n: int = 2
             ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    if kind == "strided":  # every other column of a matrix: not contiguous
        params = [torch.zeros(4, 6, dtype=dtype)[:, ::2] for _ in range(n)]
    else:
        params = [torch.zeros(4, 3, dtype=dtype) for _ in range(n)]
    grads = [torch.ones_like(p) for p in params]
    states = [RULES["adam"].init(p, {"amsgrad": False}) for p in params]
    return params, grads, states


def _select(*args: Any) -> backends.Choice:
    """select() as a step calls it: under no_grad (autograd recording means eager)."""
    with torch.no_grad():
        return backends.select(*args)


ADAM = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
        "maximize": False, "decoupled_weight_decay": False, "foreach": None, "fused": None,
        "differentiable": False}
SCALE = torch.tensor(0.5)

CASES: list[tuple[str, str, dict[str, Any], str, bool, str, bool]] = [
    # (id, backend, group changes, tensors, clipped, expected path, prescaled)
    ("auto-unclipped-native", "auto", {}, "contiguous", False, "native", False),
    ("auto-clipped-small-prescaled", "auto", {}, "contiguous", True, "native", True),
    ("auto-strided-never-native", "auto", {}, "strided", False, "foreach", False),
    ("native-strided-compiles", "native", {}, "strided", False, "compiled", False),
    ("native-clipped-prescaled", "native", {}, "contiguous", True, "native", True),
    ("compiled", "compiled", {}, "contiguous", False, "compiled", False),
    ("foreach", "foreach", {}, "contiguous", False, "foreach", False),
    ("eager", "eager", {}, "contiguous", False, "eager", False),
    ("differentiable", "auto", {"differentiable": True}, "contiguous", False, "eager", False),
    ("foreach=True", "eager", {"foreach": True}, "contiguous", False, "foreach", False),
    ("foreach=False", "native", {"foreach": False}, "contiguous", False, "eager", False),
    ("fused=True", "eager", {"fused": True}, "contiguous", False, "native", False),
    ("fused=True-strided", "eager", {"fused": True}, "strided", False, "compiled", False),
    ("fused=False-native-means-auto", "native", {"fused": False}, "contiguous", False,
     "foreach", False),
    ("no-kernel-for-the-rule", "auto", {"_rule": "nadam"}, "contiguous",
     False, "foreach", False),
]


@pytest.mark.parametrize(("backend", "changes", "kind", "clipped", "path", "prescaled"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_select_names_the_path(backend: str, changes: dict[str, Any], kind: str, clipped: bool,
                               path: str, prescaled: bool,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    # groups of this size are "small" under auto: below the size it compiles
    monkeypatch.setenv("GRADGUARD_COMPILE_MIN_NUMEL", str(1 << 20))
    changes = dict(changes)
    rule = RULES[changes.pop("_rule", "adam")]
    params, grads, states = _tensors(kind)
    scales = [SCALE if clipped else None] * len(params)
    choice = _select(backend, rule, {**ADAM, **changes}, params, grads, states, scales, None)
    assert (choice.path, choice.prescaled) == (path, prescaled), choice
    assert choice.why


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_select_native_takes_every_dtype_torch_fuses(dtype: torch.dtype) -> None:
    params, grads, states = _tensors(dtype=dtype)
    choice = _select("native", RULES["adam"], ADAM, params, grads, states, [None, None], None)
    assert choice.path == "native"


def test_select_mixed_dtypes_and_clamp_stay_off_direct_kernels() -> None:
    params, grads, states = _tensors()
    params64, grads64, states64 = _tensors(dtype=torch.float64, n=1)
    mixed = _select("native", RULES["adam"], ADAM, params + params64, grads + grads64,
                            states + states64, [None] * 3, None)
    assert mixed.path == "compiled"
    clamped = _select("native", RULES["adam"], ADAM, params, grads, states,
                              [None, None], 0.5)
    assert (clamped.path, clamped.prescaled) == ("native", True)
    half = _select("native", RULES["adam"], ADAM, params, grads, states,
                           [SCALE, None], None)
    assert half.path == "compiled"  # some clipped, some not: no single kernel call


def test_select_grad_mode_means_eager() -> None:
    params, grads, states = _tensors()
    with torch.enable_grad():
        choice = backends.select("auto", RULES["adam"], ADAM, params, grads, states,
                                 [None, None], None)
    fast = _select("auto", RULES["adam"], ADAM, params, grads, states, [None, None], None)
    assert choice.path == "eager" and fast.path != "eager"


def test_select_without_a_compiler_gives_foreach(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled, "_compile_failed", "disabled by this test")
    params, grads, states = _tensors("strided")
    choice = _select("compiled", RULES["adam"], ADAM, params, grads, states, [None, None], None)
    assert choice.path == "foreach"


@pytest.mark.parametrize(("kwargs", "path"), [
    ({"backend": "eager"}, "eager"),
    ({"backend": "foreach"}, "foreach"),
    ({"foreach": False, "backend": "native"}, "eager"),
    ({"fused": True, "backend": "eager"}, "native"),
])
def test_a_step_takes_the_path_select_names(kwargs: dict[str, Any], path: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[backends.Choice] = []
    original = backends.run

    def spy(choice: backends.Choice, *args: Any) -> None:
        seen.append(choice)
        original(choice, *args)

    monkeypatch.setattr(backends, "run", spy)
    p = torch.nn.Parameter(torch.ones(3, 2))
    opt = gradguard.Adam([p], lr=0.1, **kwargs)
    p.grad = torch.full_like(p, 0.5)
    opt.step()
    assert [c.path for c in seen] == [path]
