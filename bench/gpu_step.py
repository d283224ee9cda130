"""Tokens/s of one SAE training step (TopK, BatchTopK, JumpReLU) for saekit, sae-lens and sparsify,
against the encoder's matmul alone, at GPU scale.

    python bench/gpu_step.py --device cuda --dtype bfloat16          # the GPU table (d_in 2304)
    python bench/gpu_step.py --tiny                                  # CPU, seconds: CI keeps it alive

Configs: d_in 2304 (Gemma 2 2B's residual), d_sae 16,384 and 65,536, k 64, batch 4096 (`--tiny`:
d_in 64, d_sae 512, k 8, batch 256). Each implementation runs its library's training forward,
backward and optimiser step on random activations at E||x|| = sqrt(d_in), float32 parameters,
under `--dtype` autocast (bfloat16: what every trainer does on a GPU); no latent is dead (AuxK
inactive), so each row is the architecture's plain step:

- saekit:      the SAE's forward(x), backward, decoder gradient projection, fused Adam, unit-norm
               decoder rows (what `saekit train` does per SAE); `saekit_compiled` adds torch.compile
               (`--compile`; inductor needs a C compiler on CPU).
- sae_lens:    sae-lens's TopK/BatchTopK/JumpReLU `TrainingSAE.training_forward_pass`, backward, Adam.
- sparsify:    eai-sparsify's SparseCoder (TopK only: it has no BatchTopK or JumpReLU), fvu, backward,
               decoder projection, Adam.
- floor:       the encoder's product [batch, d_in] x [d_in, d_sae] alone, in `--dtype`: what any
               exact step must compute; `matmul_fraction` is each row's encoder FLOP rate
               (2 * d_in * d_sae per token) over the device's measured dense matmul rate in that
               dtype (a square product: on a GPU, the card's bf16 rate).

The implementations take turns step by step (a noisy machine slows them alike); each figure is the
median over `--steps` rounds after `--warmup`. Peers that do not import or fail are reported in
`errors` and skipped. Prints a table and writes bench/results/gpu_step.json (`--out`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from saekit.sae import SAEConfig, build_sae, normalize_decoder_, remove_parallel_decoder_grad_

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import _autocast, _sync, floor_step, matmul_rate  # noqa: E402  (the same helpers)

Step = Callable[[Tensor], None]
ARCHITECTURES = ("topk", "batchtopk", "jumprelu")
CONFIGS = {"d2304_s16384": (2304, 16384, 64, 4096), "d2304_s65536": (2304, 65536, 64, 4096)}
TINY = {"tiny": (64, 512, 8, 256)}  # name: (d_in, d_sae, k, batch)
LR = 1e-4


def saekit_step(arch: str, d_in: int, d_sae: int, k: int, device: torch.device, dtype: torch.dtype,
                compile: bool = False) -> Step:
    sae = build_sae(SAEConfig(architecture=arch, d_in=d_in, d_sae=d_sae, k=k)).to(device).train()
    forward = torch.compile(sae) if compile else sae
    opt = torch.optim.Adam(sae.parameters(), lr=LR, fused=True)

    def step(x: Tensor) -> None:
        with _autocast(device, dtype):
            loss = forward(x).loss
        loss.backward()
        remove_parallel_decoder_grad_(sae)
        opt.step()
        opt.zero_grad(set_to_none=True)
        normalize_decoder_(sae)
    return step


def sae_lens_step(arch: str, d_in: int, d_sae: int, k: int, device: torch.device, dtype: torch.dtype) -> Step:
    import sae_lens
    from sae_lens.saes.sae import TrainStepInput

    name = {"topk": "TopK", "batchtopk": "BatchTopK", "jumprelu": "JumpReLU"}[arch]
    config_cls = getattr(sae_lens, f"{name}TrainingSAEConfig")
    kwargs = {"k": k} if arch != "jumprelu" else {}
    sae = getattr(sae_lens, f"{name}TrainingSAE")(config_cls(d_in=d_in, d_sae=d_sae, device=str(device), **kwargs))
    sae = sae.to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=LR, fused=device.type in ("cpu", "cuda"))
    coefficients = {"l0": 1.0} if arch == "jumprelu" else {}

    def step(x: Tensor) -> None:
        with _autocast(device, dtype):
            out = sae.training_forward_pass(TrainStepInput(
                sae_in=x, coefficients=coefficients, dead_neuron_mask=None, n_training_steps=0,
                is_logging_step=False))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def sparsify_step(arch: str, d_in: int, d_sae: int, k: int, device: torch.device, dtype: torch.dtype) -> Step:
    if arch != "topk":
        raise NotImplementedError(f"sparsify has no {arch} SAE")
    with contextlib.redirect_stdout(None):  # its "Triton not installed" notice
        from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=k), device, dtype=torch.float32)
    opt = torch.optim.Adam(sae.parameters(), lr=LR)

    def step(x: Tensor) -> None:
        sae.set_decoder_norm_to_unit_norm()
        with _autocast(device, dtype):
            out = sae(x=x, y=x, dead_mask=None)
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
    return step


def bench_config(shape: tuple[int, int, int, int], args: argparse.Namespace, device: torch.device,
                 dtype: torch.dtype) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """{architecture: {implementation: median tokens/s}} and {row: error} for one config."""
    d_in, d_sae, k, batch = shape
    builders: dict[str, Callable[[], Step]] = {"floor": lambda: floor_step(d_in, d_sae, device, dtype)}
    for arch in args.architectures:
        builders[f"{arch}/saekit"] = lambda a=arch: saekit_step(a, d_in, d_sae, k, device, dtype)
        if args.compile:
            builders[f"{arch}/saekit_compiled"] = lambda a=arch: saekit_step(a, d_in, d_sae, k, device, dtype, True)
        if "sae_lens" not in args.skip:
            builders[f"{arch}/sae_lens"] = lambda a=arch: sae_lens_step(a, d_in, d_sae, k, device, dtype)
        if "sparsify" not in args.skip and arch == "topk":
            builders[f"{arch}/sparsify"] = lambda a=arch: sparsify_step(a, d_in, d_sae, k, device, dtype)
    steps: dict[str, Step] = {}
    errors: dict[str, str] = {}
    for row, build in builders.items():
        try:
            steps[row] = build()
        except Exception as err:  # an optional peer that does not import or build: report and go on
            errors[row] = f"{type(err).__name__}: {err}"
    x = torch.randn(batch, d_in, generator=torch.Generator().manual_seed(0)).to(device)
    seconds: dict[str, list[float]] = {row: [] for row in steps}
    for i in range(args.warmup + args.steps):
        for row, step in list(steps.items()):
            try:
                _sync(device)
                start = time.perf_counter()
                step(x)
                _sync(device)
            except Exception as err:
                errors[row] = f"{type(err).__name__}: {err}"
                del steps[row], seconds[row]
                continue
            if i >= args.warmup:
                seconds[row].append(time.perf_counter() - start)
    table: dict[str, dict[str, float]] = {}
    for row, values in seconds.items():
        arch, _, impl = row.rpartition("/")
        table.setdefault(arch or "floor", {})[impl] = batch / statistics.median(values)
    return table, errors


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--tiny", action="store_true", help="d_in 64, d_sae 512, k 8, batch 256 (CI on CPU)")
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--skip", nargs="*", default=[], choices=["sae_lens", "sparsify"])
    parser.add_argument("--compile", action="store_true", help="also time saekit under torch.compile")
    parser.add_argument("--steps", type=int, default=None, help="timed rounds (default 20; --tiny 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 3; --tiny 1)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu_step.json")
    args = parser.parse_args(argv)
    args.steps = args.steps or (3 if args.tiny else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as `saekit train` sets it
    configs = TINY if args.tiny else CONFIGS
    rate = matmul_rate(device, dtype, 1024 if device.type == "cpu" else 8192)
    result: dict = {
        "device": args.device, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype, "parameters": "float32", "dead_latents": 0, "steps": args.steps, "warmup": args.warmup,
        "torch_version": torch.__version__, "threads": torch.get_num_threads(),
        "load_avg_1min_before": round(os.getloadavg()[0], 2), "matmul_flops_per_s": rate,
        "configs": {}, "errors": {},
    }
    for name, shape in configs.items():
        table, errors = bench_config(shape, args, device, dtype)
        d_in, d_sae, k, batch = shape
        flops_per_token = 2 * d_in * d_sae
        result["configs"][name] = {
            "d_in": d_in, "d_sae": d_sae, "k": k, "batch": batch,
            "tokens_per_s": {arch: {impl: round(v, 1) for impl, v in row.items()} for arch, row in table.items()},
            "matmul_fraction": {arch: {impl: round(v * flops_per_token / rate, 4) for impl, v in row.items()}
                                for arch, row in table.items()},
        }
        result["errors"].update({f"{name}/{row}": err for row, err in errors.items()})
        _print_table(name, shape, table, flops_per_token, rate, args)
    for row, err in result["errors"].items():
        print(f"skipped {row}: {err}")
    result["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


def _print_table(name: str, shape: tuple[int, int, int, int], table: dict[str, dict[str, float]],
                 flops_per_token: int, rate: float, args: argparse.Namespace) -> None:
    d_in, d_sae, k, batch = shape
    floor = table.get("floor", {}).get("floor")
    precision = "float32" if args.dtype == "float32" else f"{args.dtype} autocast, float32 parameters"
    print(f"\n{name}: [{batch}, {d_in}] -> {d_sae} latents, k={k}, {args.device}, {precision}, "
          f"median of {args.steps}; matmul rate {rate / 1e12:.3g} TFLOP/s")
    print(f"| {'architecture':<12} | {'implementation':<16} | {'tokens/s':>12} | {'vs saekit':>9} | "
          f"{'of floor':>8} | {'matmul frac':>11} |")
    print(f"|{'-' * 14}|{'-' * 18}|{'-' * 14}|{'-' * 11}|{'-' * 10}|{'-' * 13}|")
    for arch, row in table.items():
        ref = row.get("saekit")
        for impl, value in row.items():
            vs = f"{value / ref:.2f}" if ref else "-"
            of_floor = f"{value / floor:.2f}" if floor else "-"
            print(f"| {arch:<12} | {impl:<16} | {value:>12,.0f} | {vs:>9} | {of_floor:>8} | "
                  f"{value * flops_per_token / rate:>11.3f} |")


if __name__ == "__main__":
    main()
