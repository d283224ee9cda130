"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping ahead: improving reconstruction fidelity with
JumpReLU sparse autoencoders").

latents = pre * H(pre - threshold) with a learned per-latent threshold (kept positive by training
its logarithm). The loss is mse + l0_coef * L0, where L0 counts active latents. The step function H
has no useful gradient, so the threshold learns through straight-through estimators: with a
rectangle kernel K(u) = 1{|u| < 1/2} of width `bandwidth` eps,

    d/dtheta  [pre * H(pre - theta)] = -(theta / eps) K((pre - theta) / eps)
    d/dtheta  H(pre - theta)         = -(1 / eps)     K((pre - theta) / eps)

and the pre-activations get the plain gradient H(pre - theta) through the activation and none
through the L0 term (the paper's choice). The forward is dense, like the ReLU SAE's.

The pre-activations and the estimators run in the parameters' dtype (float32 in training) even
under bf16 autocast, CUDA's default: bf16's spacing near a trained threshold (0.002-0.004 near 0.5)
is wider than the window, so with bf16 pre-activations the rectangle kernel would catch nothing
and most thresholds would get no gradient (tests/test_sae.py, the autocast test). The decoder's
product still runs under autocast. The default threshold and bandwidth are on saekit's input scale
(`SAEConfig.jumprelu_scale`); a loaded SAE (e.g. Gemma Scope) keeps its saved thresholds.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from saekit.sae.base import SAE, ForwardOutput, reconstruction_losses, zero
from saekit.sae.config import SAEConfig


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLUFunction(torch.autograd.Function):
    """pre * H(pre - threshold), with the straight-through gradient for threshold."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.bandwidth = bandwidth
        ctx.save_for_backward(pre, threshold)
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad * (pre > threshold)
        grad_threshold = (-(threshold / eps) * _rectangle((pre - threshold) / eps) * grad).sum(dim=0)
        return grad_pre, grad_threshold, None


class StepFunction(torch.autograd.Function):
    """H(pre - threshold), with the straight-through gradient for threshold and none for pre."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.bandwidth = bandwidth
        ctx.save_for_backward(pre, threshold)
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_threshold = (-(1.0 / eps) * _rectangle((pre - threshold) / eps) * grad).sum(dim=0)
        return torch.zeros_like(pre), grad_threshold, None


class JumpReLUSAE(SAE):
    """A learned threshold per latent; loss = mse + l0_coef * L0."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.log_threshold = nn.Parameter(
            torch.full((cfg.d_sae,), math.log(cfg.resolved_jumprelu_init_threshold), dtype=getattr(torch, cfg.dtype)))

    @property
    def threshold(self) -> Tensor:
        """[d_sae] per-latent threshold, exp(log_threshold)."""
        return self.log_threshold.exp()

    def encode(self, x: Tensor) -> Tensor:
        """Dense latents [..., d_sae]: pre-activations above their latent's threshold, 0 elsewhere."""
        pre = self.pre_acts(self.check_input(x))
        latents = pre * (pre > self.threshold)
        return latents.reshape(*x.shape[:-1], self.cfg.d_sae)

    def forward(self, x: Tensor, dead_mask: Tensor | None = None) -> ForwardOutput:
        """Training pass on x [tokens, d_in]; dead_mask is ignored. loss = mse + l0_coef * l0."""
        x = self.check_input(x)
        bandwidth = self.cfg.resolved_jumprelu_bandwidth
        with torch.autocast(x.device.type, enabled=False):  # pre-activations and STE in full precision
            pre = self.pre_acts(x)
            threshold = self.threshold
            latents = JumpReLUFunction.apply(pre, threshold, bandwidth)
            l0 = StepFunction.apply(pre, threshold, bandwidth).sum(dim=1).mean()
        recon = self.decode(latents)
        mse, fvu = reconstruction_losses(x, recon)
        return ForwardOutput(recon, latents, None, mse, fvu, l0, zero(mse), zero(mse),
                             mse + self.cfg.l0_coef * l0)

    def inference_tensors(self) -> dict[str, Tensor]:
        return {**super().inference_tensors(), "threshold": self.threshold.detach()}

    @torch.no_grad()
    def load_inference_tensors(self, tensors: dict[str, Tensor]) -> None:
        super().load_inference_tensors(tensors)
        self.log_threshold.copy_(tensors["threshold"].log())
