"""Feature absorption on first-letter spelling (Chanin et al. 2024), as SAEBench's `absorption` eval runs it.

Steps (the same facts as SAEBench's sae_bench/evals/absorption; the code is saekit's):

1. words: single-token alphabetic words of the model's vocabulary (`tasks.alpha_words`), split
   `train_fraction`/rest by word; activations at the SAE's hook, read at the word token of the ICL
   prompt "{word} has the first letter: C" (`tasks.spelling_prompts`);
2. ground-truth probes: one logistic regression per letter (one-vs-rest, class-balanced) on the
   model's activations; `probe_f1`/`probe_accuracy` per letter on the held-out words. A letter whose
   probe F1 is at most `min_probe_f1` (0.6) is left out of the means: absorption means little where
   the probe itself fails to find the letter;
3. main latents (k-sparse probing): an L1-regularised logistic regression on all SAE latents ranks
   them per letter; for k = 1..max_k a logistic regression on the top-k gives an F1 on the held-out
   words. The main (split) latents are the top-k for the largest k reached while each step raises
   F1 by more than `f1_jump_threshold` (0.03); `num_split_features` = their number (SAEBench's);
4. absorption, over the held-out words of the letter that the probe detects (logit > 0):
   `absorption_fraction` per word: 1 when the main latents carry none of the probe projection
   x·p (p the unit probe direction) and up to 3 other latents with decoder cosine >= 0.1 to p carry
   at least 40% of it; the share of those latents when the main latents carry part; 0 when the main
   latents carry all of it. `is_full_absorption`: no main latent fires, and the latent with the top
   projection act·cos(W_dec, p) has cos >= 0.025 and carries >= 40% of x·p.
   Per letter: mean_absorption_fraction and full_absorption_rate over those words; the summary
   (`eval_result_metrics.mean`) averages the letters that pass, as SAEBench.

Differences from SAEBench (see docs/saebench_metrics.md): sklearn logistic regressions instead of Adam-
trained probes; several words can be read from one prompt (`words_per_prompt`) to save CPU.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch

from saekit.config import doc
from saekit.eval.tasks import LETTERS, alpha_words, model_activations, spelling_prompts

EPS = 1e-8
FULL_ABSORPTION_PROBE_COS_THRESHOLD = 0.025
ABSORPTION_FRACTION_PROBE_COS_THRESHOLD = 0.1
PROBE_PROJECTION_PROPORTION_THRESHOLD = 0.4
MAX_ABSORBING_LATENTS = 3
TOP_PROJECTION_LATENTS = 10
NOTE = ("absorption is measured against a linear probe per letter: where the probe fails (probe_f1 <= min_probe_f1) "
        "the letter is left out of the means, and the means mean little when few letters pass (see n_letters_used)")


@dataclass
class AbsorptionConfig:
    """Sizes and thresholds of the absorption eval (defaults: SAEBench's, except the word count)."""

    n_words: int = doc("vocabulary words drawn (0 = all single-token alphabetic words)", 3000)
    train_fraction: float = doc("fraction of the words the probes are trained on (SAEBench: 0.8)", 0.8)
    icl_examples: int = doc("answered ICL lines before the first word read (SAEBench: 10)", 10)
    words_per_prompt: int = doc("words read per prompt (SAEBench: 1); more saves CPU", 8)
    template: str = doc("prompt line; the word opens it", "{word} has the first letter:")
    max_k: int = doc("largest k of the k-sparse probes (SAEBench max_k_value)", 10)
    f1_jump_threshold: float = doc("F1 gain that counts one more latent as a split feature", 0.03)
    min_probe_f1: float = doc("letters whose probe F1 is at most this are left out of the means", 0.6)
    min_letters: int = doc("fewer passing letters than this: no mean is reported (SAEBench: 20)", 20)
    l1_decay: float = doc("L1 strength of the latent-ranking probe (SAEBench k_sparse_probe_l1_decay)", 0.01)
    batch_size: int = doc("prompts per forward pass", 8)
    seed: int = doc("seed of the word draw, split and prompts", 42)


def _logistic(x: np.ndarray, y: np.ndarray, **kwargs: Any) -> Any:
    """A class-balanced sklearn LogisticRegression fit on x [n, f], y [n] bool; BLAS kept to one thread
    (the fits are small: on a shared CPU more threads made them 20x slower, measured)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return LogisticRegression(class_weight="balanced", max_iter=kwargs.pop("max_iter", 1000), **kwargs).fit(x, y)


def _f1(y: np.ndarray, predicted: np.ndarray) -> float:
    tp = float((y & predicted).sum())
    return 2 * tp / max(float(y.sum() + predicted.sum()), 1.0)


def train_letter_probes(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                        y_test: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """One-vs-rest probes on activations x [n, d] for letters y [n] (0..25): (weights [26, d], biases [26]
    in the raw activation space, per-letter held-out stats). Letters with < 2 train or no test words
    get zero weights and stats with `skipped`."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    z_train, z_test = (x_train - mean) / std, (x_test - mean) / std
    weights, biases = np.zeros((26, x_train.shape[1])), np.zeros(26)
    stats = []
    for letter in range(26):
        pos_train, pos_test = int((y_train == letter).sum()), int((y_test == letter).sum())
        row = {"letter": LETTERS[letter], "n_train": pos_train, "n_test": pos_test}
        if pos_train < 2 or pos_test < 1 or pos_train == len(y_train):
            stats.append({**row, "skipped": True, "probe_f1": None, "probe_accuracy": None})
            continue
        fit = _logistic(z_train, y_train == letter)
        weights[letter] = fit.coef_[0] / std
        biases[letter] = fit.intercept_[0] - float((fit.coef_[0] * mean / std).sum())
        predicted = z_test @ fit.coef_[0] + fit.intercept_[0] > 0
        truth = y_test == letter
        stats.append({**row, "skipped": False, "probe_f1": _f1(truth, predicted),
                      "probe_accuracy": float((truth == predicted).mean()),
                      "probe_precision": float((truth & predicted).sum() / max(predicted.sum(), 1)),
                      "probe_recall": float((truth & predicted).sum() / max(truth.sum(), 1))})
    return weights, biases, stats


def k_sparse_letter_probes(z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray, y_test: np.ndarray,
                           letter: int, max_k: int, l1_decay: float) -> list[dict[str, Any]]:
    """For k = 1..max_k: the top-k latents of an L1 probe on SAE latents z [n, d_sae] (positive weights
    first, SAEBench's `topk`; latents the L1 probe zeroes follow by mean difference) and the held-out F1
    of a logistic regression on them: [{k, feats, f1, l1_nonzero}]."""
    scale = np.abs(z_train).max(0) + 1e-6
    truth = y_train == letter
    live = np.flatnonzero(np.abs(z_train).max(0) > 0)
    ranked = _logistic(z_train[:, live] / scale[live], truth, l1_ratio=1.0, solver="liblinear",
                       C=1.0 / (len(y_train) * l1_decay), max_iter=500).coef_[0]
    mean_diff = z_train[truth].mean(0) - z_train[~truth].mean(0)
    order = live[np.lexsort((-mean_diff[live], -ranked))]  # by weight, ties (zeros) by mean difference
    rows = []
    for k in range(1, min(max_k, len(order)) + 1):
        feats = order[:k]
        fit = _logistic(z_train[:, feats], truth, max_iter=500)
        predicted = fit.decision_function(z_test[:, feats]) > 0
        rows.append({"k": k, "feats": [int(f) for f in feats], "f1": _f1(y_test == letter, predicted),
                     "l1_nonzero": int((ranked != 0).sum())})
    return rows


def split_features(rows: list[dict[str, Any]], f1_jump_threshold: float) -> list[int]:
    """SAEBench's feature splitting: grow k while F1 rises by more than the threshold; that k's latents."""
    best, feats = -100.0, []
    for row in rows:
        if row["f1"] > best + f1_jump_threshold:
            best, feats = row["f1"], row["feats"]
        else:
            break
    return feats


def word_absorption(x: torch.Tensor, latents: torch.Tensor, W_dec: torch.Tensor, probe: torch.Tensor,
                    main: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(absorption_fraction [n], is_full_absorption [n]) of words with activations x [n, d] and SAE
    latents [n, d_sae], for a probe direction [d] and main latents (see the module docstring, step 4)."""
    probe = probe.double() / probe.double().norm()
    cos = torch.nn.functional.cosine_similarity(W_dec.double(), probe[None], dim=-1)  # [d_sae]
    act_proj = x.double() @ probe  # [n]
    proj = latents.double() * cos  # [n, d_sae]
    main_mask = torch.zeros(len(cos), dtype=torch.bool)
    main_mask[main] = True
    main_proj = proj[:, main_mask].sum(1)
    candidates = torch.where((~main_mask & (cos >= ABSORPTION_FRACTION_PROBE_COS_THRESHOLD))[None] & (proj > 0),
                             proj, torch.zeros_like(proj))
    absorbers = candidates.topk(min(MAX_ABSORBING_LATENTS, proj.shape[1]), dim=1).values.sum(1)
    fraction = np.zeros(len(x))
    full = np.zeros(len(x), dtype=bool)
    top = proj.topk(min(TOP_PROJECTION_LATENTS, proj.shape[1]), dim=1).indices[:, 0]
    for i in range(len(x)):
        a, m, s = float(act_proj[i]), float(main_proj[i]), float(absorbers[i])
        if a <= 0 or m >= a or s / a < PROBE_PROJECTION_PROPORTION_THRESHOLD:
            fraction[i] = 0.0
        elif m <= 0:
            fraction[i] = 1.0
        else:
            absorbed = min(s, a - m)
            fraction[i] = float(np.clip(absorbed / (absorbed + m), 0.0, 1.0))
        t = int(top[i])
        full[i] = bool((latents[i, main_mask] < EPS).all() and float(cos[t]) >= FULL_ABSORPTION_PROBE_COS_THRESHOLD
                       and a > 0 and float(proj[i, t]) / a >= PROBE_PROJECTION_PROPORTION_THRESHOLD)
    return fraction, full


@torch.no_grad()
def _encode(sae: Any, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    dtype = next(sae.parameters()).dtype
    return torch.cat([sae.encode(x[i:i + batch].to(dtype)).float() for i in range(0, len(x), batch)])


def absorption_from_activations(sae: Any, x_train: torch.Tensor, y_train: np.ndarray, x_test: torch.Tensor,
                                y_test: np.ndarray, config: AbsorptionConfig,
                                words_test: list[str] | None = None) -> dict[str, Any]:
    """The absorption section of eval.json from word activations x [n, d] at the SAE's hook and first
    letters y [n] (0..25), split train/test (SAEBench's output schema: eval_result_metrics.mean and
    one eval_result_details row per letter; `probe` per-letter probe stats)."""
    z_train, z_test = _encode(sae, x_train), _encode(sae, x_test)
    weights, biases, probe_stats = train_letter_probes(x_train.numpy(), y_train, x_test.numpy(), y_test)
    scores = x_test.double().numpy() @ weights.T + biases  # [n_test, 26] probe logits
    W_dec = sae.W_dec.detach().float().cpu()
    details, examples = [], []
    for letter, stats in enumerate(probe_stats):
        if stats["skipped"]:
            continue
        rows = k_sparse_letter_probes(z_train.numpy(), y_train, z_test.numpy(), y_test, letter, config.max_k,
                                      config.l1_decay)
        main = split_features(rows, config.f1_jump_threshold)
        detected = np.flatnonzero((y_test == letter) & (scores[:, letter] > 0))
        fraction, full = word_absorption(x_test[detected], z_test[detected], W_dec,
                                         torch.from_numpy(weights[letter]), main) if len(detected) else ([], [])
        n = len(detected)
        details.append({
            "first_letter": LETTERS[letter],
            "mean_absorption_fraction": float(np.sum(fraction) / n) if n else None,
            "full_absorption_rate": float(np.sum(full) / n) if n else None,
            "num_full_absorption": int(np.sum(full)), "num_probe_true_positives": n,
            "num_split_features": len(main), "split_feats": main,
            "probe_f1": stats["probe_f1"], "probe_accuracy": stats["probe_accuracy"],
            "k_sparse_f1": [round(r["f1"], 4) for r in rows],
            "l1_nonzero_latents": rows[0]["l1_nonzero"] if rows else 0,
            "used": bool(n > 0 and stats["probe_f1"] > config.min_probe_f1),
        })
        if words_test is not None:
            examples += [{"letter": LETTERS[letter], "word": words_test[i], "absorption_fraction": float(f),
                          "is_full_absorption": bool(is_full)}
                         for i, f, is_full in zip(detected, fraction, full) if f > 0 or is_full][:5]
    used = [d for d in details if d["used"]]
    def mean(key: str) -> float | None:
        return statistics.mean(d[key] for d in used) if len(used) >= max(config.min_letters, 1) else None
    def stdev(key: str) -> float | None:
        return statistics.stdev(d[key] for d in used) if len(used) >= max(config.min_letters, 2) else None
    valid = [s for s in probe_stats if not s["skipped"]]
    return {
        "eval_type_id": "absorption_first_letter",
        "eval_config": asdict(config),
        "eval_result_metrics": {"mean": {
            "mean_absorption_fraction_score": mean("mean_absorption_fraction"),
            "mean_full_absorption_score": mean("full_absorption_rate"),
            "mean_num_split_features": mean("num_split_features"),
            "std_dev_absorption_fraction_score": stdev("mean_absorption_fraction"),
            "std_dev_full_absorption_score": stdev("full_absorption_rate"),
            "std_dev_num_split_features": stdev("num_split_features"),
        }},
        "eval_result_details": details,
        "probe": {"mean_probe_f1": float(np.mean([s["probe_f1"] for s in valid])) if valid else None,
                  "mean_probe_accuracy": float(np.mean([s["probe_accuracy"] for s in valid])) if valid else None,
                  "per_letter": probe_stats},
        "mean_over_used_letters": {key: statistics.mean(d[key] for d in used) if used else None for key in
                                   ("mean_absorption_fraction", "full_absorption_rate", "num_split_features")},
        "n_letters_used": len(used), "n_train_words": int(len(y_train)), "n_test_words": int(len(y_test)),
        "absorbed_examples": examples[:60],
        "note": NOTE + ("" if len(used) >= config.min_letters else
                        f"; only {len(used)} letters pass (< min_letters {config.min_letters}): no means reported"),
    }


def word_activations(model: Any, hook: str, words: list[Any], config: AbsorptionConfig, bos: int | None,
                     seed: int, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """[len(words), d] activations at `hook` at each word's token in its spelling prompt."""
    prompts = spelling_prompts(words, model.tokenizer, config.icl_examples, config.words_per_prompt,
                               config.template, bos=bos, seed=seed)
    longest = max(len(p.tokens) for p in prompts)
    if longest > model.cfg.n_ctx:
        raise ValueError(f"absorption: prompts of {longest} tokens exceed the model's n_ctx {model.cfg.n_ctx}; "
                         f"lower icl_examples ({config.icl_examples}) or words_per_prompt ({config.words_per_prompt})")
    acts = model_activations(model, [p.tokens for p in prompts], hook, config.batch_size, progress)
    out = torch.zeros(len(words), acts[0].shape[-1])
    for prompt, act in zip(prompts, acts):
        out[prompt.words] = act[prompt.positions]
    return out


def run_absorption(model: Any, sae: Any, hook: str, config: AbsorptionConfig, prepend_bos: bool = True,
                   progress: bool = True) -> dict[str, Any]:
    """The absorption section for `sae` at `hook` of `model` (see the module docstring)."""
    from tqdm.auto import tqdm

    words = alpha_words(model.tokenizer, config.n_words, config.seed)
    if len(words) < 10:
        raise ValueError(f"absorption: the tokenizer has only {len(words)} single-token alphabetic words")
    order = np.random.default_rng(config.seed).permutation(len(words))
    n_train = int(len(words) * config.train_fraction)
    train, test = [words[i] for i in order[:n_train]], [words[i] for i in order[n_train:]]
    bos = model.tokenizer.bos_token_id if prepend_bos else None
    total = len(words) * 8 * (1 + config.icl_examples / config.words_per_prompt)
    bar = tqdm(total=int(total), unit="tok", unit_scale=True, desc="eval absorption", disable=not progress)
    x_train = word_activations(model, hook, train, config, bos, config.seed, bar.update)
    x_test = word_activations(model, hook, test, config, bos, config.seed + 1, bar.update)
    bar.close()
    y_train = np.array([w.letter for w in train])
    y_test = np.array([w.letter for w in test])
    return absorption_from_activations(sae, x_train, y_train, x_test, y_test, config, [w.text for w in test])


def absorption_figure(section: dict[str, Any]) -> Any:
    """Per letter: mean absorption fraction and full-absorption rate (bars), probe F1 (line); letters
    left out of the means (probe F1 too low) are greyed."""
    import plotly.graph_objects as go

    details = section["eval_result_details"]
    letters = [d["first_letter"] for d in details]
    colours = ["#1f77b4" if d["used"] else "#c7c7c7" for d in details]
    fig = go.Figure([
        go.Bar(x=letters, y=[d["mean_absorption_fraction"] for d in details], name="absorption fraction",
               marker_color=colours),
        go.Bar(x=letters, y=[d["full_absorption_rate"] for d in details], name="full absorption rate",
               marker_color=["#ff7f0e" if d["used"] else "#e0e0e0" for d in details]),
        go.Scatter(x=letters, y=[d["probe_f1"] for d in details], name="probe F1", mode="lines+markers"),
    ])
    means = section["eval_result_metrics"]["mean"]
    score = means["mean_absorption_fraction_score"]
    fig.update_layout(barmode="group", yaxis_title="fraction", xaxis_title="first letter",
                      title=(f"feature absorption: mean absorption fraction "
                             f"{'n/a' if score is None else f'{score:.3f}'} over {section['n_letters_used']} "
                             f"letters (grey: probe F1 too low, left out)"))
    return fig
