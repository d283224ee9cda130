"""`SAEConfig`: one flat dataclass for every SAE architecture saekit trains.

The same object is the CLI (`saekit.config.add_config_args`), the logged config and the `saekit`
section of a saved SAE's cfg.json (saekit/sae/io.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from saekit.config import doc

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka_batchtopk")
# Architectures with a k (TopK-style selection, sparse kernels, AuxK).
TOPK_LIKE = ("topk", "batchtopk", "matryoshka_batchtopk")
# Architectures saekit loads and runs but does not train (saekit/sae/gated.py).
INFERENCE_ONLY = ("gated",)
B_DEC_INITS = ("mean", "geometric_median", "zeros")
NORMALIZATIONS = ("expected_norm", "none")
DTYPES = ("float32", "float64", "bfloat16", "float16")
SPARSE_IMPLS = ("csr", "gather")


@dataclass
class SAEConfig:
    """Architecture, sizes, loss coefficients and initialisation of one sparse autoencoder."""

    architecture: str = doc(
        "relu (L1, Anthropic Apr 2024) | topk (Gao et al. 2024) | batchtopk (Bussmann et al. 2024) "
        "| jumprelu (Rajamanoharan et al. 2024) | gated (inference only: loaded from sae-lens) "
        "| matryoshka_batchtopk (Bussmann et al. 2025)", "topk")
    d_in: int = doc("width of the activations the SAE reads", 512)
    d_sae: int = doc("number of latents", 8192)
    k: int = doc("topk: active latents per token; batchtopk: the average per token over a batch", 32)
    k_aux: int | None = doc("topk/batchtopk: dead latents the AuxK loss uses (None = d_in // 2)", None)
    aux_coef: float = doc("topk/batchtopk: AuxK loss coefficient (Gao et al. 2024 use 1/32)", 1 / 32)
    l1_coef: float = doc("relu: coefficient of the L1 penalty weighted by decoder row norms", 5.0)
    l0_coef: float = doc("jumprelu: coefficient of the L0 penalty", 1.0)
    jumprelu_bandwidth: float | None = doc(
        "jumprelu: width of the straight-through estimator's window (None: 0.001 * sqrt(d_in), "
        "Gemma Scope's 0.001 on saekit's input scale)", None)
    jumprelu_init_threshold: float | None = doc(
        "jumprelu: initial per-latent threshold (None: 0.001 * sqrt(d_in), as the bandwidth)", None)
    batchtopk_threshold_lr: float = doc(
        "batchtopk: rate of the moving average giving the inference threshold", 0.01)
    sparse_impl: str = doc(
        "topk/batchtopk kernels: csr (torch sparse CSR, fastest; 16-bit floats on CPU use gather) "
        "| gather (embedding_bag/index_add)", "csr")
    b_dec_init: str = doc("decoder bias init from a sample: mean | geometric_median | zeros", "geometric_median")
    normalize_activations: str = doc(
        "expected_norm: train on x * activation_scale so that E||x|| = sqrt(d_in) | none", "expected_norm")
    activation_scale: float = doc(
        "the factor raw activations are multiplied by in training (set by the trainer)", 1.0)
    folded_activation_scale: float = doc(
        "the scale fold_normalization folded into the weights (record only; 1.0 = none)", 1.0)
    matryoshka_prefixes: list[int] = doc(
        "matryoshka_batchtopk: the nested prefix sizes, increasing (d_sae is added as the last one if "
        "missing; empty = d_sae/16, d_sae/4, d_sae)", default_factory=list)
    transcode: bool = doc("a transcoder: read hook_name, predict hook_name_out (no input centring by b_dec)",
                          False)
    d_out: int | None = doc("transcoders: width of the predicted activation (None = d_in)", None)
    skip_connection: bool = doc("transcoders: add a linear skip term x @ W_skip.T (W_skip [d_out, d_in], "
                                "zero-initialised)", False)
    hook_name_out: str = doc("transcoders: the hook whose activation is predicted, e.g. blocks.6.hook_mlp_out",
                             "")
    activation_scale_out: float = doc(
        "transcoders: the factor raw targets are multiplied by in training (set by the trainer)", 1.0)
    folded_activation_scale_out: float = doc(
        "transcoders: the output scale fold_normalization folded in (record only; 1.0 = none)", 1.0)
    hook_name: str = doc("model hook the SAE reads, e.g. blocks.6.hook_resid_post", "")
    seed: int = doc("seed of the weight initialisation", 0)
    dtype: str = doc("parameter dtype: float32 | float64 | bfloat16 | float16", "float32")

    def __post_init__(self) -> None:
        _one_of("architecture", self.architecture, ARCHITECTURES)
        _one_of("b_dec_init", self.b_dec_init, B_DEC_INITS)
        _one_of("normalize_activations", self.normalize_activations, NORMALIZATIONS)
        _one_of("dtype", self.dtype, DTYPES)
        _one_of("sparse_impl", self.sparse_impl, SPARSE_IMPLS)
        for name in ("d_in", "d_sae", "k"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"SAEConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.architecture in TOPK_LIKE and self.k > self.d_sae:
            raise ValueError(f"SAEConfig.k ({self.k}) must be at most d_sae ({self.d_sae})")
        if self.k_aux is not None and (not isinstance(self.k_aux, int) or self.k_aux < 1):
            raise ValueError(f"SAEConfig.k_aux must be a positive integer or None, got {self.k_aux!r}")
        for name in ("aux_coef", "l1_coef", "l0_coef"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"SAEConfig.{name} must be finite and >= 0, got {getattr(self, name)!r}")
        for name in ("jumprelu_bandwidth", "jumprelu_init_threshold", "activation_scale",
                     "folded_activation_scale", "activation_scale_out", "folded_activation_scale_out"):
            if getattr(self, name) is None and name.startswith("jumprelu"):
                continue
            if not math.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"SAEConfig.{name} must be finite and > 0, got {getattr(self, name)!r}")
        if not 0 < self.batchtopk_threshold_lr <= 1:
            raise ValueError(f"SAEConfig.batchtopk_threshold_lr must be in (0, 1], got {self.batchtopk_threshold_lr!r}")
        if self.d_out is not None and (not isinstance(self.d_out, int) or self.d_out < 1):
            raise ValueError(f"SAEConfig.d_out must be a positive integer or None, got {self.d_out!r}")
        if not self.transcode and (self.skip_connection or self.d_out not in (None, self.d_in)):
            raise ValueError("SAEConfig.skip_connection and d_out != d_in need transcode = true "
                             "(an autoencoder reconstructs its own input)")
        if self.architecture == "gated" and self.transcode:
            raise ValueError("SAEConfig.transcode: saekit has no gated transcoder")
        if self.architecture == "matryoshka_batchtopk":
            self.resolved_prefixes  # validates

    @property
    def resolved_k_aux(self) -> int:
        """k_aux, or d_in // 2 when unset (as in sparsify), never above d_sae."""
        return min(self.k_aux if self.k_aux is not None else max(self.d_in // 2, 1), self.d_sae)

    @property
    def resolved_jumprelu_bandwidth(self) -> float:
        """jumprelu_bandwidth, or 0.001 * sqrt(d_in) when unset (see `jumprelu_scale`)."""
        return self.jumprelu_bandwidth if self.jumprelu_bandwidth is not None else 0.001 * self.jumprelu_scale

    @property
    def resolved_jumprelu_init_threshold(self) -> float:
        """jumprelu_init_threshold, or 0.001 * sqrt(d_in) when unset (see `jumprelu_scale`)."""
        if self.jumprelu_init_threshold is not None:
            return self.jumprelu_init_threshold
        return 0.001 * self.jumprelu_scale

    @property
    def jumprelu_scale(self) -> float:
        """sqrt(d_in): the factor between saekit's pre-activations and Gemma Scope's.

        Gemma Scope's threshold and bandwidth (0.001) are set for inputs of unit mean squared norm;
        saekit trains on E||x|| = sqrt(d_in) (`normalize_activations`), and pre-activations are linear
        in x (the encoder columns start at unit norm in both), so they are sqrt(d_in) times larger here.
        The same scale puts the bandwidth (0.048 at d_in 2304) near sae-lens's default (0.05, on the
        same input scale) and far above bf16's spacing near 0.5 (0.002-0.004).
        """
        return math.sqrt(self.d_in)

    @property
    def is_sparse(self) -> bool:
        """Whether forward runs on the sparse (CSR) representation: topk, batchtopk, matryoshka_batchtopk."""
        return self.architecture in TOPK_LIKE

    @property
    def resolved_d_out(self) -> int:
        """Width of the output: d_out for a transcoder that sets it, else d_in."""
        return self.d_out if self.d_out is not None else self.d_in

    @property
    def resolved_prefixes(self) -> list[int]:
        """matryoshka_batchtopk's prefix sizes, increasing, ending at d_sae (ValueError naming the field
        when they are not positive, not increasing or above d_sae)."""
        prefixes = list(self.matryoshka_prefixes) or sorted({max(self.d_sae // 16, 1), max(self.d_sae // 4, 1)})
        if any(not isinstance(m, int) or isinstance(m, bool) or m < 1 for m in prefixes):
            raise ValueError(f"SAEConfig.matryoshka_prefixes must be positive integers, got {prefixes!r}")
        if any(b <= a for a, b in zip(prefixes, prefixes[1:])):
            raise ValueError(f"SAEConfig.matryoshka_prefixes must be strictly increasing, got {prefixes!r}")
        if prefixes[-1] > self.d_sae:
            raise ValueError(f"SAEConfig.matryoshka_prefixes {prefixes!r} exceed d_sae ({self.d_sae})")
        return prefixes if prefixes[-1] == self.d_sae else prefixes + [self.d_sae]


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"SAEConfig.{name} must be one of {allowed}, got {value!r}")
