"""Judge-free scorers: no LLM reads anything, so they run offline, in CI and in `make demo`.

Both read a description as a set of *terms*: the quoted strings in it ('left', " bytes"; how
saekit's raw descriptions and most LLM descriptions name tokens), or, when it quotes nothing, its
words less a few stopwords. Segments that say what the latent suppresses ("suppresses: ...", split
on '|') are left out. A token matches a term when its text, stripped and lower-cased, equals the
term stripped and lower-cased.

`judgefree-input` (does the description say where the latent fires?): each held-out window scores
the number of its tokens matching a term; the score is the AUROC of activating windows (the
records' `test` quantile sample, leaving out the contexts the latent's `top` examples came from, since
MaxAct describes those) against non-activating ones (`negatives`, default random silent windows).
Chance 0.5; a description naming nothing found in any window scores 0.5.

`judgefree-output` (does steering the latent raise what the description names?): at the largest
positive KL target of `kl_targets` (0.5 by default; one target keeps the cost to one bisection per
latent) the latent is clamped at the value the bisection of the output scorer finds (KL(clean ||
steered) averaged over the `output_prompts` positions), and every vocabulary
token gets its percentile rank in the mean change of log-probability over those positions (1 =
raised most). A description's strength under a steering is the mean rank of the tokens it names;
the score of latent f's description is the fraction of the other scored latents' descriptions (same
method) that are weaker under f's steering (ties half). Chance 0.5.
"""

from __future__ import annotations

import ast
import re
from typing import Any, Callable

import numpy as np
import torch

from saekit.interp.records.format import Example, LatentRecords
from saekit.interp.score.examples import Item, latent_rng, row, select_examples
from saekit.interp.score.metrics import auroc

QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
NEGATIVE_SEGMENT = re.compile(r"^\s*(?:[\w+]+:\s*)?(?:steered to \S+ )?(?:suppresses|demotes|inhibits)\b", re.I)
STOPWORDS = frozenset("""a an the and or of to in on at for with by from as is are was be it its this that these
those token tokens word words activates activate fires fire on about mostly often related latent feature
promotes steered suppresses text such like e g i e which when where""".split())


def normalize(string: str) -> str:
    """A token's or a term's text for matching: SentencePiece/GPT-2 space marks as spaces, stripped, lower case."""
    return string.replace("\u2581", " ").replace("\u0120", " ").strip().lower()


def description_terms(description: str) -> list[str]:
    """The terms a description names (see the module docstring), normalized, deduplicated, in order."""
    positive = [seg for seg in re.split(r"\|\|?", description) if not NEGATIVE_SEGMENT.match(seg)]
    text = " | ".join(positive)
    quoted = []
    for match in QUOTED.findall(text):
        try:
            quoted.append(str(ast.literal_eval(match)))
        except (ValueError, SyntaxError):
            quoted.append(match[1:-1])
    terms = quoted if quoted else [w for w in re.findall(r"\w+", text.lower()) if w not in STOPWORDS]
    return list(dict.fromkeys(t for t in (normalize(t) for t in terms) if t))


def window_matches(example: Example, terms: set[str], text: Callable[[int], str]) -> int:
    """How many of the window's tokens match a term."""
    return sum(normalize(text(t)) in terms for t in example.tokens)


def input_samples(records: LatentRecords, latent: int, config: Any) -> tuple[list[Example], list[Example]]:
    """(held-out activating windows, non-activating windows) of one latent: test windows from
    contexts other than its top examples', and the configured negatives."""
    activating, negatives = select_examples(records, latent, config.n_activating, config.n_negatives,
                                            config.negatives, latent_rng(config.seed, latent))
    shown = {e.context for e in records.examples(latent, "top")}
    return [e for e in activating if e.context not in shown], negatives


def run_input(items: list[Item], records: LatentRecords, text: Callable[[int], str], config: Any
              ) -> list[dict[str, Any]]:
    """judgefree-input rows: AUROC of term matches, held-out activating vs non-activating windows."""
    windows = {f: input_samples(records, f, config) for f in dict.fromkeys(item.latent for item in items)}
    rows = []
    for item in items:
        activating, negatives = windows[item.latent]
        terms = description_terms(item.description)
        if not activating or not negatives:
            rows.append(row(item, "judgefree-input", None, 0, {"terms": terms},
                            f"{len(activating)} held-out activating and {len(negatives)} non-activating windows"))
            continue
        wanted = set(terms)
        pos = [window_matches(e, wanted, text) for e in activating]
        neg = [window_matches(e, wanted, text) for e in negatives]
        score = auroc(pos, neg)
        details = {"terms": terms, "n_activating": len(pos), "n_negative": len(neg),
                   "hit_rate_activating": float(np.mean([p > 0 for p in pos])),
                   "hit_rate_negative": float(np.mean([n > 0 for n in neg])),
                   "per_quantile": {str(q): auroc([p for p, e in zip(pos, activating) if e.quantile == q], neg)
                                    for q in sorted({e.quantile for e in activating})}}
        rows.append(row(item, "judgefree-input", score, len(pos) + len(neg), details))
    return rows


# ---- output side -----------------------------------------------------------------------------------
def vocabulary_index(model: Any, text: Callable[[int], str]) -> dict[str, list[int]]:
    """{normalized token text: token ids} over the model's whole vocabulary."""
    index: dict[str, list[int]] = {}
    for token in range(model.cfg.d_vocab):
        index.setdefault(normalize(text(token)), []).append(token)
    return index


@torch.no_grad()
def promotion_ranks(model: Any, sae: Any, hook_name: str, prompts: list[torch.Tensor], latents: list[int],
                    values: np.ndarray, start: int, batch_rows: int = 64) -> np.ndarray:
    """float32 [len(latents), d_vocab]: each token's percentile rank (0-1, 1 = raised most) in the mean
    change of log-probability, steered minus clean, over the prompts' positions >= start; row r
    steers latents[r] to values[r] (the mean of the ranks over the columns of values [r, targets])."""
    from saekit.interp.score.model import steering_hook

    device = model.W_U.device
    ranks = np.zeros((len(latents), model.cfg.d_vocab), dtype=np.float32)
    cleans = [torch.log_softmax(model(tokens)[0].float(), -1)[start:].mean(0) for tokens in prompts]
    for t in range(values.shape[1]):
        for lo in range(0, len(latents), batch_rows):
            chunk = latents[lo:lo + batch_rows]
            index = torch.as_tensor(chunk, device=device)
            target = torch.as_tensor(values[lo:lo + len(chunk), t], device=device, dtype=sae.W_dec.dtype)
            change = torch.zeros(len(chunk), model.cfg.d_vocab, device=device)
            for tokens, clean in zip(prompts, cleans):
                logits = model.run_with_hooks(tokens.expand(len(chunk), -1),
                                              fwd_hooks=[(hook_name, steering_hook(sae, index, target, start))])
                change += torch.log_softmax(logits.float(), -1)[:, start:].mean(1) - clean
            order = change.argsort(-1).argsort(-1).float() / max(model.cfg.d_vocab - 1, 1)
            ranks[lo:lo + len(chunk)] += order.cpu().numpy() / values.shape[1]
    return ranks


def run_output(items: list[Item], model: Any, sae: Any, hook_name: str, config: Any, prepend_bos: bool,
               text: Callable[[int], str], progress: bool = True) -> list[dict[str, Any]]:
    """judgefree-output rows (see the module docstring); needs two or more scored latents per method."""
    from saekit.interp.score.model import find_clamp_values, prompt_tokens

    start = 1 if prepend_bos else 0
    targets = [max(config.kl_targets)] if max(config.kl_targets) > 0 else []
    if not targets:
        return [row(item, "judgefree-output", None, 0, {}, "ScoreConfig.kl_targets has no positive KL")
                for item in items]
    latents = list(dict.fromkeys(item.latent for item in items))
    prompts = prompt_tokens(model, list(config.output_prompts), prepend_bos)
    search = find_clamp_values(model, sae, hook_name, prompts, latents, targets, start, config.kl_window,
                               tuple(config.clamp_range), config.search_steps, config.steer_batch, progress,
                               config.clamp_grow)
    ranks = promotion_ranks(model, sae, hook_name, prompts, latents, search["values"], start, config.steer_batch)
    vocab = vocabulary_index(model, text)
    row_of = {f: i for i, f in enumerate(latents)}
    ids = {item: sorted({t for term in description_terms(item.description) for t in vocab.get(term, [])})
           for item in items}
    rows = []
    for item in items:
        mine = ids[item]
        others = [o for o in items if o.method == item.method and o.latent != item.latent and ids[o]]
        steering = ranks[row_of[item.latent]]
        details = {"n_token_ids": len(mine), "clamp_values": [round(float(v), 4) for v in search["values"][row_of[item.latent]]],
                   "kl": [round(float(k), 4) for k in search["kl"][row_of[item.latent]]], "targets": targets}
        if not mine:
            rows.append(row(item, "judgefree-output", None, 0, details, "the description names no vocabulary token"))
            continue
        if not others:
            rows.append(row(item, "judgefree-output", None, 0, details,
                            "no other latent's description (same method) names a vocabulary token to compare with"))
            continue
        strength = float(steering[mine].mean())
        rivals = np.array([steering[ids[o]].mean() for o in others])
        score = float(((rivals < strength).sum() + 0.5 * (rivals == strength).sum()) / len(rivals))
        details.update(mean_rank=round(strength, 4), rival_mean_rank=round(float(rivals.mean()), 4))
        rows.append(row(item, "judgefree-output", score, len(rivals), details))
    return rows
