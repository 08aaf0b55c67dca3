"""gradguard.Monitor: recorded numbers against independently recomputed ones, each detector on
a run that has its problem and on a healthy one, writers (JSONL, CSV, TensorBoard), plots and
report, and the cost claims (no norm kernel and no host read on a non-logging step, one host
read per logging step)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import gradguard
from gradguard.monitor import (
    ClipRate,
    CSVWriter,
    Explosion,
    JSONLWriter,
    Monitor,
    MonitorWarning,
    Skips,
    TensorBoardWriter,
    Vanishing,
    load_records,
    report,
)
from helpers import (
    compute_grads,
    count_calls,
    count_host_reads,
    make_batch,
    make_model,
    poison_grad,
)

REL = 1e-5


def close(a: float | None, b: float, rel: float = REL) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


def run(model: nn.Module, opt: Any, steps: int,
        before_step: Callable[[int], None] | None = None, scale: Callable[[int], float] | None =
        None) -> None:
    for t in range(steps):
        compute_grads(model, make_batch(t), sign=1.0 if scale is None else scale(t))
        if before_step is not None:
            before_step(t)
        opt.step()


def kinds(mon: Monitor) -> list[str]:
    return [f.kind for f in mon.findings]


# -- recorded numbers --------------------------------------------------------------------------
def test_records_equal_recomputed_numbers() -> None:
    torch.manual_seed(0)
    model = make_model(0)
    c = 3.0
    opt = gradguard.Adam(model.parameters(), lr=0.05, clip=f"global_norm:{c}")
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    names = [n for n, _ in model.named_parameters()]
    expected: list[dict[str, Any]] = []
    before: list[torch.Tensor] = []

    def observe(t: int) -> None:
        grads = [p.grad.detach().double() for p in model.parameters()]
        layer = [float(g.norm()) for g in grads]
        total = math.sqrt(sum(x * x for x in layer))
        expected.append({"layer": layer, "total": total,
                         "scale": min(1.0, c / (total + 1e-6))})
        before[:] = [p.detach().double().clone() for p in model.parameters()]

    mon = Monitor(model, opt, interval=5, print_summary=False, warn=False)
    for t in range(15):
        compute_grads(model, make_batch(t))
        observe(t)
        opt.step()
        sched.step()
        if (t + 1) % 5 == 0:
            rec = mon.records[-1]
            win = expected[-5:]
            assert rec["step"] == t + 1 and rec["step_first"] == t - 3 and rec["steps"] == 5
            assert rec["lr"] == opt.param_groups[0]["lr"]
            assert all(close(a, e["total"]) for a, e in zip(rec["grad_norm_steps"], win,
                                                             strict=True))
            assert close(rec["grad_norm"], win[-1]["total"])
            assert close(rec["grad_norm_mean"], sum(e["total"] for e in win) / 5)
            assert close(rec["grad_norm_max"], max(e["total"] for e in win))
            assert close(rec["grad_norm_clipped"], win[-1]["total"] * win[-1]["scale"], 1e-4)
            assert close(rec["clip_scale_min"], min(e["scale"] for e in win), 1e-4)
            assert rec["clipped"] == sum(e["scale"] < 1 for e in win)
            assert rec["clipped_total"] == int(opt.clipped_steps)
            assert rec["skipped"] == 0 and rec["clip"] == f"global_norm:{c}"
            assert rec["clip_threshold"] == c
            for j, name in enumerate(names):
                lay = rec["layers"][name]
                assert close(lay["grad_norm"], sum(e["layer"][j] for e in win) / 5)
                p = list(model.parameters())[j].detach().double()
                assert close(lay["param_norm"], float(p.norm()))
                assert close(lay["update_ratio"], float((p - before[j]).norm() / p.norm()), 1e-4)
    mon.close()
    assert len(mon.records) == 3
    assert 0 < sum(r["clipped"] for r in mon.records) < 15  # the threshold is in the range


def test_guarded_torch_optimizer_and_partial_interval(capsys: pytest.CaptureFixture[str]) -> None:
    model = make_model(1)
    opt = gradguard.guard(torch.optim.SGD(model.parameters(), lr=0.01), clip="global_norm:1")
    totals: list[float] = []
    with Monitor(model, opt, interval=4, warn=False) as mon:
        for t in range(10):
            compute_grads(model, make_batch(t))
            totals.append(math.sqrt(sum(float(p.grad.double().norm()) ** 2
                                        for p in model.parameters())))
            opt.step()
    assert [r["step"] for r in mon.records] == [4, 8, 10]  # close() flushed the last 2 steps
    flat = [v for r in mon.records for v in r["grad_norm_steps"]]
    assert all(close(a, b) for a, b in zip(flat, totals, strict=True))
    assert mon.records[-1]["layers"]["fc1.weight"]["update_ratio"] is None  # no snapshot
    out = capsys.readouterr().out
    assert "gradguard monitor: 10 steps" in out and "fc2.bias" in out
    # closed: the hooks are gone
    compute_grads(model, make_batch(11))
    opt.step()
    assert mon.steps == 10


def test_invalid_arguments() -> None:
    model = make_model(0)
    opt = gradguard.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="interval: 0"):
        Monitor(model, opt, interval=0)
    with pytest.raises(TypeError, match="optimizer: SGD"):
        Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="ratio: -1"):
        Vanishing(ratio=-1)
    with pytest.raises(ValueError, match="always: 2"):
        ClipRate(always=2)


# -- detectors ---------------------------------------------------------------------------------
def test_healthy_run_is_quiet() -> None:
    model = make_model(2)
    opt = gradguard.Adam(model.parameters(), lr=1e-2)
    with Monitor(model, opt, interval=10, print_summary=False) as mon:
        run(model, opt, 300)
    assert mon.findings == []
    # with a clip threshold inside the range of norms, the clip detector is quiet too
    norms = [v for r in mon.records for v in r["grad_norm_steps"]]
    thr = sorted(norms)[len(norms) // 2]
    model = make_model(2)
    opt = gradguard.Adam(model.parameters(), lr=1e-2, clip=f"global_norm:{thr}")
    with Monitor(model, opt, interval=10, print_summary=False) as mon:
        run(model, opt, 300)
    assert mon.findings == []


def test_explosion_growth() -> None:
    model = make_model(3)
    opt = gradguard.SGD(model.parameters(), lr=1e-4)
    with pytest.warns(MonitorWarning, match="grew"), \
            Monitor(model, opt, interval=10, print_summary=False) as mon:
        run(model, opt, 200, scale=lambda t: 1.03 ** t)  # the loss (and gradient) grows
    assert kinds(mon) == ["explosion"]
    assert "lower the LR" in mon.findings[0].message


def test_explosion_spike() -> None:
    model = make_model(3)
    opt = gradguard.SGD(model.parameters(), lr=1e-3)
    with Monitor(model, opt, interval=10, print_summary=False, warn=False) as mon:
        run(model, opt, 150, scale=lambda t: 1000.0 if t == 95 else 1.0)
    assert kinds(mon) == ["explosion"]
    assert mon.findings[0].step == 100 and "spiked" in mon.findings[0].message
    assert "clip='global_norm:" in mon.findings[0].message


def test_vanishing_layer() -> None:
    model = make_model(4)
    with torch.no_grad():
        model.fc1.bias.fill_(50.0)  # tanh saturates: fc1's gradient is zero
    opt = gradguard.SGD(model.parameters(), lr=1e-3)
    with Monitor(model, opt, interval=10, print_summary=False, warn=False) as mon:
        run(model, opt, 60)
    assert kinds(mon) == ["vanishing", "vanishing"]
    assert {f.layers for f in mon.findings} == {("fc1.weight",), ("fc1.bias",)}
    assert "saturated activations" in mon.findings[0].message


@pytest.mark.parametrize(("thr", "kind"), [(1e-4, "clip_always"), (1e4, "clip_never")])
def test_clip_always_or_never(thr: float, kind: str) -> None:
    model = make_model(5)
    opt = gradguard.Adam(model.parameters(), lr=1e-3, clip=f"global_norm:{thr}")
    with Monitor(model, opt, interval=10, print_summary=False, warn=False) as mon:
        run(model, opt, 120)
    assert kinds(mon) == [kind]
    assert "clip='global_norm:" in mon.findings[0].message


def test_repeated_skips_name_the_layer() -> None:
    model = make_model(6)
    opt = gradguard.Adam(model.parameters(), lr=1e-3)
    bad = {33, 34, 47}

    def poison(t: int) -> None:
        if t in bad:
            poison_grad(model, 3, 1, math.nan)  # fc2.bias

    with Monitor(model, opt, interval=10, print_summary=False, warn=False) as mon:
        run(model, opt, 80, before_step=poison)
    assert kinds(mon) == ["skips"]
    assert mon.findings[0].layers == ("fc2.bias",)
    assert [r["skipped"] for r in mon.records] == [0, 0, 0, 2, 1, 0, 0, 0]
    assert mon.records[3]["nonfinite_layers"] == ["fc2.bias"]
    assert int(opt.skipped_steps) == 3 == mon.records[-1]["skipped_total"]


def test_detectors_quiet_without_their_problem() -> None:
    rec = {"step_first": 1, "step": 10, "steps": 10, "applied": 10, "clipped": 5,
           "skipped": 0, "grad_norm_mean": 1.0, "grad_norm_max": 2.0, "clip": "global_norm:1",
           "nonfinite_layers": [], "layers": {"a": {"grad_norm": 1.0}, "b": {"grad_norm": 0.1}}}
    history = [dict(rec, step=10 * i + 10, step_first=10 * i + 1) for i in range(20)]
    for det in (Explosion(), Vanishing(), ClipRate(), Skips()):
        assert det.check(history) == []


# -- cost claims -------------------------------------------------------------------------------
NORM_FUNCS = [(torch, "_foreach_norm"), (torch.linalg, "vector_norm"), (torch, "dot"),
              (torch, "norm"), (torch.Tensor, "norm")]


def count_norms(monkeypatch: pytest.MonkeyPatch) -> Any:
    return count_calls(monkeypatch, NORM_FUNCS)


def _costs(monkeypatch: pytest.MonkeyPatch, monitored: bool) -> list[tuple[int, int]]:
    """(norm calls, host reads) of each of 20 steps (backward included)."""
    model = make_model(7)
    opt = gradguard.Adam(model.parameters(), lr=1e-3, clip="global_norm:0.5")
    mon = Monitor(model, opt, interval=10, print_summary=False, warn=False) if monitored else None
    out = []
    for t in range(20):
        with count_norms(monkeypatch) as norms, count_host_reads(monkeypatch) as reads:
            compute_grads(model, make_batch(t))
            opt.step()
        out.append((sum(norms.values()), sum(reads.values())))
    if mon is not None:
        assert len(mon.records) == 2
        mon.close()
    return out


def test_no_extra_pass_or_host_read_between_logging_steps(
        monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _costs(monkeypatch, False)
    watched = _costs(monkeypatch, True)
    assert all(n > 0 for n, _ in plain)  # the counters see the step's own norms
    for t in range(20):
        if (t + 1) % 10:  # a non-logging step costs exactly what an unmonitored one does
            assert watched[t] == plain[t], t
        else:  # a logging step: one read (tolist), norms of parameters and updates only
            assert watched[t][1] == plain[t][1] + 1, t
            assert watched[t][0] - plain[t][0] == 2, t  # two _foreach_norm over parameters


# -- writers, plots, report --------------------------------------------------------------------
def _logged_run(tmp_path: Any, extra: tuple[Any, ...] = ()) -> Monitor:
    model = make_model(8)
    opt = gradguard.Adam(model.parameters(), lr=1e-3, clip="global_norm:1e-4")
    writers = (JSONLWriter(tmp_path / "log.jsonl"), CSVWriter(tmp_path / "log.csv"), *extra)
    with Monitor(model, opt, interval=10, writers=writers, print_summary=False,
                 warn=False) as mon:
        run(model, opt, 120)
    return mon


def test_jsonl_csv_and_report(tmp_path: Any) -> None:
    mon = _logged_run(tmp_path)
    assert load_records(tmp_path / "log.jsonl") == json.loads(json.dumps(mon.records))
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert len(rows) == 1 + len(mon.records)
    header = rows[0].split(",")
    last = dict(zip(header, rows[-1].split(","), strict=True))
    assert float(last["fc1.weight/grad_norm"]) == mon.records[-1]["layers"]["fc1.weight"][
        "grad_norm"]
    assert int(last["step"]) == 120

    res = report(tmp_path / "log.jsonl", tmp_path / "plots")
    import matplotlib.image as mpimg

    assert sorted(p.name for p in res.plots) == [
        "clip_skips.png", "grad_norm.png", "layer_grad_norms.png", "lr.png"]
    for p in res.plots:
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.std() > 0
    assert [f.kind for f in res.findings] == kinds(mon) == ["clip_always"]
    assert res.summary_path.read_text().strip() == res.summary
    assert "clipping is always on" in res.summary and "120 steps" in res.summary
    with pytest.raises(FileNotFoundError, match="log_path"):
        report(tmp_path / "missing.jsonl", tmp_path / "x")


def test_tensorboard_readable(tmp_path: Any) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    mon = _logged_run(tmp_path, (TensorBoardWriter(tmp_path / "tb"),))
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    pre = acc.Scalars("grad_norm/pre_clip")
    flat = [v for r in mon.records for v in r["grad_norm_steps"]]
    assert [e.step for e in pre] == list(range(1, 121))
    assert all(close(e.value, v, 1e-6) for e, v in zip(pre, flat, strict=True))
    rate = acc.Scalars("clip/rate")
    assert [e.step for e in rate] == [r["step"] for r in mon.records]
    assert all(e.value == 1.0 for e in rate)
    ratio = acc.Scalars("update_ratio/fc2.weight")
    assert close(ratio[-1].value, mon.records[-1]["layers"]["fc2.weight"]["update_ratio"], 1e-6)


def test_suggested_clip_specs_parse() -> None:
    """Every clip spec a detector message suggests is one gradguard.clip.parse accepts."""
    import inspect
    import re

    from gradguard.monitor import _detectors

    specs = re.findall(r"clip='([a-z_]+:[^']*)'", inspect.getsource(_detectors))
    assert specs
    for spec in specs:
        if "{" in spec:  # a formatted number
            spec = re.sub(r"\{[^}]*\}", "1.5", spec)
        gradguard.clip.parse(spec)


def test_monitor_attached_after_a_snapshot_keeps_its_norms_through_a_restore() -> None:
    """A Monitor made between the optimizer's snapshot and its restore (the LR finder takes
    one, then puts the optimizer back) still gets per-layer norms afterwards: the restore does
    not bring back the number of Monitors reading them."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = gradguard.Adam(model.parameters(), lr=1e-2, clip="global_norm:1")
    snap = opt._core.snapshot()
    mon = gradguard.Monitor(model, opt, interval=1, print_summary=False)
    opt._core.restore(snap)
    opt.zero_grad()
    model(torch.ones(4, 3)).pow(2).mean().backward()
    opt.step()
    assert opt._core.last_stats is not None
    mon.close()
