"""Issue 14: what `gradguard compare` and `gradguard report` read back from disk is checked,
what they write is whole or absent, and what they plan is said before it runs.

Each test drives the real command (``gradguard.cli.main``) on real, tiny sweeps of the digits
task; records are edited by hand the way a user (or a bad disk) would."""

from __future__ import annotations

import copy
import json
import shutil
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
