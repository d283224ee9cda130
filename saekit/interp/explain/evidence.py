"""The evidence each description method shows (Gur-Arieh et al. 2025, arXiv 2501.08319).

- MaxAct (input-centric): a latent's top-activating windows with the activating tokens marked
  `<<token>>` and their activations scaled to integers 0-10 (`floor(10 * relu(a) / max)`).
- VocabProj (output-centric): `W_U · LN_final(W_dec[f])`, the top and bottom `k` tokens.
- TokenChange (output-centric): clamp latent f to a value at every position (BOS kept) inside the
  SAE reconstruction with the SAE's error term kept, over dataset sequences; the mean logit change
  against the unsteered run, over batch and positions; its top and bottom tokens.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np
import torch

from saekit.eval.splice import edit_after
from saekit.interp.records.format import Example


class TokenText:
    """Token id -> display string with a memo: tokenizer.decode of the id, its raw vocabulary entry
    when that decodes to an incomplete byte sequence ('\ufffd'), `#id` without a tokenizer."""

    def __init__(self, tokenizer: Any | None) -> None:
        self.tokenizer = tokenizer
        self._memo: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        token = int(token)
        if token not in self._memo:
            if self.tokenizer is None:
                self._memo[token] = f"#{token}"
            else:
                string = self.tokenizer.decode([token])
                if "\ufffd" in string and hasattr(self.tokenizer, "convert_ids_to_tokens"):
                    string = self.tokenizer.convert_ids_to_tokens(token)
                self._memo[token] = string
        return self._memo[token]

    def many(self, tokens: Any) -> list[str]:
        return [self(t) for t in tokens]


# ---- MaxAct ----------------------------------------------------------------------------------------
def scaled_activations(acts: np.ndarray, max_activation: float) -> np.ndarray:
    """Integers 0-10: floor(10 * relu(a) / max), as the paper's MaxAct prompt shows them."""
    if max_activation <= 0:
        return np.zeros(len(acts), dtype=np.int64)
    return np.clip(np.floor(10 * np.maximum(acts, 0) / max_activation), 0, 10).astype(np.int64)


def mark_example(example: Example, text: TokenText, max_activation: float) -> tuple[str, list[tuple[str, int]]]:
    """(the window's text with runs of activating tokens marked <<...>>, [(token, activation 1-10)]).

    A token is activating when its scaled activation is >= 1 (>= a tenth of the latent's max).
    """
    levels = scaled_activations(example.acts, max_activation)
    pieces, marked, inside = [], [], False
    for token, level in zip(example.tokens, levels):
        string = text(token)
        if level > 0 and not inside:
            pieces.append("<<")
        elif level == 0 and inside:
            pieces.append(">>")
        inside = level > 0
        pieces.append(string)
        if level > 0:
            marked.append((string, int(level)))
    if inside:
        pieces.append(">>")
    return "".join(pieces).replace("\n", "\\n"), marked


def anchor_token_counts(examples: list[Example], text: TokenText) -> list[tuple[str, int]]:
    """The max-activating token of each example, counted, most common first."""
    counts = Counter(text(e.tokens[e.anchor_in_window]) for e in examples)
    return counts.most_common()


def maxact_evidence(examples: list[Example], text: TokenText, max_activation: float) -> dict[str, Any]:
    """{'examples': [{'text', 'activations'}], 'top_tokens': [[token, count]], 'max_activation'}."""
    shown = []
    for example in examples:
        marked_text, marked = mark_example(example, text, max_activation)
        shown.append({"text": marked_text, "activations": [[t, a] for t, a in marked]})
    return {"examples": shown, "top_tokens": [[t, c] for t, c in anchor_token_counts(examples, text)],
            "max_activation": round(float(max_activation), 4)}


# ---- VocabProj -------------------------------------------------------------------------------------
@torch.no_grad()
def vocab_projection(model: Any, directions: torch.Tensor, include_bias: bool = True) -> torch.Tensor:
    """[n, d_vocab] logits of decoder directions [n, d_model] through the final LayerNorm and W_U.

    include_bias: `model.unembed(model.ln_final(d))`, as the authors' TransformerLens code computes
    it (with LN folded, W_U · LN_final(d) holds LN's bias); False: W_U · (w_ln ⊙ normalize(d)), no
    direction-independent term (LN bias, b_U).
    """
    x = directions.to(model.W_U.device, model.W_U.dtype)[:, None, :]  # [n, 1, d_model]
    if include_bias:
        return model.unembed(model.ln_final(x))[:, 0]
    x = x - x.mean(-1, keepdim=True) if model.cfg.normalization_type in ("LN", "LNPre") else x
    x = x / (x.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
    weight = getattr(model.ln_final, "w", None)
    return ((x * weight if weight is not None else x) @ model.W_U)[:, 0]


def top_bottom(scores: torch.Tensor, k: int) -> tuple[list[int], list[int]]:
    """(ids of the k largest scores, largest first; ids of the k smallest, smallest first) of scores [vocab]."""
    k = min(k, scores.shape[-1])
    return torch.topk(scores, k).indices.tolist(), torch.topk(-scores, k).indices.tolist()


def vocabproj_evidence(logits: torch.Tensor, text: TokenText, k: int) -> dict[str, Any]:
    """{'top': [k tokens], 'bottom': [k tokens], 'top_logits', 'bottom_logits': their logits} of one
    latent's projection logits [d_vocab] (the report draws the logits; prompts show the tokens)."""
    top, bottom = top_bottom(logits, k)
    values = logits.detach().float().cpu()
    return {"top": text.many(top), "bottom": text.many(bottom),
            "top_logits": [round(float(values[i]), 4) for i in top],
            "bottom_logits": [round(float(values[i]), 4) for i in bottom]}


# ---- TokenChange -----------------------------------------------------------------------------------
def parse_clamp(clamp: str | float, max_activation: float) -> float:
    """The clamp value: a number ("10", as the paper) or a multiple of the latent's max ("2x")."""
    spec = str(clamp).strip().lower()
    try:
        return float(spec[:-1]) * max_activation if spec.endswith("x") else float(spec)
    except ValueError:
        raise ValueError(f"tokenchange clamp {clamp!r}: use a number (10) or a multiple of the latent's "
                         f"max activation (2x)") from None


_RESID_HOOK = re.compile(r"blocks\.(\d+)\.hook_resid_(pre|post)")


def _softcapped(model: Any) -> bool:
    return (getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0) > 0


def _mean_from_final(model: Any, resid: torch.Tensor, start: int, n_groups: int) -> torch.Tensor:
    """[n_groups, d_vocab] mean logits from the last block's output resid [n_groups * n_seq, pos, d_model].

    The unembedding is affine, so the mean of the logits is the unembedding of the mean of the final
    normalized residual stream: one [n_groups, d_model] x [d_model, d_vocab] product, not one per token.
    """
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)
    mean = resid[:, start:].unflatten(0, (n_groups, -1)).mean(dim=(1, 2))  # [n_groups, d_model]
    return model.unembed(mean[:, None, :])[:, 0].float()


@torch.no_grad()
def mean_logits(model: Any, tokens: torch.Tensor, start: int, fwd_hooks: list[Any] | None = None,
                n_groups: int = 1) -> torch.Tensor:
    """[n_groups, d_vocab]: the logits averaged over positions >= start and over the sequences of
    each of n_groups equal consecutive groups of tokens [n_groups * n_seq, seq_len] (see
    `_mean_from_final`; a model with a logit softcap, not affine, averages the logits themselves)."""
    tokens = tokens.to(model.W_U.device)
    if _softcapped(model):
        logits = model.run_with_hooks(tokens, fwd_hooks=fwd_hooks or [])[:, start:]
        return logits.unflatten(0, (n_groups, -1)).float().mean(dim=(1, 2))
    resid = model.run_with_hooks(tokens, fwd_hooks=fwd_hooks or [], stop_at_layer=model.cfg.n_layers)
    return _mean_from_final(model, resid, start, n_groups)


def resume_layer(model: Any, hook_name: str) -> int | None:
    """The first block that reads a residual-stream hook point (hook_resid_pre of block L: L;
    hook_resid_post: L + 1), so steering can resume there; None for other hook points."""
    match = _RESID_HOOK.fullmatch(hook_name)
    if match is None or _softcapped(model) or model.cfg.positional_embedding_type == "shortformer":
        return None
    return int(match[1]) + (match[2] == "post")


@torch.no_grad()
def hook_activation(model: Any, tokens: torch.Tensor, hook_name: str) -> torch.Tensor:
    """[n_seq, pos, d] the activation at blocks.L.hook_resid_* (the model runs up to block L only)."""
    found: dict[str, torch.Tensor] = {}

    def grab(act: torch.Tensor, hook: Any) -> None:
        found["act"] = act

    model.run_with_hooks(tokens.to(model.W_U.device), fwd_hooks=[(hook_name, grab)],
                         stop_at_layer=int(_RESID_HOOK.fullmatch(hook_name)[1]) + 1)
    return found["act"]


@torch.no_grad()
def logit_changes(model: Any, sae: Any, hook_name: str, tokens: torch.Tensor, latents: list[int],
                  values: list[float], start: int, clean_mean: torch.Tensor | None = None) -> torch.Tensor:
    """[len(latents), d_vocab]: mean over sequences and positions >= start of steered - clean logits.

    Steering i sets latent latents[i] to values[i] at every position >= start inside the SAE's
    reconstruction and keeps the error term: x' = decode(z') + (x - decode(z)), which (decode being
    affine) is x + (values[i] - z_f) * W_dec[f]. tokens: [n_seq, seq_len]; all steerings of a call
    run as one batch of len(latents) * n_seq sequences. At a residual-stream hook the model runs to
    the hook once and the steered copies resume from there (`resume_layer`); elsewhere each copy runs
    whole with a hook. clean_mean: the unsteered mean logits [d_vocab] when already known.

    A transcoder (`sae.cfg.transcode`) acts through its output hook: z is read from the input hook's
    activation and (values[i] - z_f) * W_dec[f] is added at the output hook (hook_name is its input).
    """
    device = model.W_U.device
    tokens = tokens.to(device)
    n = len(latents)
    index = torch.as_tensor(latents, device=device)
    target = torch.as_tensor(values, device=device, dtype=sae.W_dec.dtype)
    if clean_mean is None:
        clean_mean = mean_logits(model, tokens, start)[0]
    if getattr(getattr(sae, "cfg", None), "transcode", False):
        captured: dict[str, torch.Tensor] = {}

        def grab(act: torch.Tensor, hook: Any) -> torch.Tensor:
            captured["x"] = act[:, start:]
            return act

        def steer_output(y: torch.Tensor) -> torch.Tensor:  # y [n * n_seq, pos, d_out], x alike at the input
            x = captured["x"].reshape(n, -1, captured["x"].shape[-1]).to(sae.W_dec.dtype)
            z_f = sae.encode(x[0])[:, index].T  # [n, n_seq * pos]
            delta = (target[:, None] - z_f)[..., None] * sae.W_dec[index][:, None, :]
            return (y.reshape(n, -1, y.shape[-1]).to(sae.W_dec.dtype) + delta).reshape(y.shape).to(y.dtype)

        hooks = [(sae.cfg.hook_name, grab), (sae.cfg.hook_name_out, edit_after(steer_output, start))]
        return mean_logits(model, tokens.repeat(n, 1), start, hooks, n) - clean_mean

    def steer(x: torch.Tensor) -> torch.Tensor:  # x [n * n_seq, pos, d_model]
        flat = x.reshape(n, -1, x.shape[-1]).to(sae.W_dec.dtype)  # [n, n_seq * pos, d]
        z_f = sae.encode(flat[0])[:, index].T  # [n, n_seq * pos]: every copy holds the same sequences
        delta = (target[:, None] - z_f)[..., None] * sae.W_dec[index][:, None, :]
        return (flat + delta).reshape(x.shape).to(x.dtype)

    layer = resume_layer(model, hook_name)
    if layer is None:
        steered = mean_logits(model, tokens.repeat(n, 1), start, [(hook_name, edit_after(steer, start))], n)
    else:
        x = edit_after(steer, start)(hook_activation(model, tokens, hook_name).repeat(n, 1, 1), None)
        resid = model(x, start_at_layer=layer, stop_at_layer=model.cfg.n_layers)
        steered = _mean_from_final(model, resid, start, n)
    return steered - clean_mean


def tokenchange_batch_size(n_seq: int, seq_len: int, batch_tokens: int) -> int:
    """Steerings per forward pass: n_seq sequences of seq_len tokens each, about batch_tokens in all."""
    return max(1, batch_tokens // (n_seq * seq_len))


def tokenchange_evidence(plus: torch.Tensor, minus: torch.Tensor | None, text: TokenText, k: int,
                         clamp: float) -> dict[str, Any]:
    """The paper's 4k tokens: top/bottom k of the +clamp change [vocab] and of the -clamp change,
    deduplicated in that order, plus each list."""
    plus_top, plus_bottom = top_bottom(plus, k)
    evidence: dict[str, Any] = {"clamp": round(float(clamp), 4), "plus_top": text.many(plus_top),
                                "plus_bottom": text.many(plus_bottom)}
    ids = plus_top + plus_bottom
    if minus is not None:
        minus_top, minus_bottom = top_bottom(minus, k)
        evidence.update(minus_top=text.many(minus_top), minus_bottom=text.many(minus_bottom))
        ids += minus_top + minus_bottom
    evidence["tokens"] = text.many(list(dict.fromkeys(ids)))
    return evidence


def sample_contexts(context_range: tuple[int, int], n_sequences: int, seed: int) -> np.ndarray:
    """Sorted global indices of min(n_sequences, range size) random contexts of context_range."""
    lo, hi = context_range
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(np.arange(lo, hi), size=min(n_sequences, hi - lo), replace=False))
