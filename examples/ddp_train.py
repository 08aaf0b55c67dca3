"""Data-parallel training with gradguard: DDP, or FSDP2 with ``--fsdp``, launched by torchrun.

An MLP on scikit-learn's digits (1,797 8x8 images, split 75/25). Every process draws the same
global batch and trains on its own slice of it; DDP averages the gradients (FSDP2
reduce-scatters them), and gradguard's clip and non-finite guard see exactly what one process
training on the whole batch would see: the same gradient norm, the same clip, the same skipped
steps, on every rank. On the CPU the processes talk over gloo; with CUDA over NCCL.

    torchrun --nproc-per-node 2 examples/ddp_train.py
    torchrun --nproc-per-node 2 examples/ddp_train.py --fsdp --clip agc:0.02
    torchrun --nproc-per-node 2 examples/ddp_train.py --fsdp --checkpoint /tmp/gg_ckpt

Across machines, start the same command on every node with ``--nnodes N --node-rank I
--rdzv-backend c10d --rdzv-endpoint HOST:PORT`` (see docs/distributed.md). Without torchrun it
runs as a single process.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import gradguard


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fsdp", action="store_true", help="shard with FSDP2 instead of DDP")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64, help="global batch (all ranks together)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--clip", default="zclip:2.5", help="a gradguard clip spec")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--nan-step", type=int, default=150,
                    help="put a NaN into rank 0's batch at this step (-1: never) to show that "
                         "every rank skips it")
    ap.add_argument("--checkpoint", default=None,
                    help="save model and optimizer here with torch.distributed.checkpoint, "
                         "then load them into a fresh optimizer and check the clip state")
    return ap.parse_args()


def setup() -> tuple[int, int, torch.device]:
    if "RANK" not in os.environ:  # not launched by torchrun: one process
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", "29571"))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["WORLD_SIZE"])))
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), device


def make_model() -> nn.Sequential:
    torch.manual_seed(0)  # the same initial parameters on every rank
    return nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(),
                         nn.Linear(128, 10))


def wrap(model: nn.Sequential, fsdp: bool, device: torch.device) -> nn.Module:
    model = model.to(device)
    if not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def main() -> None:
    args = parse_args()
    rank, world, device = setup()
    if args.batch % world:
        raise SystemExit(f"--batch {args.batch} must be divisible by the world size {world}")
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x / 16.0, y, test_size=0.25, random_state=0,
                                              stratify=y)
    x_tr, x_te = (torch.tensor(a, dtype=torch.float32, device=device) for a in (x_tr, x_te))
    y_tr, y_te = (torch.tensor(a, dtype=torch.long, device=device) for a in (y_tr, y_te))

    model = wrap(make_model(), args.fsdp, device)
    # Create the optimizer after wrapping: under FSDP2 its parameters are the sharded ones.
    opt = gradguard.AdamW(model.parameters(), lr=args.lr, clip=args.clip)
    gen = torch.Generator().manual_seed(1)  # the same global batches on every rank
    part = args.batch // world
    start = time.perf_counter()
    for step in range(args.steps):
        idx = torch.randint(0, len(x_tr), (args.batch,), generator=gen)
        idx = idx[rank * part:(rank + 1) * part].to(device)  # this rank's slice
        xb = x_tr[idx].clone()
        if step == args.nan_step and rank == 0:
            xb[0, 0] = math.nan  # a bad input on one rank only
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), y_tr[idx])
        loss.backward()
        opt.step()  # clip and guard: no host read, no extra collective under DDP
        if rank == 0 and (step + 1) % args.log_every == 0:
            rec = opt.last_step
            assert rec is not None
            print(f"step {step + 1:4d}  loss {float(loss.detach()):.4f}  grad_norm "
                  f"{float(rec.grad_norm):.4f}  clipped {int(opt.clipped_steps)}  skipped "
                  f"{int(opt.skipped_steps)}", flush=True)
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        acc = (model(x_te).argmax(1) == y_te).float().mean()
    # every rank holds the same counters and clip state: show it
    counters = torch.stack([opt.clipped_steps, opt.skipped_steps]).to(device)
    gathered = [torch.zeros_like(counters) for _ in range(world)]
    dist.all_gather(gathered, counters)
    if rank == 0:
        print(f"{'FSDP2' if args.fsdp else 'DDP'} on {world} process(es), {device.type}: "
              f"{args.steps} steps in {elapsed:.1f} s, test accuracy {float(acc):.3f}; "
              f"(clipped, skipped) per rank: {[tuple(g.tolist()) for g in gathered]}")
    if args.checkpoint:
        round_trip(model, opt, args, rank)
    dist.destroy_process_group()


def round_trip(model: nn.Module, opt: torch.optim.Optimizer, args: argparse.Namespace,
               rank: int) -> None:
    """Save with torch.distributed.checkpoint, load into a fresh optimizer, compare."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        get_state_dict,
        set_state_dict,
    )

    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=args.checkpoint)
    fresh = gradguard.AdamW(model.parameters(), lr=args.lr, clip=args.clip)
    state = {"model": model_sd, "optim": get_optimizer_state_dict(model, fresh)}
    dcp.load(state, checkpoint_id=args.checkpoint)
    set_state_dict(model, fresh, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    same = all(torch.equal(a, b) for a, b in zip(
        opt.clip.state_dict().values(), fresh.clip.state_dict().values(), strict=True))
    if rank == 0:
        print(f"checkpoint {args.checkpoint}: restored skipped_steps "
              f"{int(fresh.skipped_steps)}, clip state restored: {same}")


if __name__ == "__main__":
    main()
