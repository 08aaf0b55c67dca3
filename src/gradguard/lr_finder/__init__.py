r"""The learning-rate range test (Smith 2017), clip-aware, with an exact restore.

:func:`find_lr` trains for ``num_steps`` optimizer steps while the LR sweeps from
``start_lr`` to ``end_lr``, records the loss, the gradient norm and what each of a few clip
policies would have done, stops when the loss diverges, suggests an LR and a clip threshold,
and puts the model, the optimizer, a scheduler and every RNG back exactly as they were.

The curve and the suggestions (:meth:`LRFinderResult.from_curves`):

- **smoothed loss**: the debiased EMA (:math:`\beta` = ``smooth``) of the losses after a
  running median of 5 steps. An EMA alone smears an isolated spike over
  :math:`\sim 1/(1-\beta)` steps, and in the first steps, where the debiased EMA weights each
  loss heavily, a spike reads as divergence; a median of 5 removes spikes of up to 2 steps and
  leaves the trend. Non-finite losses are left out. During the sweep the median is over the
  last 5 steps (causal); the stored curve uses the 5 steps centred on each step (the first or
  last 5 at the ends).
- **divergence**, judged on the raw loss and on the smoothed loss: the first step whose loss
  is not finite, or where either curve (the raw one as the causal median of the last 5
  losses, so that a spike of 1 or 2 steps does not count; the smoothed one causal too)
  exceeds :math:`b + (k - 1)|b|`, :math:`b` that curve's best value so far and :math:`k` =
  ``diverge_threshold`` (:math:`v > k\,b` for a positive loss), or is back above its value at
  step 5 by 10% of it once the loss has come down by 25% (judged on a debiased EMA of
  :math:`\beta = 0.9` of the medians, whatever ``smooth`` is, so that batch noise on a flat
  loss is not read as learning): the model lost what it learned. The smoothed curve lags
  :math:`\sim 1/(1-\beta)` steps (50 at the default 0.98), so on its own it can miss a
  blow-up at the end of a sweep; the raw curve does not.
  The sweep stops there and ``divergence`` says which test fired.
- **stable region**: the steps up to the minimum of the smoothed loss (before divergence).
- **minimum** (the default rule; fastai's ``minimum``: an order of magnitude below the LR of
  the lowest loss): :math:`\eta_{min} / 10`, :math:`\eta_{min}` the LR at the minimum of the
  smoothed loss in the stable region; none when that minimum is in the first 10% of the
  sweep's steps (the loss never fell, and its lowest point is the start). The smoothed curve
  lags, so its minimum can be only a few percent below its start on a short sweep, and still
  in the right place.
  Trained at, for its task's full budget with 3 seeds, it trained every seed on 8 of 16
  range tests (4 built-in tasks, Adam and SGD with momentum, 2 range-test seeds) and gave a
  suggestion that did not on 7; the former default (valley, else steepest) trained on 6 and
  did not on 10 (``benchmarks/lr_rules.py``; the table is in the README).
- **valley** (after fastai's ``valley``): the longest decreasing
  subsequence of the smoothed loss in the stable region, from its top :math:`s_a` to its bottom
  :math:`s_e`; the suggestion is the first step of it where the loss has come half-way down,
  :math:`s_t \le s_a - \tfrac12 (s_a - s_e)`. Measured in loss rather than in steps (fastai
  takes the middle step), so the long flat stretch at small LRs, which a smoothed curve also
  crosses slowly downhill, does not drag the suggestion towards LRs too small to learn. A
  valley must span at least 5 steps and 10% of the stable region, and fall by at least 5% of
  its top. With ``rule="valley"``, the steepest descent stands in where there is no valley.
- **steepest**: the most negative slope
  :math:`\mathrm{d}s / \mathrm{d}\log_{10}\eta` (``numpy.gradient``) in the stable region.
  The argmin of a derivative is at the mercy of noise on a short or flat curve.
- All three are heuristics: the best LR for a run depends on its length and schedule, which the
  range test does not know. Treat the suggestion as the centre of a small search.
- **suggested clip**: the 90th percentile (``clip_percentile``) of the finite gradient norms in
  the stable region. There the steps make progress without blowing up, so those norms are those
  of healthy training at this point of the run; a threshold at their upper percentile leaves
  typical steps alone and clips spikes (AutoClip's idea, computed once). Norms after the minimum
  grow with the instability and would set it too high. Gradients shrink as training goes on:
  treat it as a starting value, or use ``clip="auto:..."`` to follow them.

The package: ``_curve`` (the smoothing, the divergence monitor and the suggestion rules
:data:`RULES`), ``_result`` (:class:`LRFinderResult`, its JSON and its plot), ``_restore`` (the
snapshot of the model, the optimizer, a scheduler and the RNGs, and putting it back) and
``_sweep`` (the sweep loop and :func:`find_lr`).
"""

from __future__ import annotations

# Besides __all__, the names the single module lr_finder.py defined that others import (cli:
# RULES; the tests: _divergence, _mean_over_ranks) or may: still importable from here.
from ._curve import (  # noqa: F401
    LEARNED,
    MEDIAN_WINDOW,
    MINIMUM_DIVISOR,
    MINIMUM_START,
    RISE,
    RULES,
    TREND_BETA,
    VALLEY_MIN_DROP,
    VALLEY_POSITION,
    _divergence,
    check_beta,
    smooth_curve,
)
from ._result import LRFinderResult
from ._sweep import SWEEP_MODES, _mean_over_ranks, find_lr  # noqa: F401

__all__ = ["LRFinderResult", "find_lr"]
