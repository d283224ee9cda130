"""Reconstruction and sparsity metrics of an SAE over a stream of activations, accumulated in one pass.

Names follow SAELens/SAEBench so numbers compare across tools:

- `mse`: mean over tokens and dimensions of (x - x_hat)^2;
- `fvu`: sum (x - x_hat)^2 / sum (x - mean)^2, the mean taken per dimension over all evaluated
  tokens (as SAEBench and sparsify do); `explained_variance` = 1 - fvu;
- `cossim`: mean over tokens of cos(x, x_hat);
- `l0`: mean active latents per token; `l1`: mean over tokens of the sum of latent activations;
- `dead_fraction`: latents never active over the evaluated tokens; `dense_fraction`: latents
  active on more than 10% of them; `frequency`: per-latent activation frequency (fraction of tokens).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

DENSE_FREQUENCY = 0.1


@dataclass
class ReconstructionStats:
    """Running sums over batches; `summary()` turns them into the metrics."""

    d_in: int
    d_sae: int
    n_tokens: int = 0
    sum_x: torch.Tensor = field(init=False)
    sum_x2: torch.Tensor = field(init=False)
    sum_sq_error: float = 0.0
    sum_cossim: float = 0.0
    sum_l0: float = 0.0
    sum_l1: float = 0.0
    fire_counts: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.sum_x = torch.zeros(self.d_in, dtype=torch.float64)
        self.sum_x2 = torch.zeros(self.d_in, dtype=torch.float64)
        self.fire_counts = torch.zeros(self.d_sae, dtype=torch.int64)

    @torch.no_grad()
    def update(self, x: torch.Tensor, latents: torch.Tensor, recon: torch.Tensor) -> None:
        """x, recon [tokens, d_in]; latents [tokens, d_sae] (dense)."""
        x64, recon64 = x.double().cpu(), recon.double().cpu()
        self.n_tokens += x.shape[0]
        self.sum_x += x64.sum(0)
        self.sum_x2 += x64.pow(2).sum(0)
        self.sum_sq_error += float((x64 - recon64).pow(2).sum())
        self.sum_cossim += float(torch.nn.functional.cosine_similarity(x64, recon64, dim=-1).sum())
        active = latents != 0
        self.sum_l0 += float(active.sum())
        self.sum_l1 += float(latents.double().abs().sum())
        self.fire_counts += active.sum(0).cpu()

    @property
    def mean_activation(self) -> torch.Tensor:
        """[d_in] mean of x over the evaluated tokens (for mean-ablation)."""
        return (self.sum_x / max(self.n_tokens, 1)).float()

    def summary(self) -> dict[str, float]:
        n = max(self.n_tokens, 1)
        total_variance = float((self.sum_x2 - self.sum_x.pow(2) / n).sum())
        fvu = self.sum_sq_error / total_variance if total_variance > 0 else float("nan")
        frequency = self.fire_counts.double() / n
        return {
            "n_tokens": self.n_tokens,
            "mse": self.sum_sq_error / (n * self.d_in),
            "fvu": fvu,
            "explained_variance": 1.0 - fvu,
            "cossim": self.sum_cossim / n,
            "l0": self.sum_l0 / n,
            "l1": self.sum_l1 / n,
            "dead_fraction": float((self.fire_counts == 0).double().mean()),
            "dense_fraction": float((frequency > DENSE_FREQUENCY).double().mean()),
            "n_dead": int((self.fire_counts == 0).sum()),
            "n_dense": int((frequency > DENSE_FREQUENCY).sum()),
        }

    def frequency(self) -> torch.Tensor:
        """[d_sae] fraction of evaluated tokens on which each latent was active."""
        return self.fire_counts.double() / max(self.n_tokens, 1)


def log10_frequency_histogram(frequency: torch.Tensor, n_bins: int = 50) -> dict[str, list[float] | int]:
    """Histogram of log10(frequency) over live latents: {edges, counts, n_dead} (dead latents apart)."""
    live = frequency[frequency > 0]
    if live.numel() == 0:
        return {"edges": [], "counts": [], "n_dead": int(frequency.numel())}
    logs = live.log10()
    lo, hi = float(logs.min()), float(logs.max())
    hi = hi if hi > lo else lo + 1e-6
    counts = torch.histc(logs, bins=n_bins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, n_bins + 1)
    return {"edges": edges.tolist(), "counts": [int(c) for c in counts], "n_dead": int((frequency == 0).sum())}


def run_record(cache: Any, context_range: Any, manifest: dict[str, Any], started: float, sae: Any,
               stats: ReconstructionStats, config: Any) -> dict[str, Any]:
    """The fields every eval.json carries besides its metrics: where the tokens came from (cache,
    context range, dataset, model, the cache's and the SAE's training cache's digests), the seconds
    since `started`, the latents' firing frequencies [d_sae] (read by saekit match) and the config."""
    from saekit.config import config_to_dict
    from saekit.data.provenance import manifest_digest

    return {
        "cache": str(cache), "context_range": list(context_range), "dataset": manifest.get("dataset", {}),
        "model": manifest.get("model", {}), "seconds": round(time.time() - started, 2),
        "cache_digest": manifest_digest(manifest),
        "sae_cache_digest": (getattr(sae, "provenance", None) or {}).get("cache_digest"),
        "frequency_histogram": log10_frequency_histogram(stats.frequency()),
        "latent_frequency": stats.frequency().tolist(),
        "config": config_to_dict(config),
    }
