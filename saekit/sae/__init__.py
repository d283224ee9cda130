"""Sparse autoencoders: ReLU-L1, TopK, BatchTopK, Matryoshka BatchTopK and JumpReLU over one shared base
(and Gated, for inference); each also as a transcoder (`transcode`, optional `skip_connection`).

    from saekit.sae import SAEConfig, build_sae, save_sae, load_sae_dir
    sae = build_sae(SAEConfig(architecture="topk", d_in=512, d_sae=8192, k=32))
    out = sae(x)             # ForwardOutput: recon, latent_acts, latent_indices, mse, fvu, l0, l1, aux_k, loss
    latents = sae.encode(x)  # dense [tokens, d_sae], for inference and evaluation
    save_sae(sae, "runs/sae/blocks.6.hook_resid_post")
    sae = load_sae("gpt2-small-res-jb/blocks.8.hook_resid_pre")  # any source: saekit.sae.formats
    export_sae("runs/sae/blocks.6.hook_resid_post", "sparsify", "out/layers.6")

The trainer's helpers live in `saekit.sae.weights` (b_dec init, input scale, unit-norm decoder,
folding the input scale) and the sparse TopK kernels in `saekit.sae.kernels`.
"""

from saekit.sae.base import SAE, ForwardOutput, fired_mask
from saekit.sae.batchtopk import BatchTopKSAE
from saekit.sae.build import build_sae
from saekit.sae.config import SAEConfig
from saekit.sae.formats import export_sae, load_sae
from saekit.sae.gated import GatedSAE
from saekit.sae.io import load_sae_dir, save_sae
from saekit.sae.jumprelu import JumpReLUSAE
from saekit.sae.matryoshka import MatryoshkaBatchTopKSAE
from saekit.sae.relu import ReLUSAE
from saekit.sae.topk import TopKSAE
from saekit.sae.weights import (
    estimate_activation_scale,
    fold_normalization,
    init_b_dec,
    normalize_decoder_,
    remove_parallel_decoder_grad_,
)

__all__ = [
    "SAE", "ForwardOutput", "SAEConfig", "build_sae", "save_sae", "load_sae_dir", "fired_mask",
    "ReLUSAE", "TopKSAE", "BatchTopKSAE", "JumpReLUSAE", "GatedSAE", "MatryoshkaBatchTopKSAE", "load_sae", "export_sae",
    "estimate_activation_scale", "fold_normalization", "init_b_dec", "normalize_decoder_",
    "remove_parallel_decoder_grad_",
]
