"""Gradient clipping policies, and the statistics they are computed from.

Use a policy through an optimizer (``gradguard.Adam(params, clip="global_norm:1")``), where the
clip is folded into the update, or alone on any parameters (``GlobalNorm(1.0).clip_(params)``).
"""

from ._adaptive import AutoClip, ZClip
from ._hooks import GradHooks
from ._parse import VALID_FORMS, parse, resolve
from ._policies import AGC, ClipDecision, ClipPolicy, GlobalNorm, NoClip, Norm, Value
from ._stats import GradStats, StatNeeds, unitwise_norm

__all__ = [
    "AGC",
    "VALID_FORMS",
    "AutoClip",
    "ClipDecision",
    "ClipPolicy",
    "GlobalNorm",
    "GradHooks",
    "GradStats",
    "NoClip",
    "Norm",
    "StatNeeds",
    "Value",
    "ZClip",
    "parse",
    "resolve",
    "unitwise_norm",
]
