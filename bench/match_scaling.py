"""Wall time and peak memory of matching two SAEs of n latents each (d_in 768), exact vs scalable.

Two data cases (one "match" = what `saekit match` does for a pair: a decoder and an encoder assignment):

- planted:  B holds half of A's latents (permuted, with noise on the decoder and, independently, on
            the encoder: matched cosines ~0.8) and fresh random latents for the rest; A's encoder
            directions are its decoder directions plus noise.
- near_tie: SAE-like clustered directions. B's latents come in clusters of CLUSTER near-duplicates
            (cosine ~0.99 to each other); half of A's latents are noisy copies of B latents, the other
            half are drawn from the same clusters. Every row then has ~CLUSTER candidates within ~0.01
            of its best: the hard case for the certificate (floors close to the best, many ties).

- exact:    blockwise cosine matrix, then scipy's linear_sum_assignment on the dense matrix (n^2 * 12 B)
- scalable: saekit.match.assign.sparse_assignment (top-m candidates, sparse matching, streamed dual
            certificate; memory O(n * m) plus one bounded block)

Each (case, n, method) runs in a fresh subprocess. peak_mb is the child's own peak resident memory,
resource.getrusage(RUSAGE_SELF).ru_maxrss: the whole process (Python, torch, the four [n, 768]
direction sets, the match), measured, not estimated; baseline_mb is its resident memory once the
data is built, so match_mb = peak_mb - baseline_mb is what the matching itself added. `agree` (only
where exact ran): both certified, equal shared counts, both totals within n * 1e-6 + 1e-4 (the
certificate's guarantee plus float32 rounding); `same_partner` is the fraction of identical partners.

    python bench/match_scaling.py [--cases planted near_tie] [--sizes 4096 ...] [--exact-max 16384]
    python bench/match_scaling.py --seeds 3 --sizes 32768     # match_saes on 3 SAEs: peak RSS

Prints a table and writes bench/results/match_scaling.json (rows merged into an existing file by
(case, n), so sizes can be run separately, e.g. the largest one in the background).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "match_scaling.json"
D_IN = 768
CLUSTER = 32  # near_tie: B latents per cluster of near-duplicates
CASES = ("planted", "near_tie")


def _rss_mb(field: str) -> float:
    """This process's VmRSS / VmHWM from /proc, MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _maxrss_mb() -> float:
    """Peak resident memory of this process so far (getrusage ru_maxrss, KiB on Linux), MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def planted_pair(n: int, d_in: int = D_IN, seed: int = 0, a=None):
    """(dec_a, enc_a, dec_b, enc_b) unit directions [n, d_in]; B holds A's first n/2 latents, permuted.
    a = (dec_a, enc_a): plant into this A instead of drawing one (several seeds of one reference)."""
    import torch

    from saekit.match.similarity import unit_rows

    g = torch.Generator().manual_seed(seed)

    def noisy(x, scale):
        return unit_rows(x + scale * torch.randn(x.shape, generator=g) / d_in**0.5)

    if a is None:
        dec_a = unit_rows(torch.randn(n, d_in, generator=g))
        enc_a = noisy(dec_a, 0.5)
    else:
        dec_a, enc_a = a
    dec_b = unit_rows(torch.randn(n, d_in, generator=g))
    enc_b = noisy(dec_b, 0.5)
    half = n // 2
    where = torch.randperm(n, generator=g)[:half]
    dec_b[where], enc_b[where] = noisy(dec_a[:half], 0.6), noisy(enc_a[:half], 0.8)
    return dec_a, enc_a, dec_b, enc_b


def near_tie_pair(n: int, d_in: int = D_IN, seed: int = 0, cluster: int = CLUSTER):
    """(dec_a, enc_a, dec_b, enc_b) [n, d_in]: B in clusters of `cluster` near-duplicates (noise 0.1:
    cosine ~0.99 within a cluster); A's first half noisy copies (0.3) of B latents, the rest drawn from
    B's clusters (noise 0.1), so most rows have many candidates within ~0.01 of their best."""
    import torch

    from saekit.match.similarity import unit_rows

    g = torch.Generator().manual_seed(seed)

    def noisy(x, scale):
        return unit_rows(x + scale * torch.randn(x.shape, generator=g) / d_in**0.5)

    centers = unit_rows(torch.randn(max(1, n // cluster), d_in, generator=g))
    dec_b = noisy(centers[torch.arange(n) % len(centers)], 0.1)
    enc_b = noisy(dec_b, 0.3)
    half = n // 2
    copied = torch.randperm(n, generator=g)[:half]
    dec_a = torch.empty_like(dec_b)
    dec_a[:half] = noisy(dec_b[copied], 0.3)
    dec_a[half:] = noisy(centers[torch.randint(len(centers), (n - half,), generator=g)], 0.1)
    enc_a = noisy(dec_a, 0.3)
    return dec_a, enc_a, dec_b, enc_b


def make_pair(case: str, n: int):
    return planted_pair(n) if case == "planted" else near_tie_pair(n)


def child(case: str, n: int, method: str, device: str, candidates: int, partners: str) -> dict:
    """Run one pair match in this process; the result as a dict (printed as JSON by main)."""
    import numpy as np
    import torch

    from saekit.match import match_directions

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    dirs = make_pair(case, n)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline = _rss_mb("VmRSS")
    start = time.perf_counter()
    pair = match_directions(*dirs, method=method, candidates=candidates, device=device)
    seconds = time.perf_counter() - start
    peak = _maxrss_mb()
    np.savez(partners, decoder=pair.decoder.partner, encoder=pair.encoder.partner)
    out = {"case": case, "n": n, "method": method, "seconds": round(seconds, 2), "peak_mb": round(peak, 1),
           "baseline_mb": round(baseline, 1), "match_mb": round(peak - baseline, 1), "n_shared": pair.n_shared(),
           "decoder_total": pair.decoder.total, "encoder_total": pair.encoder.total,
           "certified": bool(pair.decoder.certified and pair.encoder.certified),
           "rounds": [pair.decoder.info.get("rounds"), pair.encoder.info.get("rounds")],
           "recomputed_rows": [sum(p.info.get("recomputed_rows", [])) for p in (pair.decoder, pair.encoder)],
           "largest_block": max(p.info.get("largest_block", 0) for p in (pair.decoder, pair.encoder)),
           "load_average_1min": round(os.getloadavg()[0], 2)}
    if device.startswith("cuda"):
        out["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def seeds_child(n: int, n_seeds: int, device: str, candidates: int) -> dict:
    """match_saes on n_seeds SAEs of n latents, written to a temp dir: SAE k >= 1 holds half of SAE 0's
    latents (noisy, at random positions): pairs 0-k share n/2; pairs j-k hold ~n/4 common latents of SAE 0,
    each noisy twice (cosine mostly under 0.7)."""
    import torch

    from saekit.match import MatchConfig, match_saes
    from saekit.sae import SAEConfig, build_sae, save_sae

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    with tempfile.TemporaryDirectory() as root:
        paths = []
        reference = planted_pair(n, seed=0)[:2]  # SAE 0; SAE k >= 1 holds half of its latents (noisy)
        for k in range(n_seeds):
            cfg = SAEConfig(architecture="topk", d_in=D_IN, d_sae=n, k=32, hook_name="blocks.6.hook_resid_post",
                            seed=k, normalize_activations="none", b_dec_init="zeros")
            sae = build_sae(cfg)
            dec, enc = reference if k == 0 else planted_pair(n, seed=k, a=reference)[2:]
            with torch.no_grad():
                sae.W_dec.copy_(dec)
                sae.W_enc.copy_(enc.t())
            paths.append(str(save_sae(sae, Path(root) / f"topk-{n}-seed{k}")))
            del sae, dec, enc
        del reference
        baseline = _rss_mb("VmRSS")
        start = time.perf_counter()
        summary = match_saes(MatchConfig(saes=paths, out=str(Path(root) / "out"), device=device,
                                         candidates=candidates, figures=False), progress=False)
        seconds = time.perf_counter() - start
    return {"n": n, "seeds": n_seeds, "pairs": len(summary["pairs"]), "seconds": round(seconds, 2),
            "peak_mb": round(_maxrss_mb(), 1), "baseline_mb": round(baseline, 1),
            "n_shared": {k: v["n_shared"] for k, v in summary["pairs"].items()},
            "load_average_1min": round(os.getloadavg()[0], 2)}


def run_child(args: list[str], timeout: float) -> dict:
    """Run this script with `args` in a fresh interpreter; its last stdout line as JSON (or an error)."""
    command = [sys.executable, __file__, *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(exact: dict, scalable: dict, files: tuple[str, str]) -> tuple[bool | None, float | None]:
    """(agree, fraction of identical partners) of an exact and a scalable run; (None, None) if one is missing."""
    import numpy as np

    if "error" in exact or "error" in scalable or exact.get("skipped"):
        return None, None
    slack = exact["n"] * 1e-6 + 1e-4
    close = all(abs(exact[k] - scalable[k]) <= slack for k in ("decoder_total", "encoder_total"))
    with np.load(files[0]) as e, np.load(files[1]) as s:
        same = float(np.mean([(e[k] == s[k]).mean() for k in ("decoder", "encoder")]))
    return bool(close and scalable["certified"] and exact["n_shared"] == scalable["n_shared"]), round(same, 5)


def measure(case: str, n: int, args: argparse.Namespace, tmp: str) -> dict:
    """One table row: exact (if n <= --exact-max) and scalable runs of (case, n), compared."""
    runs, files = {}, {}
    for method in ("exact", "sparse"):
        files[method] = str(Path(tmp) / f"{case}-{n}-{method}.npz")
        if method == "exact" and n > args.exact_max:
            runs[method] = {"case": case, "n": n, "method": "exact", "skipped": f"n > --exact-max {args.exact_max}"}
            continue
        child_args = ["--child", case, str(n), method, files[method], "--device", args.device,
                      "--candidates", str(args.candidates)]
        runs[method] = {"case": case, "n": n, "method": method, **run_child(child_args, args.timeout)}
    agree, same = compare(runs["exact"], runs["sparse"], (files["exact"], files["sparse"]))
    return {"case": case, "n": n, "exact": runs["exact"], "scalable": runs["sparse"], "agree": agree,
            "same_partner": same}


def _cell(r: dict, key: str, width: int) -> str:
    return f"{r[key]:>{width}}" if key in r else f"{'-':>{width}}"


def print_row(row: dict) -> None:
    exact, scalable = row["exact"], row["scalable"]
    print(f"{row['case']:>8} {row['n']:>7} | {_cell(exact, 'seconds', 8)} {_cell(exact, 'peak_mb', 8)} | "
          f"{_cell(scalable, 'seconds', 8)} {_cell(scalable, 'peak_mb', 8)} {_cell(scalable, 'match_mb', 8)} | "
          f"{str(row['agree']):>5} | {scalable.get('n_shared', '-')}/{row['n']} | "
          f"{_cell(scalable, 'load_average_1min', 5)}", flush=True)
    for r in (exact, scalable):
        if "error" in r:
            print(f"         {r['method']}: {r['error']}")


def write(rows: list[dict], args: argparse.Namespace, key: str) -> None:
    """Merge `rows` into args.out under `key` (replacing rows of the same case and n)."""
    path = Path(args.out)
    old = json.loads(path.read_text()) if path.is_file() else {}
    kept = [r for r in old.get(key, []) if "case" in r and (r.get("case"), r["n"]) not in
            {(x.get("case"), x["n"]) for x in rows}]
    result = {**old, "d_in": D_IN, "device": args.device, "candidates": args.candidates,
              "threads": int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)), "cpu_count": os.cpu_count(),
              "machine": platform.processor() or platform.machine(),
              "what": "one pair: decoder + encoder assignment of n x n latents; cases planted and near_tie "
                      "(see bench/match_scaling.py); peak_mb = child's ru_maxrss (whole process)",
              key: sorted(kept + rows, key=lambda r: (r.get("case", ""), r["n"]))}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384, 32768, 65536])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--exact-max", type=int, default=16384, help="largest n run with the exact method")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=0, help="> 0: match_saes on this many SAEs instead")
    parser.add_argument("--timeout", type=float, default=7200, help="seconds per run before it is abandoned")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--child", nargs=4, metavar=("CASE", "N", "METHOD", "PARTNERS"), help=argparse.SUPPRESS)
    parser.add_argument("--seeds-child", type=int, nargs=2, metavar=("N", "SEEDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        case, n, method, partners = args.child
        print(json.dumps(child(case, int(n), method, args.device, args.candidates, partners)))
        return
    if args.seeds_child:
        print(json.dumps(seeds_child(*args.seeds_child, args.device, args.candidates)))
        return
    if args.seeds:
        rows = [{"case": f"seeds{args.seeds}", **run_child(["--seeds-child", str(n), str(args.seeds), "--device",
                                                           args.device, "--candidates", str(args.candidates)],
                                                          args.timeout), "n": n} for n in args.sizes]
        print(json.dumps(rows, indent=2))
        write(rows, args, "multi_seed")
        return

    header = (f"{'case':>8} {'n':>7} | {'exact s':>8} {'peak MB':>8} | {'sparse s':>8} {'peak MB':>8} "
              f"{'match MB':>8} | agree | shared | load")
    print(header + "\n" + "-" * len(header))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            for n in args.sizes:
                rows.append(measure(case, n, args, tmp))
                print_row(rows[-1])
                write(rows[-1:], args, "rows")  # merged after every row: a long run keeps what it measured


if __name__ == "__main__":
    main()
