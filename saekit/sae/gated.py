"""Gated SAE (Rajamanoharan et al. 2024, "Improving dictionary learning with gated sparse
autoencoders"), for inference only: saekit loads gated SAEs trained elsewhere (sae-lens's "gated"
architecture) so that eval, match and the interp stages can read them; it does not train them.

A gate decides which latents fire and a magnitude path, sharing the gate's encoder directions
rescaled per latent by exp(r_mag), decides by how much:

    centered   = x - b_dec                                        [tokens, d_in]
    gate_pre   = centered @ W_enc + b_gate                        [tokens, d_sae]   (`pre_acts`)
    magnitude  = relu(centered @ (W_enc * exp(r_mag)) + b_mag)    [tokens, d_sae]
    latents    = (gate_pre > 0) * magnitude                       [tokens, d_sae]
    recon      = latents @ W_dec + b_dec                          [tokens, d_in]

Tensors keep SAELens's names: W_enc [d_in, d_sae], b_gate, r_mag, b_mag [d_sae], W_dec [d_sae, d_in],
b_dec [d_in]. `b_enc` is the gate's bias (the same tensor as `b_gate`), so code that reads an SAE's
`pre_acts`, `W_enc` or `b_enc` sees the gate.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from saekit.sae.base import SAE, ForwardOutput
from saekit.sae.config import SAEConfig

GATED_TENSORS = ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec")


class GatedSAE(SAE):
    """A gate (W_enc, b_gate) picks the active latents, a magnitude path (W_enc * exp(r_mag), b_mag) sizes them."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        dtype = getattr(torch, cfg.dtype)
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))

    @property
    def b_gate(self) -> Tensor:
        """[d_sae] the gate's bias (stored as `b_enc`)."""
        return self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        """Dense latents [..., d_sae]: the magnitude path where the gate is open, 0 elsewhere."""
        flat = self.check_input(x)
        centered = flat - self.b_dec
        gate_open = torch.addmm(self.b_enc, centered, self.W_enc) > 0
        magnitude = torch.addmm(self.b_mag, centered, self.W_enc * self.r_mag.exp()).relu()
        return (magnitude * gate_open).reshape(*x.shape[:-1], self.cfg.d_sae)

    def forward(self, x: Tensor, dead_mask: Tensor | None = None) -> ForwardOutput:
        """Not available: saekit loads gated SAEs for inference but does not train them."""
        raise NotImplementedError("GatedSAE is inference-only in saekit (encode/decode); train gated SAEs "
                                  "with sae-lens and load them with saekit.load_sae")

    def inference_tensors(self) -> dict[str, Tensor]:
        return {"W_enc": self.W_enc.detach(), "b_gate": self.b_enc.detach(), "r_mag": self.r_mag.detach(),
                "b_mag": self.b_mag.detach(), "W_dec": self.W_dec.detach(), "b_dec": self.b_dec.detach()}

    @torch.no_grad()
    def load_inference_tensors(self, tensors: dict[str, Tensor]) -> None:
        for name, param in (("W_enc", self.W_enc), ("b_gate", self.b_enc), ("r_mag", self.r_mag),
                            ("b_mag", self.b_mag), ("W_dec", self.W_dec), ("b_dec", self.b_dec)):
            param.copy_(tensors[name])
