"""The optimizer registry and the guard options: one declaration each, used everywhere."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch

import gradguard
from gradguard import bench, compare
from gradguard.optim import REGISTRY, GuardedOptimizer, GuardOptions
from gradguard.optim._registry import register, variant
from gradguard.rules import RULES
from optim_table import TABLE

EXPORTED = {n for n in gradguard.optim.__all__
            if isinstance(getattr(gradguard.optim, n), type)
            and issubclass(getattr(gradguard.optim, n), GuardedOptimizer)
            and n != "GuardedOptimizer"}


def test_every_exported_optimizer_is_registered_and_in_the_test_table() -> None:
    assert {e.cls.__name__ for e in REGISTRY.values()} == EXPORTED
    assert {e.name for e in TABLE} == EXPORTED


def test_every_optimizer_names_a_rule_record() -> None:
    for name in EXPORTED:
        rule = getattr(gradguard, name).rule
        assert RULES[rule.name] is rule


def test_compare_and_bench_read_the_registry() -> None:
    assert list(compare.OPTIMIZERS) == list(REGISTRY)
    for name, (cls, kwargs, description) in compare.OPTIMIZERS.items():
        e = REGISTRY[name]
        assert (cls, kwargs, description) == (e.cls, dict(e.kwargs), e.description)
        assert compare.DEFAULT_LRS[name] == e.lrs
        assert len(e.lrs) >= 3 and list(e.lrs) == sorted(e.lrs)
    assert set(bench.OPTIMIZERS) == {n for n, e in REGISTRY.items() if e.bench is not None}
    for name, (cls_name, _kwargs, nbytes) in bench.OPTIMIZERS.items():
        assert cls_name == REGISTRY[name].cls.__name__ and nbytes > 0


def test_entry_make_applies_the_fixed_arguments() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    opt = REGISTRY["nesterov"].make([p], lr=0.1)
    assert isinstance(opt, gradguard.SGD)
    assert opt.defaults["nesterov"] is True and opt.defaults["momentum"] == 0.9


def test_a_name_registers_once() -> None:
    with pytest.raises(ValueError, match="'adam' is registered twice"):
        register(variant("adam", "again", lrs=(1e-3,)))(gradguard.Adam)
    assert REGISTRY["adam"].cls is gradguard.Adam


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_signature_shows_the_guard_options(name: str) -> None:
    params = inspect.signature(getattr(gradguard, name)).parameters
    options = [n for n in params if n in GuardOptions.__annotations__]
    assert options == list(GuardOptions.__annotations__)
    assert all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in options)
    assert params["nonfinite"].default == "skip"
    assert params["max_consecutive_skips"].default == 10
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_guard_options_reach_the_core(name: str) -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    opt = getattr(gradguard, name)([p], clip="global_norm:2", nonfinite="raise",
                                   max_consecutive_skips=3, backend="eager",
                                   measure_in_backward=False)
    assert opt.clip == gradguard.clip.GlobalNorm(2.0)
    assert (opt.nonfinite, opt._core.max_consecutive_skips) == ("raise", 3)
    assert opt.backend == "eager" and opt.measure_in_backward is False
    with pytest.raises(TypeError, match="unexpected keyword argument 'clipp'"):
        getattr(gradguard, name)([p], clipp="global_norm:1")


def _step_calls(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> list[str]:
    """The gradguard modules whose functions run during one step (comprehensions aside)."""
    import os
    import sys

    root = os.path.dirname(gradguard.__file__)
    for p in params:
        p.grad = torch.ones_like(p)
    seen: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        code = frame.f_code
        if event == "call" and code.co_filename.startswith(root) and \
                not code.co_name.startswith("<"):
            seen.append(os.path.relpath(code.co_filename, root))

    sys.setprofile(profile)
    try:
        opt.step()
    finally:
        sys.setprofile(None)
    return seen


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_a_dense_step_runs_no_code_of_the_optimizer_classes(name: str) -> None:
    """The classes check arguments and hold defaults; the step, its stages and the math live
    in the base class, the stages and the backends (no round trips into the class files)."""
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    opt = getattr(gradguard, name)(params, clip="zclip:2.5")
    opt.step()  # (nothing to do: no gradients yet)
    modules = set(_step_calls(opt, params))
    assert "optim/_base.py" in modules and "optim/_core.py" in modules
    classes = {"optim/_sgd_adam.py", "optim/_accumulators.py", "optim/_papers.py",
               "optim/_optimizers.py"}
    assert not modules & classes, sorted(modules & classes)


def test_the_registry_lists_optimizers_in_the_order_of_their_files() -> None:
    """sgd ... adamax, then rmsprop, adagrad, adadelta, then lars, lamb, lion: the order the
    CLI shows, whichever module a program imports first."""
    from gradguard.optim import _accumulators, _papers, _sgd_adam

    files = [_sgd_adam, _accumulators, _papers]
    rank = [next(i for i, f in enumerate(files) if e.cls.__name__ in f.__all__)
            for e in REGISTRY.values()]
    assert rank == sorted(rank)
    assert next(iter(REGISTRY)) == "sgd"
