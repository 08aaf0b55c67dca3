"""``Monitor``: training health from the statistics a guarded step already gathered."""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..clip import ClipPolicy
from ..optim._guard import param_names
from ._detectors import Detector, Finding, Record, default_detectors
from ._writers import Writer, summarize


class MonitorWarning(UserWarning):
    """Issued for every detector finding (when ``Monitor(warn=True)``)."""


_MISSING = -1.0  # a layer without a gradient on a step (norms are >= 0)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


class Monitor:
    """Per-step gradient health of a gradguard optimizer (or a :func:`gradguard.guard`-ed one).

    Attached with ``optimizer.register_step_post_hook``, so nothing changes in the training
    loop; :meth:`close` (or leaving a ``with`` block) detaches it and writes the summary.

    On every step it keeps references to the 0-d tensors the step already produced
    (``optimizer.last_step`` and the per-tensor gradient norms of ``optimizer._core.last_stats``):
    no kernel, no pass over the gradients, no host read. Every ``interval`` steps it stacks them
    into one tensor together with the parameter norms and the update norms, reads that tensor
    with a single ``tolist()``, builds a record (a dict, see below), runs the detectors and hands
    the record to the writers.

    Record keys: ``step`` (optimizer steps so far), ``step_first``, ``steps``, ``applied``
    (not skipped), ``grad_norm`` (last step, before clipping), ``grad_norm_mean`` /
    ``grad_norm_max`` (over the interval's applied steps), ``grad_norm_clipped`` (last step, after
    clipping: ``grad_norm * clip_scale``, exact for global policies (global_norm, autoclip, zclip);
    for per-tensor policies (norm, value, agc) ``clip_scale`` is the smallest factor, so this is a
    lower bound), ``clip_scale_min``, ``clipped`` / ``skipped`` (counts in the interval),
    ``clip_rate``, ``clipped_total`` / ``skipped_total`` (the optimizer's counters), ``lr``
    (param group 0), ``clip`` (spec), ``clip_threshold`` (global_norm's ``c``, or the adaptive
    threshold of the last step for autoclip/zclip), ``grad_norm_steps`` (each step's norm),
    ``layers`` (name -> ``grad_norm``: mean over the interval's applied steps; ``param_norm``:
    after the last step; ``update_ratio``: ``||p_t - p_{t-1}|| / ||p_t||`` of the last step,
    from a copy of the parameters taken just before it), ``nonfinite_layers`` and ``findings``.
    Non-finite numbers are stored as None.

    Costs: the update ratio copies the parameters once per interval (in a step pre-hook; turn it
    off with ``update_ratio=False``); parameter and update norms are one multi-tensor norm each
    per interval. Those are passes over the parameters, never over the gradients.

    >>> import gradguard
    >>> model = torch.nn.Linear(3, 1)
    >>> opt = gradguard.SGD(model.parameters(), lr=0.1, clip="global_norm:1")
    >>> with Monitor(model, opt, interval=2, print_summary=False) as mon:
    ...     for _ in range(4):
    ...         opt.zero_grad()
    ...         model(torch.ones(8, 3)).pow(2).mean().backward()
    ...         opt.step()
    >>> [r["step"] for r in mon.records], sorted(mon.records[0]["layers"])
    ([2, 4], ['bias', 'weight'])
    """

    def __init__(self, model: nn.Module | None, optimizer: Optimizer, *, interval: int = 10,
                 writers: Iterable[Writer] = (), detectors: Sequence[Detector] | None = None,
                 update_ratio: bool = True, attach: bool = True, warn: bool = True,
                 print_summary: bool = True, keep_records: bool = True) -> None:
        if not hasattr(optimizer, "_core") or not isinstance(optimizer, Optimizer):
            raise TypeError(f"Invalid optimizer: {type(optimizer).__name__}; Monitor needs a "
                            "gradguard optimizer or one wrapped with gradguard.guard(...)")
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"Invalid interval: {interval!r}; must be an integer >= 1")
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"Invalid model: {type(model).__name__}; must be a torch.nn.Module "
                            "or None")
        self.model = model
        self.optimizer = optimizer
        opt: Any = optimizer
        self._core: Any = opt._core
        # The optimizer keeps each step's per-tensor gradient norms while a Monitor reads them.
        self._core.norm_readers = getattr(self._core, "norm_readers", 0) + 1
        self.interval = interval
        self.writers = list(writers)
        self.detectors = list(default_detectors() if detectors is None else detectors)
        self.update_ratio = update_ratio
        self.warn = warn
        self.print_summary = print_summary
        self.keep_records = keep_records
        self.records: list[Record] = []
        self.findings: list[Finding] = []
        self.steps = 0
        self._history: list[Record] = []  # for detectors (bounded)
        self._pending: list[tuple[Any, list[Tensor] | None, list[Tensor] | None]] = []
        self._last_rec: Any = None
        self._snapshot: list[Tensor] | None = None
        self._handles: list[Any] = []
        self._closed = False
        self._layers: list[Tensor] = []
        self._names: list[str] = []
        self._index: dict[int, int] = {}
        self._refresh_layers()
        if attach:
            self._handles.append(optimizer.register_step_post_hook(self._post_hook))
            if update_ratio:
                self._handles.append(optimizer.register_step_pre_hook(self._pre_hook))

    # -- layers -----------------------------------------------------------------------------
    def _refresh_layers(self) -> None:
        groups = self.optimizer.param_groups
        fallback = param_names(groups)
        given = {id(p): n for n, p in self.model.named_parameters()} if self.model else {}
        self._layers = [p for g in groups for p in g["params"]]
        self._names = [given.get(id(p), fallback[id(p)]) for p in self._layers]
        self._index = {id(p): i for i, p in enumerate(self._layers)}

    @property
    def layer_names(self) -> list[str]:
        """The names of the monitored parameters, in record order."""
        return list(self._names)

    # -- hooks ------------------------------------------------------------------------------
    def _pre_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if (self.steps + 1) % self.interval == 0:
            with torch.no_grad():
                self._snapshot = [p.detach().clone() for p in self._layers]

    def _post_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.step()

    def step(self) -> Record | None:
        """Record the optimizer's last step; call it after ``optimizer.step()`` when the monitor
        was made with ``attach=False``. Returns the record on a logging step, else None."""
        core = self._core
        rec = core.last_step
        if rec is None or rec is self._last_rec:  # no gradients: nothing was stepped
            self._snapshot = None
            return None
        self._last_rec = rec
        self.steps += 1
        stats = getattr(core, "last_stats", None)
        if stats is None:
            self._pending.append((rec, None, None))
        else:
            self._pending.append((rec, stats[0], stats[1]))
        if self.steps % self.interval == 0:
            return self.flush()
        return None

    # -- the interval step ------------------------------------------------------------------
    def flush(self) -> Record | None:
        """Turn the steps recorded since the last record into a record now (one host read)."""
        if not self._pending:
            return None
        if len(self._layers) != len(self._index) or \
                sum(len(g["params"]) for g in self.optimizer.param_groups) != len(self._layers):
            self._refresh_layers()
        pending, self._pending = self._pending, []
        snapshot, self._snapshot = self._snapshot, None
        n, k = len(self._layers), len(pending)
        dev = pending[-1][0].grad_norm.device
        f64 = torch.float64

        def flat(t: Tensor) -> Tensor:
            return t.detach().reshape(-1).to(device=dev, dtype=f64)

        with torch.no_grad():
            recs = torch.stack([torch.stack([flat(r.grad_norm)[0], flat(r.clip_scale)[0],
                                             flat(r.clipped)[0], flat(r.skipped)[0]])
                                for r, _, _ in pending])
            rows = []
            for _, params, norms in pending:
                if params is None or norms is None:
                    rows.append(torch.full((n,), _MISSING, dtype=f64, device=dev))
                elif len(params) == n and all(p is q for p, q in zip(params, self._layers,
                                                                     strict=True)):
                    rows.append(torch.stack([flat(x)[0] for x in norms]))
                else:
                    row = torch.full((n,), _MISSING, dtype=f64, device=dev)
                    idx = [self._index.get(id(p), -1) for p in params]
                    keep = [j for j, i in enumerate(idx) if i >= 0]
                    if keep:
                        row[torch.tensor([idx[j] for j in keep], device=dev)] = torch.stack(
                            [flat(norms[j])[0] for j in keep])
                    rows.append(row)
            layer = torch.stack(rows)
            pnorm = torch.stack([flat(x)[0] for x in self._norms(self._layers)])
            parts = [recs.reshape(-1), layer.reshape(-1), pnorm]
            has_update = snapshot is not None and len(snapshot) == n
            if has_update and snapshot is not None:
                torch._foreach_sub_(snapshot, [p.detach() for p in self._layers])  # -update
                parts.append(torch.stack([flat(x)[0] for x in self._norms(snapshot)]))
            extras: list[tuple[str, Tensor]] = []
            core = self._core
            for key, t in (("clipped_total", core.clipped_steps),
                           ("skipped_total", core.skipped_steps),
                           ("lr", self.optimizer.param_groups[0]["lr"]),
                           ("clip_threshold", self._threshold())):
                if isinstance(t, Tensor):
                    extras.append((key, t))
                    parts.append(flat(t)[:1])
            values: list[float] = torch.cat(parts).tolist()  # the one host read
        record = self._build(pending, values, n, k, has_update, [key for key, _ in extras])
        self._publish(record)
        return record

    @staticmethod
    def _norms(tensors: list[Tensor]) -> list[Tensor]:
        out: list[Tensor] = []
        buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, t in enumerate(tensors):
            buckets.setdefault((t.device, t.dtype), []).append(i)
        res: dict[int, Tensor] = {}
        for (_, dtype), idx in buckets.items():
            ts = [tensors[i] for i in idx]
            if dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
                ns = list(torch._foreach_norm(ts, 2.0))
            else:
                ns = [torch.linalg.vector_norm(t.to(torch.float32)) for t in ts]
            res.update(zip(idx, ns, strict=True))
        out = [res[i] for i in range(len(tensors))]
        return out

    def _threshold(self) -> float | Tensor | None:
        policy = getattr(self.optimizer, "clip", None)
        return policy.threshold if isinstance(policy, ClipPolicy) else None

    def _build(self, pending: list[Any], values: list[float], n: int, k: int,
               has_update: bool, extra_keys: list[str]) -> Record:
        pos = 0
        steps = [values[4 * i:4 * i + 4] for i in range(k)]
        pos = 4 * k
        layer = [values[pos + i * n:pos + (i + 1) * n] for i in range(k)]
        pos += k * n
        pnorm = values[pos:pos + n]
        pos += n
        unorm: list[float] | None = None
        if has_update:
            unorm = values[pos:pos + n]
            pos += n
        extra = dict(zip(extra_keys, values[pos:], strict=True))
        applied = [s for s in steps if not s[3]]
        finite = [s[0] for s in applied if math.isfinite(s[0])]
        last = steps[-1]
        policy = getattr(self.optimizer, "clip", None)
        thr = self._threshold()
        lr = self.optimizer.param_groups[0]["lr"]
        layers: dict[str, dict[str, float | None]] = {}
        nonfinite: list[str] = []
        for j, name in enumerate(self._names):
            col = [row[j] for row, s in zip(layer, steps, strict=True) if not s[3]]
            good = [x for x in col if math.isfinite(x) and x >= 0]
            if any(not math.isfinite(row[j]) for row in layer):
                nonfinite.append(name)
            p = pnorm[j]
            ratio = None
            if unorm is not None and math.isfinite(p) and p > 0:
                ratio = _finite(unorm[j] / p)
            layers[name] = {"grad_norm": sum(good) / len(good) if good else None,
                            "param_norm": _finite(p), "update_ratio": ratio}
        clipped = int(sum(s[2] for s in steps))
        record: Record = {
            "step": self.steps,
            "step_first": self.steps - k + 1,
            "steps": k,
            "applied": len(applied),
            "grad_norm": _finite(last[0]),
            "grad_norm_mean": sum(finite) / len(finite) if finite else None,
            "grad_norm_max": max(finite) if finite else None,
            "grad_norm_clipped": _finite(last[0] * last[1]) if not last[3] else None,
            "clip_scale_min": _finite(min(s[1] for s in applied)) if applied else None,
            "clipped": clipped,
            "clip_rate": clipped / len(applied) if applied else None,
            "skipped": int(sum(s[3] for s in steps)),
            "clipped_total": int(extra.get("clipped_total", 0)),
            "skipped_total": int(extra.get("skipped_total", 0)),
            "lr": extra["lr"] if "lr" in extra else (float(lr) if lr is not None else None),
            "clip": None if policy is None else policy.spec,
            "clip_threshold": _finite(extra["clip_threshold"]) if "clip_threshold" in extra
            else (float(thr) if isinstance(thr, float) else None),
            "grad_norm_steps": [_finite(s[0]) for s in steps],
            "layers": layers,
            "nonfinite_layers": nonfinite,
        }
        return record

    def _publish(self, record: Record) -> None:
        self._history.append(record)
        del self._history[:-64]
        found: list[Finding] = []
        for det in self.detectors:
            found += det.check(self._history)
        record["findings"] = [f"{f.kind}: {f.message}" for f in found]
        self.findings += found
        if self.warn:
            for f in found:
                warnings.warn(f"gradguard.Monitor at step {f.step}: {f.message}", MonitorWarning,
                              stacklevel=4)
        if self.keep_records:
            self.records.append(record)
        for w in self.writers:
            w.write(record)

    # -- the end ----------------------------------------------------------------------------
    def summary(self) -> str:
        """A plain-text summary of the records so far (needs ``keep_records=True``)."""
        return summarize(self.records, self.findings)

    def close(self) -> str:
        """Flush the last partial interval, detach the hooks, close the writers and return (and,
        with ``print_summary=True``, print) the summary."""
        if self._closed:
            return self.summary()
        self.flush()
        for h in self._handles:
            h.remove()
        self._handles = []
        self._core.norm_readers = max(0, getattr(self._core, "norm_readers", 1) - 1)
        for w in self.writers:
            w.close()
        self._closed = True
        text = self.summary()
        if self.print_summary:
            print(text, file=sys.stdout)
        return text

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
