"""Wall time and peak memory of matching two SAEs of n latents each (d_in 768), exact vs scalable.

The pair is SAE-like and planted: B holds half of A's latents (permuted, with noise on the decoder
and, independently, on the encoder: matched cosines ~0.8) and fresh random latents for the rest;
A's encoder directions are its decoder directions plus noise. One "match" is what `saekit match`
does for a pair: a decoder assignment and an encoder assignment.

- exact:    blockwise cosine matrix, then scipy's linear_sum_assignment on the dense matrix
- scalable: top-m candidates per row and column, min_weight_full_bipartite_matching on the sparse
            graph, the dual certificate and its repair rounds (saekit.match.assign.sparse_assignment)

Each (n, method) runs in a fresh subprocess; peak MB is the process's peak resident memory (VmHWM)
minus its resident memory once the data is built. `agree`: same shared latents (count) and total
cosine within 1e-4 relative for both assignments (only where exact ran).

    python bench/match_scaling.py [--sizes 1024 2048 ...] [--exact-max 16384] [--device cpu]

Prints a table and writes bench/results/match_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "match_scaling.json"
D_IN = 768


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def planted_pair(n: int, d_in: int = D_IN, seed: int = 0):
    """(dec_a, enc_a, dec_b, enc_b) unit directions [n, d_in]; B holds A's first n/2 latents, permuted."""
    import torch

    from saekit.match.similarity import unit_rows

    g = torch.Generator().manual_seed(seed)

    def noisy(x, scale):
        return unit_rows(x + scale * torch.randn(x.shape, generator=g) / d_in**0.5)

    dec_a = unit_rows(torch.randn(n, d_in, generator=g))
    enc_a = noisy(dec_a, 0.5)
    dec_b = unit_rows(torch.randn(n, d_in, generator=g))
    enc_b = noisy(dec_b, 0.5)
    half = n // 2
    where = torch.randperm(n, generator=g)[:half]
    dec_b[where], enc_b[where] = noisy(dec_a[:half], 0.6), noisy(enc_a[:half], 0.8)
    return dec_a, enc_a, dec_b, enc_b


def child(n: int, method: str, device: str, candidates: int) -> dict:
    """Run one match in this process; the result as a dict (printed as JSON by main)."""
    import torch

    from saekit.match import match_directions

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    dirs = planted_pair(n)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = _rss_mb("VmRSS")
    start = time.perf_counter()
    pair = match_directions(*dirs, method=method, candidates=candidates, device=device)
    seconds = time.perf_counter() - start
    out = {"n": n, "method": method, "seconds": round(seconds, 2), "peak_mb": round(_rss_mb("VmHWM") - before, 1),
           "n_shared": pair.n_shared(), "decoder_total": pair.decoder.total, "encoder_total": pair.encoder.total,
           "certified": bool(pair.decoder.certified and pair.encoder.certified),
           "rounds": [pair.decoder.info.get("rounds"), pair.encoder.info.get("rounds")]}
    if device.startswith("cuda"):
        out["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def run_child(n: int, method: str, device: str, candidates: int, timeout: float) -> dict:
    command = [sys.executable, __file__, "--child", str(n), method, "--device", device,
               "--candidates", str(candidates)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"n": n, "method": method, "error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"n": n, "method": method, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def agree(exact: dict, scalable: dict) -> bool | None:
    if "error" in exact or "error" in scalable or exact.get("skipped"):
        return None
    close = all(abs(exact[k] - scalable[k]) <= 1e-4 * abs(exact[k]) for k in ("decoder_total", "encoder_total"))
    return bool(close and exact["n_shared"] == scalable["n_shared"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    parser.add_argument("--exact-max", type=int, default=16384, help="largest n run with the exact method")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run before it is abandoned")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--child", nargs=2, metavar=("N", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1], args.device, args.candidates)))
        return

    rows = []
    header = f"{'n':>7} | {'exact s':>9} {'exact MB':>9} | {'scalable s':>10} {'scalable MB':>11} | agree | shared"
    print(header + "\n" + "-" * len(header))
    for n in args.sizes:
        exact = (run_child(n, "exact", args.device, args.candidates, args.timeout) if n <= args.exact_max
                 else {"n": n, "method": "exact", "skipped": f"n > --exact-max {args.exact_max}"})
        scalable = run_child(n, "sparse", args.device, args.candidates, args.timeout)
        row = {"n": n, "exact": exact, "scalable": scalable, "agree": agree(exact, scalable)}
        rows.append(row)

        def cell(r: dict, key: str, width: int) -> str:
            return f"{r[key]:>{width}}" if key in r else f"{'-':>{width}}"
        print(f"{n:>7} | {cell(exact, 'seconds', 9)} {cell(exact, 'peak_mb', 9)} | "
              f"{cell(scalable, 'seconds', 10)} {cell(scalable, 'peak_mb', 11)} | {str(row['agree']):>5} | "
              f"{scalable.get('n_shared', '-')}/{n}", flush=True)
        for r in (exact, scalable):
            if "error" in r:
                print(f"        {r['method']}: {r['error']}")
    result = {"d_in": D_IN, "device": args.device, "candidates": args.candidates,
              "threads": int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)), "cpu_count": os.cpu_count(),
              "load_average_1min": os.getloadavg()[0], "machine": platform.processor() or platform.machine(),
              "what": "one pair: decoder + encoder assignment of n x n latents, half planted",
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
