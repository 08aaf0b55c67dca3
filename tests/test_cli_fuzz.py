"""A fuzz test of the command line (issue 14): malformed values for every option of every
subcommand, taken from the parser itself so that a new option is fuzzed too. Each command
must exit 0 or 2, never 1 or a traceback, and write nothing outside its output folder.

The command lines start from a tiny valid one (a 2-step, 1-run sweep; a 5-step range test; a
1-rep benchmark of 10k parameters), and one option at a time gets a malformed value: empty,
blank, words, signs, NaN, infinities, overflow, separators, paths that are not folders, a NUL
byte, or random text (hypothesis)."""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradguard.cli import build_parser, main

BASE = {
    "compare": ["--task", "digits", "--optimizers", "adam", "--clip", "none", "--lr", "0.01",
                "--seeds", "1", "--steps", "2", "--eval-every", "1", "--workers", "1",
                "--no-progress", "--out", "{out}"],
    "lr-find": ["--task", "digits", "--steps", "5", "--out", "{out}"],
    "bench": ["--sizes", "0.01", "--reps", "1", "--optimizers", "sgd", "--backend", "foreach",
              "--width", "16"],
    "report": ["{out}"],
    "tasks": [],
}

MALFORMED = ["", " ", "abc", "-1", "0", "-0", "0.5", "nan", "inf", "-inf", "1e400", "9" * 30,
             "-" + "9" * 30, "0x10", ",", "1,", ",,", ";;", ":", "1:2", "1:2:3:4", "a:b:c",
             "é", "\t\n", "--", "-x", "/dev/null", "/proc/version/x", "\x00", "a\x00b"]


# An output folder with an odd but valid name runs the whole (tiny) command: a few suffice.
MALFORMED_PATHS = ["", " ", "\x00", "a\x00b", "/dev/null", "/proc/version/x", "--", "-x",
                   "é", "1:2", "-1"]


def _options(command: str) -> list[argparse.Action]:
    ap = build_parser()
    (sub,) = [a for a in ap._actions if isinstance(a, argparse._SubParsersAction)]
    return [a for a in sub.choices[command]._actions if not isinstance(a, argparse._HelpAction)]


CASES = [(command, action.option_strings[0] if action.option_strings else action.dest)
         for command in BASE for action in _options(command)]


def _with(command: str, option: str, value: str | None, out: Path) -> list[str]:
    """The base command line of ``command`` with ``option`` set to ``value`` (None: the
    option given twice with no value, or a flag given a value)."""
    base = [a.replace("{out}", str(out)) for a in BASE[command]]
    if not option.startswith("-"):  # the positional: replaced
        return [command, value if value is not None else "", *base[1:]]
    if option in base:
        i = base.index(option)
        takes_value = i + 1 < len(base) and not base[i + 1].startswith("--")
        del base[i:i + 1 + takes_value]
    return [command, *base, option, *([] if value is None else [value])]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fuzz-sweep") / "sweep"
    assert main(["compare", *[a.replace("{out}", str(out)) for a in BASE["compare"]]]) == 0
    return out


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sweep: Path) -> Iterator[Path]:
    """A working folder of its own (the current folder during the command) holding the
    finished sweep that `report` reads."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    shutil.copytree(sweep, tmp_path / "out")
    monkeypatch.chdir(cwd)
    yield tmp_path


def _run(argv: list[str], root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``gradguard ARGV`` exits 0 or 2 and writes only under its --out (or report's folder)."""
    before = _files(root)
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, code, err[-2000:])
    if code == 2:
        assert "error" in err or "usage" in err, (argv, err[-2000:])
    outs = [Path(argv[i + 1]) for i, a in enumerate(argv[:-1]) if a == "--out"]
    if argv[0] == "report" and len(argv) > 1:
        outs.append(Path(argv[1]))
    allowed = [o if o.is_absolute() else Path.cwd() / o for o in outs]
    new = _files(root) - before
    outside = [p for p in new if not any(p.resolve().is_relative_to(a.resolve())
                                         for a in allowed if str(a).strip())]
    assert not outside, (argv, outside)


@pytest.mark.parametrize("command,option", CASES)
def test_every_malformed_value_of_every_option_exits_0_or_2(
        command: str, option: str, place: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = place / "out"
    paths = option in ("--out", "folder")
    for value in [*(MALFORMED_PATHS if paths else MALFORMED), None]:
        _run(_with(command, option, value, out), place, capsys)


@pytest.mark.parametrize("command", list(BASE))
def test_unknown_options_and_stray_words_exit_2(command: str, place: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    base = [a.replace("{out}", str(place / "out")) for a in BASE[command]]
    for extra in (["--bogus"], ["--bogus", "1"], ["stray"], ["-"]):
        argv = [command, *base, *extra]
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv
        assert "error" in capsys.readouterr().err


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from([c for c in CASES if c[0] != "tasks"]),
       value=st.text(st.characters(blacklist_categories=["Cs", "Nd"]), max_size=12))
def test_random_text_for_any_option_exits_0_or_2(case: tuple[str, str], value: str,
                                                 place: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Random text (no digits, so no valid but huge size sneaks in) for one option."""
    command, option = case
    if not option.startswith("-") and value.strip() in ("", "."):
        value = "no such folder"  # the working folder itself holds no sweep either way
    _run(_with(command, option, value, place / "out"), place, capsys)
