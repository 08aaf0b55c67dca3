"""`gradguard compare` and the other subcommands, end to end, plus the sweep's pieces."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch

from gradguard import tasks
from gradguard.cli import main
from gradguard.compare._grid import DEFAULT_LRS, RunConfig, expand, parse_lrs
from gradguard.compare._run import read_record, train_one
from gradguard.compare._sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]


def _cfg(**kw: object) -> RunConfig:
    base: dict[str, object] = dict(task="digits", optimizer="adam", clip="none",
                                   schedule="constant", lr=3e-3, seed=0, steps=30,
                                   batch_size=32, eval_every=10)
    base.update(kw)
    return RunConfig(**base)  # type: ignore[arg-type]


# -- the grid ----------------------------------------------------------------------------------
def test_parse_lrs_forms() -> None:
    grid = parse_lrs("1e-4:1:9")
    assert grid is not None and len(grid) == 9
    assert grid[0] == pytest.approx(1e-4) and grid[-1] == pytest.approx(1.0)
    ratios = [b / a for a, b in itertools.pairwise(grid)]
    assert all(r == pytest.approx(10 ** 0.5, rel=2e-3) for r in ratios)
    assert parse_lrs("0.01,0.001,0.01") == (0.001, 0.01)
    assert parse_lrs("auto") is None
    for bad in ("1e-3:1", "1:1e-3:3", "-1,2", "a,b", "0:1:3", "1e-3:1:0", ""):
        with pytest.raises(ValueError, match="Invalid --lr"):
            parse_lrs(bad)


def test_expand_is_the_product_and_ids_are_stable() -> None:
    cfgs = expand("digits", ["adam", "sgd"], ["none", "global_norm:1.0"], ["constant"],
                  (1e-3, 1e-2), 3, 50, 16, 10)
    assert len(cfgs) == 2 * 2 * 2 * 3
    assert len({c.run_id for c in cfgs}) == len(cfgs)
    assert cfgs[0].run_id == _cfg(steps=50, batch_size=16, lr=1e-3).run_id
    auto = expand("digits", ["rmsprop"], ["none"], ["constant"], None, 1, 50, 16, 10)
    assert [c.lr for c in auto] == list(DEFAULT_LRS["rmsprop"])
    task_lrs = expand("digits", ["adam"], ["none"], ["constant"], None, 1, 50, 16, 10,
                      {"adam": (0.5,)})
    assert [c.lr for c in task_lrs] == [0.5]


# -- one run -----------------------------------------------------------------------------------
def test_train_one_record_is_consistent_and_deterministic() -> None:
    task = tasks.get("digits")
    cfg = _cfg(clip="global_norm:0.5", schedule="cosine")
    rec = train_one(task, cfg)
    again = train_one(task, cfg)
    assert rec["status"] == "ok" and rec["steps_done"] == 30
    for key in ("curves", "grad", "final", "best_metric", "clipped_steps"):
        assert rec[key] == again[key], key
    grad = rec["grad"]
    assert len(grad["norm"]) == len(grad["clipped"]) == len(grad["threshold"]) == 30
    assert rec["clipped_steps"] == sum(grad["clipped"])
    # A global-norm clip changed exactly the steps whose norm was above its threshold.
    assert grad["threshold"] == [0.5] * 30
    assert grad["clipped"] == [int(n > 0.5 + 1e-6) for n in grad["norm"]]
    assert rec["curves"]["step"] == [0, 10, 20, 30]
    lrs = rec["curves"]["lr"]
    assert lrs[0] == pytest.approx(3e-3) and lrs[-1] == pytest.approx(0.0, abs=1e-9)
    assert rec["final"]["metric"] == rec["curves"]["metric"][-1]
    assert rec["trained"] == task.trained(rec["final"]["metric"])
    assert json.loads(json.dumps(rec, allow_nan=False)) == rec


def _line_task() -> tasks.Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    return tasks.Task(name="line", description="linear regression",
                      build_model=lambda: torch.nn.Linear(3, 1), train=(x[:200], y[:200]),
                      val=(x[200:], y[200:]), loss_fn=torch.nn.functional.mse_loss,
                      metric_fn=lambda o, t: torch.nn.functional.mse_loss(o, t).item(),
                      metric_name="mse", higher_is_better=False, target=0.1, steps=60,
                      batch_size=32, eval_every=20)


def test_batch_size_reaches_training() -> None:
    """``--batch-size`` (RunConfig.batch_size) is the size of the batches trained on: it was
    ignored (every run drew the task's own size, while the record showed the one asked for)."""
    task = tasks.get("digits")
    seen: list[int] = []
    loss_fn = task.loss_fn

    def spy(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seen.append(out.shape[0])
        return loss_fn(out, target)

    task = dataclasses.replace(task, loss_fn=spy)
    records = {}
    for size in (1, 7, 64):
        seen.clear()
        records[size] = train_one(task, _cfg(batch_size=size, steps=12, eval_every=6))
        assert set(seen) >= {size}, (size, sorted(set(seen)))
        assert records[size]["config"]["batch_size"] == size
    finals = {size: rec["curves"]["train_loss"][-1] for size, rec in records.items()}
    assert len(set(finals.values())) == 3, finals


def test_train_one_marks_divergence() -> None:
    task = _line_task()
    good = train_one(task, _cfg(task="line", optimizer="sgd", lr=0.1, steps=60, eval_every=20))
    assert good["status"] == "ok" and good["trained"] is True
    # SGD at lr 10 on least squares multiplies the error every step: inf, then NaN gradients,
    # skipped by the guard until it gives up.
    bad = train_one(task, _cfg(task="line", optimizer="sgd", lr=10.0, steps=60, eval_every=20))
    assert bad["status"] == "diverged" and "non-finite gradients" in bad["error"]
    assert bad["trained"] is False and bad["final"]["metric"] is None
    # the 10th skip in a row raised inside its step: 9 recorded, the run stopped there
    assert bad["skipped_steps"] == 9 and bad["steps_done"] < 60
    assert bad["grad"]["skipped"][-9:] == [1] * 9 and bad["grad"]["norm"][-1] is None


# -- sweeps, resume ----------------------------------------------------------------------------
def test_sweep_saves_each_run_and_resumes(tmp_path: Path) -> None:
    cfgs = [_cfg(lr=lr, seed=s, steps=12, eval_every=6) for lr in (1e-3, 1e-2) for s in (0, 1)]
    first = run_sweep(cfgs[:3], tmp_path, workers=1, progress=False)
    assert first.trained_now == 3 and not first.interrupted
    files = sorted((tmp_path / "runs").glob("*.json"))
    assert len(files) == 3 and not list((tmp_path / "runs").glob(".*"))
    before = {f.name: f.read_text() for f in files}
    seen = []
    second = run_sweep(cfgs, tmp_path, workers=1, progress=False, on_record=seen.append)
    assert second.reused == 3 and second.trained_now == 1
    assert [r["config"]["lr"] for r in seen] == [1e-2]  # only the missing run was trained
    assert {f.name: f.read_text() for f in files} == before
    assert [r["id"] for r in second.records] == [c.run_id for c in cfgs]
    # A damaged file counts as not finished and is trained again.
    files[0].write_text("{not json")
    third = run_sweep(cfgs, tmp_path, workers=1, progress=False)
    assert third.trained_now == 1 and read_record(files[0]) is not None


# -- the command, end to end -------------------------------------------------------------------
class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


TINY = ["--task", "digits", "--optimizers", "adam,momentum", "--clip", "none,global_norm:1",
        "--lr", "1e-3,3e-2", "--seeds", "2", "--steps", "24", "--eval-every", "8",
        "--no-progress"]


def test_compare_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    assert main(["compare", *TINY, "--workers", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    assert len(runs) == 2 * 2 * 2 * 2
    assert all(r["steps_done"] == 24 or r["status"] != "ok" for r in runs)
    for name in ("report.html", "report.md", "summary.json", "sweep.json"):
        assert (out / name).stat().st_size > 0, name
    html = (out / "report.html").read_text()
    parser = _Tags()
    parser.feed(html)
    imgs = [a for t, a in parser.tags if t == "img"]
    assert imgs and all((a.get("src") or "").startswith("data:image/png;base64,") for a in imgs)
    for tag, attrs in parser.tags:
        for key in ("src", "href"):
            assert not (attrs.get(key) or "").startswith("http"), (tag, attrs)
    md = (out / "report.md").read_text()
    assert md.strip() in printed
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["total_runs"] == 16 and sweep["command"].startswith("gradguard compare")
    _check_summary_matches_runs(json.loads((out / "summary.json").read_text()), runs, md)
    # The report command rebuilds the same summary from the saved runs.
    (out / "summary.json").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "summary.json").exists()


def _check_summary_matches_runs(summary: dict, runs: list[dict], md: str) -> None:
    """Each ranked setting's mean metric at its best LR is the mean of the saved runs'."""
    settings = summary["settings"]
    assert len(settings) == 4
    assert sorted(s["rank"] for s in settings) == [1, 2, 3, 4]
    checked = 0
    for row in settings:
        if row.get("best_lr") is None:
            continue
        mine = [r["final"]["metric"] for r in runs
                if (r["config"]["optimizer"], r["config"]["clip"], r["config"]["schedule"])
                == (row["optimizer"], row["clip"], row["schedule"])
                and r["config"]["lr"] == row["best_lr"]]
        assert len(mine) == 2 and all(m is not None for m in mine)
        assert row["mean"] == pytest.approx(sum(mine) / len(mine), abs=1e-9)
        assert row["worst"] == pytest.approx(min(mine), abs=1e-9)
        line = next(ln for ln in md.splitlines()
                    if ln.startswith(f"| {row['rank']} | {row['optimizer']} | {row['clip']} |"))
        assert f"{row['best_lr']:g}" in line
        checked += 1
    assert checked >= 1
    assert all(line in md for line in summary["recommendation"]["lines"])


def test_interrupted_sweep_resumes_without_retraining(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    args = ["compare", "--task", "digits", "--optimizers", "adam", "--clip", "none",
            "--lr", "1e-4:1e-2:5", "--seeds", "2", "--steps", "400", "--eval-every", "50",
            "--workers", "2", "--no-progress", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "gradguard", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = out / "runs"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(runs.glob("*.json"))) < 3:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    finished = {p.name: p.read_text() for p in runs.glob("*.json")}
    assert proc.returncode == 130, err
    assert 3 <= len(finished) < 10
    assert "run the same command again" in err
    assert "of 10 runs finished" in (out / "report.md").read_text()
    assert not list(runs.glob(".*"))  # no half-written files
    done = subprocess.run([sys.executable, "-m", "gradguard", *args], env=env, timeout=300,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"reused {len(finished)} finished runs" in done.stderr
    assert len(list(runs.glob("*.json"))) == 10
    for name, text in finished.items():  # nothing that had finished was trained again
        assert (runs / name).read_text() == text


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, expected", [
    (["compare", "--task", "imagenet"], "valid choices: digits, mnist, adding, charlm"),
    (["compare", "--optimizers", "adam,adamm"], "valid choices: sgd, momentum"),
    (["compare", "--clip", "none,globalnorm:1"], 'valid forms: "none"'),
    (["compare", "--schedule", "cosnie"], 'valid forms: "constant"'),
    (["compare", "--lr", "1e-3:1e-1"], "give LO:HI:N"),
    (["compare", "--lr", "fast"], "give LO:HI:N"),
    (["compare", "--seeds", "0"], "must be an integer >= 1"),
    (["compare", "--out", "/proc/gradguard-cannot-write"], "cannot write there"),
    (["compare", "--task", "no_such_module_xyz:make"], "cannot import"),
    (["lr-find", "--optimizer", "adamm"], "invalid choice: 'adamm'"),
    (["lr-find", "--start-lr", "1", "--end-lr", "0.1"], "must be below --end-lr"),
    (["bench", "--optimizers", "adamm"], "valid choices: sgd, adam"),
    (["bench", "--width", "0"], "invalid --width 0; must be >= 1"),
    (["report", "/nonexistent/folder"], "no readable sweep.json"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    # empty values: refused, not read as the default (issue 14, item 6)
    (["compare", "--task", ""], "argument --task: invalid value '': must not be empty"),
    (["compare", "--optimizers", ""], "argument --optimizers: invalid value ''"),
    (["compare", "--clip", " "], "argument --clip: invalid value ' '"),
    (["compare", "--out", ""], "argument --out: invalid value ''"),
    (["compare", "--schedule", ""], "argument --schedule: invalid value ''"),
    (["compare", "--schedule", ";;"], "invalid --schedule ';;': no schedule spec"),
    (["lr-find", "--task", ""], "argument --task: invalid value ''"),
    (["lr-find", "--out", ""], "argument --out: invalid value ''"),
    # were tracebacks (issue 14, item 4)
    (["lr-find", "--end-lr", "inf"], "invalid --end-lr inf: must be a finite number > 0"),
    (["lr-find", "--steps", "1"], "invalid --steps 1: the range test needs at least 2 steps"),
    (["lr-find", "--seed", "99999999999999999999999"], "must be an integer in [0, 2**63)"),
    (["bench", "--sizes", "0.01", "--width", "100000000"],
     "invalid --width 100000000: one transformer block of that width holds"),
    (["compare", "--task", "json:dumps"],
     "dumps() must take no arguments and return a gradguard.tasks.Task"),
])
def test_bad_input_exits_2_with_the_choices(argv: list[str], expected: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert expected in capsys.readouterr().err


def test_unwritable_output_keeps_earlier_results(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "keep.txt").write_text("earlier")
    locked.chmod(0o500)
    try:
        # root ignores permissions: then a file stands in for the folder
        target = locked / "keep.txt" if os.access(locked, os.W_OK) else locked / "sub"
        with pytest.raises(SystemExit) as exc:
            main(["compare", *TINY, "--out", str(target)])
        assert exc.value.code == 2 and "cannot write there" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)
    assert (locked / "keep.txt").read_text() == "earlier"


# -- the other subcommands ---------------------------------------------------------------------
def test_tasks_lists_every_task(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tasks", "--json"]) == 0
    infos = json.loads(capsys.readouterr().out)
    assert [i["name"] for i in infos] == tasks.names()
    for info in infos:
        task = tasks.get(info["name"])
        assert info["parameters"] == sum(p.numel() for p in task.build_model().parameters())
        assert info["train_examples"] == task.train[0].shape[0]
    assert main(["tasks"]) == 0
    table = capsys.readouterr().out
    assert all(f"| {name} |" in table for name in tasks.names())


def test_lr_find_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lrf"
    assert main(["lr-find", "--task", "digits", "--steps", "40", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "lr_finder.json").read_text())
    assert len(saved["lrs"]) >= 2
    if saved["suggestion"] is not None:
        assert f"suggested lr: {saved['suggestion']:.3g}" in printed


def test_bench_command_prints_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    # --default-malloc: the steady allocator would change this test process for good.
    assert main(["bench", "--sizes", "0.2", "--optimizers", "adam,rmsprop", "--reps", "1",
                 "--backend", "eager", "--default-malloc"]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| adam ")
            or line.startswith("| rmsprop ")]
    assert len(rows) == 2
    ratios = [float(cell.strip().rstrip("×x")) for row in rows
              for cell in row.split("|")[1:-1] if cell.strip().endswith(("×", "x"))]
    assert ratios and all(math.isfinite(r) and r > 0 for r in ratios)


def test_bench_width_gives_a_model_of_many_small_tensors(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--sizes", "0.2", "--width", "64", "--optimizers", "rmsprop",
                 "--reps", "1", "--default-malloc"]) == 0
    out = capsys.readouterr().out
    assert "transformer blocks of width 64: 60 tensors at 0.2M parameters" in out
    rows = [line for line in out.splitlines() if line.startswith("| rmsprop ")]
    assert len(rows) == 1 and rows[0].split("|")[2].strip() == "0.25M"


def test_bench_training_table_has_both_zero_grad_modes(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--train-only", "--reps", "1", "--default-malloc"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| torch ")
            or line.startswith("| gradguard ")]
    assert len(rows) == 4
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        ms = [float(cells[1]), float(cells[3])]
        ratios = [float(cells[2].rstrip("x")), float(cells[4].rstrip("x"))]
        assert all(math.isfinite(v) and v > 0 for v in ms + ratios)
        if cells[0].startswith("torch AdamW(fused=True), no clipping"):
            assert ratios == [1.0, 1.0]  # the baseline of each column
    assert out.count("faster; clipping adds to torch's unclipped step") == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_steady_allocator_keeps_freed_gradients_in_the_process() -> None:
    """After steady_allocator(), a 30 MB tensor comes from the heap (not its own mmap, which
    is unmapped on free and page-faulted in again next time) and freeing three of them does
    not hand the heap back to the OS. Read through glibc's mallinfo2, in child processes:
    mallopt changes the whole process's allocator."""
    code = (
        "import ctypes, sys, torch\n"
        "from gradguard.bench import steady_allocator\n"
        "class Info(ctypes.Structure):\n"
        "    _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', "
        "'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks', 'fordblks', 'keepcost')]\n"
        "libc = ctypes.CDLL(None)\n"
        "if not hasattr(libc, 'mallinfo2'):\n"
        "    print('no-mallinfo2'); raise SystemExit\n"
        "libc.mallinfo2.restype = Info\n"
        "if sys.argv[1] == 'steady':\n"
        "    assert steady_allocator()\n"
        "before = libc.mallinfo2().hblkhd\n"
        "xs = [torch.empty(7_500_000) for _ in range(3)]\n"
        "mapped = libc.mallinfo2().hblkhd - before\n"
        "held = libc.mallinfo2().arena\n"
        "del xs\n"
        "print(mapped, held - libc.mallinfo2().arena)\n")

    def run(mode: str) -> list[str]:
        return subprocess.run([sys.executable, "-c", code, mode], capture_output=True,
                              text=True, check=True).stdout.split()

    default = run("default")
    if default == ["no-mallinfo2"]:
        pytest.skip("this C library has no mallinfo2")
    if int(default[0]) < 3 * 30_000_000:
        pytest.skip("this allocator does not mmap 30 MB blocks by default")
    mapped, released = map(int, run("steady"))
    assert mapped == 0, f"{mapped} bytes mmapped: the blocks did not come from the heap"
    assert released < 1 << 20, f"{released} bytes handed back to the OS on free"


def test_user_task_by_module_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_tasks.py").write_text(
        "import torch\nfrom torch import nn\nfrom gradguard.tasks import Task\n"
        "def line():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    x = torch.randn(256, 3, generator=g)\n"
        "    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])\n"
        "    return Task(name='line', description='linear regression',\n"
        "                build_model=lambda: nn.Linear(3, 1), train=(x[:200], y[:200]),\n"
        "                val=(x[200:], y[200:]), loss_fn=nn.functional.mse_loss,\n"
        "                metric_fn=lambda o, t: nn.functional.mse_loss(o, t).item(),\n"
        "                metric_name='mse', higher_is_better=False, target=0.1, steps=40,\n"
        "                batch_size=32, eval_every=20)\n")
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "--task", "my_tasks:line", "--optimizers", "adam", "--clip", "none",
                 "--lr", "0.1", "--seeds", "1", "--workers", "1", "--no-progress",
                 "--out", "out"]) == 0
    (run,) = [json.loads(p.read_text()) for p in (tmp_path / "out" / "runs").glob("*.json")]
    assert run["config"]["task"] == "my_tasks:line" and run["trained"] is True


def test_a_planted_module_in_the_working_folder_does_not_run(tmp_path: Path) -> None:
    """A file named like a library in the folder gradguard runs from (sklearn.py) must not run
    in its place, in the parent or in the workers (issue 14, item 10): the current folder was
    put first on sys.path in every worker."""
    marker = tmp_path / "planted-ran"
    (tmp_path / "sklearn.py").write_text(
        f"open({str(marker)!r}, 'a').write('x')\nraise ImportError('planted')\n")
    script = Path(sys.executable).parent / "gradguard"
    cmd = ([str(script)] if script.exists()
           else [sys.executable, "-c", "import sys; from gradguard.cli import main; "
                 "sys.exit(main(sys.argv[1:]))"])
    env = {**os.environ, "PYTHONPATH": ""}
    proc = subprocess.run(
        [*cmd, "compare", "--task", "digits", "--optimizers", "adam", "--clip", "none",
         "--lr", "0.001", "--seeds", "2", "--steps", "4", "--workers", "2", "--no-progress",
         "--out", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), "the planted sklearn.py ran"


def test_ctrl_c_after_the_last_run_says_the_sweep_is_complete(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A Ctrl-C that lands after every run has finished (issue 14, item 8): the sweep is
    complete, so the message must not ask for the command to be run again."""
    from gradguard.compare import _sweep

    real = _sweep.run_sweep

    def interrupted_at_the_end(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        result.interrupted = True  # as if SIGINT arrived as the pool shut down
        return result

    monkeypatch.setattr(_sweep, "run_sweep", interrupted_at_the_end)
    argv = ["compare", "--task", "digits", "--optimizers", "adam", "--clip", "none", "--lr",
            "0.001", "--seeds", "1", "--steps", "4", "--workers", "1", "--no-progress",
            "--out", str(tmp_path / "out")]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "all 1 runs are saved" in err and "report is complete" in err, err
    assert "run the same command again" not in err, err
