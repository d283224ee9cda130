"""Tokens/s of `saekit cache` (forward + capture + shards on disk) against the bare forward pass.

Same model (the tiny LM shape: 2 layers, d_model 128, randomly initialised), same contexts, same
batch size, in one run. The bare forward is `model(tokens, stop_at_layer=...)` under inference_mode:
exactly the compute the cache must do; everything else the cache does is overhead.

    python bench/cache_throughput.py [--n-contexts 2048] [--batch-size 32] [--repeats 3]

Prints a table and writes bench/results/cache_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from saekit.corpus import PackedContexts, batched_contexts
from saekit.data import write_cache
from saekit.data.cache import _stop_layer


def tiny_model(d_vocab: int, n_ctx: int) -> HookedTransformer:
    cfg = HookedTransformerConfig(n_layers=2, d_model=128, n_heads=4, d_head=32, d_mlp=512, d_vocab=d_vocab,
                                  n_ctx=n_ctx, act_fn="gelu", normalization_type="LN", seed=0)
    return HookedTransformer(cfg).eval()


def bare_forward(model: HookedTransformer, tokens: torch.Tensor, batch_size: int, stop: int | None) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(tokens), batch_size):
            model(tokens[i:i + batch_size], stop_at_layer=stop)
    return time.perf_counter() - start


def saekit_cache(model: HookedTransformer, tokens: np.ndarray, hooks: list[str], batch_size: int,
                 dtype: str) -> float:
    out = Path(tempfile.mkdtemp(prefix="saekit-bench-")) / "cache"
    docs = np.zeros_like(tokens)
    contexts = zip(tokens, docs)
    start = time.perf_counter()
    write_cache(model, batched_contexts(contexts, batch_size), out, hooks, n_contexts=len(tokens),
                contexts_per_shard=max(1, (1 << 16) // tokens.shape[1]), dtype=dtype,
                batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - start
    shutil.rmtree(out.parent)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-contexts", type=int, default=2048)
    parser.add_argument("--ctx-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--d-vocab", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hooks", nargs="+", default=["blocks.1.hook_resid_post"])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "cache_throughput.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    model = tiny_model(args.d_vocab, args.ctx_len)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, args.d_vocab, size=(args.n_contexts, args.ctx_len)).astype(np.int32)
    tokens[:, 0] = 0
    token_tensor = torch.from_numpy(tokens).long()
    n_tokens = tokens.size
    stop = _stop_layer(args.hooks)

    bare_forward(model, token_tensor[: 4 * args.batch_size], args.batch_size, stop)  # warm-up
    bare, cache = [], []
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both alike
        bare.append(bare_forward(model, token_tensor, args.batch_size, stop))
        cache.append(saekit_cache(model, tokens, args.hooks, args.batch_size, args.dtype))
    bare_tps = n_tokens / statistics.median(bare)
    cache_tps = n_tokens / statistics.median(cache)
    overhead = bare_tps / cache_tps - 1

    rows = [("bare forward (model(tokens, stop_at_layer))", bare_tps), ("saekit cache (write_cache)", cache_tps)]
    print(f"tiny model 2x128, {args.n_contexts} contexts x {args.ctx_len} tokens, batch {args.batch_size}, "
          f"hooks {args.hooks}, {args.dtype}, median of {args.repeats}, {torch.get_num_threads()} threads")
    print(f"{'implementation':<48}{'tokens/s':>12}")
    for name, tps in rows:
        print(f"{name:<48}{tps:>12,.0f}")
    print(f"cache overhead over the bare forward: {100 * overhead:.1f}%")

    result = {
        "n_contexts": args.n_contexts, "ctx_len": args.ctx_len, "batch_size": args.batch_size,
        "d_vocab": args.d_vocab, "hooks": ",".join(args.hooks), "dtype": args.dtype, "repeats": args.repeats,
        "bare_forward_tokens_per_s": round(bare_tps), "saekit_cache_tokens_per_s": round(cache_tps),
        "cache_overhead_fraction": round(overhead, 4), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
        "device": "cpu",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
