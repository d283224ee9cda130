"""TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

Exactly k latents are active per token: latents = relu(topk_k(pre_acts)). The decoder rows are kept
at unit norm by the trainer (`weights.normalize_decoder_` after each step and
`weights.remove_parallel_decoder_grad_` before it). The loss is the FVU plus `aux_coef` times the
AuxK loss: the top `k_aux` dead latents reconstruct the residual x - recon, which gives dead
latents a gradient (Gao et al. use k_aux = 512 and coefficient 1/32; here k_aux defaults to
d_in // 2 as in EleutherAI's sparsify, and the loss is scaled down when fewer latents are dead).

The training forward never forms a dense [tokens, d_sae] latent matrix: it works on
(top_acts, top_indices) [tokens, k] end to end (saekit/sae/kernels.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from saekit.sae.base import SAE, ForwardOutput, reconstruction_losses, zero
from saekit.sae.kernels import (Selection, SparseLatents, select_dead_topk, select_topk, select_topk_among,
                                sparse_decode, sparse_encode_many, topk_decode, topk_encode)


class TopKSAE(SAE):
    """k active latents per token; sparse forward and backward."""

    def encode(self, x: Tensor) -> Tensor:
        """Dense latents [..., d_sae]: relu of each token's k largest pre-activations, 0 elsewhere."""
        flat = self.check_input(x)
        top_acts, top_indices = self.topk(flat)
        dense = top_acts.new_zeros(flat.shape[0], self.cfg.d_sae).scatter_(1, top_indices, top_acts)
        return dense.reshape(*x.shape[:-1], self.cfg.d_sae)

    def topk(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(top_acts [tokens, k], top_indices [tokens, k]) for x [tokens, d_in]; indices increase along k."""
        return topk_encode(x, self.W_enc, self.b_enc, self.input_bias, self.cfg.k, self.cfg.sparse_impl)

    def decode_sparse(self, top_acts: Tensor, top_indices: Tensor) -> Tensor:
        """Reconstruction [tokens, d_in] from the k active latents, gathering k decoder rows per token."""
        return topk_decode(top_acts, top_indices, self.W_dec, self.cfg.sparse_impl) + self.b_dec

    def forward(self, x: Tensor, dead_mask: Tensor | None = None, target: Tensor | None = None) -> ForwardOutput:
        """Training pass on x [tokens, d_in] (a transcoder: predicting target); loss = fvu + aux_coef * aux_k."""
        x = self.check_input(x)
        y = self.prediction_target(x, target)
        latents, aux_latents = encode_with_aux(self, x, select_topk(self.cfg.k), dead_mask)
        k = self.cfg.k
        recon = self.with_skip(sparse_decode(latents, self.W_dec, self.cfg.sparse_impl) + self.b_dec, x)
        mse, fvu = reconstruction_losses(y, recon)
        aux_k = auxk_loss(self, y, recon, aux_latents, dead_mask)
        top_acts, top_indices = latents.values.view(-1, k), latents.indices.view(-1, k)
        l0 = (top_acts.detach() > 0).sum(dim=1).to(x.dtype).mean()
        return ForwardOutput(recon, top_acts, top_indices, mse, fvu, l0, zero(fvu), aux_k,
                             fvu + self.cfg.aux_coef * aux_k)


def encode_with_aux(sae: SAE, x: Tensor, select: Selection, dead_mask: Tensor | None
                    ) -> tuple[SparseLatents, SparseLatents | None]:
    """The selected latents of x [tokens, d_in] and, when some latents are dead (dead_mask [d_sae]
    bool), AuxK's: each token's top k_aux dead latents, read from the same pre-activations.

    Eager mode reads back whether any latent is dead (one host sync) and skips AuxK when none is;
    under torch.compile AuxK always runs, with a fixed shape (`select_dead_topk`: zero entries
    where fewer than k_aux are dead), so the graph has no break and the loss is the same."""
    cfg = sae.cfg
    selects = [select]
    if dead_mask is not None and torch.compiler.is_compiling():
        selects.append(select_dead_topk(dead_mask, cfg.resolved_k_aux))
    elif dead_mask is not None and bool(dead_mask.any()):
        dead = dead_mask.nonzero().squeeze(1)
        selects.append(select_topk_among(dead, min(cfg.resolved_k_aux, dead.numel())))
    parts = sparse_encode_many(x, sae.W_enc, sae.b_enc, sae.input_bias, selects, cfg.sparse_impl)
    return parts[0], (parts[1] if len(parts) > 1 else None)


def auxk_loss(sae: SAE, x: Tensor, recon: Tensor, aux_latents: SparseLatents | None,
              dead_mask: Tensor | None) -> Tensor:
    """AuxK loss (Gao et al. 2024, appendix A.2): how well the dead latents reconstruct the residual.

    aux_latents are the top k_aux pre-activations among dead latents (dead_mask [d_sae] bool), from
    `encode_with_aux`; they decode, without b_dec, to an estimate of the residual x - recon (x is
    the target: a transcoder's output activation)
    (detached); the squared error is divided by the total variance of x, like the FVU, and scaled
    by min(n_dead / k_aux, 1). 0 when none are dead.
    """
    if aux_latents is None or dead_mask is None:
        return zero(recon)
    scale = (dead_mask.sum() / sae.cfg.resolved_k_aux).clamp(max=1.0).to(recon.dtype)  # a tensor: no sync
    residual_hat = sparse_decode(aux_latents, sae.W_dec, sae.cfg.sparse_impl)
    residual = (x - recon).detach()
    total_variance = (x - x.mean(dim=0)).pow(2).sum().clamp_min(torch.finfo(x.dtype).tiny)
    return scale * (residual_hat - residual).pow(2).sum() / total_variance
