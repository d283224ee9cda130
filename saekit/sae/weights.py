"""Operations on an SAE's weights that the trainer calls: b_dec init, input scaling and its folding,
and the unit-norm decoder constraint of TopK/BatchTopK.

Input normalization ("expected_norm", Anthropic April 2024): the trainer multiplies raw
activations by s = sqrt(d_in) / E||x|| (`estimate_activation_scale`) and the SAE trains on s * x.
`fold_normalization` then rewrites the weights so that the SAE takes raw x. With
pre(s x) = (s x - b_dec) W_enc + b_enc = s [(x - b_dec / s) W_enc + b_enc / s], dividing b_dec,
b_enc and any threshold by s gives pre-activations pre(s x) / s: the same latents chosen, every
activation divided by s (ReLU, TopK and thresholds all commute with a positive scale), and the
reconstruction latents / s @ W_dec + b_dec / s = recon(s x) / s, i.e. in raw units. W_enc and
W_dec are untouched, so a unit-norm decoder stays unit-norm and each latent's activation times its
decoder row is its contribution to the raw activation.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from saekit.sae.base import SAE
from saekit.sae.config import SAEConfig


def geometric_median(points: Tensor, max_iter: int = 100, tol: float = 1e-6) -> Tensor:
    """[d] the point minimising the sum of Euclidean distances to points [n, d] (Weiszfeld's
    algorithm in float64, started at the mean; stops when a step moves less than tol * scale)."""
    points64 = points.detach().to(torch.float64)
    median = points64.mean(dim=0)
    scale = points64.norm(dim=1).mean().clamp_min(1e-12)
    for _ in range(max_iter):
        distances = (points64 - median).norm(dim=1).clamp_min(1e-12)
        weights = 1.0 / distances
        updated = (weights[:, None] * points64).sum(dim=0) / weights.sum()
        moved = (updated - median).norm()
        median = updated
        if moved < tol * scale:
            break
    return median.to(points.dtype)


def estimate_activation_scale(sample: Tensor) -> float:
    """s such that E||s * x|| = sqrt(d_in), from raw activations sample [tokens, d_in]."""
    mean_norm = float(sample.detach().to(torch.float64).norm(dim=-1).mean())
    if not math.isfinite(mean_norm) or mean_norm == 0:
        raise ValueError(f"cannot normalize activations whose mean norm is {mean_norm}")
    return math.sqrt(sample.shape[-1]) / mean_norm


@torch.no_grad()
def init_b_dec(sae: SAE, sample: Tensor) -> None:
    """Set b_dec from sample [tokens, d_in] per cfg.b_dec_init: mean, geometric_median or zeros.

    The sample must be in the units the SAE trains on (already multiplied by activation_scale); for a
    transcoder it is a sample of the output hook [tokens, d_out] (b_dec lives there).
    """
    width = sae.b_dec.shape[0]
    if sample.shape[-1] != width:
        raise ValueError(f"b_dec sample has width {sample.shape[-1]} but b_dec has {width}")
    sample = sample.reshape(-1, width)
    if sae.cfg.b_dec_init == "mean":
        sae.b_dec.copy_(sample.to(torch.float64).mean(dim=0))
    elif sae.cfg.b_dec_init == "geometric_median":
        sae.b_dec.copy_(geometric_median(sample))
    else:
        sae.b_dec.zero_()


@torch.no_grad()
def normalize_decoder_(sae: SAE, eps: float = 1e-12) -> None:
    """Scale every decoder row W_dec[i] to unit norm, in place (after each optimizer step)."""
    sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp_min(eps))


@torch.no_grad()
def remove_parallel_decoder_grad_(sae: SAE, eps: float = 1e-12) -> None:
    """Remove from W_dec.grad [d_sae, d_in] each row's component along its decoder row, in place
    (before each optimizer step), so that a step does not change the rows' norms to first order."""
    if sae.W_dec.grad is None:
        return
    squared_norms = sae.W_dec.pow(2).sum(dim=1, keepdim=True).clamp_min(eps)
    parallel = (sae.W_dec.grad * sae.W_dec).sum(dim=1, keepdim=True) / squared_norms
    sae.W_dec.grad.sub_(parallel * sae.W_dec)


def folded_tensors(tensors: dict[str, Tensor], scale: float, scale_out: float | None = None) -> dict[str, Tensor]:
    """The inference tensors (by SAELens name) of an SAE trained on scale * x, rewritten to take raw x:
    b_enc, b_dec and threshold divided by scale; W_enc and W_dec unchanged.

    A transcoder trained to map s x to t y (scale s, scale_out t): latents are divided by t (b_enc
    and threshold / t, W_enc * s / t), so the unit-norm W_dec is unchanged and a latent times its
    decoder row is its contribution to raw y; b_dec / t and W_skip * s / t. With t = s (an SAE) this
    is the rule above."""
    scale_out = scale if scale_out is None else scale_out
    for value in (scale, scale_out):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"activation scale must be finite and > 0, got {value}")
    ratio = scale / scale_out
    out = {}
    for name, value in tensors.items():
        if name in ("b_enc", "b_dec", "threshold"):
            value = value / scale_out
        elif name in ("W_enc", "W_skip") and ratio != 1.0:
            value = value * ratio
        out[name] = value
    return out


def folded_config(cfg: SAEConfig, scale: float, scale_out: float | None = None) -> SAEConfig:
    """cfg after folding scale (and a transcoder's scale_out): normalize_activations "none", scales 1,
    the folded ones recorded."""
    scale_out = scale if scale_out is None else scale_out
    return dataclasses.replace(cfg, normalize_activations="none", activation_scale=1.0, activation_scale_out=1.0,
                               folded_activation_scale=cfg.folded_activation_scale * scale,
                               folded_activation_scale_out=cfg.folded_activation_scale_out
                               * (scale_out if cfg.transcode else 1.0))


def output_scale(cfg: SAEConfig) -> float:
    """The factor a transcoder's targets are multiplied by in training; an SAE's input scale."""
    return cfg.activation_scale_out if cfg.transcode else cfg.activation_scale


@torch.no_grad()
def fold_normalization(sae: SAE, scale: float | None = None) -> None:
    """Rewrite, in place, an SAE trained on scale * x so that it takes raw x (see the module docstring).

    scale defaults to cfg.activation_scale. Afterwards latents are those of the trained SAE divided
    by scale and reconstructions are in raw units; the config says normalize_activations = "none".
    """
    scale = sae.cfg.activation_scale if scale is None else scale
    scale_out = output_scale(sae.cfg) if sae.cfg.transcode else scale
    sae.load_inference_tensors(folded_tensors(sae.inference_tensors(), scale, scale_out))
    sae.cfg = folded_config(sae.cfg, scale, scale_out)
