"""How the report writes numbers, learning rates and the task's target for people, and the
plain-words definitions it prints.

Shared by the recommendation (:mod:`._recommend`), the tables and pages (:mod:`._render`) and
the figures (:mod:`._plots`), so that the three say the same thing the same way. The formal
definitions are in :mod:`._analysis`; :data:`DEFINITIONS` repeats them for readers of the
report and must be kept in step with them.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["DEFINITIONS", "decades", "finite", "num", "rate", "target_words"]

DEFINITIONS: tuple[tuple[str, str], ...] = (
    ("setting", "an (optimizer, clip, schedule) combination; its runs span learning rates and "
                "seeds."),
    ("trained", "a run trained when it finished without diverging and its final validation "
                "metric reached the task's target."),
    ("diverged", "the loss or the parameters stopped being finite, or the guard gave up after "
                 "repeated non-finite steps."),
    ("finite but untrained", "the run finished with finite numbers but did not reach the "
                             "target. A run that did not diverge is not a run that trained; "
                             "both are counted separately."),
    ("an LR trains", "every planned seed of the setting has a finished run at that learning "
                     "rate, and every one of them trained."),
    ("best LR", "among learning rates where every seed finished (status ok, finite metric), "
                "the one with the best mean final metric. A setting without one never "
                "finished on every seed and ranks last."),
    ("stable LR window", "the longest run of consecutive grid learning rates that all train; "
                         "its width in decades is log10(high / low)."),
    ("ranking", "settings by mean final metric at their best LR; differences under 1e-9 are "
                "ties, broken by more window points, then by the better worst seed."),
    ("seed noise", "two means differ beyond seed noise when the gap exceeds both the larger "
                   "seed standard deviation and two standard errors of the difference; with "
                   "one seed the noise is unknown."),
    ("clipping effect", "a clipped setting against the same optimizer and schedule without "
                        "clipping (run counts over the learning rates and seeds both "
                        "finished): it helped when the metric improved beyond seed noise or "
                        "the window gained points without the other getting worse, hurt in "
                        "the mirror case, mixed when both, and otherwise had no measurable "
                        "effect."),
    ("% steps clipped", "clipped steps / steps done, averaged over the setting's runs at its "
                        "best LR."),
)


def finite(x: Any) -> bool:
    """A real number (not a bool) that is finite.

    >>> finite(1), finite(float("nan")), finite(True), finite(None)
    (True, False, False, False)
    """
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def num(x: float | None, digits: int = 3) -> str:
    """A number for people: ``digits`` significant digits, '—' for None.

    >>> num(0.123456), num(0.123456, 4), num(None)
    ('0.123', '0.1235', '—')
    """
    if x is None:
        return "—"
    return f"{x:.{digits}g}"


def rate(x: float | None) -> str:
    """A learning rate, '—' for None.

    >>> rate(0.001), rate(None)
    ('0.001', '—')
    """
    return "—" if x is None else f"{x:g}"


def decades(value: float | None) -> str:
    """A window's width: '1 decade', '0.48 decades'.

    >>> decades(1.0), decades(0.477)
    ('1 decade', '0.48 decades')
    """
    text = num(value, 2)
    return f"{text} decade" if text == "1" else f"{text} decades"


def target_words(metric: Any, higher_is_better: Any, target: float | None) -> str:
    """When a run counts as trained, in words. ``higher_is_better`` is read for its truth, so
    a missing direction (None) reads as lower is better: callers pass what they hold.

    >>> target_words("accuracy", True, 0.8)
    'a run counts as trained when validation accuracy ≥ 0.8'
    """
    op = "≥" if higher_is_better else "≤"
    if target is None:
        return "a run counts as trained when the task says so"
    return f"a run counts as trained when validation {metric} {op} {target:g}"
