"""Tokens/s `ActivationStore` delivers, against a bare memcpy of the same bytes; and how well it mixes.

1. Throughput, per row (d_in 768 and 2304; float32 and bfloat16 caches; delivered as the cache's
   dtype, and bfloat16 also as float32, the trainer's dtype): a synthetic cache written with
   `write_array_cache` (ctx_len 128, `--shard-contexts` contexts a shard, so many shards), read by
   the store as `saekit train` reads it (batch 4096, shuffled, `reuse_buffers`; pinned buffers where
   CUDA exists, else ordinary memory), timed by a consumer that only takes each batch:

   - `store`: the store as the trainer runs it (a producer thread gathers ahead, queue of 2), once
     its pages are mapped (after its first epoch, timed on its own as `*_first_epoch_*`: mapping
     each page of the shards on first touch makes the first epoch slower);
   - `store_sync`: `prefetch=False`, the gather on the consumer's thread (its cost alone);
   - `memcpy`: `np.copyto` of a [4096, d_in] block of the delivered dtype from an in-memory array
     into one reused buffer: moving the same bytes once, with no gather;
   - `previous` (with `--previous PATH`, a copy of the first store's saekit/data/store.py, e.g.
     `git show 8f8d857:saekit/data/store.py > /tmp/previous_store.py`): that store on the same cache.

   The three (four) take turns `--repeats` times, so that other jobs on the machine slow them
   alike; each figure is the median. The cache was just written, so it is in the page cache (a
   cache larger than RAM reads at the disk's speed instead).

2. Mixing: distinct shards and contexts that 1, 8 and 256 consecutive batches touch (256 batches of
   4096 = 1M tokens), for the store's plan and for the first store's (whole shards read
   `buffer_shards` = 4 at a time, their rows shuffled), both on the geometry of the issue: 1,024
   shards of 1,024 contexts of 128 tokens (134M tokens; index arithmetic only, nothing is read).

The machine is shared: the 1-minute load average is recorded at the start, after each row, and at
the end.

    python bench/store_throughput.py [--repeats 3] [--tokens 1000000] [--previous /tmp/previous_store.py]

Prints a table and writes bench/results/store_throughput.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saekit.data import ActivationStore, write_array_cache
from saekit.data.order import EpochPlan, mixing

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
GOAL = {"d_in": 2304, "cache_dtype": "float32", "min_tokens_per_s": 1_000_000, "min_fraction_of_memcpy": 0.5}


def make_cache(root: Path, d_in: int, dtype: str, n_contexts: int, shard_contexts: int, ctx_len: int) -> Path:
    out = root / f"cache_{d_in}_{dtype}"
    acts = torch.randn(n_contexts, ctx_len, d_in, generator=torch.Generator().manual_seed(d_in))
    write_array_cache(out, {"h": acts}, contexts_per_shard=shard_contexts, dtype=dtype)
    return out


def time_batches(stream: Any, tokens: int) -> float:
    """Tokens/s of a consumer that takes batches from `stream` until it has `tokens`."""
    n, start = 0, time.perf_counter()
    while n < tokens:
        n += len(next(stream))
    return n / (time.perf_counter() - start)


def time_memcpy(d_in: int, dtype: torch.dtype, batch: int, tokens: int, pinned: bool) -> float:
    """Tokens/s of copying [batch, d_in] blocks of `dtype` from memory into one reused buffer."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    source = np.random.default_rng(0).integers(0, 255, size=(8 * batch, d_in * itemsize), dtype=np.uint8)
    target = torch.empty(batch, d_in * itemsize, dtype=torch.uint8, pin_memory=pinned).numpy()
    np.copyto(target, source[:batch])
    n, i, start = 0, 0, time.perf_counter()
    while n < tokens:
        np.copyto(target, source[(i % 8) * batch:(i % 8 + 1) * batch])
        n, i = n + batch, i + 1
    return n / (time.perf_counter() - start)


def previous_plan_keys(spans: list[tuple[int, int, int]], ctx_len: int, batch: int, buffer_shards: int,
                       seed: int, n_rows: int) -> np.ndarray:
    """The first `n_rows` keys of the first store's epoch 0 (its `_plan`, without reading anything)."""
    rng = np.random.default_rng([seed, 0])
    order = rng.permutation(len(spans))
    positions = np.arange(1, ctx_len)
    leftover, out, got = np.zeros(0, np.int64), [], 0
    for start in range(0, len(order), buffer_shards):
        ids = [int(s) for s in order[start:start + buffer_shards]]
        rows = np.concatenate([leftover] + [(np.int64(s) << 32) | (np.arange(spans[s][1], spans[s][2])[:, None]
                                            * ctx_len + positions[None, :]).reshape(-1) for s in ids])
        rows = rows[rng.permutation(len(rows))]
        n_full = len(rows) // batch * batch
        out.append(rows[:n_full])
        leftover = rows[n_full:]
        got += n_full
        if got >= n_rows:
            break
    return np.concatenate(out)[:n_rows]


def mixing_at_scale(batch: int, runs: int) -> list[dict[str, Any]]:
    """Distinct shards / contexts in runs of consecutive batches: the first store's plan and this one's."""
    n_shards, per, ctx_len = 1024, 1024, 128
    spans = [(i, 0, per) for i in range(n_shards)]
    plan = EpochPlan(spans, ctx_len, True, batch, 0, True, 4 * per, 64, True)
    rows = []
    for n_batches in (1, 8, 256):
        keys = previous_plan_keys(spans, ctx_len, batch, 4, 0, n_batches * batch * runs)
        shards, contexts = [], []
        for r in range(runs):
            run = keys[r * n_batches * batch:(r + 1) * n_batches * batch]
            shards.append(len(np.unique(run >> 32)))
            contexts.append(len(np.unique(run // ctx_len)))
        new = mixing(plan, list(range(n_shards)), n_batches, max_runs=runs)
        rows.append({"consecutive_batches": n_batches, "tokens": n_batches * batch,
                     "previous_distinct_shards": float(np.mean(shards)),
                     "previous_distinct_contexts": float(np.mean(contexts)),
                     "store_distinct_shards": new["mean_distinct_shards"],
                     "store_distinct_contexts": new["mean_distinct_contexts"]})
    return rows


def load_previous(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("previous_store", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ActivationStore


def measure_row(cache: Path, d_in: int, cache_dtype: str, out_dtype: str, args: argparse.Namespace,
                pinned: bool, previous: Any) -> dict[str, Any]:
    """One table row. Each store is built once, as a training run builds it: its first epoch is timed
    alone (it maps the shards' pages on first touch), then the stores and the memcpy take turns
    `args.repeats` times (medians)."""
    common = dict(batch_size=args.batch_size, seed=0, dtype=DTYPES[out_dtype])
    stores = {"store": ActivationStore(cache, "h", reuse_buffers=True, pin_memory=pinned, **common),
              "store_sync": ActivationStore(cache, "h", reuse_buffers=True, pin_memory=pinned, prefetch=False,
                                            **common)}
    if previous is not None:
        stores["previous"] = previous(cache, "h", **common)
    tokens = {name: args.tokens // (8 if name == "previous" else 1) for name in stores}
    row: dict[str, Any] = {"d_in": d_in, "cache_dtype": cache_dtype, "delivered_dtype": out_dtype}
    streams = {name: store.iter_batches() for name, store in stores.items()}
    try:
        for name, store in stores.items():
            row[f"{name}_first_epoch_tokens_per_s"] = round(time_batches(streams[name], store.n_tokens))
        times: dict[str, list[float]] = {name: [] for name in [*stores, "memcpy"]}
        for _ in range(args.repeats):
            times["memcpy"].append(time_memcpy(d_in, DTYPES[out_dtype], args.batch_size, args.tokens, pinned))
            for name in stores:
                times[name].append(time_batches(streams[name], tokens[name]))
    finally:
        for stream in streams.values():
            stream.close()
    row.update({f"{name}_tokens_per_s": round(statistics.median(t)) for name, t in times.items()})
    row["store_fraction_of_memcpy"] = round(row["store_tokens_per_s"] / row["memcpy_tokens_per_s"], 3)
    row["load_after"] = os.getloadavg()[0]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-ins", type=int, nargs="+", default=[768, 2304])
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--contexts", type=int, default=1024, help="contexts of each cache (128 tokens each)")
    parser.add_argument("--shard-contexts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=600_000, help="tokens timed per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--previous", default="", help="a copy of the first store's store.py, to time it too")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "store_throughput.json"))
    args = parser.parse_args()

    pinned = torch.cuda.is_available()
    previous = load_previous(args.previous) if args.previous else None
    load = {"start": os.getloadavg()[0]}
    root = Path(tempfile.mkdtemp(prefix="saekit-store-bench-"))
    rows = []
    try:
        for d_in in args.d_ins:
            for cache_dtype, delivered in (("float32", ["float32"]), ("bfloat16", ["bfloat16", "float32"])):
                cache = make_cache(root, d_in, cache_dtype, args.contexts, args.shard_contexts, 128)
                for out_dtype in delivered:
                    rows.append(measure_row(cache, d_in, cache_dtype, out_dtype, args, pinned, previous))
                    print(rows[-1], flush=True)
                shutil.rmtree(cache)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    mix = mixing_at_scale(args.batch_size, runs=8)
    load["end"] = os.getloadavg()[0]

    print(f"\nbatch {args.batch_size}, median of {args.repeats} interleaved runs, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores, load {load['start']:.1f} at the start, {load['end']:.1f} at the end, "
          f"{'pinned' if pinned else 'ordinary'} memory")
    header = (f"{'d_in':>6} {'cache':>9} {'delivered':>10} {'store tok/s':>13} {'1st epoch':>11} {'sync tok/s':>12}"
              f" {'memcpy tok/s':>14}")
    print(header + (f" {'previous':>10}" if previous else "") + f" {'store/memcpy':>13}")
    for r in rows:
        line = (f"{r['d_in']:>6} {r['cache_dtype']:>9} {r['delivered_dtype']:>10} {r['store_tokens_per_s']:>13,}"
                f" {r['store_first_epoch_tokens_per_s']:>11,} {r['store_sync_tokens_per_s']:>12,}"
                f" {r['memcpy_tokens_per_s']:>14,}")
        line += f" {r['previous_tokens_per_s']:>10,}" if previous else ""
        print(line + f" {r['store_fraction_of_memcpy']:>13}")
    print("\nmixing (1,024 shards x 1,024 contexts x 128 tokens; batch 4096): distinct shards / contexts")
    for m in mix:
        print(f"  {m['consecutive_batches']:>4} consecutive batches: first store {m['previous_distinct_shards']:.0f} / "
              f"{m['previous_distinct_contexts']:.0f}, this store {m['store_distinct_shards']:.0f} / "
              f"{m['store_distinct_contexts']:.0f}")
    goal_row = next((r for r in rows if r["d_in"] == GOAL["d_in"] and r["cache_dtype"] == r["delivered_dtype"]
                     == GOAL["cache_dtype"]), None)
    goal = {**GOAL, "met": None if goal_row is None else (
        goal_row["store_tokens_per_s"] >= GOAL["min_tokens_per_s"]
        and goal_row["store_fraction_of_memcpy"] >= GOAL["min_fraction_of_memcpy"])}
    print(f"goal {GOAL}: met = {goal['met']}")
    result = {"rows": rows, "mixing": mix, "goal": goal, "batch_size": args.batch_size, "ctx_len": 128,
              "cache_contexts": args.contexts, "shard_contexts": args.shard_contexts, "tokens_per_measurement":
              args.tokens, "repeats": args.repeats, "pinned": pinned, "loadavg_1min": load,
              "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "torch_version": torch.__version__, "device": "cuda" if pinned else "cpu"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
