"""Spec strings for clip policies: ``name[:first][:key=value...]``."""

from __future__ import annotations

import math
from typing import Any

from ._policies import AGC, AutoClip, ClipPolicy, GlobalNorm, NoClip, Norm, Value, ZClip

# name -> (class, first positional argument, keyword arguments allowed after it)
_FORMS: dict[str, tuple[type[ClipPolicy], str | None, tuple[str, ...]]] = {
    "none": (NoClip, None, ()),
    "value": (Value, "c", ()),
    "norm": (Norm, "c", ("norm_type",)),
    "global_norm": (GlobalNorm, "c", ("norm_type",)),
    "agc": (AGC, "clipping", ("eps",)),
    "auto": (AutoClip, "percentile", ("history",)),
    "zclip": (ZClip, "z_thresh", ("alpha", "warmup", "max_norm", "eps")),
}

VALID_FORMS = (
    '"none", "value:C", "norm:C", "global_norm:C[:norm_type=P]", "agc:CLIPPING[:eps=E]", '
    '"auto:PERCENTILE[:history=N]", "zclip:Z[:alpha=A][:warmup=N][:max_norm=M][:eps=E]"'
)

_INT_KEYS = {"history", "warmup"}


def _number(key: str, text: str, spec: str) -> Any:
    try:
        if key in _INT_KEYS:
            return int(text)
        return math.inf if text.lower() in ("inf", "infinity") else float(text)
    except ValueError:
        raise ValueError(
            f"Invalid clip spec {spec!r}: {key}={text!r} is not a number; valid forms: "
            f"{VALID_FORMS}"
        ) from None


def parse(spec: str) -> ClipPolicy:
    """Turn a spec string into a policy.

    >>> parse("global_norm:1")
    GlobalNorm(c=1.0, norm_type=2.0)
    >>> parse("zclip:2.5:warmup=10").warmup
    10
    """
    if not isinstance(spec, str):
        raise TypeError(f"Invalid clip spec: expected a string, got {spec!r}")
    parts = [p.strip() for p in spec.strip().split(":")]
    name = parts[0].lower()
    form = _FORMS.get(name)
    if form is None:
        raise ValueError(f"Invalid clip spec {spec!r}: unknown name {name!r}; valid forms: "
                         f"{VALID_FORMS}")
    cls, first, keys = form
    kwargs: dict[str, Any] = {}
    rest = parts[1:]
    if first is not None:
        if not rest or "=" in rest[0] or rest[0] == "":
            raise ValueError(f"Invalid clip spec {spec!r}: {name} needs a value ({name}:X); "
                             f"valid forms: {VALID_FORMS}")
        kwargs[first] = _number(first, rest[0], spec)
        rest = rest[1:]
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep or key not in keys:
            allowed = ", ".join(keys) or "none"
            raise ValueError(f"Invalid clip spec {spec!r}: unexpected {item!r} (options for "
                             f"{name}: {allowed}); valid forms: {VALID_FORMS}")
        kwargs[key] = _number(key, value, spec)
    return cls(**kwargs)


def resolve(clip: ClipPolicy | str | None, argname: str = "clip") -> ClipPolicy | None:
    """Accept a policy, a spec string or None; return a policy or None (no clipping)."""
    if clip is None:
        return None
    if isinstance(clip, ClipPolicy):
        return None if isinstance(clip, NoClip) else clip
    if isinstance(clip, str):
        try:
            policy = parse(clip)
        except ValueError as e:
            raise ValueError(f"Invalid {argname}: {e}") from None
        return None if isinstance(policy, NoClip) else policy
    raise TypeError(
        f"Invalid {argname}: {clip!r}; expected a gradguard.clip policy, a spec string "
        f"({VALID_FORMS}) or None"
    )
