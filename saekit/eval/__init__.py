"""Evaluation: reconstruction, sparsity, dead/dense latents and downstream CE/KL for any SAE, and
(`metrics=[..., "absorption", "sparse_probing"]`) SAEBench's feature absorption and k-sparse probing.

    from saekit.eval import EvalConfig, evaluate
    result = evaluate(EvalConfig(sae="runs/train/blocks.1.hook_resid_post/topk-4096-k32-seed0",
                                 cache="runs/cache"))
"""

from saekit.eval.absorption import AbsorptionConfig, absorption_figure, absorption_from_activations, run_absorption
from saekit.eval.extra import ALL_METRICS, parse_metric
from saekit.eval.metrics import ReconstructionStats, log10_frequency_histogram
from saekit.eval.probing import SparseProbingConfig, run_sparse_probing, sparse_probing_figure
from saekit.eval.run import EvalConfig, check_sae_against_cache, evaluate, load_eval, summary_line
from saekit.eval.splice import splice_losses

__all__ = ["ALL_METRICS", "AbsorptionConfig", "EvalConfig", "ReconstructionStats", "SparseProbingConfig",
           "absorption_figure", "absorption_from_activations", "check_sae_against_cache", "evaluate", "load_eval",
           "log10_frequency_histogram", "parse_metric", "run_absorption", "run_sparse_probing", "splice_losses",
           "sparse_probing_figure", "summary_line"]
