"""What the subcommands of the ``gradguard`` command share: argparse types, the exit
statuses, the checks of a task and an output folder, and their messages."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

from .. import tasks

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_Num = TypeVar("_Num", int, float)


def _positive(convert: Callable[[str], _Num], must: str) -> Callable[[str], _Num]:
    """An argparse ``type``: ``convert(text)``, which must be > 0 (``must`` says so in words)."""
    def parse(text: str) -> _Num:
        try:
            value: _Num | None = convert(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be {must}")
        return value

    return parse


_positive_int = _positive(int, "an integer >= 1")
_positive_float = _positive(float, "a number > 0")


def _nonempty(text: str) -> str:
    """An argparse ``type`` for names, lists and specs: an empty value is refused, never read
    as "the default"; so is a NUL character, which no name, spec or path can hold."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must not be empty (leave the "
                                         "option out for its default)")
    if "\x00" in text:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: holds a NUL character")
    return text


def _folder(text: str) -> Path:
    """An argparse ``type`` for --out: a non-empty path (an empty one would mean the current
    folder)."""
    return Path(_nonempty(text))


def _task_choices() -> str:
    return ", ".join(tasks.names()) + ", or module:function (a function returning a Task)"


def _writable_dir(ap: argparse.ArgumentParser, path: Path, option: str) -> Path:
    """Create ``path`` and check a file can be written there, or exit 2."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        why = (e.strerror if isinstance(e, OSError) else None) or e
        ap.error(f"invalid {option} {str(path)!r}: cannot write there ({why}); "
                 "choose a folder you can write to")
    return path


def _cannot_write(ap: argparse.ArgumentParser, e: OSError, folder: Path, kept: str) -> NoReturn:
    """Exit 2 for a failed write (a full disk, a folder gone read-only), naming the file and
    the folder and saying what was kept."""
    name = e.filename or "a file"
    ap.exit(EXIT_USAGE, f"{ap.prog}: error: cannot write {name} in {folder} "
                        f"({e.strerror or e}); {kept}. Free space there (or choose another "
                        "folder) and run the same command again.\n")


def _get_task(ap: argparse.ArgumentParser, name: str) -> tasks.Task:
    if name not in tasks.names() and ":" not in name:
        ap.error(f"invalid --task {name!r}; valid choices: {_task_choices()}")
    try:
        return tasks.get(name)
    except ValueError as e:
        ap.error(f"invalid --task {name!r}: {e}")
    except ImportError as e:
        ap.error(f"--task {name!r} cannot be loaded: {e}")
