"""`saekit collect SAE_DIR --cache CACHE_DIR`: per-latent records that explaining and scoring re-use.

Over the cache's contexts (in order, a configurable range) the SAE encodes one batch of contexts at a
time; BOS positions never count. Memory depends on the number of latents and examples kept, never
on the number of tokens:

1. pass 1, per latent: active-token count, sum and max of its activation; a streaming top-k of
   contexts by the latent's max activation in the context (one example per context); a uniform
   sample (`reservoir` windows, by random keys: a bottom-k sketch) of the `window`-token windows
   where it fires (delphi's examples: fixed blocks of each context, see scan.py); a uniform sample
   of the windows where it is zero on every token (random negatives, delphi's). Each is a
   [k, n_latents] tensor merged with the batch's candidates by `torch.topk`.
2. quantile examples as delphi draws them: the sampled activating windows sorted by their max,
   cut into `n_quantiles` equal slices, `n_explain / n_quantiles` + `n_test / n_quantiles` drawn from
   each slice (exactly delphi's split when the reservoir holds every activating window).
3. pass 2 (when `n_hard_negatives` > 0): hard negatives, contexts holding one of the latent's most
   frequent top-activating token ids where the latent never fires, sampled like the random ones.
4. windows: quantile examples and random negatives show their own window; top examples and hard
   negatives `window` tokens around their anchor (the max token; for hard negatives the first top
   token); with the latent's activation at every token: only the
   contexts that examples need are encoded again, `latent_chunk` latents at a time.
5. write the records directory (see `saekit.interp.records.format`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saekit.config import config_to_dict, doc
from saekit.data import CacheConfig, cache_activations, read_manifest
from saekit.data.cache import resolve_device
from saekit.eval.run import check_sae_against_cache
from saekit.files import write_json_atomic
from saekit.interp.records.format import FORMAT, FORMAT_VERSION, META_FILE, TABLE_FILE, examples_file
from saekit.interp.records.scan import (ContextReader, ScanResult, TopKeys, contexts_per_batch, make_encoder, scan,
                                scan_hard_negatives)
from saekit.interp.records.windows import build_chunk, hard_token_ids, window_geometry

__all__ = ["CollectConfig", "ContextReader", "TopKeys", "collect_records", "quantile_split"]


@dataclass
class CollectConfig:
    """What `saekit collect` records, over which tokens."""

    sae: str = doc("SAE: a folder (saekit, SAELens, sparsify) or a published id (see saekit.load_sae)", "")
    cache: str = doc("activation cache holding the SAE's hook point ('' = live mode with --model)", "")
    model: str = doc("live mode: model to cache first (name, folder or 'tiny')", "")
    init: str = doc("live mode: init variant of --model", "trained")
    dataset: str = doc("live mode: dataset to run the model on", "stdlib-docstrings")
    out: str = doc("records directory to write ('' = <sae>/records)", "")
    n_tokens: int = doc("tokens to scan, in whole contexts (0 = every context from first_context on)", 1_000_000)
    first_context: int = doc("first context scanned (-1 = the cache's last n_tokens, its held-out part)", 0)
    latents: list[int] = doc("latent ids to record (empty = the first n_latents)", default_factory=list)
    n_latents: int = doc("with no --latents: record latents 0..n_latents-1 (0 = all)", 0)
    window: int = doc("tokens per example window (delphi: 32)", 32)
    tokens_after: int = doc("tokens shown after an example's max-activating token (the rest come before)", 4)
    n_top: int = doc("top-activating contexts kept per latent", 20)
    n_quantiles: int = doc("activation quantile bins of the sampled examples (delphi: 10)", 10)
    n_explain: int = doc("quantile examples to explain from (delphi: 40)", 40)
    n_test: int = doc("quantile examples to score with (delphi: 50)", 50)
    reservoir: int = doc("activating windows sampled uniformly per latent for the quantile split", 400)
    n_random_negatives: int = doc("random windows where the latent is zero on every token (delphi: 50)", 50)
    n_hard_negatives: int = doc("non-activating contexts holding the latent's top tokens (0 = skip pass 2)", 20)
    hard_negative_tokens: int = doc("most frequent top-activating token ids that define hard negatives", 3)
    seed: int = doc("seed of the samples", 0)
    batch_tokens: int = doc("tokens encoded per batch (whole contexts, at least one)", 4096)
    latent_chunk: int = doc("latents per examples file (bounds memory while windows are built)", 4096)
    device: str = doc("auto | cpu | cuda", "auto")

    def __post_init__(self) -> None:
        for name in ("window", "n_quantiles", "batch_tokens", "latent_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"CollectConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_top", "n_explain", "n_test", "reservoir", "n_random_negatives", "n_hard_negatives",
                     "hard_negative_tokens", "tokens_after", "n_latents"):
            if getattr(self, name) < 0:
                raise ValueError(f"CollectConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.reservoir < self.n_explain + self.n_test:
            raise ValueError(f"CollectConfig.reservoir ({self.reservoir}) must hold at least n_explain + n_test "
                             f"({self.n_explain + self.n_test}) examples")


def spread(total: int, parts: int) -> list[int]:
    """`total` split into `parts` near-equal integers, the larger first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def quantile_split(values: np.ndarray, n_quantiles: int, n_explain: int, n_test: int,
                   rng: np.random.Generator) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Delphi's quantile sampling for one latent: (explain, test) lists of (index into values, quantile).

    values [m]: the max activations of the latent's sampled activating windows. They are sorted,
    strongest first, and cut into `n_quantiles` equal slices (quantile 0 = strongest); from each
    slice n_explain/n_quantiles + n_test/n_quantiles are drawn without replacement, explain first.
    A slice with too few examples gives all it has, shared in the same proportion.
    """
    order = np.argsort(-values, kind="stable")
    explain: list[tuple[int, int]] = []
    test: list[tuple[int, int]] = []
    for q, (n_e, n_t, members) in enumerate(zip(spread(n_explain, n_quantiles), spread(n_test, n_quantiles),
                                                np.array_split(order, n_quantiles))):
        chosen = rng.permutation(members)[:n_e + n_t]
        if len(chosen) < n_e + n_t:
            n_e = int(round(len(chosen) * n_e / max(n_e + n_t, 1)))
        explain += [(int(i), q) for i in chosen[:n_e]]
        test += [(int(i), q) for i in chosen[n_e:]]
    return explain, test


def select_latents(config: CollectConfig, d_sae: int) -> list[int]:
    """The latent ids to record, checked against d_sae."""
    if config.latents:
        bad = [i for i in config.latents if not 0 <= i < d_sae]
        if bad:
            raise ValueError(f"CollectConfig.latents: {bad[:5]} outside the SAE's 0..{d_sae - 1}")
        return list(dict.fromkeys(int(i) for i in config.latents))
    return list(range(min(config.n_latents, d_sae) if config.n_latents else d_sae))


def context_range_of(manifest: dict[str, Any], n_tokens: int, first_context: int, cache: str) -> tuple[int, int]:
    """(first, end) contexts to scan."""
    total, ctx_len = manifest["n_contexts"], manifest["ctx_len"]
    n_contexts = total if n_tokens <= 0 else min(total, -(-n_tokens // ctx_len))
    first = total - n_contexts if first_context < 0 else first_context
    if not 0 <= first < total:
        raise ValueError(f"CollectConfig.first_context {first_context} is outside cache {cache}'s "
                         f"{total} contexts")
    return first, min(total, first + n_contexts)


def _live_cache(config: CollectConfig, sae: Any, out: Path) -> str:
    """Cache --model at the SAE's hook, processed as the SAE was trained (model_processing 'auto')."""
    from saekit.models.processing import resolve_model_processing, spec_string

    if not config.model:
        raise ValueError("saekit collect needs --cache CACHE_DIR, or --model NAME (and --dataset) to run live")
    cache = out / "cache"
    processing = spec_string(resolve_model_processing("auto", config.sae, sae))
    cache_activations(CacheConfig(out=str(cache), model=config.model, init=config.init, dataset=config.dataset,
                                  hooks=[sae.cfg.hook_name], n_tokens=config.n_tokens or 1_000_000,
                                  model_processing=processing, device=config.device))
    return str(cache)


def collect_records(config: CollectConfig, progress: bool = True) -> Path:
    """Scan the cache, sample examples, build their windows and write the records directory."""
    from saekit.sae import load_sae
    from saekit.sae.formats import output_dir_for

    if not config.sae:
        raise ValueError("CollectConfig.sae: give the SAE folder to collect records for")
    started = time.time()
    device = resolve_device(config.device)
    sae = load_sae(config.sae, device=device)
    out = Path(config.out or output_dir_for(config.sae) / "records")
    out.mkdir(parents=True, exist_ok=True)
    cache = config.cache or _live_cache(config, sae, out)
    manifest = read_manifest(cache)
    hook = check_sae_against_cache(sae, manifest, cache)
    latents = select_latents(config, sae.cfg.d_sae)
    context_range = context_range_of(manifest, config.n_tokens, config.first_context, cache)
    first_pos = 1 if manifest.get("prepend_bos") and manifest["ctx_len"] > 1 else 0
    reader = ContextReader(cache, manifest, hook)
    everything = latents == list(range(sae.cfg.d_sae))
    encode = make_encoder(sae, None if everything else latents, device)

    result = scan(reader, context_range, encode, len(latents), config, first_pos, device, progress)
    hard_ids = hard_token_ids(reader, result.top, config.hard_negative_tokens)
    if config.n_hard_negatives > 0 and config.hard_negative_tokens > 0:
        result.hard = scan_hard_negatives(reader, context_range, encode, hard_ids, config, first_pos, device,
                                          progress)
    slots = _example_slots(result, config)

    geometry = window_geometry(manifest["ctx_len"], first_pos, config.window, config.tokens_after)
    rng = np.random.default_rng(config.seed)
    n_chunks = -(-len(latents) // config.latent_chunk)
    counts = {kind: 0 for kind in slots}
    for chunk in range(n_chunks):
        lo, hi = chunk * config.latent_chunk, min(len(latents), (chunk + 1) * config.latent_chunk)
        chunk_encode = make_encoder(sae, latents[lo:hi], device)
        tensors = build_chunk(reader, chunk_encode, {k: {n: a[lo:hi] for n, a in s.items()} for k, s in slots.items()},
                              hard_ids[lo:hi], geometry, contexts_per_batch(config.batch_tokens, geometry.ctx_len), rng,
                              progress)
        tensors["latents"] = torch.as_tensor(latents[lo:hi], dtype=torch.int64)
        _save_tensors(tensors, out / examples_file(chunk))
        for kind in slots:
            counts[kind] += int((tensors[f"{kind}/context"] >= 0).sum())

    _write_table(out / TABLE_FILE, latents, result, slots, hard_ids)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "sae": str(config.sae), "hook_name": hook,
        "architecture": sae.cfg.architecture, "d_sae": sae.cfg.d_sae, "d_in": sae.cfg.d_in, "cache": str(cache),
        "model": manifest.get("model", {}), "dataset": manifest.get("dataset", {}),
        "context_range": list(context_range), "ctx_len": manifest["ctx_len"], "prepend_bos": bool(first_pos),
        "n_tokens": result.n_tokens, "n_latents": len(latents), "latent_chunk": config.latent_chunk,
        "n_chunks": n_chunks, "window": geometry.window, "tokens_after": geometry.after,
        "n_dead": int((result.n_active_tokens == 0).sum()), "examples": counts, "n_windows": result.n_windows,
        "asked": {"top": config.n_top, "explain": config.n_explain, "test": config.n_test,
                  "random": config.n_random_negatives, "hard": config.n_hard_negatives},
        "seconds": round(time.time() - started, 2), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": config_to_dict(config),
    }
    write_json_atomic(out / META_FILE, meta)
    return out


def _example_slots(result: ScanResult, config: CollectConfig) -> dict[str, dict[str, np.ndarray]]:
    """{kind: {'context', 'anchor', 'value', 'quantile'}} arrays [n_latents, slots] (-1 = empty)."""
    n = result.act_max.shape[0]
    top = result.top
    slots = {"top": {"context": np.where(top["valid"], top["context"], -1), "anchor": top["position"],
                     "value": np.where(top["valid"], top["key"], 0)}}
    rng = np.random.default_rng(config.seed)
    for kind, size in (("explain", config.n_explain), ("test", config.n_test)):
        slots[kind] = {"context": np.full((n, size), -1, dtype=np.int32), "anchor": np.zeros((n, size), np.int32),
                       "value": np.zeros((n, size), np.float32), "quantile": np.full((n, size), -1, np.int8),
                       "start": np.zeros((n, size), np.int32)}
    sample = result.sample
    for j in range(n):
        valid = np.nonzero(sample["valid"][j])[0]
        if not len(valid):
            continue
        explain, test = quantile_split(sample["value"][j, valid], config.n_quantiles, config.n_explain,
                                       config.n_test, rng)
        for kind, chosen in (("explain", explain), ("test", test)):
            if not chosen:
                continue
            rows = valid[[i for i, _ in chosen]]
            slots[kind]["context"][j, :len(rows)] = sample["context"][j, rows]
            slots[kind]["start"][j, :len(rows)] = sample["start"][j, rows]
            slots[kind]["anchor"][j, :len(rows)] = sample["position"][j, rows]
            slots[kind]["value"][j, :len(rows)] = sample["value"][j, rows]
            slots[kind]["quantile"][j, :len(rows)] = [q for _, q in chosen]
    for kind, found in (("random", result.random), ("hard", result.hard)):
        if found:
            slots[kind] = {"context": np.where(found["valid"], found["context"], -1)}
            if "start" in found:
                slots[kind]["start"] = np.where(found["valid"], found["start"], 0)
    return slots


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"format": FORMAT})
    os.replace(tmp, path)


def _write_table(path: Path, latents: list[int], result: ScanResult, slots: dict[str, dict[str, np.ndarray]],
                 hard_ids: np.ndarray) -> None:
    import pandas as pd

    active = result.n_active_tokens
    table = pd.DataFrame({
        "latent": np.asarray(latents, dtype=np.int64),
        "frequency": active / max(result.n_tokens, 1),
        "n_active_tokens": active,
        "n_active_contexts": result.n_active_contexts,
        "n_active_windows": result.n_active_windows,
        "n_silent_windows": result.n_windows - result.n_active_windows,
        "mean_activation": result.act_sum / max(result.n_tokens, 1),
        "mean_active_activation": np.where(active > 0, result.act_sum / np.maximum(active, 1), 0.0),
        "max_activation": result.act_max.astype(np.float64),
        **{f"n_{kind}": (s["context"] >= 0).sum(1) for kind, s in slots.items()},
        "top_token_ids": [[int(t) for t in row if t >= 0] for row in hard_ids],
    })
    table.to_parquet(path, index=False)
