"""Matryoshka BatchTopK SAE (Bussmann, Nabeshima, Karvonen & Nanda 2025, "Learning multi-level features
with Matryoshka sparse autoencoders").

The dictionary is split at nested prefix sizes m_1 < m_2 < ... < m_G = d_sae
(`cfg.matryoshka_prefixes`). The latents are chosen once, by BatchTopK over the whole dictionary
(the batch's tokens*k largest pre-activations); prefix g reconstructs the input from the chosen
latents with index < m_g only:

    recon_g = sum over chosen latents i < m_g of a_i W_dec[i] + b_dec        [tokens, d_in]
    loss    = sum_g FVU(recon_g) + aux_coef * AuxK                          (recon_G: the full SAE)

What this follows: sae-lens's `MatryoshkaBatchTopKTrainingSAE` (6.x), which adds to the BatchTopK
loss (MSE of the full reconstruction + AuxK) one MSE per inner prefix, summed, not averaged; the
full dictionary is the last prefix (appended when missing), its loss counted once; AuxK is the
plain TopK AuxK on the full reconstruction's residual (sae-lens's default,
use_matryoshka_aux_loss = false). saekit's TopK-family losses are FVUs (squared error over the
batch's total variance) rather than per-token MSEs: every term is divided by the same batch
constant, so the sum's relative weights are sae-lens's. Bussmann et al.'s own code averages
rather than sums the prefix losses, which only rescales the reconstruction part against AuxK.

Inference is BatchTopK's: one threshold (a moving average of the smallest kept activation) for
every latent, so the SAE is saved as a JumpReLU, as sae-lens saves its Matryoshka SAEs. The
training forward runs on the sparse kernels (kernels.py): each prefix's reconstruction is a
running sum of per-group sparse decodes, so the G reconstructions cost one sparse decode in all.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saekit.sae.base import ForwardOutput, reconstruction_losses, zero
from saekit.sae.batchtopk import BatchTopKSAE
from saekit.sae.kernels import SparseLatents, select_batch_topk, select_threshold, sparse_decode
from saekit.sae.selection import _offsets
from saekit.sae.topk import auxk_loss, encode_with_aux


def split_by_prefix(latents: SparseLatents, prefixes: list[int]) -> list[SparseLatents]:
    """The active latents of each group [m_{g-1}, m_g) of the prefixes, in CSR form each.

    Entries keep their order (latent ids increase within a token), values stay differentiable."""
    boundaries = torch.tensor(prefixes[:-1], device=latents.indices.device, dtype=latents.indices.dtype)
    groups = torch.bucketize(latents.indices, boundaries, right=True)  # [nnz] group of each entry
    tokens = latents.token_ids()
    parts = []
    for g in range(len(prefixes)):
        keep = groups == g
        parts.append(SparseLatents(latents.values[keep], latents.indices[keep],
                                   _offsets(tokens[keep], latents.n_tokens)))
    return parts


class MatryoshkaBatchTopKSAE(BatchTopKSAE):
    """BatchTopK with nested prefixes, each trained to reconstruct (see the module docstring)."""

    def prefix_reconstructions(self, latents: SparseLatents, x: Tensor) -> list[Tensor]:
        """[G] reconstructions [tokens, d_out], prefix g using the latents below m_g (plus b_dec and
        the skip term of a skip transcoder); the last is the full SAE's."""
        running = self.with_skip(self.b_dec.expand(latents.n_tokens, -1), x)
        out = []
        for part in split_by_prefix(latents, self.cfg.resolved_prefixes):
            running = running + sparse_decode(part, self.W_dec, self.cfg.sparse_impl)
            out.append(running)
        return out

    def forward(self, x: Tensor, dead_mask: Tensor | None = None, target: Tensor | None = None) -> ForwardOutput:
        """Batch top-k in training mode (updates the threshold), the threshold in eval mode.

        loss = sum over prefixes of their FVU + aux_coef * aux_k; mse and fvu are the full SAE's."""
        x = self.check_input(x)
        y = self.prediction_target(x, target)
        select = select_batch_topk(self.cfg.k) if self.training else select_threshold(self.threshold)
        latents, aux_latents = encode_with_aux(self, x, select, dead_mask)
        if self.training:
            self.update_threshold(latents.values.detach())
        recons = self.prefix_reconstructions(latents, x)
        recon = recons[-1]
        mse, fvu = reconstruction_losses(y, recon)
        prefix_fvu = sum((reconstruction_losses(y, r)[1] for r in recons[:-1]), zero(fvu))
        aux_k = auxk_loss(self, y, recon, aux_latents, dead_mask)
        l0 = (latents.values.detach() > 0).sum().to(x.dtype) / x.shape[0]
        return ForwardOutput(recon, latents.values, latents.indices, mse, fvu, l0, zero(fvu), aux_k,
                             fvu + prefix_fvu + self.cfg.aux_coef * aux_k, latents.offsets)
