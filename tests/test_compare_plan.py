"""Sweep planning from Python (:func:`gradguard.compare.plan_sweep`, :meth:`SweepPlan.estimate`):
the runs a request plans, its errors, and that ``gradguard compare`` plans the same runs."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from gradguard import tasks
from gradguard.cli import main
from gradguard.compare import (
    DEFAULT_LRS,
    MAIN_JOB,
    Pace,
    RunConfig,
    SweepEstimate,
    SweepPlan,
    plan_sweep,
)
from gradguard.compare._plan import LIMITS, checked_pace


# -- the runs of a request ---------------------------------------------------------------------
def test_a_small_request_plans_the_product_in_order() -> None:
    plan = plan_sweep("digits", optimizers="adam,sgd", clips="none,global_norm:1",
                      schedules="constant;cosine", lrs="1e-3,1e-2", seeds=2, steps=20,
                      batch_size=8, eval_every=5)
    assert isinstance(plan, SweepPlan)
    expected = [RunConfig("digits", opt, clip, sched, lr, seed, 20, 8, 5)
                for opt, clip, sched, lr, seed in itertools.product(
                    ["adam", "sgd"], ["none", "global_norm:1.0"], ["constant", "cosine"],
                    [1e-3, 1e-2], range(2))]
    assert list(plan.configs) == expected
    assert plan.grid == {"optimizers": ["adam", "sgd"], "clips": ["none", "global_norm:1.0"],
                         "schedules": ["constant", "cosine"],
                         "lrs": {"adam": [1e-3, 1e-2], "sgd": [1e-3, 1e-2]}, "seeds": 2,
                         "steps": 20, "batch_size": 8, "eval_every": 5}
    assert plan.task == "digits" and not plan.main_job
    assert len({c.run_id for c in plan.configs}) == len(plan.configs) == 32


def test_lists_and_strings_plan_the_same_and_repeats_count_once() -> None:
    as_text = plan_sweep("adding", optimizers="ADAM, lion,adam", clips=" zclip:2.5 ,none,",
                         schedules="constant; cosine", lrs="1e-3,3e-3,1e-3", seeds=1, steps=30)
    as_lists = plan_sweep("adding", optimizers=["adam", "lion"], clips=["zclip:2.5", "none"],
                          schedules=["constant", "cosine"], lrs=[3e-3, 1e-3], seeds=1,
                          steps=30)
    assert as_text == as_lists
    assert as_text.optimizers == ("adam", "lion") and as_text.clips == ("zclip:2.5", "none")
    assert as_text.schedules == ("constant", "cosine") and as_text.lrs["lion"] == (1e-3, 3e-3)
    assert len(as_text.configs) == 2 * 2 * 2 * 2
    twice = plan_sweep("adding", optimizers="adam", clips="none", schedules=["constant"] * 2,
                       lrs=[1e-3], seeds=1, steps=30)
    assert len(twice.configs) == 1  # a run given twice is planned once


def test_the_defaults_are_the_tasks_and_the_main_job() -> None:
    task = tasks.get("digits")
    main_job = plan_sweep()
    assert main_job.main_job and main_job == plan_sweep(lrs="auto")
    assert main_job.seeds == MAIN_JOB["seeds"] == 3 and len(main_job.configs) == 234
    assert (main_job.steps, main_job.batch_size, main_job.eval_every) == (
        task.steps, task.batch_size, task.eval_every)
    assert {c.optimizer for c in main_job.configs} == {
        name for names, _ in MAIN_JOB["grids"] for name in names}
    assert {c.clip for c in main_job.configs if c.optimizer == "sgd"} == {"none",
                                                                          "global_norm:1.0"}
    given = plan_sweep("digits")  # anything of the grid given: the task's defaults
    assert not given.main_job and given.seeds == 2
    assert given.optimizers == ("adam", "momentum")
    assert given.clips == ("none", "global_norm:1.0") and given.schedules == ("constant",)
    assert given.lrs == {name: task.lrs.get(name, DEFAULT_LRS[name])
                         for name in ("adam", "momentum")}
    assert plan_sweep(steps=10, eval_every=50).main_job  # the budget is not the grid
    assert plan_sweep(steps=10, eval_every=50).eval_every == 10  # at most the steps


# -- errors --------------------------------------------------------------------------------------
ERRORS: list[tuple[dict[str, Any], list[str]]] = [
    ({"optimizers": "adam,rmsprp"}, ["Invalid --optimizers: 'rmsprp'", "valid choices: sgd"]),
    ({"optimizers": ",,"}, ["Invalid --optimizers: ',,' is empty", "valid choices"]),
    ({"optimizers": ["adam", 3]}, ["invalid --optimizers ['adam', 3]", "list of strings"]),
    ({"clips": "none,bogus:1"}, ["invalid --clip 'bogus:1'", "unknown name 'bogus'",
                                 "valid forms"]),
    ({"clips": ",,"}, ["invalid --clip ',,': no clip spec", "valid forms: \"none\""]),
    ({"clips": "global_norm:-1"}, ["invalid --clip 'global_norm:-1'", "> 0"]),
    ({"schedules": "bogus"}, ["invalid --schedule 'bogus'", "valid forms"]),
    ({"schedules": ";;"}, ["invalid --schedule ';;': no schedule spec", "valid forms"]),
    ({"schedules": "warmup:2000+cosine", "steps": 100},
     ["invalid --schedule 'warmup:2000+cosine'", "total_steps (100) must exceed"]),
    ({"lrs": "1e-3:1e-1"}, ["Invalid --lr: '1e-3:1e-1'", "give LO:HI:N"]),
    ({"lrs": "1e-4:1:200000"}, ["Invalid --lr: '1e-4:1:200000'", "more than the 100,000"]),
    ({"lrs": [1e-3, 0.0]}, ["Invalid --lr: [0.001, 0.0]", "a finite number > 0"]),
    ({"lrs": []}, ["Invalid --lr: []", "1 to 100,000 learning rates"]),
    ({"seeds": 0}, ["invalid --seeds 0: must be an integer >= 1"]),
    ({"seeds": True}, ["invalid --seeds True: must be an integer >= 1"]),
    ({"steps": 2.5}, ["invalid --steps 2.5: must be an integer >= 1"]),
    ({"eval_every": -1}, ["invalid --eval-every -1: must be an integer >= 1"]),
    ({"steps": 10_000_001}, ["invalid --steps 10000001: at most 10,000,000"]),
    ({"batch_size": 1_000_001}, ["invalid --batch-size 1000001: at most 1,000,000"]),
    ({"seeds": 100_000, "insist": True},
     ["the grid plans 2,400,000 runs, more than the 1,000,000", "even with --insist"]),
    ({"seeds": 1000}, ["refusing a sweep this size: 24,000 runs is more than 10,000",
                       "add --insist"]),
    ({"task": "nosuch"}, ["Invalid task: 'nosuch'", "valid choices: digits"]),
    ({"task": 3}, ["invalid --task 3: must be a task's name or module:function"]),
    ({"optimizers": 3}, ["invalid --optimizers 3: must be a string or a list of strings"]),
    ({"lrs": 0.001}, ["Invalid --lr: 0.001", "a list of 1 to 100,000 learning rates"]),
]


@pytest.mark.parametrize(("kwargs", "words"), ERRORS,
                         ids=[" ".join(f"{k}={v!r}" for k, v in kw.items()) for kw, _ in ERRORS])
def test_a_bad_request_says_the_argument_the_value_and_what_is_valid(
        kwargs: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ValueError) as exc:
        plan_sweep(**{"task": "digits", **kwargs})
    for w in words:
        assert w in str(exc.value), str(exc.value)


def test_insist_plans_a_sweep_past_the_run_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(LIMITS, "runs", 3)
    request: dict[str, Any] = {"optimizers": "adam", "clips": "none", "lrs": "1e-3,1e-2",
                               "seeds": 2}
    with pytest.raises(ValueError, match="4 runs is more than 3"):
        plan_sweep("digits", **request)
    assert len(plan_sweep("digits", **request, insist=True).configs) == 4


# -- the estimate --------------------------------------------------------------------------------
def _small() -> SweepPlan:
    return plan_sweep("digits", optimizers="adam", clips="none", lrs="1e-3,1e-2", seeds=2,
                      steps=40, eval_every=10)


def test_the_estimate_counts_the_saved_runs_and_the_work_left() -> None:
    plan, pace = _small(), Pace(step=0.01, evaluation=0.1)
    saved = [plan.configs[0].run_id, "a-run-of-another-sweep"]
    est = plan.estimate(workers=1, saved=saved, pace=pace)
    assert isinstance(est, SweepEstimate)
    assert est.todo == plan.configs[1:] and est.saved == 1 and est.cores == 1
    assert est.seconds == pytest.approx(3 * (40 * 0.01 + 5 * 0.1))
    assert est.describe() == ("plan: 3 runs to train (1 already saved), about 3 s on 1 core "
                              "at the pace measured here (10 ms a step, 100 ms an evaluation)")
    est.check()  # well within the limits
    cores = min(2, os.cpu_count() or 1)
    assert plan.estimate(workers=2, pace=pace).cores == cores
    done = plan.estimate(workers=2, saved={c.run_id for c in plan.configs}, pace=pace)
    assert (len(done.todo), done.saved, done.cores, done.seconds) == (0, 4, 1, 0.0)


def test_the_estimate_refuses_past_the_limits_unless_insisted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    plan, pace = _small(), Pace(step=0.01, evaluation=0.1)
    monkeypatch.setitem(LIMITS, "seconds", 1.0)
    est = plan.estimate(workers=1, pace=pace)
    with pytest.raises(ValueError, match=r"refusing a sweep this size: about 4 s is more than "
                                         r"1 s\. .*add --insist"):
        est.check()
    est.check(insist=True)
    wide = plan.estimate(workers=4 * (os.cpu_count() or 1) + 1, pace=pace)
    with pytest.raises(ValueError, match="is more than 4 per core"):
        wide.check()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=f"invalid --workers {bad!r}: must be an integer"):
            plan.estimate(workers=bad, pace=pace)


def test_the_estimate_measures_the_pace_here() -> None:
    est = _small().estimate(workers=1)
    assert est.pace.step > 0 and est.pace.evaluation > 0 and est.seconds > 0


def test_a_step_that_fails_is_a_value_error_naming_the_task() -> None:
    broken = tasks.Task(name="toy", description="inputs of the wrong width",
                        build_model=lambda: nn.Linear(3, 1),
                        train=(torch.randn(8, 2), torch.randn(8, 1)),
                        val=(torch.randn(4, 2), torch.randn(4, 1)),
                        loss_fn=nn.functional.mse_loss, metric_fn=lambda out, y: 0.0)
    with pytest.raises(ValueError, match=r"a training step of task toy \(adam, batch size 4\) "
                                         r"fails here: RuntimeError: "):
        checked_pace(broken, "adam", 1e-3, "none", 4)


# -- the command plans what the library plans ----------------------------------------------------
AGREE: list[tuple[list[str], dict[str, Any]]] = [
    ([], {}),
    (["--steps", "30", "--eval-every", "7"], {"steps": 30, "eval_every": 7}),
    (["--task", "adding", "--optimizers", "adam,sgd", "--clip", "none,zclip:2.5", "--lr",
      "1e-4:1:5", "--seeds", "3", "--steps", "50", "--schedule", "constant;cosine",
      "--schedule", "warmup:5+cosine"],
     {"task": "adding", "optimizers": ["adam", "sgd"], "clips": ["none", "zclip:2.5"],
      "lrs": "1e-4:1:5", "seeds": 3, "steps": 50,
      "schedules": ["constant", "cosine", "warmup:5+cosine"]}),
    (["--task", "digits", "--batch-size", "16"], {"task": "digits", "batch_size": 16}),
]


@pytest.mark.parametrize(("argv", "kwargs"), AGREE, ids=[" ".join(a) or "main job"
                                                         for a, _ in AGREE])
def test_the_command_plans_the_runs_the_library_plans(
        argv: list[str], kwargs: dict[str, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``gradguard compare`` writes its plan to sweep.json before it trains; the sweep is
    stopped there (as by Ctrl-C) and its runs compared with :func:`plan_sweep`'s."""
    from gradguard.compare import _sweep

    def stopped(*args: Any, **kw: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(_sweep, "run_sweep", stopped)
    out = tmp_path / "out"
    assert main(["compare", *argv, "--workers", "1", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    meta = json.loads((out / "sweep.json").read_text())
    plan = plan_sweep(**kwargs)
    assert meta["configs"] == [c.as_dict() for c in plan.configs]
    assert meta["grid"] == plan.grid and meta["total_runs"] == len(plan.configs)
    assert f"plan: {len(plan.configs)} runs to train (0 already saved)" in err, err


CLI_ERRORS: list[dict[str, Any]] = [
    {"optimizers": "adam,rmsprp"}, {"clip": ",,"}, {"clip": "none,global_norm:-1"},
    {"schedule": "warmup:2000+cosine", "steps": 100}, {"schedule": ";;"},
    {"lr": "1e-4:1:200000"}, {"steps": 10_000_001}, {"batch_size": 1_000_001},
    {"seeds": 1000}, {"seeds": 100_000, "insist": True},
]


@pytest.mark.parametrize("options", CLI_ERRORS,
                         ids=[" ".join(f"{k}={v!r}" for k, v in o.items()) for o in CLI_ERRORS])
def test_the_command_says_the_librarys_error(options: dict[str, Any], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The same request on the command line exits 2 with the library's message."""
    names = {"clip": "clips", "schedule": "schedules", "lr": "lrs"}
    argv = ["compare", "--task", "digits"]
    for key, value in options.items():
        argv += ["--" + key.replace("_", "-"), *([] if value is True else [str(value)])]
    with pytest.raises(ValueError) as expected:
        plan_sweep("digits", **{names.get(k, k): v for k, v in options.items()})
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.endswith(f"gradguard compare: error: {expected.value}\n"), err
    assert not (tmp_path / "out").exists()
