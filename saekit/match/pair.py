"""Match two SAEs: decoder and encoder assignments, matched cosines, the shared-latent rule.

`match_pair(sae_a, sae_b)` follows Paulo & Belrose's sae_overlap: unit decoder rows and unit encoder
directions; one maximum-total one-to-one assignment on the decoder cosines and, separately, one on
the encoder cosines; a latent is **shared** when both assignments pick the same partner and both
matched cosines are >= the threshold (0.7). SAEs of different widths: the smaller one's latents are
matched into the larger one; the larger one's unmatched latents have partner -1.

Results are kept per side (`SideMatch`, one per SAE), in the SAEs' own latent order, so either SAE
can be read as "mine vs theirs".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from saekit.match.assign import DEFAULT_BLOCK_ROWS, Assignment, assign
from saekit.match.similarity import Blocks, cosines_of_pairs, decoder_directions, encoder_directions
from saekit.sae import SAE

DEFAULT_THRESHOLD = 0.7


@dataclass
class SideMatch:
    """One SAE's view of a pair: for each of its latents, its partners in the other SAE."""

    decoder_partner: np.ndarray  # [d_sae] int64, -1 = unmatched (larger SAE only)
    decoder_cos: np.ndarray  # [d_sae] float32 cosine to the decoder partner, NaN when unmatched
    encoder_partner: np.ndarray  # [d_sae] int64
    encoder_cos: np.ndarray  # [d_sae] float32
    decoder_max_cos: np.ndarray  # [d_sae] largest decoder cosine to any latent of the other SAE
    encoder_max_cos: np.ndarray  # [d_sae] largest encoder cosine to any latent of the other SAE

    @property
    def d_sae(self) -> int:
        return len(self.decoder_partner)

    def shared(self, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
        """[d_sae] bool: same partner in both assignments, and both cosines >= threshold."""
        with np.errstate(invalid="ignore"):
            return ((self.decoder_partner == self.encoder_partner) & (self.decoder_partner >= 0)
                    & (self.decoder_cos >= threshold) & (self.encoder_cos >= threshold))

    def same_partner(self) -> np.ndarray:
        """[d_sae] bool: the decoder and encoder assignments agree (no threshold)."""
        return (self.decoder_partner == self.encoder_partner) & (self.decoder_partner >= 0)

    def matched(self) -> np.ndarray:
        """[d_sae] bool: the latent has a partner (always true on the smaller side)."""
        return self.decoder_partner >= 0


@dataclass
class PairMatch:
    """Two SAEs matched both ways; `a` and `b` are the sides in the order given."""

    a: SideMatch
    b: SideMatch
    decoder: Assignment  # smaller -> larger (A -> B unless swapped)
    encoder: Assignment
    swapped: bool  # B is the smaller SAE, so B's latents were matched into A's

    @property
    def small(self) -> SideMatch:
        """The side whose every latent has a partner (A when the widths are equal)."""
        return self.b if self.swapped else self.a

    def n_shared(self, threshold: float = DEFAULT_THRESHOLD) -> int:
        return int(self.small.shared(threshold).sum())


def match_directions(dec_a: Tensor, enc_a: Tensor, dec_b: Tensor, enc_b: Tensor, method: str = "auto",
                     exact_max: int = 8192, candidates: int = 16, block_rows: int | Blocks = DEFAULT_BLOCK_ROWS,
                     device: str | torch.device = "cpu") -> PairMatch:
    """Match unit directions dec_a/enc_a [n_a, d] with dec_b/enc_b [n_b, d] (see module docstring).

    Cosines are computed on `device` in streamed blocks (block_rows: a row cap or a `Blocks` plan);
    nothing of size n_a * n_b is kept unless the exact method runs.
    """
    swapped = dec_b.shape[0] < dec_a.shape[0]
    if swapped:
        dec_a, enc_a, dec_b, enc_b = dec_b, enc_b, dec_a, enc_a
    kwargs = dict(method=method, exact_max=exact_max, candidates=candidates, block_rows=block_rows, device=device)
    decoder = assign(dec_a, dec_b, **kwargs)
    encoder = assign(enc_a, enc_b, **kwargs)
    n_small, n_large = dec_a.shape[0], dec_b.shape[0]
    small_rows = np.arange(n_small)
    dec_cos = cosines_of_pairs(dec_a, dec_b, small_rows, decoder.partner)
    enc_cos = cosines_of_pairs(enc_a, enc_b, small_rows, encoder.partner)
    small = SideMatch(decoder.partner, dec_cos, encoder.partner, enc_cos, decoder.row_max.astype(np.float32),
                      encoder.row_max.astype(np.float32))
    large = SideMatch(_invert(decoder.partner, n_large), _scatter(dec_cos, decoder.partner, n_large),
                      _invert(encoder.partner, n_large), _scatter(enc_cos, encoder.partner, n_large),
                      decoder.col_max.astype(np.float32), encoder.col_max.astype(np.float32))
    a, b = (large, small) if swapped else (small, large)
    return PairMatch(a, b, decoder, encoder, swapped)


def match_pair(sae_a: SAE, sae_b: SAE, **kwargs) -> PairMatch:
    """Match two loaded SAEs (same d_in); kwargs as `match_directions` (method, candidates, device...)."""
    if sae_a.cfg.d_in != sae_b.cfg.d_in:
        raise ValueError(f"cannot match SAEs of different d_in: {sae_a.cfg.d_in} ({sae_a.cfg.hook_name or 'A'}) "
                         f"vs {sae_b.cfg.d_in} ({sae_b.cfg.hook_name or 'B'})")
    return match_directions(decoder_directions(sae_a), encoder_directions(sae_a),
                            decoder_directions(sae_b), encoder_directions(sae_b), **kwargs)


def _invert(partner: np.ndarray, n: int) -> np.ndarray:
    """[n] the row matched to each column of a small->large assignment, -1 for unmatched columns."""
    out = np.full(n, -1, dtype=np.int64)
    out[partner] = np.arange(len(partner))
    return out


def _scatter(values: np.ndarray, partner: np.ndarray, n: int) -> np.ndarray:
    """[n] values of the small side moved to their partners' positions, NaN elsewhere."""
    out = np.full(n, np.nan, dtype=np.float32)
    out[partner] = values
    return out
