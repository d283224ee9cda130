"""Seed-to-seed latent matching (Paulo & Belrose 2025): how many latents two SAEs share.

    from saekit.match import MatchConfig, match_saes, match_pair
    summary = match_saes(MatchConfig(saes=["runs/train/h/topk-4096-k32-seed0",
                                           "runs/train/h/topk-4096-k32-seed1"], out="runs/match"))
    pair = match_pair(sae_a, sae_b)          # in memory: PairMatch with per-latent partners and cosines
    pair.a.shared(0.7)                        # [d_sae] bool for SAE A's latents

Modules, in the order data flows: similarity (blockwise cosines, top candidates, on any device) ->
assign (exact and certified sparse assignment) -> pair (decoder + encoder matching, shared rule) ->
summary (fractions, threshold curve, several seeds) -> activations (frequency, correlation from a
cache) -> report (per-latent table, HTML) -> run (MatchConfig, match_saes, the match directory).
"""

from saekit.match.assign import Assignment, assign, exact_assignment, sparse_assignment
from saekit.match.pair import DEFAULT_THRESHOLD, PairMatch, SideMatch, match_directions, match_pair
from saekit.match.run import FORMAT_VERSION, MatchConfig, load_match, load_saes, match_saes, summary_lines
from saekit.match.similarity import cosine_matrix, decoder_directions, encoder_directions, top_candidates, unit_rows
from saekit.match.summary import pair_summary, seed_summary, threshold_curve

__all__ = [
    "Assignment", "DEFAULT_THRESHOLD", "FORMAT_VERSION", "MatchConfig", "PairMatch", "SideMatch", "assign",
    "cosine_matrix", "decoder_directions", "encoder_directions", "exact_assignment", "load_match", "load_saes",
    "match_directions", "match_pair", "match_saes", "pair_summary", "seed_summary", "sparse_assignment",
    "summary_lines", "threshold_curve", "top_candidates", "unit_rows",
]
