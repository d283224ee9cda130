"""What every SAE architecture shares: parameters, init, encode/decode, the forward's outputs and losses.

Parameters follow SAELens's names and shapes, so saved files match its layout:
W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in].

    pre_acts   = (x - b_dec) @ W_enc + b_enc          [tokens, d_sae]
    latents    = activation(pre_acts)                 [tokens, d_sae]   (per architecture)
    recon      = latents @ W_dec + b_dec              [tokens, d_in]

Each architecture (relu.py, topk.py, batchtopk.py, jumprelu.py) subclasses `SAE` once and defines
`encode` (dense latents, for inference and evaluation) and `forward` (the training pass, returning
a `ForwardOutput` with the losses of its paper's recipe).

Transcoders (`cfg.transcode`; saekit/sae/transcoder.py) are the same classes reading one activation
x [tokens, d_in] and predicting another y [tokens, d_out]: W_dec [d_sae, d_out], b_dec [d_out], no
input centring (pre_acts = x @ W_enc + b_enc, as in sae-lens and sparsify), and with
`skip_connection` a linear term x @ W_skip.T (W_skip [d_out, d_in]). `reconstruct(x)` is the
output either way; `forward(x, dead_mask, target=y)` trains on the target.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from saekit.sae.config import SAEConfig


class ForwardOutput(NamedTuple):
    """What one forward pass returns; `loss` is the quantity to backpropagate.

    Loss terms an architecture does not use are zero tensors.
    """

    recon: Tensor  # [tokens, d_in] reconstruction
    # topk: [tokens, k] with latent_indices; batchtopk: [nnz] in CSR form with latent_indices and
    # latent_offsets (tokens keep different numbers); relu/jumprelu: dense [tokens, d_sae]
    latent_acts: Tensor
    latent_indices: Tensor | None  # int64 latent ids shaped as latent_acts (topk, batchtopk), else None
    mse: Tensor  # squared error summed over d_in, mean over tokens
    fvu: Tensor  # fraction of variance unexplained: sum of squared error / sum of squared deviation
    l0: Tensor  # mean number of active latents per token (differentiable for jumprelu)
    l1: Tensor  # relu: mean over tokens of sum_i latent_i * ||W_dec[i]||
    aux_k: Tensor  # topk/batchtopk: AuxK loss, the dead latents' reconstruction of the residual (FVU)
    loss: Tensor  # the total training loss of the architecture's recipe
    latent_offsets: Tensor | None = None  # batchtopk: [tokens + 1] CSR row pointers into latent_acts

    def dense_latents(self, d_sae: int) -> Tensor:
        """[tokens, d_sae] dense latents, whatever the architecture's form (for tests and analysis)."""
        if self.latent_indices is None:
            return self.latent_acts
        if self.latent_offsets is None:
            return self.latent_acts.new_zeros(self.latent_acts.shape[0], d_sae).scatter(
                1, self.latent_indices, self.latent_acts)
        counts = self.latent_offsets.diff()
        rows = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
        return self.latent_acts.new_zeros(counts.numel(), d_sae).index_put(
            (rows, self.latent_indices), self.latent_acts, accumulate=True)


class SAE(nn.Module):
    """Base of the four architectures: parameters, init, `pre_acts`, `decode`."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dtype = getattr(torch, cfg.dtype)
        generator = torch.Generator().manual_seed(cfg.seed)
        # Decoder rows: random unit directions; encoder: their transpose (Gao et al. 2024).
        init_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        d_out = cfg.resolved_d_out
        W_dec = torch.randn(cfg.d_sae, d_out, generator=generator, dtype=init_dtype)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        W_enc = W_dec  # an autoencoder's encoder starts as its decoder's transpose; a transcoder's apart
        if cfg.transcode:
            W_enc = torch.randn(cfg.d_sae, cfg.d_in, generator=generator, dtype=init_dtype)
            W_enc /= W_enc.norm(dim=1, keepdim=True)
        # W_enc [d_in, d_sae] is stored as the transpose of a contiguous [d_sae, d_in] tensor: each
        # latent's encoder weights are contiguous, the layout the sparse backward writes its gradient in.
        self.W_enc = nn.Parameter(W_enc.to(dtype, copy=True).t())  # a copy: untied from W_dec
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(W_dec.to(dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_out, dtype=dtype))
        if cfg.skip_connection:
            self.W_skip = nn.Parameter(torch.zeros(d_out, cfg.d_in, dtype=dtype))

    @property
    def input_bias(self) -> Tensor:
        """[d_in] what the encoder subtracts from its input: b_dec for an autoencoder, zeros for a transcoder."""
        return self.W_enc.new_zeros(self.cfg.d_in) if self.cfg.transcode else self.b_dec

    def skip(self, x: Tensor) -> Tensor | None:
        """[..., d_out] the skip term x @ W_skip.T of a skip transcoder, else None."""
        return x @ self.W_skip.t() if self.cfg.skip_connection else None

    def reconstruct(self, x: Tensor) -> Tensor:
        """[..., d_out] the output for x [..., d_in]: decode(encode(x)), plus the skip term if any."""
        out = self.decode(self.encode(x))
        skip = self.skip(x.to(out.dtype))
        return out if skip is None else out + skip

    def pre_acts(self, x: Tensor) -> Tensor:
        """[tokens, d_sae] = (x - b_dec) @ W_enc + b_enc for x [tokens, d_in]."""
        return torch.addmm(self.b_enc, x - self.input_bias, self.W_enc)

    def encode(self, x: Tensor) -> Tensor:
        """Dense latents [..., d_sae] of activations x [..., d_in] (inference path)."""
        raise NotImplementedError

    def decode(self, latents: Tensor) -> Tensor:
        """Reconstruction [..., d_in] = latents [..., d_sae] @ W_dec + b_dec."""
        return latents @ self.W_dec + self.b_dec

    def forward(self, x: Tensor, dead_mask: Tensor | None = None, target: Tensor | None = None) -> ForwardOutput:
        """Training pass on x [tokens, d_in]; dead_mask [d_sae] bool marks dead latents (AuxK); target
        [tokens, d_out] what a transcoder predicts (None: x itself)."""
        raise NotImplementedError

    def check_input(self, x: Tensor) -> Tensor:
        """x as [tokens, d_in], with an error naming d_in when the width is wrong."""
        if x.shape[-1] != self.cfg.d_in:
            raise ValueError(f"SAE input has width {x.shape[-1]} but the SAE's d_in is {self.cfg.d_in}")
        return x.reshape(-1, self.cfg.d_in)

    def inference_tensors(self) -> dict[str, Tensor]:
        """The tensors a saved SAE holds, by SAELens name (threshold added by jumprelu/batchtopk)."""
        out = {"W_enc": self.W_enc.detach(), "b_enc": self.b_enc.detach(),
               "W_dec": self.W_dec.detach(), "b_dec": self.b_dec.detach()}
        if self.cfg.skip_connection:
            out["W_skip"] = self.W_skip.detach()
        return out

    @torch.no_grad()
    def load_inference_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Copy tensors named as in `inference_tensors` into this SAE's parameters."""
        for name in ("W_enc", "b_enc", "W_dec", "b_dec") + (("W_skip",) if self.cfg.skip_connection else ()):
            getattr(self, name).copy_(tensors[name])

    def prediction_target(self, x: Tensor, target: Tensor | None) -> Tensor:
        """What the training loss compares the output with: target [tokens, d_out] for a transcoder
        (required), x for an autoencoder (a target is refused)."""
        if not self.cfg.transcode:
            if target is not None:
                raise ValueError("a target was given to an autoencoder (SAEConfig.transcode is false)")
            return x
        if target is None:
            raise ValueError(f"a transcoder ({self.cfg.hook_name} -> {self.cfg.hook_name_out}) needs target=")
        if target.shape[-1] != self.cfg.resolved_d_out:
            raise ValueError(f"transcoder target has width {target.shape[-1]} but d_out is {self.cfg.resolved_d_out}")
        return target.reshape(-1, self.cfg.resolved_d_out)

    def with_skip(self, recon: Tensor, x: Tensor) -> Tensor:
        """recon plus the skip term of x (skip transcoders), else recon."""
        skip = self.skip(x)
        return recon if skip is None else recon + skip

    def extra_repr(self) -> str:
        out = f"architecture={self.cfg.architecture}, d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}"
        return out + (f", d_out={self.cfg.resolved_d_out}, skip={self.cfg.skip_connection}" if self.cfg.transcode else "")


def reconstruction_losses(x: Tensor, recon: Tensor) -> tuple[Tensor, Tensor]:
    """(mse, fvu) of recon vs x, both [tokens, d_in]: squared error summed over d_in, mean over tokens;
    and the squared error over the squared deviation from the batch mean (0/0 counts as 0)."""
    squared_error = (recon - x).pow(2).sum()
    total_variance = (x - x.mean(dim=0)).pow(2).sum()
    mse = squared_error / x.shape[0]
    fvu = squared_error / total_variance.clamp_min(torch.finfo(x.dtype).tiny)
    return mse, fvu


def fired_mask(output: ForwardOutput, d_sae: int) -> Tensor:
    """[d_sae] bool: which latents were active on at least one token of this forward pass.

    The trainer keeps tokens-since-fired per latent from this and passes `dead_mask` back.
    """
    acts = output.latent_acts.detach()
    if output.latent_indices is None:
        return (acts > 0).any(dim=0)
    counts = torch.zeros(d_sae, dtype=torch.int32, device=acts.device)  # fixed shapes: no host sync
    return counts.index_add_(0, output.latent_indices.reshape(-1), (acts > 0).reshape(-1).to(torch.int32)) > 0


def zero(like: Tensor) -> Tensor:
    """A scalar 0 of like's dtype and device, for loss terms an architecture does not use."""
    return like.new_zeros(())
