"""Evaluation: reconstruction, sparsity, dead/dense latents and downstream CE/KL for any SAE.

    from saekit.eval import EvalConfig, evaluate
    result = evaluate(EvalConfig(sae="runs/train/blocks.1.hook_resid_post/topk-4096-k32-seed0",
                                 cache="runs/cache"))
"""

from saekit.eval.metrics import ReconstructionStats, log10_frequency_histogram
from saekit.eval.run import EvalConfig, check_sae_against_cache, evaluate, load_eval, summary_line
from saekit.eval.splice import splice_losses

__all__ = ["EvalConfig", "ReconstructionStats", "check_sae_against_cache", "evaluate", "load_eval",
           "log10_frequency_histogram", "splice_losses", "summary_line"]
