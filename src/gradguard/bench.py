"""Benchmark: gradguard's clipped optimizer step against torch, and against the memory floor.

For every optimizer, at about 25M and 100M parameters in transformer shapes, it times in one
process, interleaved, median of N repetitions:

- ``torch clip+step``: ``clip_grad_norm_(..., 1.0)`` (foreach) + torch's fastest form of the
  optimizer (``fused=True`` where torch has it, foreach otherwise; for LAMB/LARS/Lion
  pytorch-optimizer's, if installed);
- ``torch step``: the same optimizer unclipped;
- ``gradguard``: gradguard's optimizer with ``clip="global_norm:1.0"``;
- ``floor``: the bytes the clipped step must move per parameter x parameters / the copy
  bandwidth measured in this run (copying tensors of the same shapes).

The gradients here do not come from a backward pass, so gradguard must read them once for the
norm (in training the norm is measured during backward; see ``--train``). ``--train`` times a
whole training step (forward, backward, clip, step) on a small transformer.

    gradguard bench                 # the full table (a few minutes on 2 cores)
    gradguard bench --default-malloc    # without telling glibc to keep freed memory
    gradguard bench --sizes 25 --optimizers adamw,rmsprop --reps 5
    gradguard bench --sizes 0.2 --width 64    # a small model: 60 small tensors
    gradguard bench --sizes 5 --optimizers adam,rmsprop --backend foreach   # one backend
    python benchmarks/step.py ...   # the same
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import importlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from . import optim
from .optim import REGISTRY
from .optim.backends import BACKENDS, native

T = TypeVar("T")

# name: (gradguard class, kwargs, bytes per parameter of the clipped step), from the registry:
# bytes are the fp32 reads + writes the update must do, plus 4 for reading the gradient for
# the norm.
OPTIMIZERS: dict[str, tuple[str, dict[str, object], int]] = {
    name: (e.cls.__name__, dict(e.bench), e.step_bytes)
    for name, e in REGISTRY.items() if e.bench is not None}
# torch's fused kernels where it has them; pytorch_optimizer's class where torch has none
TORCH_FUSED = {e.cls.__name__ for e in REGISTRY.values() if e.cls.rule.name in native.KERNELS}
THIRD_PARTY = {e.cls.__name__: e.third_party for e in REGISTRY.values() if e.third_party}


def transformer_shapes(n_params: float, d: int = 1024) -> list[tuple[int, ...]]:
    """Weights of pre-norm transformer blocks of width ``d`` until about ``n_params``."""
    block = [(3 * d, d), (3 * d,), (d, d), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,),
             (d,), (d,), (d,), (d,)]
    shapes: list[tuple[int, ...]] = []
    total = 0
    while total < n_params:
        for s in block:
            shapes.append(s)
            total += int(torch.Size(s).numel())
    return shapes


def make_params(shapes: list[tuple[int, ...]], seed: int) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes:
        p = nn.Parameter(torch.randn(s, generator=g) * 0.02)
        p.grad = torch.randn(s, generator=g)
        params.append(p)
    return params


def torch_optimizer(cls_name: str, params: list[nn.Parameter],
                    kwargs: dict[str, object]) -> tuple[torch.optim.Optimizer | None, str]:
    if cls_name in THIRD_PARTY:
        try:
            mod = importlib.import_module("pytorch_optimizer")
        except ImportError:
            return None, "n/a (pip install pytorch-optimizer)"
        cls = getattr(mod, THIRD_PARTY[cls_name])
        return cls(params, **kwargs), f"pytorch_optimizer.{THIRD_PARTY[cls_name]}"
    cls = getattr(torch.optim, cls_name)
    if cls_name in TORCH_FUSED:
        return cls(params, fused=True, **kwargs), f"torch.optim.{cls_name}(fused=True)"
    return cls(params, foreach=True, **kwargs), f"torch.optim.{cls_name}(foreach=True)"


def elapsed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(variants: Mapping[str, Callable[[], T]], reps: int) -> dict[str, list[T]]:
    """What each variant returns in each of ``reps`` rounds; every round runs each variant
    once, starting one later each round, so no variant always follows the same one."""
    names = list(variants)
    results: dict[str, list[T]] = {k: [] for k in names}
    for r in range(reps):
        for k in names[r % len(names):] + names[:r % len(names)]:
            results[k].append(variants[k]())
    return results


def interleaved_medians(variants: Mapping[str, Callable[[], object]],
                        reps: int) -> dict[str, float]:
    """Median seconds of each variant over ``reps`` interleaved rounds (see
    :func:`interleaved`)."""
    timed = {k: functools.partial(elapsed, fn) for k, fn in variants.items()}
    return {k: statistics.median(v) for k, v in interleaved(timed, reps).items()}


def copy_bandwidth(shapes: list[tuple[int, ...]], reps: int) -> float:
    """Bytes per second of copying tensors of these shapes (``torch._foreach_copy_``; the read
    and the write counted), measured in this run."""
    src = [torch.randn(s) for s in shapes]
    dst = [torch.empty(s) for s in shapes]
    torch._foreach_copy_(dst, src)
    times = [elapsed(lambda: torch._foreach_copy_(dst, src)) for _ in range(max(reps, 5))]
    return 2 * sum(t.numel() for t in src) * 4 / statistics.median(times)


@dataclass
class Row:
    name: str
    size_m: float
    torch_clip: float
    torch_step: float
    ours: float
    floor: float
    ref: str
    compile_s: float


def bench_optimizer(name: str, size_m: float, reps: int, bandwidth: float,
                    backend: str = "auto", width: int = 1024) -> Row:
    cls_name, kwargs, nbytes = OPTIMIZERS[name]
    shapes = transformer_shapes(size_m * 1e6, width)
    ours_p = make_params(shapes, 0)
    n = sum(p.numel() for p in ours_p)
    ours = getattr(optim, cls_name)(ours_p, clip="global_norm:1.0", backend=backend,
                                        **kwargs)
    t0 = time.perf_counter()
    ours.step()  # first step: compiles where the compiled backend is used
    compile_s = time.perf_counter() - t0
    ref_p = make_params(shapes, 0)
    ref, ref_name = torch_optimizer(cls_name, ref_p, kwargs)
    variants: dict[str, Callable[[], object]] = {"ours": ours.step}
    if ref is not None:
        opt = ref

        def clip_step() -> None:
            nn.utils.clip_grad_norm_(ref_p, 1.0, foreach=True)
            opt.step()

        variants["torch_clip"] = clip_step
        variants["torch_step"] = opt.step
        opt.step()
    med = interleaved_medians(variants, reps)
    nan = float("nan")
    return Row(name, n / 1e6, med.get("torch_clip", nan), med.get("torch_step", nan),
               med["ours"], nbytes * n / bandwidth, ref_name, compile_s)


def print_table(rows: list[Row], bandwidth: float) -> None:
    print(f"\ncopy bandwidth (lowest size): {bandwidth / 1e9:.1f} GB/s\n")
    print("| optimizer | params | torch clip+step (ms) | torch step (ms) | gradguard clipped (ms) "
          "| floor (ms) | speed-up vs torch clip+step | vs torch unclipped | % of bandwidth "
          "| first step (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.name} | {r.size_m:.3g}M | {r.torch_clip * 1e3:.1f} | "
              f"{r.torch_step * 1e3:.1f} | {r.ours * 1e3:.1f} | {r.floor * 1e3:.1f} | "
              f"{r.torch_clip / r.ours:.2f}x | {r.ours / r.torch_step:.2f}x | "
              f"{100 * r.floor / r.ours:.0f}% | {r.compile_s:.1f} |")
    print("\nreferences: " + "; ".join(sorted({f"{r.name}: {r.ref}" for r in rows})))


# -- a whole training step ----------------------------------------------------------------------
class TinyLM(nn.Module):
    """A small transformer LM whose optimizer step is a large share of the training step:
    many parameters (a big embedding and output layer), a small batch."""

    def __init__(self, vocab: int = 32_000, d: int = 256, layers: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.emb(x)))


# The training-step variants: torch's fused AdamW unclipped and with clip_grad_norm_ (the
# caller clips), gradguard's AdamW with global-norm clipping and without clipping.
TRAINING_VARIANTS = {
    "torch_step": "torch AdamW(fused=True), no clipping",
    "torch_clip": "torch clip_grad_norm_ + AdamW(fused=True)",
    "gradguard": "gradguard AdamW(clip='global_norm:1.0')",
    "gradguard_noclip": "gradguard AdamW, no clipping (the guard still reads norms)",
}


def training_variant(kind: str) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A fresh :class:`TinyLM` (seed 0) and the AdamW of one of :data:`TRAINING_VARIANTS`."""
    if kind not in TRAINING_VARIANTS:
        raise ValueError(f"Invalid kind: {kind!r}; valid choices: {', '.join(TRAINING_VARIANTS)}")
    torch.manual_seed(0)
    model = TinyLM()
    if kind.startswith("gradguard"):
        clip = "global_norm:1.0" if kind == "gradguard" else None
        return model, optim.AdamW(model.parameters(), lr=1e-4, clip=clip)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)


def bench_training(reps: int) -> None:
    """Time a whole training step of :class:`TinyLM` (forward, backward, clip, step) for torch
    and gradguard, with and without clipping, under both ``zero_grad`` modes: torch's default
    (``set_to_none=True``: backward hands each parameter a fresh gradient) and
    ``set_to_none=False`` (backward adds into the kept buffers, one more read and write of
    every gradient before its hook fires)."""
    torch.manual_seed(0)
    data = torch.randint(0, 32_000, (2, 32))
    target = torch.randint(0, 32_000, (2, 32))
    loss_fn = nn.CrossEntropyLoss()

    def make(kind: str, set_to_none: bool) -> Callable[[], None]:
        model, opt = training_variant(kind)
        params = list(model.parameters())

        def step() -> None:
            opt.zero_grad(set_to_none=set_to_none)
            out = model(data)
            loss_fn(out.view(-1, out.shape[-1]), target.view(-1)).backward()
            if kind == "torch_clip":
                nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
            opt.step()

        return step

    kinds = tuple(TRAINING_VARIANTS)
    meds: dict[bool, dict[str, float]] = {}
    for set_to_none in (True, False):
        variants = {k: make(k, set_to_none) for k in kinds}
        for fn in variants.values():
            fn()
            fn()
        meds[set_to_none] = interleaved_medians(variants, reps)
        del variants
    n = sum(p.numel() for p in TinyLM().parameters())
    print(f"\ntraining step (forward, backward, clip, step), TinyLM {n / 1e6:.1f}M params, "
          f"batch 2x32 tokens, AdamW, median of {reps}:\n")
    print("| variant | ms, zero_grad() | vs torch unclipped | ms, zero_grad(set_to_none=False) "
          "| vs torch unclipped |")
    print("|---|---|---|---|---|")
    for k in kinds:
        cells = [f"{med[k] * 1e3:.1f} | {med[k] / med['torch_step']:.3f}x"
                 for med in meds.values()]
        print(f"| {TRAINING_VARIANTS[k]} | {' | '.join(cells)} |")
    print()
    for set_to_none, med in meds.items():
        mode = "zero_grad()" if set_to_none else "zero_grad(set_to_none=False)"
        print(f"{mode}: gradguard vs torch clip_grad_norm_ + fused AdamW "
              f"{med['torch_clip'] / med['gradguard']:.2f}x faster; clipping adds to torch's "
              f"unclipped step: torch {(med['torch_clip'] - med['torch_step']) * 1e3:.1f} ms, "
              f"gradguard {(med['gradguard'] - med['torch_step']) * 1e3:.1f} ms")


#: memory one parameter of a benchmarked size takes: fp32 parameter, gradient and up to three
#: state tensors for gradguard's optimizer and again for torch's, plus the copy-bandwidth pair
BYTES_PER_PARAM = 2 * 4 * 5 + 8
MAX_REPS = 1000


def free_memory() -> int | None:
    """Bytes of memory available to a new allocation here (Linux ``MemAvailable``; else the
    physical memory), or None where neither can be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return None


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The benchmark's command-line options (shared by ``gradguard bench`` and
    ``benchmarks/step.py``)."""
    ap.add_argument("--sizes", default="25,100", help="parameter counts in millions (25,100)")
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS),
                    help="comma-separated, from: " + ",".join(OPTIMIZERS))
    ap.add_argument("--reps", type=int, default=10, help="repetitions per variant (10)")
    ap.add_argument("--width", type=int, default=1024,
                    help="width of the transformer blocks the shapes come from (1024); a small "
                         "width gives many small tensors, where per-tensor costs show "
                         "(e.g. --sizes 0.2 --width 64: 60 tensors)")
    ap.add_argument("--backend", default="auto", choices=list(BACKENDS),
                    help="gradguard's backend (auto); foreach: the multi-tensor eager path, "
                         "eager: the per-tensor reference")
    ap.add_argument("--train", action="store_true", help="also time a whole training step")
    ap.add_argument("--train-only", action="store_true", help="only the training step")
    ap.add_argument("--insist", action="store_true",
                    help=f"run sizes that need more memory than this machine has free, or more "
                         f"than {MAX_REPS:,} --reps")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave the C library's allocator as it is; by default glibc is told to "
                         "keep freed memory, so neither torch nor gradguard page-faults when it "
                         "allocates temporaries or gradients again (see steady_allocator)")


def run(args: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    """Run the benchmark as ``args`` say; bad values end through ``ap.error`` (exit 2)."""
    names = [s.strip().lower() for s in args.optimizers.split(",") if s.strip()]
    bad = [n for n in names if n not in OPTIMIZERS]
    if bad or not names:
        ap.error(f"invalid --optimizers {args.optimizers!r}; valid choices: "
                 f"{', '.join(OPTIMIZERS)}")
    try:
        sizes = [float(s) for s in args.sizes.split(",")]
        if not sizes or not all(0 < s < 1e5 for s in sizes):
            raise ValueError
    except ValueError:
        ap.error(f"invalid --sizes {args.sizes!r}; give comma-separated positive numbers of "
                 "millions of parameters, e.g. 25,100")
    if args.reps < 1:
        ap.error(f"invalid --reps {args.reps}; must be >= 1")
    if args.width < 1:
        ap.error(f"invalid --width {args.width}; must be >= 1")
    need = max(sizes) * 1e6 * BYTES_PER_PARAM
    free = free_memory()
    if free is not None and need > free and not args.insist:
        ap.error(f"invalid --sizes {args.sizes!r}: {max(sizes):g}M parameters need about "
                 f"{need / 2**30:.3g} GiB (parameters, gradients and optimizer state for "
                 f"gradguard and for torch), and {free / 2**30:.3g} GiB is free here; give "
                 "smaller sizes, or add --insist")
    if args.reps > MAX_REPS and not args.insist:
        ap.error(f"invalid --reps {args.reps}: more than {MAX_REPS:,}; give fewer, or add "
                 "--insist")
    block = 12 * args.width**2 + 13 * args.width  # transformer_shapes' block, in Python ints
    if block > max(2 * max(sizes) * 1e6, 1e8):
        ap.error(f"invalid --width {args.width}: one transformer block of that width holds "
                 f"{block:,} parameters, more than 100M and than twice the largest --sizes "
                 f"({max(sizes):g}M); give a smaller width or a larger size")
    steady = not args.default_malloc and steady_allocator()
    print(f"malloc: {'steady (glibc mallopt: freed memory is kept)' if steady else 'as is'}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.train_only:
        rows = []
        bandwidths = []
        for size in sizes:
            bandwidth = copy_bandwidth(transformer_shapes(size * 1e6, args.width), args.reps)
            bandwidths.append(bandwidth)
            for name in names:
                print(f"  {name} {size:g}M ...", file=sys.stderr, flush=True)
                rows.append(bench_optimizer(name, size, args.reps, bandwidth, args.backend,
                                            args.width))
        print(f"\ntransformer blocks of width {args.width}: "
              f"{len(transformer_shapes(sizes[0] * 1e6, args.width))} tensors at "
              f"{sizes[0]:g}M parameters")
        print_table(rows, min(bandwidths))
    if args.train or args.train_only:
        bench_training(args.reps)
    return 0


def steady_allocator() -> bool:
    """Tell glibc's ``malloc`` to keep freed memory in the process (no heap trimming, a fixed
    32 MiB mmap threshold), as jemalloc or tcmalloc would. By default glibc may hand a freed
    block back to the OS, and the next allocation of it page-faults it in again: torch's
    multi-tensor optimizers allocate full-size temporaries every step (NAdam ran 1.4-2.4x slower
    for it), and a fresh 32 MB gradient costs 8,000 faults, at random rounds and for random
    variants, which swamped the training-step comparison. Applies to every variant alike;
    ``--default-malloc`` measures without it. False where there is no glibc ``mallopt``."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(
        mallopt(m_trim_threshold, 2**31 - 1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_arguments(ap)
    return run(ap.parse_args(argv), ap)


if __name__ == "__main__":
    raise SystemExit(main())
