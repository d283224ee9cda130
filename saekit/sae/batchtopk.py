"""BatchTopK SAE (Bussmann, Leask & Nanda 2024, "BatchTopK sparse autoencoders").

In training, the tokens*k largest activations of the whole batch are kept, so tokens use k latents
on average but a varying number each. Inference cannot depend on the batch, so the SAE keeps a
single threshold: a moving average of the smallest activation kept in each training batch. At
inference a latent is active when its pre-activation exceeds the threshold (a JumpReLU with one
threshold for every latent; saved as SAELens's `jumprelu` with `threshold` [d_sae]).

Loss as for TopK: fvu + aux_coef * AuxK. The training forward is sparse (kernels.py, selection.py):
no dense [tokens, d_sae] latent matrix, fixed shapes and no host sync (the threshold moves by tensor
ops), so it compiles to one graph. Under torchrun the selection is the global batch's top k*B
(`select_batch_topk` all-gathers each rank's candidates) and the threshold update takes the global
smallest kept activation, so 2 ranks train what 1 process trains. `forward` in eval mode uses the
threshold, like `encode`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saekit.sae.base import SAE, ForwardOutput, reconstruction_losses, zero
from saekit.sae.config import SAEConfig
from saekit.sae.kernels import sparse_decode
from saekit.sae.selection import global_min, select_batch_topk, select_threshold
from saekit.sae.topk import auxk_loss, encode_with_aux


class BatchTopKSAE(SAE):
    """k active latents per token on average over a batch; a learned threshold for inference."""

    threshold: Tensor  # [d_sae] buffer, every entry the same value; 0 until the first training step

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.register_buffer("threshold", torch.zeros(cfg.d_sae, dtype=getattr(torch, cfg.dtype)))

    def encode(self, x: Tensor) -> Tensor:
        """Dense latents [..., d_sae]: pre-activations above the threshold, 0 elsewhere."""
        pre = self.pre_acts(self.check_input(x))
        latents = pre * (pre > self.threshold.clamp_min(0))
        return latents.reshape(*x.shape[:-1], self.cfg.d_sae)

    def forward(self, x: Tensor, dead_mask: Tensor | None = None, target: Tensor | None = None) -> ForwardOutput:
        """Batch top-k in training mode (updates the threshold), the threshold in eval mode.

        The latents come in CSR form (latent_acts [nnz], latent_indices [nnz], latent_offsets
        [tokens + 1]): tokens keep different numbers of latents; in training nnz is the batch's
        k*B (entries below the global cutoff, under torchrun, hold 0). loss = fvu + aux_coef * aux_k.
        """
        x = self.check_input(x)
        y = self.prediction_target(x, target)
        select = select_batch_topk(self.cfg.k) if self.training else select_threshold(self.threshold)
        latents, aux_latents = encode_with_aux(self, x, select, dead_mask)
        if self.training:
            self.update_threshold(latents.values.detach())
        recon = self.with_skip(sparse_decode(latents, self.W_dec, self.cfg.sparse_impl) + self.b_dec, x)
        mse, fvu = reconstruction_losses(y, recon)
        aux_k = auxk_loss(self, y, recon, aux_latents, dead_mask)
        l0 = (latents.values.detach() > 0).sum().to(x.dtype) / x.shape[0]
        return ForwardOutput(recon, latents.values, latents.indices, mse, fvu, l0, zero(fvu), aux_k,
                             fvu + self.cfg.aux_coef * aux_k, latents.offsets)

    @torch.no_grad()
    def update_threshold(self, kept_acts: Tensor) -> None:
        """Move the threshold toward the smallest positive activation kept in this batch (over
        every rank under torchrun); tensor ops only, no host sync.

        The first update sets it outright (a threshold of 0 means "never updated"); a batch with
        no positive activation leaves it as it was.
        """
        inf = torch.full((), torch.inf, dtype=kept_acts.dtype, device=kept_acts.device)
        smallest = global_min(torch.where(kept_acts > 0, kept_acts, inf).amin()).to(self.threshold.dtype)
        moved = torch.where(self.threshold == 0, smallest,
                            self.threshold.lerp(smallest.expand_as(self.threshold), self.cfg.batchtopk_threshold_lr))
        self.threshold.copy_(torch.where(torch.isfinite(smallest), moved, self.threshold))

    def inference_tensors(self) -> dict[str, Tensor]:
        return {**super().inference_tensors(), "threshold": self.threshold.detach()}

    @torch.no_grad()
    def load_inference_tensors(self, tensors: dict[str, Tensor]) -> None:
        super().load_inference_tensors(tensors)
        self.threshold.copy_(tensors["threshold"])
