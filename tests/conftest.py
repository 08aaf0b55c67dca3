"""Test configuration: make the src layout importable without an installed package."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SRC = Path(__file__).resolve().parents[1] / "src"
if importlib.util.find_spec("gradguard") is None and _SRC.is_dir():
    sys.path.insert(0, str(_SRC))
