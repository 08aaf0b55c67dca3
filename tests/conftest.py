"""Test configuration: make the src layout importable without an installed package, and run
the generic optimizer tests on the eager reference backend (the fast paths are compared with
it explicitly in test_backends.py; compiling every configuration would take far too long)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADGUARD_BACKEND", "eager")
# backend="auto" compiles param groups of any size in the tests (its default skips small ones)
# and steps none flat, so that the tests of its per-tensor choices see them; the flat layout,
# which takes small groups by default, is tested on its own (test_flat.py).
os.environ.setdefault("GRADGUARD_COMPILE_MIN_NUMEL", "0")
os.environ.setdefault("GRADGUARD_FLAT_MAX_NUMEL", "0")
# Backward hooks on parameters of any size: the tests' models are small, and the hook
# machinery is what they check (the default threshold has its own tests in test_hooks.py).
os.environ.setdefault("GRADGUARD_HOOK_MIN_NUMEL", "0")

_SRC = Path(__file__).resolve().parents[1] / "src"
if importlib.util.find_spec("gradguard") is None and _SRC.is_dir():
    sys.path.insert(0, str(_SRC))
