"""Descriptions of latents from their inputs (MaxAct) and outputs (VocabProj, TokenChange): the
evidence each method shows (evidence.py) and `saekit explain` (run.py)."""

from saekit.interp.explain.run import ExplainConfig, explain_latents, read_explanations

__all__ = ["ExplainConfig", "explain_latents", "read_explanations"]
