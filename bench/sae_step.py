"""Tokens/s of one TopK SAE training step (forward + backward + Adam) on this machine.

Same shapes for every implementation, in one run: random activations [tokens, d_in], d_sae latents,
k active, float32, AuxK off (no dead latents), decoder kept unit-norm (not by sae-lens, which has no
such step), Adam with fused=True for all (on CPU about 5x faster than the default per-tensor loop):

- saekit csr:     saekit's TopKSAE, sparse encoder backward and sparse decode on torch CSR (MKL)
- saekit gather:  the same maths on embedding_bag / index_add_ / row gathers
- dense decode:   plain torch, topk then a dense [tokens, d_sae] x [d_sae, d_in] decode, autograd
- sae-lens:       sae_lens TopKTrainingSAE.training_forward_pass (its default dense decode), if importable
- floor:          the encoder's forward product [tokens, d_in] x [d_in, d_sae] alone, which any exact
                  TopK step must compute; it shows how close to the floor a step gets, and how fast
                  this machine was (the 1-minute load average is recorded too: other processes on
                  the same cores slow every row)

The implementations take turns step by step, so that a noisy machine slows them alike; the figure
is the median step time over `--steps` steps after `--warmup` steps.

    python bench/sae_step.py [--tokens 4096] [--d-in 512] [--d-sae 8192] [--k 32] [--steps 20]

Prints a table and writes bench/results/sae_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from saekit.sae import SAEConfig, build_sae, normalize_decoder_, remove_parallel_decoder_grad_

Step = Callable[[Tensor], None]


def saekit_step(d_in: int, d_sae: int, k: int, impl: str) -> Step:
    sae = build_sae(SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=k, sparse_impl=impl))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True)

    def step(x: Tensor) -> None:
        sae(x).loss.backward()
        remove_parallel_decoder_grad_(sae)
        opt.step()
        opt.zero_grad(set_to_none=True)
        normalize_decoder_(sae)
    return step


def dense_step(d_in: int, d_sae: int, k: int) -> Step:
    """The straightforward torch TopK SAE: dense latents, dense decode, autograd everywhere."""
    sae = build_sae(SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=k))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True)

    def step(x: Tensor) -> None:
        pre = torch.addmm(sae.b_enc, x - sae.b_dec, sae.W_enc)
        top_acts, top_indices = pre.topk(k, dim=1)
        latents = torch.zeros_like(pre).scatter(1, top_indices, top_acts.relu())
        recon = latents @ sae.W_dec + sae.b_dec
        fvu = (recon - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        fvu.backward()
        remove_parallel_decoder_grad_(sae)
        opt.step()
        opt.zero_grad(set_to_none=True)
        normalize_decoder_(sae)
    return step


def sae_lens_step(d_in: int, d_sae: int, k: int) -> Step:
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True)

    def step(x: Tensor) -> None:
        out = sae.training_forward_pass(TrainStepInput(
            sae_in=x, coefficients={}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def floor_step(d_in: int, d_sae: int) -> Step:
    """Only the encoder's forward product: no exact TopK step can be faster."""
    W_enc = torch.randn(d_in, d_sae)

    def step(x: Tensor) -> None:
        x @ W_enc
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--d-in", type=int, default=512)
    parser.add_argument("--d-sae", type=int, default=8192)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-sae-lens", action="store_true", help="skip sae-lens (its import takes ~20 s)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sae_step.json")
    args = parser.parse_args()

    torch.manual_seed(0)
    x = torch.randn(args.tokens, args.d_in)
    steps: dict[str, Step] = {
        "saekit_csr": saekit_step(args.d_in, args.d_sae, args.k, "csr"),
        "saekit_gather": saekit_step(args.d_in, args.d_sae, args.k, "gather"),
        "dense_decode": dense_step(args.d_in, args.d_sae, args.k),
    }
    if not args.no_sae_lens:
        try:
            steps["sae_lens"] = sae_lens_step(args.d_in, args.d_sae, args.k)
        except Exception as err:  # optional peer: report and go on
            print(f"sae-lens skipped: {type(err).__name__}: {err}")
    steps["floor_encoder_matmul"] = floor_step(args.d_in, args.d_sae)

    load_before = os.getloadavg()[0]
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(args.warmup + args.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step(x)
            if i >= args.warmup:
                seconds[name].append(time.perf_counter() - start)

    tokens_per_s = {name: args.tokens / statistics.median(s) for name, s in seconds.items()}
    result: dict[str, object] = {
        "tokens": args.tokens, "d_in": args.d_in, "d_sae": args.d_sae, "k": args.k, "dtype": "float32",
        "optimizer": "adam", "aux_k": "off", "steps": args.steps, "warmup": args.warmup,
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch_version": torch.__version__,
        "load_avg_1min_before": round(load_before, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2),
    }
    for name, value in tokens_per_s.items():
        result[f"{name}_tokens_per_s"] = round(value, 1)
    for name, value in tokens_per_s.items():
        if name != "saekit_csr":
            result[f"ratio_saekit_csr_vs_{name}"] = round(tokens_per_s["saekit_csr"] / value, 3)

    print(f"TopK SAE training step: [{args.tokens}, {args.d_in}] -> {args.d_sae} latents, k={args.k}, "
          f"float32, Adam, {torch.get_num_threads()} threads, median of {args.steps} steps, "
          f"load average {result['load_avg_1min_before']} -> {result['load_avg_1min_after']}")
    print(f"| {'implementation':<20} | {'tokens/s':>9} | {'vs saekit_csr':>13} |")
    print(f"|{'-' * 22}|{'-' * 11}|{'-' * 15}|")
    for name, value in tokens_per_s.items():
        print(f"| {name:<20} | {value:>9,.0f} | {value / tokens_per_s['saekit_csr']:>13.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
