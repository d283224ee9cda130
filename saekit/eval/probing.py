"""k-sparse probing (Gao et al. 2024; SAEBench's `sparse_probing`) on binary tasks from offline text.

For each binary task: a logistic regression on the model's activations (`llm_test_accuracy`), on all
SAE latents (`sae_test_accuracy`), and for each k on the k latents (or model dimensions: `llm_top_{k}`)
whose mean activation differs most between the classes on the train split (SAEBench's
`get_top_k_mean_diff_mask`): `sae_top_{k}_test_accuracy`, the held-out accuracy. Classes are
balanced in both splits (as SAEBench's `prepare_probe_data`), so chance is 0.5.

Datasets (`tasks.probing_contexts`; one forward pass serves all three; documents differ between splits):

- `doc_source`: which of stdlib docstrings / Python docs (python3.11-doc) / Linux kernel docs
  (linux-doc-6.1) a context comes from; one task per source against the other two (SAEBench's one
  class vs the rest), on activations mean-pooled over the context (BOS left out);
- `code_vs_prose`: whether a line of a reST document is code (literal block after "::", code
  directive body, doctest) or prose (`tasks.rst_line_labels`), mean-pooled over the line's tokens;
- `token_case`: whether a token's first letter is upper- or lower-case (tokens starting with a letter),
  at that token.

SAE latents are encoded per token, then mean-pooled (SAEBench's `get_sae_meaned_activations`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from saekit.config import doc
from saekit.eval.tasks import DEBIAN_DOCS, SOURCES, model_activations, probing_contexts

DATASETS = ("doc_source", "code_vs_prose", "token_case")


@dataclass
class SparseProbingConfig:
    """Tasks, sizes and k values of the k-sparse probing eval."""

    datasets: list[str] = doc("datasets to probe (doc_source, code_vs_prose, token_case)",
                              default_factory=lambda: list(DATASETS))
    ks: list[int] = doc("k values (SAEBench: 1, 2, 5 by default; 10, 20, 50 in its schema)",
                        default_factory=lambda: [1, 2, 5, 10, 20])
    n_contexts: int = doc("contexts per source", 150)
    ctx_len: int = doc("tokens per context (BOS included)", 64)
    train_fraction: float = doc("fraction of each source's contexts in the train split", 0.75)
    max_per_class: int = doc("most examples per class and split (SAEBench: 4000 train, 1000 test in all)", 2000)
    debian_docs: str = doc("folder with python3.11-doc/ and linux-doc-6.1/ (analysis/fetch_debian_docs.py)",
                           str(DEBIAN_DOCS))
    batch_size: int = doc("contexts per forward pass", 16)
    seed: int = doc("seed of the context draw and the class balancing", 42)


def _fit_accuracy(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray) -> float:
    """Held-out accuracy of an L2 logistic regression (sklearn defaults, max_iter 1000) on features
    standardised with the train split's mean and std."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    mean, std = train.mean(0), train.std(0) + 1e-6
    with threadpool_limits(limits=1, user_api="blas"):
        fit = LogisticRegression(max_iter=1000).fit((train - mean) / std, y_train)
        return float((fit.predict((test - mean) / std) == y_test).mean())


def top_k_mean_diff(features: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Indices [k] of the features [n, f] whose class means differ most (absolute difference)."""
    diff = np.abs(features[labels == 1].mean(0) - features[labels == 0].mean(0))
    return np.argsort(-diff, kind="stable")[:k]


def probe_task(x_train: np.ndarray, z_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
               z_test: np.ndarray, y_test: np.ndarray, ks: list[int]) -> dict[str, Any]:
    """SAEBench's accuracies for one binary task: x model activations [n, d], z SAE latents [n, d_sae],
    y labels [n] in {0, 1}; `sae_top_{k}_latents` are the latents chosen."""
    out: dict[str, Any] = {"llm_test_accuracy": _fit_accuracy(x_train, y_train, x_test, y_test),
                           "sae_test_accuracy": _fit_accuracy(z_train, y_train, z_test, y_test),
                           "n_train": int(len(y_train)), "n_test": int(len(y_test))}
    for k in ks:
        dims = top_k_mean_diff(x_train, y_train, k)
        out[f"llm_top_{k}_test_accuracy"] = _fit_accuracy(x_train[:, dims], y_train, x_test[:, dims], y_test)
    for k in ks:
        latents = top_k_mean_diff(z_train, y_train, k)
        out[f"sae_top_{k}_test_accuracy"] = _fit_accuracy(z_train[:, latents], y_train, z_test[:, latents], y_test)
        out[f"sae_top_{k}_latents"] = [int(i) for i in latents]
    return out


def balanced(positive: np.ndarray, negative: np.ndarray, cap: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(indices, labels in {0, 1}) of equal numbers (at most cap) of positive and negative examples,
    shuffled: rows where the masks `positive` / `negative` [n] hold."""
    pos, neg = np.flatnonzero(positive), np.flatnonzero(negative)
    n = min(len(pos), len(neg), cap)
    pos, neg = rng.choice(pos, n, replace=False), rng.choice(neg, n, replace=False)
    index = np.r_[pos, neg]
    y = np.r_[np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int64)]
    order = rng.permutation(len(index))
    return index[order], y[order]


def _pooled_features(acts: torch.Tensor, latents: torch.Tensor,
                     groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(model [g, d], SAE [g, d_sae]) means over each group of token positions of one context."""
    x = torch.stack([acts[g].mean(0) for g in groups]) if groups else acts[:0]
    z = torch.stack([latents[g].mean(0) for g in groups]) if groups else latents[:0]
    return x.numpy(), z.numpy()


def collect_examples(model: Any, sae: Any, hook: str, config: SparseProbingConfig, prepend_bos: bool = True,
                     progress: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """{dataset: {x [n, d], z [n, d_sae], label [n], split [n] (1 = train)}}: the examples of each
    dataset in config.datasets (`label`: source index for doc_source; 1 code / 0 prose; 1 upper / 0 lower)."""
    from tqdm.auto import tqdm

    sources = SOURCES if "doc_source" in config.datasets else SOURCES[1:]
    bos = model.tokenizer.bos_token_id if prepend_bos else None
    contexts = probing_contexts(model.tokenizer, sources, config.n_contexts, config.ctx_len,
                                train_fraction=config.train_fraction, bos=bos, debian_docs=config.debian_docs,
                                seed=config.seed)
    rng = np.random.default_rng(config.seed)
    bar = tqdm(total=sum(len(c.tokens) for c in contexts), unit="tok", unit_scale=True, desc="eval sparse probing",
               disable=not progress)
    acts = model_activations(model, [c.tokens for c in contexts], hook, config.batch_size, bar.update)
    bar.close()
    rows: dict[str, list[tuple[np.ndarray, np.ndarray, int, int]]] = {name: [] for name in config.datasets}
    for context, act in zip(contexts, acts):
        start = 1 if bos is not None else 0
        train = int(context.split == "train")
        groups: dict[str, tuple[list[np.ndarray], list[int]]] = {}
        if "doc_source" in rows:
            groups["doc_source"] = ([np.arange(start, len(act))], [context.source])
        if "code_vs_prose" in rows:
            lines = [i for i in np.unique(context.line_id) if i >= 0 and context.line[context.line_id == i][0] >= 0]
            groups["code_vs_prose"] = ([np.flatnonzero(context.line_id == i) for i in lines],
                                       [int(context.line[context.line_id == i][0]) for i in lines])
        if "token_case" in rows:
            chosen = []
            for value in (0, 1):  # at most 4 tokens of each case per context
                where = np.flatnonzero(context.case == value)
                chosen += list(rng.choice(where, min(4, len(where)), replace=False))
            groups["token_case"] = ([np.array([i]) for i in chosen], [int(context.case[i]) for i in chosen])
        with torch.no_grad():
            latents = sae.encode(act.to(next(sae.parameters()).dtype)).float()
        for name, (index_groups, labels) in groups.items():
            x, z = _pooled_features(act, latents, index_groups)
            rows[name] += [(x[i], z[i], labels[i], train) for i in range(len(labels))]
    return {name: {"x": np.array([r[0] for r in got]), "z": np.array([r[1] for r in got]),
                   "label": np.array([r[2] for r in got]), "split": np.array([r[3] for r in got])}
            for name, got in rows.items() if got}


def binary_tasks(name: str, data: dict[str, np.ndarray], cap: int,
                 rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """{task: (train index, train y, test index, test y)} of a dataset: one class against the rest for
    doc_source (negatives drawn evenly from the other classes), class 1 against class 0 otherwise."""
    label, split = data["label"], data["split"]
    classes = sorted(set(label.tolist()))
    pairs = ([(SOURCES[c], label == c) for c in classes] if name == "doc_source"
             else [({"code_vs_prose": "code", "token_case": "upper"}.get(name, "1"), label == 1)])
    tasks = {}
    for task, positive in pairs:
        parts = []
        for s in (1, 0):
            in_split = split == s
            if name == "doc_source":
                n_pos = int((positive & in_split).sum())
                others = [c for c in classes if SOURCES[c] != task]
                negative = np.zeros(len(label), dtype=bool)
                for c in others:
                    pool = np.flatnonzero((label == c) & in_split)
                    negative[rng.choice(pool, min(len(pool), -(-n_pos // len(others))), replace=False)] = True
            else:
                negative = (label == 0) & in_split
            parts += list(balanced(positive & in_split, negative, cap, rng))
        if min(len(parts[1]), len(parts[3])) >= 4:
            tasks[f"{name}/{task}"] = (parts[0], parts[1], parts[2], parts[3])
    return tasks


def sparse_probing_from_examples(examples: dict[str, dict[str, np.ndarray]],
                                 config: SparseProbingConfig) -> dict[str, Any]:
    """The sparse_probing section of eval.json (SAEBench's schema: eval_result_metrics.llm / .sae
    averaged over datasets, eval_result_details one row per dataset, `tasks` per binary task)."""
    rng = np.random.default_rng(config.seed)
    tasks: dict[str, dict[str, Any]] = {}
    details = []
    for name, data in examples.items():
        per_task = {}
        for task, (i_train, y_train, i_test, y_test) in binary_tasks(name, data, config.max_per_class, rng).items():
            per_task[task] = probe_task(data["x"][i_train], data["z"][i_train], y_train,
                                        data["x"][i_test], data["z"][i_test], y_test, config.ks)
        if not per_task:
            continue
        tasks.update(per_task)
        keys = [k for k in next(iter(per_task.values())) if k.endswith("_accuracy")]
        details.append({"dataset_name": name, **{k: float(np.mean([t[k] for t in per_task.values()])) for k in keys}})
    keys = [k for k in details[0] if k.endswith("_accuracy")] if details else []
    means = {k: float(np.mean([d[k] for d in details])) for k in keys}
    return {
        "eval_type_id": "sparse_probing",
        "eval_config": asdict(config),
        "eval_result_metrics": {"llm": {k: v for k, v in means.items() if k.startswith("llm")},
                                "sae": {k: v for k, v in means.items() if k.startswith("sae")}},
        "eval_result_details": details,
        "tasks": tasks,
        "note": "held-out accuracy of balanced binary tasks (chance 0.5); llm_* probe the model's activations",
    }


def run_sparse_probing(model: Any, sae: Any, hook: str, config: SparseProbingConfig, prepend_bos: bool = True,
                       progress: bool = True) -> dict[str, Any]:
    """The sparse_probing section for `sae` at `hook` of `model` (see the module docstring)."""
    unknown = sorted(set(config.datasets) - set(DATASETS))
    if unknown:
        raise ValueError(f"sparse_probing: unknown dataset(s) {unknown}; known: {list(DATASETS)}")
    return sparse_probing_from_examples(collect_examples(model, sae, hook, config, prepend_bos, progress), config)


def sparse_probing_figure(section: dict[str, Any]) -> Any:
    """Held-out accuracy against k per dataset: SAE top-k latents (lines), the all-latent SAE probe and
    the model-activation probe (dotted/dashed levels)."""
    import plotly.graph_objects as go

    ks = section["eval_config"]["ks"]
    fig = go.Figure()
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
    for i, detail in enumerate(section["eval_result_details"]):
        colour = palette[i % len(palette)]
        name = detail["dataset_name"]
        fig.add_trace(go.Scatter(x=ks, y=[detail[f"sae_top_{k}_test_accuracy"] for k in ks], mode="lines+markers",
                                 name=f"{name}: SAE top-k", line={"color": colour}))
        for key, dash, label in (("sae_test_accuracy", "dot", "all SAE latents"),
                                 ("llm_test_accuracy", "dash", "model activations")):
            fig.add_trace(go.Scatter(x=[ks[0], ks[-1]], y=[detail[key]] * 2, mode="lines", name=f"{name}: {label}",
                                     line={"color": colour, "dash": dash}))
    fig.update_layout(title="k-sparse probing: held-out accuracy of balanced binary tasks (chance 0.5)",
                      xaxis={"title": "k (latents)", "type": "log"}, yaxis={"title": "test accuracy"})
    return fig
