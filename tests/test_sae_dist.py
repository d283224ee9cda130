"""BatchTopK across ranks (gloo, CPU): 2 ranks, each with half of a batch, keep exactly the latents
and move the threshold exactly as 1 process with the whole batch, eager and compiled.
(tests/test_train.py runs whole `torchrun` trainings; this checks the selection itself, quickly.)"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from saekit.sae import SAEConfig, build_sae

CFG = SAEConfig(architecture="batchtopk", d_in=16, d_sae=128, k=4, k_aux=8)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0)) * 2
    x[5] *= 4  # one token holds many of the batch's top entries (all on rank 0)
    return x, torch.arange(128) % 9 == 0


def forward(sae, x: torch.Tensor, dead: torch.Tensor, compile: bool):
    step = torch.compile(sae, backend="aot_eager", fullgraph=True) if compile else sae
    out = step(x, dead_mask=dead)
    out.loss.backward()
    return out


def _rank(rank: int, world: int, port: int, out_dir: str, compile: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, dead = batch()
        rows = x.shape[0] // world
        sae = build_sae(CFG).train()
        out = forward(sae, x[rank * rows:(rank + 1) * rows], dead, compile)
        torch.save({"dense": out.dense_latents(CFG.d_sae).detach(), "threshold": sae.threshold.clone()},
                   os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["eager", "compiled"])
def test_two_ranks_keep_the_global_batch_top_k_like_one_process(tmp_path, compile):
    x, dead = batch()
    sae = build_sae(CFG).train()
    out = forward(sae, x, dead, compile=False)
    want = out.dense_latents(CFG.d_sae).detach()
    mp.spawn(_rank, args=(2, _free_port(), str(tmp_path), compile), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    got = torch.cat([p["dense"] for p in parts])
    assert (want > 0).sum() == 64 * 4  # the batch's k*B, shared unevenly between the two halves
    assert (want[:32] > 0).sum() != (want[32:] > 0).sum()
    assert torch.equal(got > 0, want > 0)
    assert torch.allclose(got, want, atol=1e-6)
    for p in parts:  # both ranks hold the global threshold (the smallest kept activation)
        assert torch.equal(p["threshold"], sae.threshold)
