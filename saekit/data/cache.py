"""Cache hook-point activations of a TransformerLens model to disk: sharded, resumable, verified.

Shard `i` always holds contexts `[i * contexts_per_shard, (i + 1) * contexts_per_shard)` of the packed
dataset, whoever writes it and whenever. So a run killed at any point (kill -9) and started again with
the same command skips the shards that are done and rewrites the others to exactly the same bytes, and
under torchrun rank `r` of `w` writes the shards `i` with `i % w == r` into the one cache.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

import saekit
from saekit.config import config_to_dict, doc
from saekit.corpus import PackedContexts, batched_contexts
from saekit.data.shards import (DTYPES, FORMAT, FORMAT_VERSION, MANIFEST, CacheError, completed_shards,
                                done_path, file_sha256, read_manifest, save_shard, shard_path,
                                write_json_atomic)

from saekit.data.provenance import IDENTITY_FIELDS as _IDENTITY_FIELDS
from saekit.data.provenance import dataset_revisions, hub_dataset_texts, hub_model_revision, hub_revision, shards_sha256

COMPUTE_DTYPES = ("float32", "bfloat16")


@dataclass
class CacheConfig:
    """What `saekit cache` runs: model, dataset, hook points and the shape of the cache."""

    out: str = doc("cache directory to write (created; resumed when it holds a partial cache)", "runs/cache")
    model: str = doc("'tiny' (the offline tiny LM), 'gemma-3-270m' (packaged, offline), a .gguf file, a local "
                     "model directory or a TransformerLens name", "tiny")
    tl_name: str = doc("with a .gguf model: its TransformerLens name ('' = from the file's metadata)", "")
    init: str = doc("weights: trained | random | random-keep-embeddings | step0 | gaussian-embeddings",
                    "trained")
    model_processing: str = doc("TransformerLens weight processing applied after loading: none | from_pretrained "
                                "| a comma list of fold_ln, center_writing_weights, center_unembed, "
                                "fold_value_biases, refactor_factored_attn_matrices (see docs/models.md)", "none")
    model_seed: int = doc("seed of the re-drawn weights (random variants) or the Gaussian noise", 0)
    dataset: str = doc("'stdlib-docstrings' (offline corpus), a local path, or a HF dataset name[:config]",
                       "stdlib-docstrings")
    split: str = doc("dataset split (HF datasets)", "train")
    text_field: str = doc("the text column of jsonl/parquet/HF datasets", "text")
    hooks: list[str] = doc("hook points to cache, e.g. blocks.1.hook_resid_post",
                           default_factory=lambda: ["blocks.1.hook_resid_post"])
    n_tokens: int = doc("tokens to cache (rounded up to whole contexts)", 1_000_000)
    ctx_len: int = doc("tokens per context, BOS included (0: min(128, the model's n_ctx))", 0)
    prepend_bos: bool | None = doc("start every context with BOS (None: the model's default)", None)
    batch_size: int = doc("contexts per forward pass", 32)
    shard_tokens: int = doc("tokens per shard (rounded down to whole contexts)", 1 << 18)
    dtype: str = doc("activation dtype on disk: float32 | float16 | bfloat16", "float32")
    compute_dtype: str = doc("forward pass: float32, or bfloat16 (bf16 autocast: ~2x faster on CPU, activations "
                             "within ~2% relative error of float32)", "float32")
    device: str = doc("device of the forward pass ('auto': cuda when available, else cpu)", "auto")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def hook_layer(hook: str) -> int | None:
    """The block index of `blocks.N.*` hooks (None for hooks outside the blocks, e.g. ln_final)."""
    parts = hook.split(".")
    if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit():
        return int(parts[1])
    if parts[0] in ("hook_embed", "hook_pos_embed"):
        return -1
    return None


def hook_dims(model: Any, hooks: list[str], ctx_len: int) -> dict[str, int]:
    """{hook: d_in}, measured by one forward pass on a single context (clear error for unknown hooks)."""
    known = set(model.hook_dict)
    unknown = [h for h in hooks if h not in known]
    if unknown:
        examples = [h for h in sorted(known) if h.startswith("blocks.0.")][:8]
        raise CacheError(f"hook point(s) {unknown} do not exist in this model; e.g. {examples}")
    dims: dict[str, int] = {}

    def grab(act: torch.Tensor, hook: Any) -> None:
        if act.ndim != 3:
            raise CacheError(f"hook point {hook.name!r} gives activations of shape {tuple(act.shape)}; "
                             f"only [batch, pos, d] hook points can be cached (use e.g. hook_z's "
                             f"attn output hook_attn_out instead)")
        dims[hook.name] = act.shape[-1]

    tokens = torch.zeros(1, min(ctx_len, 4), dtype=torch.long, device=next(model.parameters()).device)
    with torch.inference_mode():
        model.run_with_hooks(tokens, fwd_hooks=[(h, grab) for h in hooks], stop_at_layer=_stop_layer(hooks))
    return {h: dims[h] for h in hooks}


def _stop_layer(hooks: list[str]) -> int | None:
    layers = [hook_layer(h) for h in hooks]
    if any(layer is None for layer in layers):
        return None
    return max(layers) + 1  # type: ignore[type-var]


def _dist_info() -> tuple[int, int]:
    """(rank, world size) under torchrun (from the environment), else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _barrier(world: int) -> None:
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _check_resume(out: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The existing manifest when `out` holds a cache made with the same settings; CacheError otherwise."""
    if not (out / MANIFEST).exists():
        if out.exists() and any(out.iterdir()):
            raise CacheError(f"{out}: folder exists, is not empty and has no {MANIFEST}; refusing to write "
                             f"a cache into it (choose a new --out)")
        return None
    existing = read_manifest(out)
    for name in _IDENTITY_FIELDS:
        made_with = existing.get(name, [] if name == "model_processing" else None)
        if made_with != manifest.get(name):
            raise CacheError(f"{out / MANIFEST}: this cache was made with {name}={made_with!r}, "
                             f"the command asks for {name}={manifest.get(name)!r}; nothing was changed: "
                             f"use another --out, or the original settings to resume")
    return existing


def write_cache(
    model: Any,
    blocks: Iterator[PackedContexts],
    out: str | Path,
    hooks: list[str],
    n_contexts: int,
    contexts_per_shard: int,
    dtype: str = "float32",
    batch_size: int = 32,
    dataset_info: dict[str, Any] | None = None,
    prepend_bos: bool = True,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
    compute_dtype: str = "float32",
) -> dict[str, Any]:
    """Run `model` over packed contexts and write the activations of `hooks` to a cache at `out`.

    blocks: an iterator of PackedContexts in dataset order (any block size); the first `n_contexts`
        contexts are cached. Shards already complete in `out` are skipped without a forward pass.
    compute_dtype "bfloat16" runs the forward passes under bf16 autocast (the stored activations are
    then those of the bf16 forward, recorded in the manifest). Returns the manifest. Under torchrun (RANK/WORLD_SIZE set, process group initialised) each rank
    writes its share of the shards; rank 0 writes the manifest.
    """
    if dtype not in DTYPES:
        raise CacheError(f"dtype {dtype!r}: use one of {sorted(DTYPES)}")
    if compute_dtype not in COMPUTE_DTYPES:
        raise CacheError(f"compute_dtype {compute_dtype!r}: use one of {', '.join(COMPUTE_DTYPES)}")
    out = Path(out)
    rank, world = _dist_info()
    device = next(model.parameters()).device
    first = next(blocks, None)
    if first is None:
        raise CacheError("the dataset gave no contexts (is it empty, or shorter than one context?)")
    ctx_len = first.tokens.shape[1]
    dims = hook_dims(model, hooks, ctx_len)
    n_shards_planned = -(-n_contexts // contexts_per_shard)
    manifest: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "saekit_version": saekit.__version__,
        "model": getattr(model, "saekit_info", {"name": model.cfg.model_name}),
        "model_processing": list(getattr(model, "saekit_info", {}).get("processing", [])),
        "hooks": dims, "dtype": dtype, "compute_dtype": compute_dtype, "ctx_len": ctx_len, "prepend_bos": prepend_bos,
        "contexts_per_shard": contexts_per_shard, "n_contexts_requested": n_contexts,
        "dataset": dataset_info or {}, **(extra or {}),
        "complete": False, "n_contexts": None, "n_tokens": None, "n_shards": None,
    }
    # Rank 0 checks and creates the cache first; the other ranks check it once it exists.
    existing = _check_resume(out, manifest) if rank == 0 else None
    if rank == 0 and existing is None:
        (out / "shards").mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / MANIFEST, manifest)
    _barrier(world)
    if rank != 0:
        existing = _check_resume(out, manifest)
    if existing is not None and existing.get("complete"):
        return existing

    done = completed_shards(out)
    mine = [i for i in range(n_shards_planned) if i % world == rank and i not in done]
    torch_dtype = DTYPES[dtype]
    stop = _stop_layer(hooks)
    n_mine = sum(min(contexts_per_shard, n_contexts - i * contexts_per_shard) for i in mine)
    bar = tqdm(total=n_mine * ctx_len, unit="tok", unit_scale=True,
               desc=f"cache rank {rank}" if world > 1 else "cache", disable=not progress or not mine)
    shard_rows: list[PackedContexts] = []
    n_seen = 0
    shard_index = 0
    last_shard_size: dict[int, int] = {}

    def flush(index: int, rows: list[PackedContexts]) -> None:
        tokens = np.concatenate([r.tokens for r in rows])
        docs = np.concatenate([r.doc_index for r in rows])
        acts = _run_shard(model, tokens, hooks, dims, torch_dtype, batch_size, stop, device, bar,
                          autocast=compute_dtype == "bfloat16")
        _save_shard_and_record(out, index, index * contexts_per_shard, tokens, docs, acts)

    def blocks_all() -> Iterator[PackedContexts]:
        yield first
        yield from blocks

    for block in blocks_all():
        take = min(len(block.tokens), n_contexts - n_seen)
        start = 0
        while start < take:
            room = contexts_per_shard - sum(len(r.tokens) for r in shard_rows)
            piece = PackedContexts(block.tokens[start:start + min(room, take - start)],
                                   block.doc_index[start:start + min(room, take - start)])
            start += len(piece.tokens)
            shard_rows.append(piece)
            if sum(len(r.tokens) for r in shard_rows) == contexts_per_shard:
                if shard_index in mine:
                    flush(shard_index, shard_rows)
                last_shard_size[shard_index] = contexts_per_shard
                shard_rows, shard_index = [], shard_index + 1
        n_seen += take
        if n_seen >= n_contexts:
            break
    if shard_rows:
        if shard_index in mine:
            flush(shard_index, shard_rows)
        last_shard_size[shard_index] = sum(len(r.tokens) for r in shard_rows)
        shard_index += 1
    bar.close()
    _barrier(world)
    if rank == 0:
        n_total = sum(last_shard_size.values())
        manifest.update(complete=True, n_contexts=n_total, n_tokens=n_total * ctx_len, n_shards=shard_index,
                        shards_sha256=shards_sha256(out, shard_index), finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        if n_total < n_contexts:
            manifest["note"] = f"the dataset ran out after {n_total} of {n_contexts} requested contexts"
        write_json_atomic(out / MANIFEST, manifest)
    _barrier(world)
    return read_manifest(out)


def _save_shard_and_record(out: Path, index: int, first_context: int, tokens: np.ndarray, docs: np.ndarray,
                           acts: dict[str, torch.Tensor]) -> None:
    """Write shard `index` (atomically), then its done-record with size and sha256."""
    tensors = {"tokens": torch.from_numpy(tokens), "doc_index": torch.from_numpy(docs),
               "context_index": torch.arange(first_context, first_context + len(tokens), dtype=torch.int64)}
    tensors.update({f"acts/{h}": a for h, a in acts.items()})
    path = shard_path(out, index)
    # One metadata key: safetensors writes a map of several keys in no fixed order, and resumed
    # shards must be byte-identical to uninterrupted ones.
    n_bytes = save_shard(path, tensors, {"format": f"{FORMAT}/{FORMAT_VERSION}"})
    write_json_atomic(done_path(out, index), {
        "shard": index, "n_contexts": len(tokens), "first_context": first_context,
        "n_bytes": n_bytes, "sha256": file_sha256(path)})


def write_array_cache(out: str | Path, acts: dict[str, torch.Tensor], contexts_per_shard: int = 64,
                      dtype: str = "float32", tokens: np.ndarray | None = None, prepend_bos: bool = False,
                      info: dict[str, Any] | None = None) -> dict[str, Any]:
    """A cache from activations already in memory (synthetic data, other tools' activations).

    acts: {hook: [n_contexts, ctx_len, d_in]} (all hooks the same n_contexts and ctx_len).
    tokens: [n_contexts, ctx_len] ids (zeros when None). Refuses to overwrite an existing cache.
    """
    out = Path(out)
    if (out / MANIFEST).exists():
        raise CacheError(f"{out / MANIFEST}: a cache already exists here; nothing was changed")
    shapes = {h: tuple(a.shape) for h, a in acts.items()}
    if not acts or len({s[:2] for s in shapes.values()}) != 1 or any(len(s) != 3 for s in shapes.values()):
        raise CacheError(f"acts must be {{hook: [n_contexts, ctx_len, d_in]}} with one n_contexts and ctx_len; "
                         f"got shapes {shapes}")
    n_contexts, ctx_len = next(iter(shapes.values()))[:2]
    tokens = np.zeros((n_contexts, ctx_len), dtype=np.int32) if tokens is None else tokens.astype(np.int32)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    n_shards = -(-n_contexts // contexts_per_shard)
    for index in range(n_shards):
        lo, hi = index * contexts_per_shard, min(n_contexts, (index + 1) * contexts_per_shard)
        shard_acts = {h: a[lo:hi].reshape(-1, a.shape[-1]).to(DTYPES[dtype]).contiguous() for h, a in acts.items()}
        _save_shard_and_record(out, index, lo, tokens[lo:hi], np.full((hi - lo, ctx_len), -1, np.int32), shard_acts)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "saekit_version": saekit.__version__,
        "model": info or {"source": "arrays"}, "hooks": {h: s[2] for h, s in shapes.items()}, "dtype": dtype,
        "ctx_len": ctx_len, "prepend_bos": prepend_bos, "contexts_per_shard": contexts_per_shard,
        "n_contexts_requested": n_contexts, "dataset": {"source": "arrays"}, "complete": True,
        "n_contexts": n_contexts, "n_tokens": n_contexts * ctx_len, "n_shards": n_shards,
        "shards_sha256": shards_sha256(out, n_shards),
    }
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def _run_shard(model: Any, tokens: np.ndarray, hooks: list[str], dims: dict[str, int],
               dtype: torch.dtype, batch_size: int, stop: int | None, device: torch.device,
               bar: Any, autocast: bool = False) -> dict[str, torch.Tensor]:
    """Forward passes over one shard's contexts; hooks copy straight into the shard's buffers.

    tokens: [n, ctx_len]. Returns {hook: [n * ctx_len, d_in] tensor on the CPU in `dtype`}.
    """
    n, ctx_len = tokens.shape
    buffers = {h: torch.empty(n * ctx_len, d, dtype=dtype) for h, d in dims.items()}
    if device.type == "cuda":
        buffers = {h: b.pin_memory() for h, b in buffers.items()}
    cursor = [0]

    def make_hook(name: str):
        def store(act: torch.Tensor, hook: Any) -> None:
            rows = act.reshape(-1, act.shape[-1])
            buffers[name][cursor[0]:cursor[0] + rows.shape[0]].copy_(rows, non_blocking=True)
        return store

    fwd_hooks = [(h, make_hook(h)) for h in hooks]
    token_tensor = torch.from_numpy(tokens.astype(np.int64))
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        for start in range(0, n, batch_size):
            batch = token_tensor[start:start + batch_size].to(device, non_blocking=True)
            cursor[0] = start * ctx_len
            model.run_with_hooks(batch, fwd_hooks=fwd_hooks, stop_at_layer=stop)
            bar.update(batch.numel())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return buffers


def cache_activations(config: CacheConfig, progress: bool = True) -> dict[str, Any]:
    """Load the model and dataset named by `config` and write (or resume) the cache. Returns the manifest."""
    from saekit.corpus import pack_contexts, source_fingerprint, tokenize_texts, iter_texts
    from saekit.models import load_model

    rank, world = _dist_info()
    device = resolve_device(config.device)
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if "@" in config.model and not Path(config.model).expanduser().exists():
        raise CacheError(f"CacheConfig.model {config.model!r}: loading a hub model at a revision is not "
                         f"supported; the commit of the hub model in the local HF cache is recorded instead")
    model = load_model(_model_source(config.model), init=config.init, seed=config.model_seed, device=device,
                       tl_name=config.tl_name or None, processing=config.model_processing)
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise CacheError(f"model {config.model!r} has no tokenizer; cannot tokenize dataset {config.dataset!r}")
    ctx_len = config.ctx_len or min(128, model.cfg.n_ctx)
    if ctx_len > model.cfg.n_ctx:
        raise CacheError(f"ctx_len {ctx_len} is longer than the model's n_ctx {model.cfg.n_ctx}")
    prepend_bos = model.cfg.default_prepend_bos if config.prepend_bos is None else config.prepend_bos
    n_contexts = -(-config.n_tokens // ctx_len)
    contexts_per_shard = max(1, config.shard_tokens // ctx_len)
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id

    def encode(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    if (revision := model_revision(getattr(model, "saekit_info", {}))) is not None:
        model.saekit_info["revision"] = revision
    revisions = dataset_revisions(config.dataset)  # {} for local datasets: their bytes are hashed
    texts = hub_dataset_texts(config.dataset, config.split, config.text_field) if revisions.get("revision") \
        else iter_texts(config.dataset, split=config.split, text_field=config.text_field)
    contexts = pack_contexts(tokenize_texts(texts, encode), ctx_len, tokenizer.bos_token_id, sep,
                             prepend_bos=prepend_bos, max_contexts=n_contexts)
    dataset_info = {"source": config.dataset, "split": config.split, "text_field": config.text_field,
                    "fingerprint": source_fingerprint(config.dataset, config.split, config.text_field),
                    "tokenizer": getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__, **revisions}
    return write_cache(model, batched_contexts(contexts, config.batch_size), config.out, config.hooks,
                       n_contexts, contexts_per_shard, config.dtype, config.batch_size, dataset_info,
                       prepend_bos, extra={"config": config_to_dict(config) | {"out": None, "device": None}},
                       progress=progress, compute_dtype=config.compute_dtype)


def model_revision(info: dict[str, Any]) -> str | None:
    """The commit of a hub model's weights in the local HF cache: that of the branch they came from
    (`hub_revision` in saekit_info: init step0's `step0`) or else of main; None for other sources."""
    branch = info.get("hub_revision")
    if info.get("source_kind") != "hub" or not branch:
        return hub_model_revision(info)
    from transformer_lens.loading_from_pretrained import get_official_model_name

    return hub_revision(get_official_model_name(str(info["source"])), "model", branch)


def _model_source(name: str) -> Any:
    if name == "tiny":
        from saekit.models import ensure_tiny_lm

        return ensure_tiny_lm()
    return name
