"""Activation-side numbers of a matching, over the same tokens of a cache: each latent's firing
frequency, and the Pearson correlation of every matched pair's activations.

The tokens are the cache's last contexts (the part `saekit train` holds out, as `saekit eval` uses),
BOS positions dropped. Memory is O(d_sae) per SAE and pair: sums are accumulated batch by batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from saekit.data import ActivationStore, read_manifest
from saekit.match.pair import PairMatch
from saekit.sae import SAE


@dataclass
class _PairSums:
    """Running sums for the correlation of small[:, i] with large[:, partner[i]] over tokens."""

    sx: torch.Tensor
    sy: torch.Tensor
    sxx: torch.Tensor
    syy: torch.Tensor
    sxy: torch.Tensor

    @classmethod
    def zeros(cls, n: int) -> "_PairSums":
        return cls(*(torch.zeros(n, dtype=torch.float64) for _ in range(5)))

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """x, y [tokens, n] activations of the matched latents."""
        x, y = x.double().cpu(), y.double().cpu()
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.sxx += (x * x).sum(0)
        self.syy += (y * y).sum(0)
        self.sxy += (x * y).sum(0)

    def correlation(self, n: int) -> np.ndarray:
        """[n_latents] Pearson correlation; NaN where either latent never varies (e.g. never fires)."""
        cov = n * self.sxy - self.sx * self.sy
        var = (n * self.sxx - self.sx**2) * (n * self.syy - self.sy**2)
        out = cov / var.clamp_min(0).sqrt()
        out[var <= 0] = float("nan")
        return out.clamp(-1, 1).numpy()


def held_out_range(cache: str | Path, n_tokens: int) -> tuple[int, int]:
    """(first, last) contexts: the cache's last contexts holding about n_tokens tokens."""
    manifest = read_manifest(cache)
    n_contexts = min(manifest["n_contexts"], max(1, -(-n_tokens // manifest["ctx_len"])))
    return manifest["n_contexts"] - n_contexts, manifest["n_contexts"]


@torch.no_grad()
def activation_stats(saes: list[SAE], pairs: dict[tuple[int, int], PairMatch], cache: str | Path,
                     n_tokens: int = 100_000, batch_size: int = 1024, device: str | torch.device = "cpu"
                     ) -> tuple[list[np.ndarray], dict[tuple[int, int], np.ndarray]]:
    """(frequency per SAE [d_sae], correlation per pair [d_sae of the pair's smaller side]).

    The correlation of a pair is between each latent of its smaller side and its decoder partner.
    Every SAE reads its own hook point of the cache; the rows are the same tokens for all.
    """
    device = torch.device(device)
    hooks = list(dict.fromkeys(sae.cfg.hook_name for sae in saes))
    store = ActivationStore(cache, hooks, batch_size=batch_size, shuffle=False, drop_bos=True,
                            context_range=held_out_range(cache, n_tokens), device=device)
    counts = [torch.zeros(sae.cfg.d_sae, dtype=torch.int64) for sae in saes]
    sums = {key: _PairSums.zeros(pair.small.d_sae) for key, pair in pairs.items()}
    partners = {key: torch.as_tensor(pair.small.decoder_partner, device=device) for key, pair in pairs.items()}
    n_seen = 0
    for batch in store:
        acts = [sae.to(device).encode(batch[sae.cfg.hook_name].to(sae.W_enc.dtype)).float() for sae in saes]
        n_seen += acts[0].shape[0]
        for count, latent_acts in zip(counts, acts):
            count += (latent_acts != 0).sum(0).cpu()
        for (i, j), pair in pairs.items():
            small, large = (acts[j], acts[i]) if pair.swapped else (acts[i], acts[j])
            sums[(i, j)].add(small, large[:, partners[(i, j)]])
    frequencies = [(c.double() / max(n_seen, 1)).numpy() for c in counts]
    return frequencies, {key: s.correlation(n_seen) for key, s in sums.items()}
