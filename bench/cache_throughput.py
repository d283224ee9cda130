"""Tokens/s of `saekit cache` (forward + capture + shards on disk) against the bare forward pass.

Per model row: same model, same contexts, same batch size, interleaved in one run. The bare forward
is `model(tokens, stop_at_layer=...)` under inference_mode (and bf16 autocast where the row says so):
exactly the compute the cache must do; everything else the cache does is overhead. Rows: the tiny
LM shape (2 layers, d_model 128, random init) and Gemma 3 270M (the packaged GGUF; blocks.6 and
blocks.13, float32 and bf16 autocast).

    python bench/cache_throughput.py [--n-contexts 2048] [--gemma-contexts 96] [--repeats 3] [--no-gemma]

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
                 dtype: str, compute_dtype: str = "float32") -> float:
    out = Path(tempfile.mkdtemp(prefix="saekit-bench-")) / "cache"
    docs = np.zeros_like(tokens)
    contexts = zip(tokens, docs)
    start = time.perf_counter()
    write_cache(model, batched_contexts(contexts, batch_size), out, hooks, n_contexts=len(tokens),
                contexts_per_shard=max(1, (1 << 16) // tokens.shape[1]), dtype=dtype,
                batch_size=batch_size, progress=False, compute_dtype=compute_dtype)
    seconds = time.perf_counter() - start
    shutil.rmtree(out.parent)
    return seconds


def measure(model: HookedTransformer, tokens: np.ndarray, hooks: list[str], batch_size: int, dtype: str,
            compute_dtype: str, repeats: int) -> dict[str, float]:
    """Median tokens/s of the bare forward and of write_cache, interleaved `repeats` times."""
    token_tensor = torch.from_numpy(tokens).long()
    stop = _stop_layer(hooks)
    autocast = compute_dtype == "bfloat16"

    def bare(t: torch.Tensor) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return bare_forward(model, t, batch_size, stop)

    bare(token_tensor[: 2 * batch_size])  # warm-up
    bare_s, cache_s = [], []
    for _ in range(repeats):  # interleaved, so drifts in machine load hit both alike
        bare_s.append(bare(token_tensor))
        cache_s.append(saekit_cache(model, tokens, hooks, batch_size, dtype, compute_dtype))
    bare_tps, cache_tps = tokens.size / statistics.median(bare_s), tokens.size / statistics.median(cache_s)
    return {"bare_forward_tokens_per_s": round(bare_tps), "saekit_cache_tokens_per_s": round(cache_tps),
            "cache_overhead_fraction": round(bare_tps / cache_tps - 1, 4)}


def random_tokens(n: int, ctx_len: int, d_vocab: int, bos: int, low: int = 1) -> np.ndarray:
    rng = np.random.default_rng(0)
    tokens = rng.integers(low, d_vocab, size=(n, ctx_len)).astype(np.int32)
    tokens[:, 0] = bos
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-contexts", type=int, default=2048, help="contexts of the tiny-model row")
    parser.add_argument("--gemma-contexts", type=int, default=96, help="contexts of each Gemma row")
    parser.add_argument("--ctx-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--d-vocab", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hooks", nargs="+", default=["blocks.1.hook_resid_post"])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--no-gemma", action="store_true", help="only the tiny-model row")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "cache_throughput.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    rows = []
    model = tiny_model(args.d_vocab, args.ctx_len)
    tokens = random_tokens(args.n_contexts, args.ctx_len, args.d_vocab, bos=0)
    rows.append({"model": "tiny 2x128 (random)", "hooks": ",".join(args.hooks), "compute_dtype": "float32",
                 "n_tokens": int(tokens.size), **measure(model, tokens, args.hooks, args.batch_size, args.dtype,
                                                         "float32", args.repeats)})
    print(rows[-1], flush=True)
    if not args.no_gemma:
        from saekit.models import load_model

        gemma = load_model("gemma-3-270m")
        # ids from the first 20,000 (ordinary text pieces), BOS first
        tokens = random_tokens(args.gemma_contexts, args.ctx_len, 20_000, bos=gemma.tokenizer.bos_token_id, low=100)
        for hook in ("blocks.6.hook_resid_post", "blocks.13.hook_resid_post"):
            for compute_dtype in ("float32", "bfloat16"):
                rows.append({"model": "gemma-3-270m", "hooks": hook, "compute_dtype": compute_dtype,
                             "n_tokens": int(tokens.size),
                             **measure(gemma, tokens, [hook], 16, args.dtype, compute_dtype, args.repeats)})
                print(rows[-1], flush=True)

    print(f"\n{args.ctx_len} tokens per context, stored {args.dtype}, median of {args.repeats} interleaved runs, "
          f"{torch.get_num_threads()} threads")
    print(f"{'model':<22}{'hook':<28}{'compute':<10}{'bare tok/s':>12}{'cache tok/s':>13}{'overhead':>10}")
    for r in rows:
        print(f"{r['model']:<22}{r['hooks']:<28}{r['compute_dtype']:<10}{r['bare_forward_tokens_per_s']:>12,}"
              f"{r['saekit_cache_tokens_per_s']:>13,}{100 * r['cache_overhead_fraction']:>9.1f}%")
    result = {"rows": rows, "ctx_len": args.ctx_len, "dtype": args.dtype, "repeats": args.repeats,
              "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "torch_version": torch.__version__, "device": "cpu"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
