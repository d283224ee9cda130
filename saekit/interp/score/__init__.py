"""Scores of descriptions: `saekit score` (run.py); scorers that read example windows (examples.py),
scorers that run the model with the SAE (model.py), judge-free scorers (judgefree.py) and the
statistics they share (metrics.py)."""

from saekit.interp.score.run import ScoreConfig, read_scores, score_latents, summarize_scores

__all__ = ["ScoreConfig", "read_scores", "score_latents", "summarize_scores"]
