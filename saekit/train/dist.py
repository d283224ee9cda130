"""Data-parallel helpers for `torchrun -m saekit train`: each rank takes a disjoint slice of every
global batch, gradients are averaged across ranks, and loss normalisers that depend on the whole
batch (the FVU's total variance) are computed over the global batch, so a run on N ranks follows
the single-process run with the same global batch to float tolerance.

Without torchrun (no WORLD_SIZE in the environment) every function here is a no-op.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, this rank's device); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def local_slice(n_rows: int, rank: int, world: int) -> slice:
    """This rank's rows of a global batch of n_rows (n_rows divisible by world)."""
    per = n_rows // world
    return slice(rank * per, (rank + 1) * per)


def global_total_variance(x: torch.Tensor) -> torch.Tensor:
    """sum over rows and dims of (x - mean over the global batch)^2, x [local rows, d] on each rank."""
    n = torch.tensor([float(x.shape[0])], device=x.device, dtype=torch.float64)
    sums = x.double().sum(dim=0)
    squares = x.double().pow(2).sum().reshape(1)
    if is_distributed():
        packed = torch.cat([n, squares, sums])
        dist.all_reduce(packed)
        n, squares, sums = packed[:1], packed[1:2], packed[2:]
    return (squares - sums.pow(2).sum() / n).squeeze(0).to(x.dtype)


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average .grad across ranks in one flat all-reduce (missing grads count as zero)."""
    if not is_distributed():
        return
    world = dist.get_world_size()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        # empty_like keeps the parameter's strides: fused Adam reads param, grad and moments as one
        # memory layout (W_enc is stored transposed).
        p.grad = torch.empty_like(p).copy_(flat[offset:offset + n].view(p.shape))
        offset += n


def any_across_ranks(mask: torch.Tensor) -> torch.Tensor:
    """Elementwise OR of a bool tensor over ranks."""
    if not is_distributed():
        return mask
    as_int = mask.to(torch.int32)
    dist.all_reduce(as_int, op=dist.ReduceOp.MAX)
    return as_int.bool()


def average_buffer_(tensor: torch.Tensor) -> None:
    """Average a buffer in place across ranks."""
    if is_distributed():
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()


def barrier() -> None:
    if is_distributed():
        dist.barrier()
