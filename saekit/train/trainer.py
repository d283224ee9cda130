"""Train a grid of SAEs on one activation cache in a single pass over the data.

`train(config)` is the whole run, as a list of named steps:

1. `_setup`: read the cache's manifest, build the grid of SAE configs (errors before any training),
   open one `ActivationStore` over all the hooks the grid needs;
2. `_initialise` (fresh run): estimate each hook's input scale (E||x|| = sqrt(d_in)) and b_dec from
   a sample drawn from every shard of the training range, build the SAEs; or `_restore` (a
   checkpoint exists): everything as it was saved;
3. the loop: per global batch, each SAE takes its hook's rows (the store reads, and copies to the
   device once per hook, only this rank's rows under torchrun), forward, backward; gradients
   averaged over ranks; decoder gradients projected and rows
   renormalised where the architecture has a unit-norm decoder; one Adam step for all SAEs;
   tokens-since-fired updated (dead latents feed AuxK); logs and checkpoints on schedule;
4. `_finish`: a final checkpoint, then each SAE saved in SAELens's layout with its input scale folded
   in, plus metrics.json.

Every SAE sees the same batches in the same order; the seed of an SAE only sets its initialisation.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from saekit.config import config_to_dict
from saekit.data import ActivationStore, CacheError, read_manifest
from saekit.data.cache import resolve_device
from saekit.data.provenance import check_resume_cache, manifest_digest, training_provenance
from saekit.files import write_json_atomic
from saekit.sae import SAE, SAEConfig, build_sae, fired_mask, init_b_dec, save_sae
from saekit.sae.weights import estimate_activation_scale, normalize_decoder_, remove_parallel_decoder_grad_
from saekit.train import dist, pause
from saekit.train.checkpoint import (load_latest_checkpoint, optimizer_from_flat, optimizer_to_flat,
                                     restore_rng, rng_tensors, save_checkpoint)
from saekit.train.config import TrainConfig, default_lr, sae_grid, sae_name
from saekit.train.logging import RunLogger

# Fields that may change between a run and its resumption: they do not change the weights (device
# and compile only to float tolerance). Not n_tokens: it sets the step count, hence the lr warm-up
# clamp, the decay start and the sparsity ramp of the steps already taken. `out` is the run folder's
# own path, not a setting: a moved folder resumes.
_RESUMABLE_CHANGES = {"device", "log_every", "checkpoint_every", "keep_checkpoints", "wandb_project",
                      "tensorboard", "compile", "out"}
_UNIT_NORM_DECODER = ("topk", "batchtopk", "jumprelu", "matryoshka_batchtopk")
# losses divided by the batch's total variance; AuxK needs dead latents
_FVU_LOSS = ("topk", "batchtopk", "matryoshka_batchtopk")
_METRICS = ("loss", "mse", "fvu", "l0", "l1", "aux_k")


@dataclass
class Member:
    """One SAE being trained, with its bookkeeping."""

    sae: SAE
    name: str
    tokens_since_fired: torch.Tensor  # [d_sae] int64
    sums: dict[str, torch.Tensor]  # running sums of the loss terms since the last log line
    forward: Any = None


def train(config: TrainConfig, progress: bool = True) -> list[Path]:
    """Run (or resume) the training run described by `config`; returns the saved SAE folders."""
    device = resolve_device(config.device)
    rank, world, device = dist.init_distributed(device)
    if config.batch_size % world:
        raise ValueError(f"TrainConfig.batch_size {config.batch_size} must be divisible by the {world} ranks")
    out = Path(config.out)
    store, configs = _setup(config, out, rank, world, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    checkpoint = load_latest_checkpoint(out)
    if checkpoint is not None:  # refuse a cache regenerated or replaced since the checkpoint
        check_resume_cache(checkpoint[1], store.manifest, config.cache, str(out / "checkpoints"))
    members, scales = _initialise(config, configs, device, store) if checkpoint is None else \
        _rebuild(config, configs, device, checkpoint[1])
    params = [p for m in members for p in m.sae.parameters()]
    optimizer = torch.optim.Adam(
        [{"params": list(m.sae.parameters()), "lr": config.lr or default_lr(m.sae.cfg.d_sae)} for m in members],
        betas=tuple(config.betas), eps=1e-8, fused=_fused_adam_ok(params))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, config))
    step, tokens, last_lines = 0, 0, {}
    if checkpoint is not None:
        step, tokens, last_lines = _restore(checkpoint, members, optimizer, scheduler, store, device)
    for m in members:
        m.forward = torch.compile(m.sae) if config.compile else m.sae
    logger = RunLogger(out, [m.name for m in members], step, config, enabled=rank == 0)
    logger.last.update(last_lines)  # metrics.json of a run resumed at its last step still has them

    use_autocast = config.autocast and device.type == "cuda"
    bar = tqdm(total=config.n_steps * config.batch_size, initial=tokens, unit="tok", unit_scale=True,
               desc="train", disable=not progress or rank != 0)
    window_start, window_tokens = time.perf_counter(), 0
    next_checkpoint = _next_multiple(tokens, config.checkpoint_every)
    batches = store.iter_batches()  # this rank's rows of each global batch, on `device`
    try:
        while step < config.n_steps:
            batch = next(batches)
            if not _all_finite(batch, store, config, device):
                continue
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
                for m in members:
                    cfg = m.sae.cfg  # a transcoder also takes its output hook's rows (row-aligned in the store)
                    target = (batch[cfg.hook_name_out], scales[cfg.hook_name_out]) if cfg.transcode else None
                    _member_step(m, batch[cfg.hook_name], scales[cfg.hook_name], step, config, device, world,
                                 target)
            dist.average_gradients(params)
            for m in members:
                if m.sae.cfg.architecture in _UNIT_NORM_DECODER:
                    remove_parallel_decoder_grad_(m.sae)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            for m in members:
                if m.sae.cfg.architecture in _UNIT_NORM_DECODER:
                    normalize_decoder_(m.sae)
            step += 1
            tokens += config.batch_size
            window_tokens += config.batch_size
            bar.update(config.batch_size)
            if step % config.log_every == 0 or step == config.n_steps:
                _average_sums(members)
                seconds = time.perf_counter() - window_start
                logger.log(step, tokens, optimizer, members, config, window_tokens / max(seconds, 1e-9))
                bar.set_postfix(fvu=f"{logger.last[members[0].name]['fvu']:.3f}",
                                l0=f"{logger.last[members[0].name]['l0']:.1f}")
                window_start, window_tokens = time.perf_counter(), 0
            if config.checkpoint_every and tokens >= next_checkpoint and step < config.n_steps:
                _checkpoint(out, step, tokens, members, optimizer, scheduler, store, scales, config, rank, logger)
                next_checkpoint = _next_multiple(tokens, config.checkpoint_every)
            pause.pause_point("step", step)
    finally:
        batches.close()  # stops the store's producer thread, also on an exception
    bar.close()
    return _finish(out, step, tokens, members, optimizer, scheduler, store, scales, config, rank, logger)


def _setup(config: TrainConfig, out: Path, rank: int, world: int, device: torch.device
           ) -> tuple[ActivationStore, list[SAEConfig]]:
    """Check the config against the cache and any earlier run in `out`; the store and the SAE grid.

    The store yields this rank's rows of each global batch on `device` (one copy per hook per step,
    from pinned buffers filled by its producer thread), each batch valid until the next is asked for.
    """
    manifest = read_manifest(config.cache)
    sae_hooks = config.hooks or ([] if config.transcode else list(manifest["hooks"]))
    hooks = list(dict.fromkeys([*sae_hooks, *(h for pair in config.transcode.items() for h in pair)]))
    missing = [h for h in hooks if h not in manifest["hooks"]]
    if missing:
        raise CacheError(f"{Path(config.cache) / 'manifest.json'}: no hook point {missing} in this cache "
                         f"(it holds {sorted(manifest['hooks'])})")
    configs = sae_grid(config, {h: manifest["hooks"][h] for h in sae_hooks}, manifest["hooks"])
    saved = out / "train_config.json"
    if saved.exists():
        before = json.loads(saved.read_text())
        now = config_to_dict(config)
        changed = sorted(k for k in now if k not in _RESUMABLE_CHANGES and before.get(k) != now[k])
        if changed:
            values = "; ".join(f"TrainConfig.{k} was {before.get(k)!r}, now {now[k]!r}" for k in changed)
            why = (" (n_tokens sets the number of steps, so the lr warm-up and decay and the sparsity ramp)"
                   if "n_tokens" in changed else "")
            raise ValueError(f"{saved}: this run was started with other settings ({values}){why}; "
                             f"use another --out or the original config to resume")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(saved, config_to_dict(config))
    dist.barrier()
    n_train = manifest["n_contexts"] - int(manifest["n_contexts"] * config.holdout_fraction)
    store = ActivationStore(config.cache, hooks, batch_size=config.batch_size, seed=config.data_seed,
                            drop_bos=config.drop_bos, buffer_shards=config.buffer_shards, drop_last=True,
                            context_range=(0, n_train), device=device, reuse_buffers=True, rank=rank, world=world,
                            gather_threads=max(1, min(4, (os.cpu_count() or 1) // (4 * world))))
    if store.batches_per_epoch == 0:
        raise CacheError(f"{config.cache}: the cache holds {store.n_tokens} tokens, fewer than one batch "
                         f"of {config.batch_size}")
    return store, configs


def _initialise(config: TrainConfig, configs: list[SAEConfig], device: torch.device,
                store: ActivationStore) -> tuple[list[Member], dict[str, float]]:
    """Input scales and b_dec from a sample of rows drawn from every shard of the training range
    (its own seed: the training stream is untouched; the same on every rank); new SAEs."""
    hooks = sorted({c.hook_name for c in configs} | {c.hook_name_out for c in configs if c.transcode})
    sample = store.sample(config.normalize_sample_tokens, seed=config.data_seed + 1_000_003)
    scales = {}
    for hook in hooks:
        _check_finite(sample[hook], f"the normalisation sample of {hook}", store)
        normalize = {c.normalize_activations for c in configs
                     if hook in (c.hook_name, c.hook_name_out if c.transcode else None)} != {"none"}
        scales[hook] = estimate_activation_scale(sample[hook]) if normalize else 1.0
    members = []
    for cfg in configs:
        cfg = _with_scales(cfg, scales)
        sae = build_sae(cfg)
        out_hook = cfg.hook_name_out if cfg.transcode else cfg.hook_name  # b_dec lives in the output's space
        init_b_dec(sae, sample[out_hook].to(sae.b_dec.dtype) * scales[out_hook])
        members.append(_member(sae.to(device), cfg))
    return members, scales


def _with_scales(cfg: SAEConfig, scales: dict[str, float]) -> SAEConfig:
    """cfg with its input scale and, for a transcoder, its output scale."""
    out = {"activation_scale_out": scales[cfg.hook_name_out]} if cfg.transcode else {}
    return dataclasses.replace(cfg, activation_scale=scales[cfg.hook_name], **out)


def _member(sae: SAE, cfg: SAEConfig) -> Member:
    device = sae.b_dec.device
    return Member(sae, sae_name(cfg), torch.zeros(cfg.d_sae, dtype=torch.int64, device=device),
                  {k: torch.zeros((), dtype=torch.float64, device=device) for k in (*_METRICS, "n")})


def _rebuild(config: TrainConfig, configs: list[SAEConfig], device: torch.device, state: dict[str, Any]
             ) -> tuple[list[Member], dict[str, float]]:
    """SAEs with the checkpoint's scales (weights are loaded by `_restore`)."""
    scales = {h: float(s) for h, s in state["scales"].items()}
    members = []
    for cfg in configs:
        cfg = _with_scales(cfg, scales)
        members.append(_member(build_sae(cfg).to(device), cfg))
    if [m.name for m in members] != state["members"]:
        raise ValueError(f"checkpoint holds SAEs {state['members']}, the config asks for {[m.name for m in members]}")
    return members, scales


def _restore(checkpoint: tuple[dict[str, torch.Tensor], dict[str, Any]], members: list[Member],
             optimizer: torch.optim.Optimizer, scheduler: Any, store: ActivationStore,
             device: torch.device) -> tuple[int, int, dict[str, dict[str, float]]]:
    """Everything as saved; (step, tokens, the last log line of each SAE)."""
    tensors, state = checkpoint
    for i, m in enumerate(members):
        m.sae.load_state_dict({k.split("/", 2)[2]: v for k, v in tensors.items() if k.startswith(f"sae/{i}/")})
        m.tokens_since_fired.copy_(tensors[f"fired/{i}"])
        for key, value in m.sums.items():  # the open log window (absent from older checkpoints: zeros)
            if f"sums/{i}/{key}" in tensors:
                value.copy_(tensors[f"sums/{i}/{key}"])
    optimizer_from_flat(optimizer, {k: v.to(device) for k, v in tensors.items() if k.startswith("opt/")},
                        state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    store.load_state_dict(state["store"])
    restore_rng(tensors)
    return int(state["step"]), int(state["tokens"]), state.get("last_log", {})


def _checkpoint(out: Path, step: int, tokens: int, members: list[Member], optimizer: torch.optim.Optimizer,
                scheduler: Any, store: ActivationStore, scales: dict[str, float], config: TrainConfig,
                rank: int, logger: RunLogger) -> None:
    """Everything the rest of the run depends on, including the log window's running sums and the
    last log lines (for metrics.json), so a resumed run writes what an uninterrupted one does."""
    _average_sums(members)  # every rank resumes with rank 0's sums: make them the global ones first
    if rank == 0:
        tensors: dict[str, torch.Tensor] = {}
        for i, m in enumerate(members):
            tensors.update({f"sae/{i}/{k}": v for k, v in m.sae.state_dict().items()})
            tensors[f"fired/{i}"] = m.tokens_since_fired
            tensors.update({f"sums/{i}/{k}": v for k, v in m.sums.items()})
        opt_tensors, opt_meta = optimizer_to_flat(optimizer)
        tensors.update(opt_tensors)
        tensors.update(rng_tensors())
        state = {"step": step, "tokens": tokens, "scales": scales, "members": [m.name for m in members],
                 "optimizer": opt_meta, "scheduler": scheduler.state_dict(), "store": store.state_dict(),
                 "last_log": logger.last, "cache_digest": manifest_digest(store.manifest)}
        save_checkpoint(out, step, tensors, state, keep=config.keep_checkpoints)
    dist.barrier()


def _member_step(m: Member, x: torch.Tensor, scale: float, step: int, config: TrainConfig,
                 device: torch.device, world: int, target: tuple[torch.Tensor, float] | None = None) -> None:
    """Forward and backward of one SAE on this rank's rows x [rows, d_in] (raw units); a transcoder's
    target is (rows [rows, d_out] of its output hook, that hook's scale)."""
    x = x.to(device, non_blocking=True)
    if scale != 1.0:
        x = x * scale
    cfg = m.sae.cfg
    dead = m.tokens_since_fired >= config.dead_tokens
    kwargs = {}
    if target is not None:
        y = target[0].to(device, non_blocking=True)
        kwargs["target"] = y * target[1] if target[1] != 1.0 else y
    output = m.forward(x, dead_mask=dead if cfg.architecture in _FVU_LOSS else None, **kwargs)
    loss = output.loss
    if cfg.architecture in ("relu", "jumprelu") and config.sparsity_warmup_fraction > 0:
        ramp = min(1.0, (step + 1) / max(1.0, config.sparsity_warmup_fraction * config.n_steps))
        penalty = cfg.l1_coef * output.l1 if cfg.architecture == "relu" else cfg.l0_coef * output.l0
        loss = loss - (1.0 - ramp) * penalty
    share = None  # world x this rank's share of the global batch's total variance
    if world > 1:
        y = kwargs.get("target", x)  # the losses are divided by the variance of what is predicted
        local = (y - y.mean(dim=0)).pow(2).sum().detach()
        share = (local / dist.global_total_variance(y.detach()).clamp_min(1e-30)) * world
    if share is not None and cfg.architecture in _FVU_LOSS:
        # TopK/BatchTopK losses are divided by the batch's total variance: use the global batch's.
        loss = loss * share
    loss.backward()
    fired = dist.any_across_ranks(fired_mask(output, cfg.d_sae))
    m.tokens_since_fired += config.batch_size
    m.tokens_since_fired.masked_fill_(fired, 0)  # not [fired] = 0: a bool index syncs the GPU
    with torch.no_grad():
        normalised = ("fvu", "loss", "aux_k") if cfg.architecture in _FVU_LOSS else ("fvu",)
        for name in _METRICS:
            value = getattr(output, name).detach().double()
            # divided by this rank's total variance: weighted, so the mean over ranks is the global one
            m.sums[name] += value * share if share is not None and name in normalised else value
        m.sums["n"] += 1


def _average_sums(members: list[Member]) -> None:
    """Average the log sums over ranks (in place), so that a log line describes the global batch:
    per-token means average exactly; terms divided by the total variance were weighted by `share`."""
    if not dist.is_distributed():
        return
    for m in members:
        packed = torch.stack(list(m.sums.values()))
        dist.average_buffer_(packed)
        for value, averaged in zip(m.sums.values(), packed):
            value.copy_(averaged)


def _finish(out: Path, step: int, tokens: int, members: list[Member], optimizer: torch.optim.Optimizer,
            scheduler: Any, store: ActivationStore, scales: dict[str, float], config: TrainConfig, rank: int,
            logger: "RunLogger") -> list[Path]:
    """Final checkpoint; each SAE saved (input scale folded in) with metrics.json."""
    _checkpoint(out, step, tokens, members, optimizer, scheduler, store, scales, config, rank, logger)
    folders = []
    for m in members:
        folder = out / m.name
        if rank == 0:
            sae = copy.deepcopy(m.sae).cpu()
            save_sae(sae, folder, provenance={**training_provenance(store.manifest, config.cache),
                                              "train_contexts": list(store.context_range)})
            dead = m.tokens_since_fired >= min(config.dead_tokens, tokens)
            metrics = {**logger.last.get(m.name, {}), "tokens": tokens, "steps": step,
                       "dead_fraction": float(dead.float().mean()), "activation_scale": scales[m.sae.cfg.hook_name]}
            write_json_atomic(folder / "metrics.json", metrics)
        folders.append(folder)
    logger.close()
    dist.barrier()
    return folders


def _all_finite(batch: dict[str, torch.Tensor], store: ActivationStore, config: TrainConfig,
                device: torch.device) -> bool:
    """Whether every rank's rows of the batch are finite (all ranks agree, so all skip or none);
    with nonfinite = 'raise', the rank holding the bad rows names them, the others say where to look."""
    # min and max are finite exactly when every entry is (NaN propagates): one pass, no bool copy,
    # about 5x cheaper than isfinite(x).all() on a [4096, 512] batch
    bad = [hook for hook, x in batch.items()
           if x.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(x))).all())]
    anywhere = bool(bad)
    if dist.is_distributed():  # one small all-reduce; a single process needs no device round trip
        anywhere = bool(dist.any_across_ranks(torch.tensor([anywhere], device=device)).item())
    if not anywhere or config.nonfinite == "skip":
        return not anywhere
    for hook in bad:
        _check_finite(batch[hook], f"activations of {hook}", store)
    raise ValueError("NaN/Inf in this step's activations on another rank (its error names the shard); "
                     "set nonfinite = 'skip' to drop such batches")


def _check_finite(x: torch.Tensor, what: str, store: ActivationStore) -> None:
    bad = (~torch.isfinite(x)).any(dim=-1).nonzero().squeeze(1)
    if len(bad):
        raise ValueError(f"NaN/Inf in {what}: {store.describe_rows(bad.cpu().numpy())} "
                         f"(set nonfinite = 'skip' to drop such batches)")


def _lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up over warmup_steps, constant, then linear decay to 0 over the last decay_fraction."""
    n_steps = config.n_steps
    warm = min(1.0, (step + 1) / max(1, min(config.warmup_steps, n_steps // 10 or 1)))
    decay_start = n_steps * (1 - config.decay_fraction)
    decay = 1.0 if step < decay_start else max(0.0, (n_steps - step) / max(1.0, n_steps - decay_start))
    return warm * decay


def _fused_adam_ok(params: list[torch.nn.Parameter]) -> bool:
    """Fused Adam (one kernel for all tensors: ~5x faster than the per-tensor loop on CPU) where torch has it."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def _next_multiple(tokens: int, every: int) -> int:
    return math.inf if not every else (tokens // every + 1) * every  # type: ignore[return-value]
