"""`TrainConfig`: what `saekit train` runs. One flat dataclass; the CLI, the config file and the saved
`train_config.json` are this object.

The SAEs trained in one pass are the grid hooks x d_sae x k x seeds (one architecture per run);
`sae` holds any other `SAEConfig` field (e.g. `{l1_coef = 5.0, b_dec_init = "mean"}`). Transcoders
join the same pass: `transcode` maps input hooks to output hooks, and each pair trains
skip_connection x d_sae x k x seeds transcoders (TopK-family architectures).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any

from saekit.config import doc
from saekit.sae import SAEConfig
from saekit.sae.config import TOPK_LIKE


@dataclass
class TrainConfig:
    """A training run: the cache, the grid of SAEs, the optimiser and the bookkeeping."""

    cache: str = doc("activation cache directory (written by `saekit cache`)", "runs/cache")
    out: str = doc("run directory: one sub-folder per SAE, plus checkpoints", "runs/train")
    hooks: list[str] = doc("hook points of the cache to train SAEs on (empty: every hook in the cache, or "
                           "none when transcode is set)", default_factory=list)
    architecture: str = doc("relu | topk | batchtopk | jumprelu | matryoshka_batchtopk", "topk")
    transcode: dict[str, str] = doc(
        "transcoders to train: input hook -> output hook, e.g. {\"blocks.6.ln2.hook_normalized\" = "
        "\"blocks.6.hook_mlp_out\"} (topk | batchtopk | matryoshka_batchtopk)", default_factory=dict)
    skip_connection: list[bool] = doc("transcoders: with and/or without the linear skip term (one per value)",
                                      default_factory=lambda: [False])
    d_sae: list[int] = doc("latent counts to train (one SAE per value)", default_factory=lambda: [4096])
    k: list[int] = doc("topk/batchtopk: k values to train (one SAE per value)", default_factory=lambda: [32])
    seeds: list[int] = doc("initialisation seeds (one SAE per seed; every SAE sees the same batches)",
                           default_factory=lambda: [0])
    sae: dict[str, Any] = doc("other SAEConfig fields for every SAE, e.g. {l1_coef = 5.0}", default_factory=dict)
    n_tokens: int = doc("training tokens (several epochs over the cache when larger than it)", 10_000_000)
    batch_size: int = doc("tokens per step (the global batch under torchrun)", 4096)
    lr: float | None = doc("Adam learning rate (None: 2e-4 / sqrt(d_sae / 16384), per SAE)", None)
    betas: list[float] = doc("Adam betas", default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = doc("linear learning-rate warm-up steps (at most a tenth of the run)", 1000)
    decay_fraction: float = doc("final fraction of steps over which the lr decays linearly to 0", 0.2)
    sparsity_warmup_fraction: float = doc(
        "relu/jumprelu: fraction of steps over which the L1 / L0 coefficient ramps up from 0", 0.05)
    dead_tokens: int = doc("a latent not active for this many tokens is dead (AuxK, dead fraction)",
                           10_000_000)
    holdout_fraction: float = doc("final fraction of the cache's contexts left out for `saekit eval`", 0.05)
    data_seed: int = doc("seed of the batch order (shared by every SAE in the run)", 0)
    drop_bos: bool = doc("skip BOS positions (their activations are outliers)", True)
    buffer_shards: int = doc("cache shards shuffled together in memory", 4)
    normalize_sample_tokens: int = doc("tokens read to estimate the input scale and b_dec", 65_536)
    nonfinite: str = doc("NaN/Inf activations: raise (naming the shard) | skip (drop the batch)", "raise")
    checkpoint_every: int = doc("tokens between checkpoints (0: only at the end)", 5_000_000)
    keep_checkpoints: int = doc("checkpoints kept on disk (older ones are deleted)", 1)
    log_every: int = doc("steps between lines of training_log.jsonl", 10)
    device: str = doc("auto | cpu | cuda | cuda:N", "auto")
    autocast: bool = doc("bf16 autocast of the forward pass on CUDA (ignored on CPU: float32)", True)
    compile: bool = doc(
        "torch.compile each SAE's forward: one graph, no break (topk/batchtopk/jumprelu); AuxK then runs "
        "every step with a fixed shape; for GPUs, unmeasured there yet", False)
    wandb_project: str = doc("log to this wandb project when wandb is installed ('' = off)", "")
    tensorboard: bool = doc("also write TensorBoard scalars under out/tensorboard when installed", False)

    def __post_init__(self) -> None:
        if self.nonfinite not in ("raise", "skip"):
            raise ValueError(f"TrainConfig.nonfinite must be 'raise' or 'skip', got {self.nonfinite!r}")
        for name in ("n_tokens", "batch_size", "log_every", "buffer_shards", "normalize_sample_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("d_sae", "k", "seeds", "skip_connection"):
            if not getattr(self, name):
                raise ValueError(f"TrainConfig.{name} must list at least one value")
        if not 0 <= self.holdout_fraction < 1:
            raise ValueError(f"TrainConfig.holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if not 0 <= self.decay_fraction <= 1 or not 0 <= self.sparsity_warmup_fraction <= 1:
            raise ValueError("TrainConfig.decay_fraction and sparsity_warmup_fraction must be in [0, 1]")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")

    @property
    def n_steps(self) -> int:
        return -(-self.n_tokens // self.batch_size)


def sae_name(cfg: SAEConfig) -> str:
    """The folder name of one SAE: hook point, architecture, size, k and seed; a transcoder's is under its
    input hook, named by its output hook: `<in>/[skip-]transcoder-<out>-<arch>-<d_sae>-k<k>-seed<s>`."""
    k = f"-k{cfg.k}" if cfg.architecture in TOPK_LIKE else ""
    kind = ""
    if cfg.transcode:
        kind = f"{'skip-' if cfg.skip_connection else ''}transcoder-{cfg.hook_name_out}-"
    return f"{cfg.hook_name}/{kind}{cfg.architecture}-{cfg.d_sae}{k}-seed{cfg.seed}"


def sae_grid(config: TrainConfig, d_ins: dict[str, int], widths: dict[str, int] | None = None) -> list[SAEConfig]:
    """Every SAEConfig of the run: hooks x d_sae x k x seeds (k only varies for the TopK family), then
    the transcoders: transcode pairs x skip_connection x d_sae x k x seeds. d_ins: the SAE hooks'
    widths; widths: every hook's (for the transcoders' input and output hooks; default d_ins).

    Raises ValueError (before any training) for an invalid combination, e.g. k > d_sae.
    """
    widths = d_ins if widths is None else widths
    ks = config.k if config.architecture in TOPK_LIKE else config.k[:1]
    fields = {f.name for f in dataclasses.fields(SAEConfig)}
    unknown = sorted(set(config.sae) - fields)
    if unknown:
        raise ValueError(f"TrainConfig.sae: unknown SAEConfig field(s) {unknown}")
    if config.transcode and config.architecture not in TOPK_LIKE:
        raise ValueError(f"TrainConfig.transcode: saekit trains transcoders of the architectures {TOPK_LIKE}, "
                         f"not {config.architecture!r}")
    missing = sorted({h for pair in config.transcode.items() for h in pair} - set(widths))
    if missing:
        raise ValueError(f"TrainConfig.transcode names hook(s) {missing} the cache does not hold "
                         f"(it holds {sorted(widths)})")
    members = [(hook, None, False) for hook in d_ins]
    members += [(hook_in, hook_out, skip) for hook_in, hook_out in config.transcode.items()
                for skip in dict.fromkeys(config.skip_connection)]
    configs = []
    for (hook, hook_out, skip), d_sae, k, seed in itertools.product(members, config.d_sae, ks, config.seeds):
        values = {**config.sae, "architecture": config.architecture, "d_in": widths[hook], "d_sae": d_sae,
                  "k": k, "seed": seed, "hook_name": hook}
        if hook_out is not None:
            values.update(transcode=True, hook_name_out=hook_out, d_out=widths[hook_out], skip_connection=skip)
        try:
            configs.append(SAEConfig(**values))
        except ValueError as e:
            what = f"transcoder {hook} -> {hook_out}" if hook_out else f"SAE {hook}"
            raise ValueError(f"{what} d_sae={d_sae} k={k} seed={seed}: {e}") from None
    names = [sae_name(c) for c in configs]
    if len(set(names)) != len(names):
        raise ValueError("TrainConfig lists the same SAE twice (repeated d_sae, k or seed)")
    return configs


def default_lr(d_sae: int) -> float:
    """2e-4 / sqrt(d_sae / 16384): the scaling law of Gao et al. (2024), as sparsify uses it."""
    return 2e-4 / (d_sae / 2**14) ** 0.5
