"""Spec strings for clip policies: ``name[:first][:key=value...]``.

The grammar is the table of registered policies (:data:`gradguard.clip._policies.POLICIES`):
each policy class declares its spec name, first argument, options, integer arguments and usage
text, and :data:`VALID_FORMS` and :func:`parse` read them there.
"""

from __future__ import annotations

import math
from typing import Any

from . import _adaptive  # noqa: F401  (defines, and so registers, AutoClip and ZClip)
from ._policies import POLICIES, ClipPolicy

# name -> (class, first positional argument, keyword arguments allowed after it)
_FORMS: dict[str, tuple[type[ClipPolicy], str | None, tuple[str, ...]]] = {
    name: (cls, cls.spec_first, cls.spec_options) for name, cls in POLICIES.items()
}

VALID_FORMS = ", ".join(f'"{cls.spec_usage}"' for cls in POLICIES.values())


def _number(cls: type[ClipPolicy], key: str, text: str, spec: str) -> Any:
    try:
        if key in cls.spec_ints:
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
        kwargs[first] = _number(cls, first, rest[0], spec)
        rest = rest[1:]
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep or key not in keys:
            allowed = ", ".join(keys) or "none"
            raise ValueError(f"Invalid clip spec {spec!r}: unexpected {item!r} (options for "
                             f"{name}: {allowed}); valid forms: {VALID_FORMS}")
        kwargs[key] = _number(cls, key, value, spec)
    return cls(**kwargs)


def resolve(clip: ClipPolicy | str | None, argname: str = "clip") -> ClipPolicy | None:
    """Accept a policy, a spec string or None; return a policy or None (no clipping: also for
    a policy that never changes a gradient, such as :class:`NoClip`)."""
    if clip is None:
        return None
    if isinstance(clip, ClipPolicy):
        return clip if clip.clips else None
    if isinstance(clip, str):
        try:
            policy = parse(clip)
        except ValueError as e:
            raise ValueError(f"Invalid {argname}: {e}") from None
        return policy if policy.clips else None
    raise TypeError(
        f"Invalid {argname}: {clip!r}; expected a gradguard.clip policy, a spec string "
        f"({VALID_FORMS}) or None"
    )
