"""ReLU SAE with an L1 penalty (Anthropic, "Circuits Updates - April 2024").

latents = relu(pre_acts); loss = mse + l1_coef * sum_i latent_i * ||W_dec[i]||, the L1 norm of the
latents weighted by their decoder rows' norms, so the penalty cannot be dodged by shrinking latents
and growing decoder rows; the decoder is therefore left unconstrained. Anthropic train on inputs
scaled to E||x|| = sqrt(d_in) (normalize_activations = "expected_norm") with a coefficient about 5.
"""

from __future__ import annotations

from torch import Tensor

from saekit.sae.base import SAE, ForwardOutput, reconstruction_losses, zero


class ReLUSAE(SAE):
    """relu(pre_acts); L1 penalty weighted by decoder row norms."""

    def encode(self, x: Tensor) -> Tensor:
        """Dense latents [..., d_sae] = relu(pre_acts)."""
        latents = self.pre_acts(self.check_input(x)).relu()
        return latents.reshape(*x.shape[:-1], self.cfg.d_sae)

    def forward(self, x: Tensor, dead_mask: Tensor | None = None) -> ForwardOutput:
        """Training pass on x [tokens, d_in]; dead_mask is ignored. loss = mse + l1_coef * l1."""
        x = self.check_input(x)
        latents = self.pre_acts(x).relu()
        recon = self.decode(latents)
        mse, fvu = reconstruction_losses(x, recon)
        l1 = (latents @ self.W_dec.norm(dim=1)).mean()
        l0 = (latents.detach() > 0).sum(dim=1).to(x.dtype).mean()
        return ForwardOutput(recon, latents, None, mse, fvu, l0, l1, zero(mse), mse + self.cfg.l1_coef * l1)
