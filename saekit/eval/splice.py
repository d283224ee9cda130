"""Downstream fidelity: splice an SAE's reconstruction into the model and measure the next-token loss.

For each batch of contexts [batch, ctx_len] the model runs five times: clean; with the activation at
the SAE's hook point replaced by the SAE's reconstruction; by the reconstruction plus the SAE's
error term (x_hat + (x - x_hat): must equal clean, a check of the splicing itself); by zeros; by
the mean activation. The zero and mean runs do not depend on the SAE: for the SAEs of one grid on the
same contexts they run once (`_baseline_memo`). Replacement skips the BOS position when contexts start with BOS (the SAE never
trained on it). Cross-entropy is the mean next-token loss over all predicted positions; KL is
KL(clean || spliced) of the next-token distributions, averaged over the same positions.

    ce_loss_score (ce_loss_recovered) = (CE_zero - CE_sae) / (CE_zero - CE_clean)
    kl_div_score                      = (KL_zero - KL_sae) / KL_zero
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

VARIANTS = ("sae", "sae_with_error", "zero", "mean")


def _next_token_stats(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE per predicted token [batch, ctx_len - 1] in float64, log-probs [batch, ctx_len - 1, vocab]).

    The log-softmax runs in float32 (in float64 it cost 2.3 s per 512 tokens at Gemma's 262K vocab);
    the per-token values are summed in float64."""
    log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    ce = -log_probs.gather(-1, tokens[:, 1:, None]).squeeze(-1).double()
    return ce, log_probs


def _kl_sum(log_p: torch.Tensor, log_q: torch.Tensor) -> float:
    """Sum over positions of KL(p || q), each position's KL summed over the vocabulary in float32."""
    return float((log_p.exp() * (log_p - log_q)).sum(-1).double().sum())


LOGIT_ELEMENTS_PER_BATCH = 1 << 26
"""At most this many logits per forward batch (Gemma: 2 contexts of 128 x 262,144 = 256 MB each)."""
SAE_INDEPENDENT = ("zero", "mean")
_baseline_memo: dict[tuple, dict[str, float]] = {}
"""Sums of the SAE-independent variants per (model, hook, contexts, mean): every SAE of one cache and
hook shares them, so a grid's evaluation runs those forward passes once (one entry kept)."""


def _baseline_key(model: Any, hook_name: str, contexts: torch.Tensor, mean_activation: torch.Tensor,
                  start: int) -> tuple:
    import hashlib

    digest = hashlib.blake2b(contexts.cpu().numpy().tobytes(), digest_size=16)
    digest.update(mean_activation.detach().float().cpu().numpy().tobytes())
    return (id(model), getattr(model, "saekit_info", {}).get("init"), hook_name, start, digest.hexdigest())


def edit_after(edit: Callable[[torch.Tensor], torch.Tensor], start: int) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """A TransformerLens forward hook that replaces act[:, start:] by edit(act[:, start:]).

    act is [batch, pos, d]; positions before `start` (the BOS position when start = 1) are kept.
    Shared by the CE/KL splice here and by autointerp's steering (saekit.interp TokenChange).
    """
    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        out = act.clone()
        out[:, start:] = edit(act[:, start:])
        return out
    return hook


@torch.no_grad()
def splice_losses(model: Any, sae: Any, hook_name: str, contexts: torch.Tensor, mean_activation: torch.Tensor,
                  skip_bos: bool, batch_size: int = 16, progress: Callable[[int], None] | None = None,
                  extra_hooks: list[tuple[str, Callable[..., Any]]] | None = None) -> dict[str, float]:
    """CE and KL of the clean model and of each spliced variant over contexts [n, ctx_len] (token ids).

    extra_hooks run with every spliced variant (a transcoder's capture of its input hook:
    saekit/eval/transcoder.py).

    Returns ce_clean, ce_<variant>, kl_<variant> for VARIANTS, ce_loss_score, kl_div_score.
    """
    device = next(model.parameters()).device
    sae_dtype = sae.W_enc.dtype
    start = 1 if skip_bos else 0
    sums: dict[str, float] = {"ce_clean": 0.0, **{f"ce_{v}": 0.0 for v in VARIANTS},
                              **{f"kl_{v}": 0.0 for v in VARIANTS}}
    n_predicted = 0

    def replacement(variant: str):
        def edit(x: torch.Tensor) -> torch.Tensor:
            if variant == "zero":
                return torch.zeros_like(x)
            if variant == "mean":
                return mean_activation.to(x.dtype).to(x.device).expand_as(x)
            flat = x.reshape(-1, x.shape[-1]).to(sae_dtype)
            recon = sae.decode(sae.encode(flat))
            if variant == "sae_with_error":
                recon = recon + (flat - recon)
            return recon.reshape(x.shape).to(x.dtype)
        return edit_after(edit, start)

    batch_size = max(1, min(batch_size, LOGIT_ELEMENTS_PER_BATCH // (contexts.shape[1] * model.cfg.d_vocab)))
    key = _baseline_key(model, hook_name, contexts, mean_activation, start)
    known = _baseline_memo.get(key)
    variants = [v for v in VARIANTS if known is None or v not in SAE_INDEPENDENT]
    for i in range(0, len(contexts), batch_size):
        tokens = contexts[i:i + batch_size].to(device)
        ce_clean, log_p = _next_token_stats(model(tokens), tokens)
        sums["ce_clean"] += float(ce_clean.sum())
        for variant in variants:
            logits = model.run_with_hooks(tokens, fwd_hooks=[*(extra_hooks or []), (hook_name, replacement(variant))])
            ce, log_q = _next_token_stats(logits, tokens)
            del logits
            sums[f"ce_{variant}"] += float(ce.sum())
            sums[f"kl_{variant}"] += _kl_sum(log_p, log_q)
            del log_q
        n_predicted += ce_clean.numel()
        if progress is not None:
            progress(tokens.numel())
    if known is None:
        _baseline_memo.clear()
        _baseline_memo[key] = {f"{m}_{v}": sums[f"{m}_{v}"] for v in SAE_INDEPENDENT for m in ("ce", "kl")}
    else:
        sums.update(known)
    result = {k: v / max(n_predicted, 1) for k, v in sums.items()}
    denominator = result["ce_zero"] - result["ce_clean"]
    result["ce_loss_score"] = (result["ce_zero"] - result["ce_sae"]) / denominator if denominator else float("nan")
    result["ce_loss_recovered"] = result["ce_loss_score"]
    result["kl_div_score"] = ((result["kl_zero"] - result["kl_sae"]) / result["kl_zero"]
                              if result["kl_zero"] else float("nan"))
    result["n_predicted_tokens"] = n_predicted
    return result
