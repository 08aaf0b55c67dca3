"""Exceptions raised by gradguard."""

from __future__ import annotations


class NonFiniteGradientError(RuntimeError):
    """Raised when gradients stay non-finite (NaN or Inf) for too many steps in a row.

    ``param_names`` lists the parameters whose gradients were not finite at the step that
    raised; ``consecutive`` is how many steps in a row were skipped.
    """

    def __init__(self, param_names: list[str], consecutive: int, reason: str = "") -> None:
        self.param_names = list(param_names)
        self.consecutive = consecutive
        shown = ", ".join(self.param_names[:20])
        more = f" (and {len(self.param_names) - 20} more)" if len(self.param_names) > 20 else ""
        msg = (
            f"non-finite gradients (NaN or Inf) in {consecutive} consecutive step(s){reason}; "
            f"parameters with non-finite gradients: {shown or '(none at this step)'}{more}. "
            "Lower the learning rate, enable clipping, or check the loss for overflow."
        )
        super().__init__(msg)
