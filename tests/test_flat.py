"""The flat layout (gradguard.optim.backends.flat): every optimizer and clip against the eager
reference, state included; the state dict's layout; and everything that can make flat buffers
stale (a loaded checkpoint, a replaced state tensor, a frozen parameter, a parameter moved to
another dtype or replaced through ``.data``, strided parameters), each against the reference
doing the same."""

from __future__ import annotations

import copy
import io
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

import gradguard
from gradguard.optim import backends
from gradguard.optim.backends import flat
from helpers import count_host_reads
from optim_table import TABLE
from test_backends import ENTRIES, make_grads, make_params, run_pair, set_grads

CLIPS = (None, "global_norm:1", "norm:0.5", "agc:0.05", "value:0.1", "zclip:2.5:warmup=3")
FLAGS = ("foreach", "fused", "differentiable")


@pytest.fixture
def flat_paths(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Count the flat steps and the path each update took (``native``, ``compiled``,
    ``eager``), and the builds of flat buffers (``build``)."""
    counts: Counter[str] = Counter()
    step, build = flat.FlatGroup.step, flat.FlatGroup.build.__func__  # type: ignore[attr-defined]

    def counting_step(self: flat.FlatGroup, *args: Any, **kwargs: Any) -> str:
        path = step(self, *args, **kwargs)
        counts[path] += 1
        return path

    def counting_build(cls: type, *args: Any, **kwargs: Any) -> flat.FlatGroup | None:
        counts["build"] += 1
        return build(cls, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(flat.FlatGroup, "step", counting_step)
    monkeypatch.setattr(flat.FlatGroup, "build", classmethod(counting_build))
    yield counts


def _flat_configs() -> list[Any]:
    out = []
    for e in TABLE:
        for i, config in enumerate(e.configs):
            if not any(config.get(f) for f in FLAGS) and config.get("foreach") is None:
                out.append(pytest.param(e.name, config, id=f"{e.name}-{i}"))
    return out


@pytest.mark.parametrize(("name", "config"), _flat_configs())
def test_every_config_matches_eager(name: str, config: dict[str, Any],
                                    flat_paths: Counter[str]) -> None:
    """Every sample config of every optimizer, global-norm clipped, steps flat and agrees with
    the per-tensor reference after every step (state, counters, the skipped NaN step)."""
    run_pair(name, config, "global_norm:1", "flat")
    assert flat_paths["build"] == 1  # built once, then reused for all 20 steps
    assert sum(flat_paths[p] for p in ("native", "compiled", "eager")) == 20


@pytest.mark.parametrize("clip", (*CLIPS[2:], None))
@pytest.mark.parametrize("name", [e.name for e in TABLE])
def test_every_clip_matches_eager(name: str, clip: str | None,
                                  flat_paths: Counter[str]) -> None:
    """Per-tensor (``norm``), per-unit (AGC), elementwise (``value``) and stateful (ZClip)
    decisions, and none, on the flat buffer: the same steps as the reference."""
    run_pair(name, ENTRIES[name].main, clip, "flat")
    assert flat_paths["build"] == 1


@pytest.mark.parametrize("name", ["RMSprop", "LARS"])
def test_per_tensor_quantities_are_per_segment(name: str, flat_paths: Counter[str]) -> None:
    """Tensors of very different magnitudes: LARS's trust ratios (and AGC's unit norms) taken
    over the whole buffer instead of per segment would give other steps."""
    shapes = ((8, 4), (4,), (2, 8), (8,))
    run_pair(name, ENTRIES[name].main, "agc:0.05", "flat", shapes=shapes)
    assert flat_paths["build"] == 1


@pytest.mark.parametrize("name", ["RMSprop", "Lion"])
def test_compiled_flat_matches_eager(name: str, monkeypatch: pytest.MonkeyPatch,
                                     flat_paths: Counter[str]) -> None:
    """A flat group above flat.compile_min_numel() runs the rule compiled into one kernel."""
    monkeypatch.setenv("GRADGUARD_FLAT_COMPILE_MIN_NUMEL", "0")
    run_pair(name, ENTRIES[name].main, "global_norm:1", "flat")
    assert flat_paths["compiled"] == 20


def test_native_rules_take_the_fused_kernel(flat_paths: Counter[str]) -> None:
    """SGD, Adam and Adagrad: torch's fused kernel over the whole buffer, clipped or not."""
    configs = {"SGD": {"lr": 0.05, "momentum": 0.9, "nesterov": True},  # (no dampening)
               "Adam": ENTRIES["Adam"].main, "Adagrad": ENTRIES["Adagrad"].main}
    for name, config in configs.items():
        for clip in (None, "global_norm:1"):
            run_pair(name, config, clip, "flat")
    assert flat_paths["native"] == 6 * 20 and flat_paths["eager"] == 0


def test_auto_steps_small_groups_flat(monkeypatch: pytest.MonkeyPatch,
                                      flat_paths: Counter[str]) -> None:
    """``backend="auto"``: a group of at most flat.max_numel() elements steps flat, a larger
    one per tensor; torch's ``foreach``/``fused`` flags keep the paths they name."""
    monkeypatch.delenv("GRADGUARD_FLAT_MAX_NUMEL", raising=False)  # (conftest sets it to 0)
    params = make_params()
    opt = gradguard.NAdam(params, lr=1e-2, backend="auto")
    set_grads(params, make_grads(0, nan_step=None))
    opt.step()
    assert flat_paths["eager"] == 1
    monkeypatch.setenv("GRADGUARD_FLAT_MAX_NUMEL", "10")
    opt.step()
    assert flat_paths["eager"] == 1  # not flat: 150 elements
    monkeypatch.delenv("GRADGUARD_FLAT_MAX_NUMEL")
    assert flat.max_numel() == flat.MAX_NUMEL
    for flags in ({"foreach": True}, {"foreach": False}, {"fused": True}):
        other = gradguard.Adam(make_params(), lr=1e-2, backend="auto", **flags)
        set_grads(other.param_groups[0]["params"], make_grads(0, nan_step=None))
        other.step()
    assert flat_paths["native"] == 0


def test_flat_thresholds_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADGUARD_FLAT_MAX_NUMEL", "many")
    with pytest.raises(ValueError, match="GRADGUARD_FLAT_MAX_NUMEL: 'many'"):
        flat.max_numel()
    monkeypatch.setenv("GRADGUARD_FLAT_COMPILE_MIN_NUMEL", "-1")
    with pytest.raises(ValueError, match="GRADGUARD_FLAT_COMPILE_MIN_NUMEL: '-1'"):
        flat.compile_min_numel()
    assert "flat" in backends.BACKENDS


# --------------------------------------------------------------------------------------
# the state dict
# --------------------------------------------------------------------------------------


def _trained(name: str, backend: str, steps: int = 4) -> tuple[list[nn.Parameter], Any]:
    params = make_params()
    opt = getattr(gradguard, name)(params, backend=backend, **ENTRIES[name].main)
    for step in range(steps):
        set_grads(params, make_grads(step, nan_step=None))
        opt.step()
    return params, opt


@pytest.mark.parametrize("name", ["Adam", "NAdam", "SGD", "Adadelta"])
def test_state_dict_layout_is_torchs(name: str) -> None:
    """Per-parameter tensors under torch's keys, shapes and dtypes, as the reference's; the
    0-d entries (steps) are each their own tensor in the state dict, so torch's optimizers,
    which advance them one at a time, can load it."""
    _, opt = _trained(name, "flat")
    _, ref = _trained(name, "eager")
    sd, sd_ref = opt.state_dict(), ref.state_dict()
    assert sd["state"].keys() == sd_ref["state"].keys()
    for i, st in sd["state"].items():
        assert st.keys() == sd_ref["state"][i].keys()
        for key, value in st.items():
            assert value.shape == sd_ref["state"][i][key].shape, (i, key)
            assert value.dtype == sd_ref["state"][i][key].dtype, (i, key)
            torch.testing.assert_close(value, sd_ref["state"][i][key], rtol=1e-5, atol=1e-6)
    steps = [st["step"] for st in sd["state"].values() if "step" in st]
    if steps:
        steps[0].add_(100)
        assert float(steps[1]) != float(steps[0])
        assert all(float(opt.state[p]["step"]) == 4 for p in opt.param_groups[0]["params"])


@pytest.mark.parametrize("name", ["Adam", "RMSprop"])
def test_checkpoints_move_to_and_from_torch(name: str) -> None:
    """gradguard (flat) -> torch.optim and torch.optim -> gradguard (flat), through
    torch.save: each continues as the optimizer that wrote the checkpoint would."""
    cfg = ENTRIES[name].main
    params, opt = _trained(name, "flat")
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=False)
    sd.pop("gradguard", None)
    t_params = [nn.Parameter(p.detach().clone()) for p in params]
    theirs = getattr(torch.optim, name)(t_params, **cfg)
    theirs.load_state_dict(sd)
    _step_both(range(4, 8), (opt, params), (theirs, t_params))
    # and back: torch's checkpoint into a fresh flat optimizer
    g_params = [nn.Parameter(p.detach().clone()) for p in t_params]
    ours = getattr(gradguard, name)(g_params, backend="flat", **cfg)
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    _step_both(range(8, 12), (ours, g_params), (theirs, t_params))


def _step_both(steps: range, *runs: tuple[Any, list[nn.Parameter]]) -> None:
    """Step every (optimizer, parameters) on the same gradients; then all parameters agree."""
    for step in steps:
        grads = make_grads(step, nan_step=None)
        for opt, params in runs:
            set_grads(params, grads)
            opt.step()
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------
# what makes buffers stale: each against the reference doing the same
# --------------------------------------------------------------------------------------


def _pair(name: str, event: Callable[[int, Any, list[nn.Parameter]], None],
          steps: int = 12, params_of: Callable[[], list[nn.Parameter]] = make_params,
          clip: str | None = "global_norm:1") -> Counter[str]:
    """Train a flat and an eager optimizer side by side, calling ``event(step, opt, params)``
    on both before each step; assert after every step that they agree. Returns how often
    each path ran."""
    counts: Counter[str] = Counter()
    pa, pb = params_of(), params_of()
    cfg = ENTRIES[name].main
    oa = getattr(gradguard, name)(pa, clip=clip, backend="flat", **cfg)
    ob = getattr(gradguard, name)(pb, clip=clip, backend="eager", **cfg)
    for step in range(steps):
        grads = make_grads(step, tuple(p.shape for p in pa), pa[0].dtype, nan_step=None)
        set_grads(pa, grads)
        set_grads(pb, grads)
        event(step, oa, pa)
        event(step, ob, pb)
        counts["flat" if oa.__dict__.get("_flat") else "per-tensor"] += 0
        oa.step()
        ob.step()
        counts["flat" if oa.__dict__.get("_flat") else "per-tensor"] += 1
        for i, (a, b) in enumerate(zip(pa, pb, strict=True)):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6,
                                       msg=lambda m, i=i, s=step: f"step {s} param {i}: {m}")
        sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            for key in sb[i]:
                torch.testing.assert_close(sa[i][key], sb[i][key], rtol=1e-5, atol=1e-6)
    return counts


@pytest.mark.parametrize("name", ["Adam", "NAdam", "LAMB"])
def test_loading_a_checkpoint_rebuilds(name: str, flat_paths: Counter[str]) -> None:
    saved: dict[int, Any] = {}

    def event(step: int, opt: Any, params: list[nn.Parameter]) -> None:
        if step == 3:
            saved[id(opt)] = copy.deepcopy(opt.state_dict())
        if step == 7:
            opt.load_state_dict(saved[id(opt)])

    counts = _pair(name, event)
    assert counts["per-tensor"] == 0
    assert flat_paths["build"] == 2


def test_replaced_state_tensor_rebuilds(flat_paths: Counter[str]) -> None:
    def event(step: int, opt: Any, params: list[nn.Parameter]) -> None:
        if step == 5:
            st = opt.state[params[0]]
            st["exp_avg"] = torch.full_like(st["exp_avg"], 0.5)
        if step == 8:  # written in place: the view, so the buffer, sees it
            opt.state[params[2]]["exp_avg_sq"].mul_(2.0)

    _pair("Adam", event)
    assert flat_paths["build"] == 2


@pytest.mark.parametrize("name", ["Adam", "SGD", "Adadelta"])
def test_frozen_parameter(name: str, flat_paths: Counter[str]) -> None:
    """A parameter without a gradient from step 4 on (frozen), back at step 9: its state
    stays as it was while the others step; unfrozen, the steps differ, and the group takes
    the per-tensor paths from then on (equal steps are what one flat counter needs)."""
    def event(step: int, opt: Any, params: list[nn.Parameter]) -> None:
        if 4 <= step < 9:
            params[1].grad = None

    counts = _pair(name, event)
    assert flat_paths["build"] >= 2
    if name != "SGD":  # SGD's momentum has no step count: it stays flat
        assert counts["per-tensor"] == 3


def test_parameter_data_replaced_and_loaded(flat_paths: Counter[str]) -> None:
    """``p.data = ...`` (another tensor, same shape) and ``model.load_state_dict``-style
    in-place copies: the step reads the parameters as they are now."""
    def event(step: int, opt: Any, params: list[nn.Parameter]) -> None:
        if step == 3:
            params[0].data = params[0].data * 0.5
        if step == 6:
            with torch.no_grad():
                params[2].copy_(torch.linspace(-1, 1, params[2].numel()).view_as(params[2]))

    _pair("NAdam", event)
    assert flat_paths["build"] == 1


def test_parameter_object_replaced_in_the_group(flat_paths: Counter[str]) -> None:
    """User code puts a new parameter object into the param group: it starts from fresh
    state (as with torch.optim), its step count differs from the others', and the group
    steps per tensor from then on."""
    def event(step: int, opt: Any, params: list[nn.Parameter]) -> None:
        if step == 5:
            new = nn.Parameter(params[2].detach() + 0.1)
            new.grad = params[2].grad
            opt.state.pop(params[2])  # (torch's state_dict cannot save state of no group)
            opt.param_groups[0]["params"][2] = new
            params[2] = new

    counts = _pair("Adam", event)
    assert counts["per-tensor"] == 7
    assert flat_paths["build"] == 2  # declined once, then not tried (nor read) again


def test_parameter_moved_to_float64(flat_paths: Counter[str]) -> None:
    """``model.double()`` mid-run, then the optimizer's own state dict loaded back (torch
    casts the state to the parameters' dtype): the buffers are rebuilt in float64."""
    def event(step: int, opt: Any, params: list[nn.Parameter]) -> None:
        if step == 4:
            for p in params:
                p.data = p.data.double()
                p.grad = p.grad.double()
            opt.load_state_dict(opt.state_dict())

    counts = _pair("Adam", event)
    assert counts["per-tensor"] == 0
    assert flat_paths["build"] == 2
    assert flat_paths["native"] == 12


def test_state_of_another_dtype_is_not_flat() -> None:
    """State whose dtype is not the parameter's (``model.double()`` without reloading the
    state): the flat layout declines it, so the per-tensor paths decide what happens."""
    p = nn.Parameter(torch.ones(3))
    st = {"step": torch.zeros(()), "exp_avg": torch.zeros(3, dtype=torch.float64),
          "exp_avg_sq": torch.zeros(3)}
    rule = gradguard.Adam.rule
    group = {"amsgrad": False}
    assert flat.FlatGroup.build(rule, group, [p], [st], [None], True) is None


def test_strided_parameters(flat_paths: Counter[str]) -> None:
    """Transposed and sliced parameters (not contiguous): gathered and written back by their
    strides."""
    def strided() -> list[nn.Parameter]:
        base = make_params()
        return [nn.Parameter(base[0].detach().t()), base[1],
                nn.Parameter(base[2].detach()[:, ::2]), base[3]]

    _pair("Adam", lambda s, o, p: None, params_of=strided)
    _pair("LARS", lambda s, o, p: None, params_of=strided, clip="agc:0.05")
    assert flat_paths["build"] == 2


def test_no_host_read_after_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    params = make_params()
    opt = gradguard.NAdam(params, lr=1e-2, clip="global_norm:1", backend="flat",
                          nonfinite="off")
    grads = [make_grads(step, nan_step=None) for step in range(4)]
    set_grads(params, grads[0])
    opt.step()
    with count_host_reads(monkeypatch) as reads:
        for step in range(1, 4):
            set_grads(params, grads[step])
            opt.step()
    assert sum(reads.values()) == 0, reads


def test_deepcopy_is_independent() -> None:
    params, opt = _trained("Adam", "flat")
    twin = copy.deepcopy(opt)
    twin_params = twin.param_groups[0]["params"]
    set_grads(twin_params, make_grads(10, nan_step=None))
    twin.step()
    assert float(twin.state[twin_params[0]]["step"]) == 5
    assert float(opt.state[params[0]]["step"]) == 4


def test_import_does_not_load_dtensor() -> None:
    """``import gradguard`` leaves torch.distributed.tensor and torch._dynamo alone (about a
    second each to import: the untraced calls are marked lazily); DTensors are still
    recognised once their module is loaded."""
    code = ("import sys, gradguard; assert 'torch.distributed.tensor' not in sys.modules; "
            "assert 'torch._dynamo' not in sys.modules; "
            "from gradguard.clip._dist import is_dtensor; import torch; "
            "from torch.distributed.tensor import DTensor; "
            "assert not is_dtensor(torch.zeros(1)); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("name", ["Adam", "NAdam", "LAMB"])
def test_default_training_steps_flat(name: str, monkeypatch: pytest.MonkeyPatch,
                                     flat_paths: Counter[str]) -> None:
    """What a user gets without choosing (no GRADGUARD_* settings): a small model trained with
    backward, AGC clipping and a schedule steps flat and ends where the reference does."""
    for var in ("GRADGUARD_BACKEND", "GRADGUARD_FLAT_MAX_NUMEL", "GRADGUARD_COMPILE_MIN_NUMEL"):
        monkeypatch.delenv(var, raising=False)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(1))
    models = []
    for backend in ("auto", "eager"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                              nn.Linear(16, 3))
        opt = getattr(gradguard, name)(model.parameters(), lr=1e-2, clip="agc:0.05",
                                       backend=None if backend == "auto" else backend)
        sched = torch.optim.lr_scheduler.StepLR(opt, 10, 0.5)
        for _ in range(30):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
        models.append(model)
    assert sum(flat_paths[p] for p in ("native", "compiled", "eager")) == 30
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_flat_step_measures_no_per_tensor_norm(monkeypatch: pytest.MonkeyPatch,
                                               flat_paths: Counter[str]) -> None:
    """A flat group's total gradient norm (the guard's and the global clip's) is one reduction
    over its gradient buffer: no per-tensor norm is measured on a step whose clip needs only
    the total, and no Monitor reads them."""
    from gradguard.clip import _stats

    calls: list[int] = []
    measure = _stats.measure
    monkeypatch.setattr(_stats, "measure", lambda ts, n: calls.append(len(ts)) or measure(ts, n))
    pa, pb = make_params(), make_params()
    for clip in (None, "global_norm:1"):
        oa = gradguard.Adam(pa, lr=1e-2, clip=clip, backend="flat")
        ob = gradguard.Adam(pb, lr=1e-2, clip=clip, backend="eager")
        for step in range(4):
            grads = make_grads(step, nan_step=None)
            calls.clear()
            set_grads(pa, grads)
            oa.step()
            assert flat_paths["native"] and calls == []
            set_grads(pb, grads)
            ob.step()
            assert calls  # the per-tensor path measures tensor by tensor
        for a, b in zip(pa, pb, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert oa.last_step is not None and ob.last_step is not None
        torch.testing.assert_close(oa.last_step.grad_norm, ob.last_step.grad_norm)


def test_monitor_reads_per_layer_norms_of_a_flat_step() -> None:
    """With a Monitor attached, a flat step keeps each step's per-tensor gradient norms (those
    torch measures), and stops keeping them once the Monitor is closed."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))
    opt = gradguard.Adam(model.parameters(), lr=1e-2, clip="global_norm:1", backend="flat")
    x = torch.randn(16, 5)
    mon = gradguard.Monitor(model, opt, interval=1, print_summary=False)
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    expected = [torch.linalg.vector_norm(p.grad) for p in model.parameters()]
    opt.step()
    assert opt.__dict__.get("_flat")
    assert opt._core.last_stats is not None
    for got, want in zip(opt._core.last_stats[1], expected, strict=True):
        torch.testing.assert_close(got, want)
    mon.close()
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()
    assert opt._core.last_stats is None
