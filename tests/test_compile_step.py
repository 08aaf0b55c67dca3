"""A whole training step (zero_grad, forward, backward, step) under torch.compile, with
gradguard's optimizers: no recompiles as the LR, the clip scale or a skipped step change
things, no graph break inside the step but the one call dynamo is told not to trace, and the
results of eager mode. Counted with torch's own tools (``torch._dynamo.testing.CompileCounter``,
``torch._dynamo.utils.counters``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

import gradguard

CASES = {
    "AdamW": dict(lr=1e-2, clip="global_norm:1"),          # flat, torch's fused kernel
    "RMSprop": dict(lr=1e-3, clip="global_norm:1"),        # flat, the rule's eager ops
    "SGD": dict(lr=1e-2, momentum=0.9, clip="agc:0.05"),    # flat, unit-wise clip
    "LAMB": dict(lr=1e-2, clip="zclip:2.5:warmup=2"),      # per-tensor trust ratios
    "Lion": dict(lr=1e-3, clip="norm:0.5", backend="foreach"),  # the per-tensor paths
}


def model_and_data() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                          nn.Linear(32, 4))
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(64, 16, generator=g), torch.randint(0, 4, (64,), generator=g)


def train(opt_of: Callable[[list[nn.Parameter]], Any], compile_with: Any | None,
          steps: int = 10) -> tuple[list[torch.Tensor], Any, list[int]]:
    """Train ``steps`` steps (a StepLR halving the LR every 2; inputs scaled up at step 4 so
    the clip scale changes; a NaN loss at step 6, which gradguard skips), the whole step
    compiled with ``compile_with`` as the backend (None: eager). Returns the parameters,
    the optimizer and the compiled frame count after each step."""
    model, x, y = model_and_data()
    opt = opt_of(list(model.parameters()))
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)

    def step(x: torch.Tensor, y: torch.Tensor, poison: torch.Tensor) -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y) * poison
        loss.backward()
        opt.step()
        return loss

    run = step if compile_with is None else torch.compile(step, backend=compile_with)
    frames = []
    for i in range(steps):
        scale = 10.0 if i >= 4 else 1.0
        poison = torch.tensor(float("nan") if i == 6 else 1.0)
        run(x * scale, y, poison)
        sched.step()
        frames.append(compile_with.frame_count if isinstance(compile_with, CompileCounter)
                      else 0)
    return [p.detach().clone() for p in model.parameters()], opt, frames


@pytest.fixture(autouse=True)
def fresh_dynamo() -> None:
    torch._dynamo.reset()
    counters.clear()


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_step_equals_eager_without_recompiles(name: str) -> None:
    def make(ps: list[nn.Parameter]) -> Any:
        return getattr(gradguard, name)(ps, **CASES[name])

    eager, eager_opt, _ = train(make, None)
    cnt = CompileCounter()
    compiled, opt, frames = train(make, cnt)
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert int(opt.skipped_steps) == int(eager_opt.skipped_steps) == 1
    assert int(opt.clipped_steps) == int(eager_opt.clipped_steps)
    assert frames[0] >= 1 and len(set(frames)) == 1, frames  # compiled once, never again
    reasons = [k.splitlines()[0] for k in counters["graph_break"]]
    ours = [r for r in reasons if "disable()" in r]
    assert ours, reasons  # the step is the one call dynamo does not trace
    assert not any("Data dependent" in r or "item()" in r or "Unsupported method" in r
                   for r in reasons), reasons


def test_guarded_torch_optimizer_compiles_too() -> None:
    def make(ps: list[nn.Parameter]) -> Any:
        return gradguard.guard(torch.optim.SGD(ps, lr=1e-2, momentum=0.9), clip="global_norm:1")

    eager, _, _ = train(make, None)
    cnt = CompileCounter()
    compiled, opt, frames = train(make, cnt)
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert int(opt.skipped_steps) == 1
    assert len(set(frames)) == 1, frames


def test_fewer_frames_than_torchs_own_step() -> None:
    """torch's AdamW compiles its step into graphs of its own (and recompiles when the LR
    changes); gradguard's step is not traced: fewer frames, none recompiled."""
    theirs = CompileCounter()
    train(lambda ps: torch.optim.AdamW(ps, lr=1e-2), theirs)
    torch._dynamo.reset()
    ours = CompileCounter()
    train(lambda ps: gradguard.AdamW(ps, lr=1e-2), ours)
    assert ours.frame_count < theirs.frame_count


def test_inductor_compiled_step_matches_eager() -> None:
    """The default backend (inductor compiles forward and backward): the same training run
    as eager, to float32 rounding, and no recompile."""
    def make(ps: list[nn.Parameter]) -> Any:
        return gradguard.AdamW(ps, lr=1e-2, clip="global_norm:1")

    eager, _, _ = train(make, None)
    compiled, opt, _ = train(make, "inductor")
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert int(opt.skipped_steps) == 1
    assert counters["stats"]["unique_graphs"] <= 4  # forward, backward pieces; no recompiles
