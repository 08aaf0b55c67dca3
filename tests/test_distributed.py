"""Distributed training: DDP and FSDP2 (``fully_shard``) on two CPU processes (gloo).

Every run is compared with one process training on the same global batch: rank r takes rows
[r*B/2, (r+1)*B/2) of each batch, DDP and FSDP2 average the gradients, so the single-process
loss is the mean over the whole batch. All scenarios run in one pair of processes (started
once for the module, with a deadline; they are killed if it passes) and hand their results
back through files; the tests below check them.
"""

from __future__ import annotations

import copy
import datetime
import math
import os
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import gradguard
from helpers import BATCH, HOST_READS, make_batch, make_model

WORLD = 2
HALF = BATCH // WORLD
STEPS = 50
NAN_STEP = 20
LR = 0.02
DEADLINE_S = 240.0  # for the whole pair of processes; a hang is killed, not waited for
POLICIES = ["global_norm:1", "agc:0.02", "auto:25", "zclip:1.0:alpha=0.5:warmup=3"]
RTOL, ATOL = 2e-4, 2e-5

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not available")


# --------------------------------------------------------------------------------------
# One training run, the same code for one process and for a rank of two
# --------------------------------------------------------------------------------------


def _batch(step: int, rank: int | None, nan: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of ``step`` (rank None) or this rank's half of it; ``nan`` puts a NaN
    in the first input row of rank 1's half."""
    x, y = make_batch(step)
    if nan:
        x[HALF, 0] = math.nan
    if rank is not None:
        x, y = x[rank * HALF:(rank + 1) * HALF], y[rank * HALF:(rank + 1) * HALF]
    return x, y


def _local(t: torch.Tensor) -> torch.Tensor:
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t


@contextmanager
def _count_host_reads(counts: dict[str, int]) -> Iterator[None]:
    """Count calls of the tensor methods that read a value on the host (no pytest here)."""
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def wrap(name: str) -> Callable[..., Any]:
        def counting(*args: Any, **kwargs: Any) -> Any:
            counts[name] = counts.get(name, 0) + 1
            return originals[name](*args, **kwargs)
        return counting

    try:
        for name in HOST_READS:
            setattr(torch.Tensor, name, wrap(name))
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def _train(model: nn.Module, opt: torch.optim.Optimizer, rank: int | None, *,
           steps: int = STEPS, start: int = 0, nan_step: int | None = None,
           poison_shard: bool = False, count_reads: bool = False,
           set_to_none: bool = True) -> dict[str, Any]:
    """Train; return per-step gradient norms and skip flags (as tensors, read at the end)."""
    norms, skipped = [], []
    reads: dict[str, int] = {}
    for t in range(start, start + steps):
        nan = t == nan_step and not poison_shard
        x, y = _batch(t, rank, nan)
        opt.zero_grad(set_to_none=set_to_none)
        F.mse_loss(model(x), y).backward()
        if t == nan_step and poison_shard and rank == 1:
            # a NaN in rank 1's shard of one gradient only: rank 0's shards are all finite
            _local(next(iter(model.parameters())).grad).view(-1)[0] = math.nan
        if count_reads and t >= start + 5:
            with _count_host_reads(reads):
                opt.step()
        else:
            opt.step()
        last = opt.last_step  # type: ignore[attr-defined]
        norms.append(last.grad_norm.detach().clone())
        skipped.append(last.skipped.detach().clone())
    return {"norms": torch.stack(norms), "skipped": torch.stack(skipped), "reads": reads}


def _params(model: nn.Module) -> list[torch.Tensor]:
    out = []
    for p in model.parameters():
        full = getattr(p, "full_tensor", None)
        out.append((full() if full is not None else p).detach().clone())
    return out


def _make_opt(kind: str, model: nn.Module, clip: str) -> torch.optim.Optimizer:
    params = list(model.parameters())
    if kind == "adam":
        return gradguard.Adam(params, lr=LR, clip=clip)
    if kind == "adam-native":
        return gradguard.Adam(params, lr=LR, clip=clip, backend="native")
    if kind == "adam-flat":
        return gradguard.Adam(params, lr=LR, clip=clip, backend="flat")
    if kind == "sgd":
        return gradguard.SGD(params, lr=LR * 5, momentum=0.9, clip=clip)
    if kind == "guard":
        return gradguard.guard(torch.optim.AdamW(params, lr=LR), clip=clip)
    raise ValueError(f"Invalid kind: {kind!r}")


def _clip_state(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    policy = opt.clip  # type: ignore[attr-defined]
    return {k: v.detach().clone() for k, v in policy.state_dict().items()}


# --------------------------------------------------------------------------------------
# The two processes
# --------------------------------------------------------------------------------------


def _fsdp(model: nn.Module, mesh: Any) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    fully_shard(model.fc1, mesh=mesh)
    fully_shard(model.fc2, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _ddp_runs(rank: int) -> dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel as DDP

    out: dict[str, Any] = {}
    for bucket_view in (False, True):
        for clip in POLICIES:
            model = make_model(0)
            ddp = DDP(model, gradient_as_bucket_view=bucket_view)
            opt = _make_opt("adam", model, clip)
            # with bucket views, keep the gradients (accumulated in place in DDP's buckets)
            res = _train(ddp, opt, rank, set_to_none=not bucket_view)
            hooks = opt._hooks  # type: ignore[attr-defined]
            res.update(params=_params(model), clip_state=_clip_state(opt),
                       hook_hits=hooks.hits, hook_records=len(hooks._records))
            out[f"ddp-{bucket_view}-{clip}"] = res
    for clip in POLICIES:  # the flat layout under DDP: plain tensors, so it steps flat
        model = make_model(0)
        opt = _make_opt("adam-flat", model, clip)
        res = _train(DDP(model, gradient_as_bucket_view=True), opt, rank, set_to_none=False)
        res.update(params=_params(model), flat=bool(opt.__dict__.get("_flat")))
        out[f"ddp-flat-{clip}"] = res
    model = make_model(0)
    opt = _make_opt("adam", model, POLICIES[0])
    res = _train(DDP(model), opt, rank, nan_step=NAN_STEP)
    res.update(params=_params(model), skipped_steps=opt.skipped_steps.clone())  # type: ignore
    out["ddp-nan"] = res
    return out


def _fsdp_runs(rank: int, mesh: Any, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    runs = [("adam", clip) for clip in POLICIES] + [
        ("adam-native", POLICIES[0]), ("adam-flat", POLICIES[0]), ("sgd", "norm:0.1"),
        ("guard", POLICIES[0])]
    for kind, clip in runs:
        model = _fsdp(make_model(0), mesh)
        opt = _make_opt(kind, model, clip)
        res = _train(model, opt, rank, count_reads=kind == "adam")
        hooks = getattr(opt, "_hooks", None)
        res.update(params=_params(model), clip_state=_clip_state(opt),
                   hook_hits=hooks.hits if hooks is not None else None,
                   sharded=[type(p).__name__ for p in model.parameters()],
                   flat=bool(opt.__dict__.get("_flat")))
        out[f"fsdp-{kind}-{clip}"] = res
    for poison in (False, True):
        model = _fsdp(make_model(0), mesh)
        opt = _make_opt("adam", model, POLICIES[2])
        res = _train(model, opt, rank, nan_step=NAN_STEP, poison_shard=poison)
        res.update(params=_params(model), skipped_steps=opt.skipped_steps.clone(),  # type: ignore
                   clip_state=_clip_state(opt))
        out[f"fsdp-nan-{'shard' if poison else 'input'}"] = res
    for cls in (gradguard.LAMB, gradguard.LARS):
        model = _fsdp(make_model(0), mesh)
        try:
            cls(model.parameters(), clip=POLICIES[0])
            out[f"fsdp-{cls.__name__}"] = "no error"
        except NotImplementedError as e:
            out[f"fsdp-{cls.__name__}"] = str(e)
    out["fsdp-dcp"] = _checkpoint_round_trip(rank, mesh, tmp)
    return out


def _checkpoint_round_trip(rank: int, mesh: Any, tmp: Path) -> dict[str, Any]:
    """Train 10 steps, save model and optimizer with torch.distributed.checkpoint, train 5
    more; a fresh model and optimizer (other initial values) load the checkpoint and train the
    same 5 steps. Both must end equal, clip state and counters included."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    def make(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
        model = _fsdp(make_model(seed), mesh)
        groups = [{"params": [model.fc1.weight, model.fc1.bias], "clip": "zclip:1.0:warmup=3"},
                  {"params": [model.fc2.weight, model.fc2.bias]}]
        return model, gradguard.AdamW(groups, lr=LR, clip="auto:50")

    model, opt = make(0)
    _train(model, opt, rank, steps=10, nan_step=4)  # one skipped step: counters are not zero
    path = tmp / "checkpoint"
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
             checkpoint_id=str(path))
    saved_extras = copy.deepcopy(
        {k: v for k, v in opt.state_dict()["gradguard"].items() if k != "fresh"})
    _train(model, opt, rank, steps=5, start=10)

    fresh_model, fresh_opt = make(7)
    template = {"model": get_model_state_dict(fresh_model),
                "optim": get_optimizer_state_dict(fresh_model, fresh_opt)}
    # building the template ran torch's state-creating step (lr 0, zero gradients): it must
    # leave no trace in the clip history
    template_clip = _clip_state(fresh_opt)
    dcp.load(template, checkpoint_id=str(path))
    set_model_state_dict(fresh_model, template["model"])
    set_optimizer_state_dict(fresh_model, fresh_opt, template["optim"])
    loaded_extras = {k: v for k, v in fresh_opt.state_dict()["gradguard"].items()
                     if k != "fresh"}
    _train(fresh_model, fresh_opt, rank, steps=5, start=10)
    return {"params": _params(model), "restored_params": _params(fresh_model),
            "extras": saved_extras, "restored_extras": loaded_extras,
            "final": opt.state_dict()["gradguard"], "restored_final":
            fresh_opt.state_dict()["gradguard"], "template_clip": template_clip}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    out = Path(out_dir)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=90))
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        results = _ddp_runs(rank)
        results.update(_fsdp_runs(rank, mesh, out))
        torch.save(results, out / f"rank{rank}.pt")
    except BaseException:
        (out / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def _spawn(out_dir: Path) -> float:
    """Run both ranks; kill them if they outlive the deadline. Returns the seconds taken."""
    import torch.multiprocessing as mp

    start = time.monotonic()
    ctx = mp.start_processes(_worker, args=(str(out_dir / "init"), str(out_dir)),
                             nprocs=WORLD, join=False, start_method="spawn")
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() - start > DEADLINE_S:
                raise TimeoutError(f"the two processes ran past {DEADLINE_S} s")
    except BaseException as e:
        errors = [f.read_text() for f in sorted(out_dir.glob("rank*.err"))]
        raise AssertionError(f"distributed workers failed: {e}\n" + "\n".join(errors)) from e
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()
            proc.join(timeout=10)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out_dir = tmp_path_factory.mktemp("distributed")
    os.environ.setdefault("GRADGUARD_BACKEND", "eager")
    _spawn(out_dir)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


# --------------------------------------------------------------------------------------
# Single-process references
# --------------------------------------------------------------------------------------

_REFS: dict[tuple[str, str, int | None], dict[str, Any]] = {}


def _reference(kind: str, clip: str, nan_step: int | None = None) -> dict[str, Any]:
    key = (kind, clip, nan_step)
    if key not in _REFS:
        model = make_model(0)
        opt = _make_opt(kind, model, clip)
        res = _train(model, opt, None, nan_step=nan_step)
        res.update(params=_params(model), clip_state=_clip_state(opt),
                   skipped_steps=opt.skipped_steps.clone(),  # type: ignore[attr-defined]
                   clipped_steps=opt.clipped_steps.clone())  # type: ignore[attr-defined]
        _REFS[key] = res
    return _REFS[key]


def _assert_close(actual: list[torch.Tensor], expected: list[torch.Tensor], what: str) -> None:
    assert len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        torch.testing.assert_close(a, e, rtol=RTOL, atol=ATOL,
                                   msg=lambda m, i=i: f"{what}, tensor {i}: {m}")


def _assert_same_on_every_rank(ranks: list[dict[str, Any]], key: str, field: str) -> None:
    a, b = ranks[0][key][field], ranks[1][key][field]
    if isinstance(a, dict):
        assert a.keys() == b.keys(), f"{key}/{field}: keys differ"
        for k in a:
            assert torch.equal(a[k], b[k]), f"{key}/{field}/{k} differs between ranks"
    else:
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), \
            f"{key}/{field} differs between ranks"


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------

DDP_KEYS = [f"ddp-{bv}-{clip}" for bv in (False, True) for clip in POLICIES]
FSDP_RUNS = [("adam", clip) for clip in POLICIES] + [
    ("adam-native", POLICIES[0]), ("adam-flat", POLICIES[0]), ("sgd", "norm:0.1"),
    ("guard", POLICIES[0])]


@pytest.mark.parametrize("key", DDP_KEYS)
def test_ddp_matches_one_process(ranks: list[dict[str, Any]], key: str) -> None:
    """DDP (both gradient_as_bucket_view settings): after 50 steps, the parameters and every
    step's reported gradient norm equal those of one process on the whole batch."""
    clip = key.split("-", 2)[2]
    ref = _reference("adam", clip)
    for r in range(WORLD):
        _assert_close(ranks[r][key]["params"], ref["params"], f"{key} rank {r} params")
        _assert_close([ranks[r][key]["norms"]], [ref["norms"]], f"{key} rank {r} grad norms")
    # not trivially equal: the policy did clip in the reference run
    assert int(ref["clipped_steps"]) > 0


@pytest.mark.parametrize("clip", POLICIES)
def test_ddp_flat_matches_one_process(ranks: list[dict[str, Any]], clip: str) -> None:
    """DDP's gradients (views of its buckets) on the flat layout: the same parameters and
    gradient norms as one process on the per-tensor reference."""
    key = f"ddp-flat-{clip}"
    ref = _reference("adam", clip)
    for r in range(WORLD):
        assert ranks[r][key]["flat"], f"{key} rank {r} did not step flat"
        _assert_close(ranks[r][key]["params"], ref["params"], f"{key} rank {r} params")
        _assert_close([ranks[r][key]["norms"]], [ref["norms"]], f"{key} rank {r} grad norms")


def test_fsdp2_keeps_the_per_tensor_path(ranks: list[dict[str, Any]]) -> None:
    """backend="flat" under FSDP2: sharded parameters (DTensors) are never laid flat."""
    for r in range(WORLD):
        assert not ranks[r][f"fsdp-adam-flat-{POLICIES[0]}"]["flat"]


@pytest.mark.parametrize("key", DDP_KEYS)
def test_ddp_hooks_leave_plain_gradients_to_the_step(ranks: list[dict[str, Any]],
                                                     key: str) -> None:
    """Hooks fire before DDP's all-reduce: under more than one process they measure nothing
    for plain gradients (no record is made), so no norm of a local, unreduced gradient can be
    used; the step measures the reduced gradients once."""
    for r in range(WORLD):
        assert ranks[r][key]["hook_records"] == 0 and ranks[r][key]["hook_hits"] == 0


@pytest.mark.parametrize(("kind", "clip"), FSDP_RUNS)
def test_fsdp2_matches_one_process(ranks: list[dict[str, Any]], kind: str, clip: str) -> None:
    """FSDP2 (parameters sharded along dim 0, unevenly for the 3-row layer): the same
    parameters and reported gradient norms as one process, on every rank."""
    key = f"fsdp-{kind}-{clip}"
    assert ranks[0][key]["sharded"] == ["DTensor"] * 4
    ref = _reference(kind, clip)
    for r in range(WORLD):
        _assert_close(ranks[r][key]["params"], ref["params"], f"{key} rank {r} params")
        _assert_close([ranks[r][key]["norms"]], [ref["norms"]], f"{key} rank {r} grad norms")


@pytest.mark.parametrize("clip", POLICIES)
def test_fsdp2_uses_hook_norms_and_reads_nothing_on_the_host(ranks: list[dict[str, Any]],
                                                             clip: str) -> None:
    """FSDP2 runs a sharded parameter's hooks after the reduce-scatter: the norms measured
    there are used (and are exact, by the test above); a healthy step reads nothing on the
    host."""
    key = f"fsdp-adam-{clip}"
    for r in range(WORLD):
        assert ranks[r][key]["hook_hits"] > 0
        assert ranks[r][key]["reads"] == {}, ranks[r][key]["reads"]


@pytest.mark.parametrize("key", [f"ddp-{bv}-{c}" for bv in (False, True) for c in POLICIES[2:]]
                         + [f"fsdp-adam-{c}" for c in POLICIES[2:]])
def test_adaptive_state_is_identical_on_every_rank(ranks: list[dict[str, Any]],
                                                   key: str) -> None:
    """AutoClip's history and ZClip's statistics are bitwise the same on both ranks, and
    they are those of the single-process run."""
    _assert_same_on_every_rank(ranks, key, "clip_state")
    state = ranks[0][key]["clip_state"]
    ref = _reference("adam", key.rsplit("-", 1)[1])["clip_state"]
    assert state.keys() == ref.keys() and state
    for k in state:
        torch.testing.assert_close(state[k], ref[k], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("key", ["ddp-nan", "fsdp-nan-input", "fsdp-nan-shard"])
def test_nan_on_one_rank_skips_on_every_rank(ranks: list[dict[str, Any]], key: str) -> None:
    """A NaN on rank 1 only (in its input, or written into its gradient shard after
    backward): both ranks skip that step and only that one, nobody hangs, and training goes on
    to the single-process result with the step skipped."""
    clip = POLICIES[0] if key == "ddp-nan" else POLICIES[2]
    ref = _reference("adam", clip, NAN_STEP)
    assert int(ref["skipped_steps"]) == 1
    for r in range(WORLD):
        res = ranks[r][key]
        assert int(res["skipped_steps"]) == 1, (key, r)
        assert res["skipped"].nonzero().flatten().tolist() == [NAN_STEP], (key, r)
        assert torch.isfinite(res["norms"][NAN_STEP + 1:]).all()
        _assert_close(res["params"], ref["params"], f"{key} rank {r} params")
    if key != "ddp-nan":
        _assert_same_on_every_rank(ranks, key, "clip_state")


@pytest.mark.parametrize("name", ["LAMB", "LARS"])
def test_trust_ratio_optimizers_refuse_sharded_parameters(ranks: list[dict[str, Any]],
                                                          name: str) -> None:
    message = ranks[0][f"fsdp-{name}"]
    assert "does not support sharded parameters (FSDP2)" in message
    assert "params[0] (shape (12, 6))" in message and "Shard(dim=0)" in message


def test_distributed_checkpoint_round_trip(ranks: list[dict[str, Any]]) -> None:
    """get/set_optimizer_state_dict with dcp.save/dcp.load under FSDP2: a fresh optimizer
    resumes exactly, with the clip policies' state (optimizer-level AutoClip and a group's
    ZClip) and the counters."""
    for r in range(WORLD):
        res = ranks[r]["fsdp-dcp"]
        _assert_close(res["restored_params"], res["params"], f"rank {r} params after resume")
        for a, b in zip(res["restored_params"], res["params"], strict=True):
            assert torch.equal(a, b)
        saved, loaded = res["extras"], res["restored_extras"]
        assert int(saved["skipped_steps"]) == 1 and int(saved["clip"]["count"]) == 9
        for key in ("clipped_steps", "skipped_steps", "consecutive_skips"):
            assert torch.equal(loaded[key], saved[key]), key
        for key, value in saved["clip"].items():
            assert torch.equal(loaded["clip"][key], value), key
        assert saved["group_clip"].keys() == loaded["group_clip"].keys() == {0}
        for key, value in saved["group_clip"][0].items():
            assert torch.equal(loaded["group_clip"][0][key], value), key
        assert int(res["restored_final"]["clip"]["count"]) == 14
        assert int(res["template_clip"]["count"]) == 0  # torch's state-creating step: no trace


# --------------------------------------------------------------------------------------
# The pieces that make distributed checkpoints work, in one process
# --------------------------------------------------------------------------------------


def test_entry_carried_in_the_param_groups_is_loaded() -> None:
    """What get/set_optimizer_state_dict hand back: no top-level "gradguard", the entry in
    param_groups[0] as a 1-tuple. It is loaded, and the live param groups do not keep it."""
    model = make_model(0)
    opt = gradguard.Adam(model.parameters(), lr=LR, clip="auto:25")
    _train(model, opt, None, steps=6, nan_step=2)
    sd = opt.state_dict()
    assert "gradguard" not in sd["param_groups"][0]  # single process: groups hold hparams only
    sd["param_groups"][0]["gradguard"] = (sd.pop("gradguard"),)
    fresh = gradguard.Adam(make_model(1).parameters(), lr=LR, clip="auto:25")
    fresh.load_state_dict(sd)
    assert int(fresh.skipped_steps) == 1 and int(fresh.clipped_steps) == int(opt.clipped_steps)
    for key, value in opt.clip.state_dict().items():  # type: ignore[union-attr]
        assert torch.equal(fresh.clip.state_dict()[key], value), key  # type: ignore[union-attr]
    assert "gradguard" not in fresh.param_groups[0]


def test_a_step_that_can_change_nothing_leaves_no_trace() -> None:
    """lr 0 and zero gradients (torch's state-creating step in get_optimizer_state_dict):
    state is created at its initial values, nothing is counted, the clip history is empty. A
    real gradient at lr 0 does enter the history."""
    model = make_model(0)
    opt = gradguard.Adam(model.parameters(), lr=0.0, clip="auto:25")
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert len(opt.state) == 4 and all(int(s["step"]) == 0 for s in opt.state.values())
    assert int(opt.skipped_steps) == 0 and not bool(opt.last_step.skipped)  # type: ignore
    assert int(opt.clip.state_dict()["count"]) == 0  # type: ignore[union-attr]
    _train(model, opt, None, steps=1)
    assert int(opt.clip.state_dict()["count"]) == 1  # type: ignore[union-attr]
    assert all(int(s["step"]) == 1 for s in opt.state.values())
