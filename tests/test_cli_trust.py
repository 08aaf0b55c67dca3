"""Issue 14: what `gradguard compare` and `gradguard report` read back from disk is checked,
what they write is whole or absent, and what they plan is said before it runs.

Each test drives the real command (``gradguard.cli.main``) on real, tiny sweeps of the digits
task; records are edited by hand the way a user (or a bad disk) would."""

from __future__ import annotations

import copy
import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gradguard import tasks
from gradguard.cli import main
from gradguard.compare._grid import RunConfig
from gradguard.compare._records import check_record, check_sweep, derive
from gradguard.compare._run import train_one

# Two learning rates, one of which (1e-4 for 20 steps) cannot reach digits' 0.8 accuracy.
SWEEP = ["compare", "--task", "digits", "--optimizers", "adam", "--clip", "none",
         "--lr", "1e-4,3e-2", "--seeds", "2", "--steps", "20", "--eval-every", "10",
         "--workers", "1", "--no-progress"]


@pytest.fixture(scope="module")
def record() -> dict[str, Any]:
    return train_one(tasks.get("digits"), RunConfig("digits", "adam", "global_norm:1.0",
                                                    "constant", 3e-3, 0, 20, 32, 10))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pristine") / "sweep"
    assert main([*SWEEP, "--out", str(out)]) == 0
    return out


@pytest.fixture
def sweep(pristine: Path, tmp_path: Path) -> Path:
    """A finished sweep's folder of this test's own."""
    return Path(shutil.copytree(pristine, tmp_path / "sweep"))


def _runs(out: Path) -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))}


# -- item 2: records are checked on read; verdicts come from the numbers ----------------------
def test_a_real_record_passes_its_check(record: dict[str, Any]) -> None:
    assert check_record(record, record["config"]) is None
    assert derive(record, tasks.get("digits").info()) == record


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(rec: dict[str, Any]) -> None:
        *head, last = path.split(".")
        node = rec
        for key in head:
            node = node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
    return edit


_DELETE = object()

BROKEN = {  # an edit -> words the check must say
    "metric abc": (_set("final.metric", "abc"), "final.metric is 'abc'"),
    "status null": (_set("status", None), "status is None; expected one of ok, diverged"),
    "no curves": (_set("curves", _DELETE), "curves is None; expected an object"),
    "grad.norm x": (_set("grad.norm", "x"), "grad.norm is 'x'; expected a list"),
    "a norm below 0": (lambda r: r["grad"]["norm"].__setitem__(3, -1.0), "grad.norm[3] is -1.0"),
    "a short flag list": (lambda r: r["grad"]["clipped"].pop(), "grad.clipped has 19 entries"),
    "a flag of 2": (lambda r: r["grad"]["skipped"].__setitem__(0, 2), "grad.skipped[0] is 2"),
    "ok without a metric": (_set("final.metric", None), "status is ok but final.metric is null"),
    "a metric off its curve": (_set("final.metric", 0.99), "but the curve ends at"),
    "steps_done a string": (_set("steps_done", "20"), "steps_done is '20'"),
    "ok but stopped early": (_set("steps_done", 10), "status is ok but steps_done is 10 of 20"),
    "curve steps falling": (lambda r: r["curves"]["step"].reverse(), "curves.step"),
    "a curve too short": (lambda r: r["curves"]["lr"].pop(), "curves.lr has 2 entries"),
    "lr a string": (_set("config.lr", "0.003"), "config.lr is '0.003'"),
    "a bool for a number": (_set("final.val_loss", True), "final.val_loss is True"),
    "diverged with a metric": (_set("status", "diverged"),
                               "status is diverged but final.metric is"),
    "the record a list": (lambda r: r.clear(), "config is None"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_broken_record_fails_its_check_with_the_field_named(
        record: dict[str, Any], name: str) -> None:
    edit, words = BROKEN[name]
    rec = copy.deepcopy(record)
    edit(rec)
    problem = check_record(rec, record["config"])
    assert problem is not None and words in problem, problem


def test_a_record_of_another_run_fails_its_check(record: dict[str, Any]) -> None:
    other = {**record["config"], "seed": 1}
    assert check_record(record, other) == "config is not this run's configuration"


def test_a_hand_edited_trained_flag_changes_nothing(sweep: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Editing ``"trained": true`` into runs that missed the target changed the ranking and the
    recommendation (issue 14, item 2); the verdict is now worked out from the numbers."""
    before = json.loads((sweep / "summary.json").read_text())
    runs = _runs(sweep)
    untrained = [n for n, r in runs.items() if r["status"] == "ok" and not r["trained"]]
    assert untrained, "the sweep must hold a run that missed the target"
    for name in runs:  # every run now claims to have trained, and the best metric of all
        rec = runs[name]
        rec["trained"], rec["best_metric"], rec["clipped_steps"] = True, 1.0, 0
        (sweep / "runs" / name).write_text(json.dumps(rec))
    assert main(["report", str(sweep)]) == 0
    capsys.readouterr()
    after = json.loads((sweep / "summary.json").read_text())
    assert after == before
    assert after["counts"]["trained"] == len(runs) - len(untrained)


@pytest.mark.parametrize("name", ["metric abc", "status null", "no curves", "grad.norm x"])
def test_report_names_and_leaves_out_a_broken_record_and_compare_redoes_it(
        sweep: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    runs = _runs(sweep)
    victim = sorted(runs)[0]
    edit, words = BROKEN[name]
    rec = copy.deepcopy(runs[victim])
    edit(rec)
    (sweep / "runs" / victim).write_text(json.dumps(rec))
    assert main(["report", str(sweep)]) == 0
    err = capsys.readouterr().err
    assert victim in err and words in err, err
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["counts"]["runs"] == len(runs) - 1
    md = (sweep / "report.md").read_text()
    assert "left out" in md and victim in md
    # compare trains it again and the report is whole once more
    assert main([*SWEEP, "--out", str(sweep)]) == 0
    err = capsys.readouterr().err
    assert "1 saved records failed their check and were trained again" in err, err
    assert _runs(sweep)[victim] == runs[victim] | {"seconds": _runs(sweep)[victim]["seconds"]}
    assert json.loads((sweep / "summary.json").read_text())["counts"]["runs"] == len(runs)


@pytest.mark.parametrize("edit,words", [
    (lambda m: m["task"].__setitem__("target", "high"), "task.target is 'high'"),
    (lambda m: m["task"].__setitem__("higher_is_better", 1), "task.higher_is_better is 1"),
    (lambda m: m.__setitem__("configs", []), "configs is []"),
    (lambda m: m["configs"][0].__setitem__("seed", -1), "configs[0].seed is -1"),
    (lambda m: m["configs"][0].pop("lr"), "configs[0] has the fields"),
    (lambda m: m["grid"].__setitem__("seeds", "2"), "grid.seeds is '2'"),
    (lambda m: m.__setitem__("total_runs", 99), "total_runs is 99; expected 4"),
    (lambda m: m.clear(), "task is None"),
])
def test_report_refuses_a_broken_sweep_json(sweep: Path, edit: Callable[[dict[str, Any]], Any],
                                            words: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    meta = json.loads((sweep / "sweep.json").read_text())
    assert check_sweep(meta) is None
    edit(meta)
    (sweep / "sweep.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit) as exc:
        main(["report", str(sweep)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and words in err and "sweep.json" in err, err


# -- item 3: a full disk is a message, and the report is replaced as one set -------------------
def _limited(args: list[str], max_file_bytes: int) -> subprocess.CompletedProcess[str]:
    """Run ``gradguard ARGS`` where no file may grow past ``max_file_bytes``: the kernel
    refuses the write (EFBIG) as it refuses one on a full disk (ENOSPC)."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return subprocess.run([sys.executable, "-m", "gradguard", *args], capture_output=True,
                          text=True, preexec_fn=limit, timeout=300, check=False)


def _contents(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` but the lock (whose note names the last process to hold it)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_a_report_that_cannot_be_written_leaves_the_earlier_one_whole(sweep: Path) -> None:
    """The plots are small and the HTML page (plots embedded) large: with a limit between
    the two, three new plots were written and no report.html (issue 14, item 3)."""
    before = _contents(sweep)
    biggest_plot = max(len(v) for k, v in before.items() if k.startswith("plots/"))
    assert len(before["report.html"]) > 2 * biggest_plot
    # another look at the same runs: edit the task's description so every file would change
    meta = json.loads((sweep / "sweep.json").read_text())
    meta["task"]["description"] = "a new description"
    (sweep / "sweep.json").write_text(json.dumps(meta))
    before["sweep.json"] = (sweep / "sweep.json").read_bytes()
    done = _limited(["report", str(sweep)], 2 * biggest_plot)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"cannot write {sweep / 'report.html'} in {sweep}" in done.stderr, done.stderr
    assert _contents(sweep) == before  # no plot replaced, no temporary file left


def test_compare_on_a_full_disk_exits_2_and_keeps_finished_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The third record's write finds the disk full: exit 2 naming the file, the first two
    runs kept, no partial file; with space again the same command resumes."""
    import gradguard._files as files

    out = tmp_path / "out"
    real_fsync, calls = files.os.fsync, []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 4:  # sweep.json, two records, then the third record
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    with pytest.raises(SystemExit) as exc:
        main([*SWEEP, "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "No space left on device" in err and f"in {out}" in err, err
    assert "2 of 4 finished runs are saved" in err, err
    names = [p.name for p in (out / "runs").iterdir()]
    assert len(names) == 2 and all(n.endswith(".json") for n in names), names
    assert names[0] not in err and ".json" in err.split("cannot write ")[1].split(" in ")[0]
    monkeypatch.setattr(files.os, "fsync", real_fsync)
    assert main([*SWEEP, "--out", str(out)]) == 0
    assert "reused 2 finished runs" in capsys.readouterr().err


# -- item 5: a plan is said before it runs; absurd sizes are refused ---------------------------
@pytest.mark.parametrize("argv,words", [
    (["compare", "--lr", "1e-4:1:100000000"], "100,000,000 learning rates, more than the"),
    (["compare", "--seeds", "100000000000"], "plans 2,400,000,000,000 runs, more than the "
                                             "1,000,000 one sweep can hold"),
    (["compare", "--seeds", "100000000000", "--insist"], "even with --insist"),
    (["compare", "--steps", "100000000"], "invalid --steps 100000000: at most 10,000,000"),
    (["compare", "--batch-size", "99999999"], "invalid --batch-size 99999999: at most"),
    (["compare", "--seeds", "5000"], "120,000 runs is more than 10,000"),
    (["compare", "--workers", "1000"], "--workers 1000 is more than 4 per core"),
    (["lr-find", "--steps", "100000000"], "invalid --steps 100000000: at most 10,000,000"),
    (["bench", "--sizes", "50000"], "50000M parameters need about"),
    (["bench", "--reps", "100000"], "invalid --reps 100000: more than 1,000"),
])
def test_absurd_sizes_are_refused_before_anything_runs(
        argv: list[str], words: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """These ran with no word (issue 14, item 5): a sweep of 10^8 learning rates, 10^11
    seeds, a benchmark of 50 billion parameters."""
    out = ["--out", str(tmp_path / "out")] if argv[0] != "bench" else []
    with pytest.raises(SystemExit) as exc:
        main([*argv, *out])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and words in err, err
    assert "--insist" in err or "even with" in err or "at most" in err
    assert not (tmp_path / "out" / "runs").exists()


def test_compare_says_its_plan_and_insist_runs_past_the_limits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from gradguard.compare import _plan

    out = ["--out", str(tmp_path / "out")]
    monkeypatch.setitem(_plan.LIMITS, "runs", 3)  # the tiny sweep's 4 runs are "too many"
    with pytest.raises(SystemExit) as exc:
        main([*SWEEP, *out])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "4 runs is more than 3" in err, err
    assert main([*SWEEP, *out, "--insist"]) == 0
    err = capsys.readouterr().err
    plan = next(line for line in err.splitlines() if line.startswith("plan:"))
    assert plan.startswith("plan: 4 runs to train (0 already saved), about "), plan
    assert "ms a step" in plan and "at the pace measured here" in plan
    assert main([*SWEEP, *out, "--insist"]) == 0
    assert "plan: 0 runs to train (4 already saved)" in capsys.readouterr().err


def test_the_plans_estimate_is_near_the_time_taken(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The estimate is the measured pace times the work; on a quiet machine it is within a
    factor of a few of the sweep's own time (a busy one can be slower: the bound is loose)."""
    argv = [*SWEEP, "--steps", "200", "--eval-every", "50", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    plan = next(line for line in err.splitlines() if line.startswith("plan:"))
    estimate = float(plan.split("about ")[1].split(" s ")[0])
    taken = float(err.split(" in ")[-1].split(" s")[0])
    assert estimate > 0 and taken / 10 < estimate < taken * 10, (plan, err)


def test_lr_find_says_its_plan_and_refuses_one_too_long(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from gradguard.compare import _plan

    monkeypatch.setitem(_plan.LIMITS, "seconds", 1e-6)
    argv = ["lr-find", "--task", "digits", "--steps", "20", "--out", str(tmp_path / "lr")]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "refusing a range test this long" in err, err
    assert not (tmp_path / "lr" / "lr_finder.json").exists()
    assert main([*argv, "--insist"]) == 0
    assert "plan: 20 steps, about" in capsys.readouterr().err


# -- item 7: one compare at a time on one folder -----------------------------------------------
def _start_holder(out: Path, steps: int) -> subprocess.Popen[str]:
    """A real `gradguard compare` in another process, returned once it holds ``out``'s lock."""
    proc = subprocess.Popen([sys.executable, "-m", "gradguard", *SWEEP, "--steps", str(steps),
                             "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if json.loads((out / ".lock").read_text() or "{}").get("pid") == proc.pid:
                return proc
        except (OSError, ValueError):
            pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the first compare never took the lock")


def test_a_second_compare_on_a_busy_folder_refuses_and_trains_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two compare processes on one --out each trained every run (issue 14, item 7)."""
    out = tmp_path / "out"
    first = _start_holder(out, steps=150)
    try:
        with pytest.raises(SystemExit) as exc:
            main([*SWEEP, "--steps", "150", "--out", str(out)])
        err = capsys.readouterr().err
        assert exc.value.code == 2, err
        assert f"--out {str(out)!r} is in use" in err and f"pid {first.pid}" in err, err
        assert "gradguard compare" in err
        while not (out / "sweep.json").exists() and first.poll() is None:
            time.sleep(0.05)
        with pytest.raises(SystemExit) as exc:
            main(["report", str(out)])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "is writing there" in err, err
    finally:
        _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    before = _contents(out)
    assert main([*SWEEP, "--steps", "150", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "reused 4 finished runs" in err and "(4 trained now" not in err, err
    assert {k: v for k, v in _contents(out).items() if k.startswith("runs/")} == \
        {k: v for k, v in before.items() if k.startswith("runs/")}


def test_a_killed_compare_leaves_no_stale_lock(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    first = _start_holder(out, steps=2000)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    assert main([*SWEEP, "--out", str(out)]) == 0  # 20 steps: a different sweep, same folder
    assert "is in use" not in capsys.readouterr().err


# -- item 11: the LR finder judges divergence on the raw loss too ------------------------------
def test_lr_find_on_mnist_reports_the_divergence_of_the_raw_loss(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`gradguard lr-find --task mnist` wrote "completed" while the raw loss rose from 2.3
    past 3 at the end of the sweep (issue 14, item 11)."""
    assert main(["lr-find", "--task", "mnist", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "lr_finder.json").read_text())
    assert result["stop_reason"] == "diverged", printed
    assert "(diverged: the loss (median of the last 5 steps)" in printed, printed
    stop = result["diverged_at"]
    raw = [v for v in result["losses"][:stop + 1] if v is not None]
    assert max(raw[-5:]) > raw[0]  # it did climb back past where it started


# -- item 12: the default rule is the one that trained most often ------------------------------
def test_lr_find_gives_the_minimum_rule_by_default_and_the_others_on_request(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lr-find", "--task", "mnist", "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "a" / "lr_finder.json").read_text())
    assert result["rule"] == "minimum" and result["settings"]["rule"] == "minimum"
    stable = result["lrs"][result["stable_end"]]
    assert result["suggestion"] == pytest.approx(stable / 10)
    assert f"suggested lr: {result['suggestion']:.3g} (minimum rule); the other rules:" in printed
    assert main(["lr-find", "--task", "mnist", "--rule", "valley",
                 "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    valley = json.loads((tmp_path / "b" / "lr_finder.json").read_text())
    assert valley["rule"] == "valley" and valley["suggestion"] == result["valley"]
    with pytest.raises(SystemExit) as exc:
        main(["lr-find", "--rule", "fastest", "--out", str(tmp_path / "c")])
    assert exc.value.code == 2 and "'minimum', 'valley', 'steepest'" in capsys.readouterr().err


# -- item 1: every option of compare reaches what is trained -----------------------------------
ONE = {"--task": "digits", "--optimizers": "adam", "--clip": "none", "--schedule": "constant",
       "--lr": "0.01", "--seeds": "1", "--steps": "6", "--batch-size": "16",
       "--eval-every": "3", "--workers": "1"}
CHANGED = {"--task": "mnist", "--optimizers": "momentum", "--clip": "global_norm:0.01",
           "--schedule": "cosine", "--lr": "0.001", "--seeds": "2", "--steps": "9",
           "--batch-size": "64", "--eval-every": "2", "--workers": "2"}


def _sweep_records(out: Path, **changes: str) -> list[dict[str, Any]]:
    argv = ["compare", "--no-progress", "--out", str(out)]
    for option, value in {**ONE, **changes}.items():
        argv += [option, value]
    assert main(argv) == 0
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]


def _numbers(rec: dict[str, Any]) -> Any:
    return rec["curves"], rec["grad"], rec["final"]


def test_every_option_of_compare_changes_what_is_trained(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--batch-size`` was ignored while the record showed it (issue 14, item 1): each
    option that shapes a run is changed in turn, and the run trained changes with it, as
    the option says; the options that do not shape a run (workers, fresh) leave its numbers
    exactly as they were."""
    (base,) = _sweep_records(tmp_path / "base")
    assert set(CHANGED) == set(ONE)
    for option, value in CHANGED.items():
        recs = _sweep_records(tmp_path / option.strip("-"), **{option: value})
        rec = recs[0]
        key = {"--lr": "lr", "--batch-size": "batch_size", "--task": "task"}.get(option)
        if option == "--workers":  # the same run, trained by another process
            assert _numbers(rec) == _numbers(base), option
            continue
        if option == "--seeds":  # seed 0 is the same run; seed 1 another
            by_seed = {r["config"]["seed"]: r for r in recs}
            assert sorted(by_seed) == [0, 1]
            assert _numbers(by_seed[0]) == _numbers(base) != _numbers(by_seed[1])
            continue
        assert _numbers(rec) != _numbers(base), option
        if option == "--steps":
            assert rec["steps_done"] == 9 and rec["curves"]["step"][-1] == 9
        elif option == "--eval-every":
            assert rec["curves"]["step"] == [0, 2, 4, 6]
        elif option == "--clip":
            assert rec["config"]["clip"] == "global_norm:0.01" and all(rec["grad"]["clipped"])
        elif option == "--schedule":
            assert rec["curves"]["lr"][0] == 0.01 and rec["curves"]["lr"][-1] < 0.01
        elif option == "--optimizers":
            assert rec["config"]["optimizer"] == "momentum"
        else:
            assert key is not None and str(rec["config"][key]) == value, (option, rec["config"])
    capsys.readouterr()
    # --fresh trains the saved run again, to the same numbers
    (again,) = _fresh(tmp_path / "base")
    assert _numbers(again) == _numbers(base)
    assert "(1 trained now, 0 reused)" in capsys.readouterr().err


def _fresh(out: Path) -> list[dict[str, Any]]:
    argv = ["compare", "--no-progress", "--fresh", "--out", str(out)]
    for option, value in ONE.items():
        argv += [option, value]
    assert main(argv) == 0
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]


def test_compare_reads_the_saved_records_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The plan and the sweep share one scan of OUT/runs (each read and checks every saved
    record; a resumed sweep of thousands of runs read them all twice)."""
    from gradguard.compare import _sweep

    real, calls = _sweep.scan_records, []

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(_sweep, "scan_records", counting)
    out = ["--out", str(tmp_path / "out")]
    assert main([*SWEEP, *out]) == 0
    assert main([*SWEEP, *out]) == 0  # resumed: every run reused
    assert "reused 4 finished runs" in capsys.readouterr().err
    assert len(calls) == 2
