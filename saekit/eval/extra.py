"""`saekit eval --metrics core absorption sparse_probing`: the evaluations beyond `core`, resumable.

A metric is named alone or with overrides of its config's fields: `absorption:n_words=2000,icl_examples=4`,
`sparse_probing:ks=1|2|5,n_contexts=100` (lists separated by `|`). Each finished metric is kept in
`eval_metrics.json` next to eval.json under a fingerprint of the SAE's weights, the model, the hook
point and the metric's config: a rerun with the same ones skips it (an interrupted run resumes at
the first unfinished metric). Each goes into eval.json as its own section (`result["absorption"]`,
`result["sparse_probing"]`) with its `seconds`, and into `eval_<metric>.html` (a plotly figure).
The model is loaded only when a metric has to run, the way the CE splice loads it (`_model_for`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import typing
from pathlib import Path
from typing import Any, Callable

from saekit.eval.absorption import AbsorptionConfig, absorption_figure, run_absorption
from saekit.eval.probing import SparseProbingConfig, run_sparse_probing, sparse_probing_figure
from saekit.files import write_json_atomic

METRICS_FILE = "eval_metrics.json"
EXTRA_METRICS: dict[str, tuple[type, Callable[..., dict[str, Any]], Callable[[dict[str, Any]], Any]]] = {
    "absorption": (AbsorptionConfig, run_absorption, absorption_figure),
    "sparse_probing": (SparseProbingConfig, run_sparse_probing, sparse_probing_figure),
}
ALL_METRICS = ("core", *EXTRA_METRICS)


def _convert(value: str, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is list:
        (inner,) = typing.get_args(annotation)
        return [_convert(v, inner) for v in value.split("|") if v]
    if annotation is bool:
        return value.lower() in ("1", "true", "yes", "on")
    return annotation(value) if annotation in (int, float) else value


def parse_metric(spec: str) -> tuple[str, dict[str, Any]]:
    """("absorption", {"n_words": 2000}) from "absorption:n_words=2000"; ValueError naming what is known."""
    name, _, options = spec.partition(":")
    if name not in ALL_METRICS:
        raise ValueError(f"unknown metric {name!r} in --metrics; known: {list(ALL_METRICS)}")
    if not options:
        return name, {}
    if name == "core":
        raise ValueError("metric 'core' takes no options (its fields are EvalConfig's)")
    cls = EXTRA_METRICS[name][0]
    hints = typing.get_type_hints(cls)
    overrides = {}
    for item in options.split(","):
        key, eq, value = item.partition("=")
        if not eq or key not in hints:
            raise ValueError(f"metric option {item!r} of {name}: expected FIELD=VALUE with FIELD one of {sorted(hints)}")
        overrides[key] = _convert(value, hints[key])
    return name, overrides


def metric_names(specs: list[str]) -> list[str]:
    """The metric names of --metrics (validated), in order, without repeats."""
    names: list[str] = []
    for spec in specs:
        name = parse_metric(spec)[0]
        if name not in names:
            names.append(name)
    return names


def _weights_digest(sae: Any) -> str:
    parts = [f"{name}:{tuple(t.shape)}:{float(t.double().sum()):.10e}:{float(t.double().abs().sum()):.10e}"
             for name, t in sorted(sae.state_dict().items()) if t.is_floating_point()]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def fingerprint(sae: Any, hook: str, model_info: dict[str, Any], name: str, config: Any) -> str:
    """What a cached metric result depends on: the SAE's weights, the model, the hook, the config."""
    key = {"weights": _weights_digest(sae), "hook": hook, "model": model_info, "metric": name,
           "config": dataclasses.asdict(config)}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_extra_metrics(specs: list[str], sae: Any, hook: str, manifest: dict[str, Any],
                      load_model: Callable[[], Any], out: Path | None, progress: bool = True) -> dict[str, Any]:
    """{metric: section} of the non-core metrics in `specs`; out: folder of eval_metrics.json and the
    figures (None: keep nothing, compute all)."""
    cached = json.loads((out / METRICS_FILE).read_text()) if out and (out / METRICS_FILE).exists() else {}
    results: dict[str, Any] = {}
    model = None
    for spec in specs:
        name, overrides = parse_metric(spec)
        if name == "core" or name in results:
            continue
        cls, run, figure = EXTRA_METRICS[name]
        config = cls(**overrides)
        key = fingerprint(sae, hook, manifest.get("model", {}), name, config)
        if cached.get(name, {}).get("fingerprint") == key:
            results[name] = cached[name]["result"]
            if progress:
                print(f"eval {name}: finished before ({out / METRICS_FILE}), skipped")
            continue
        if model is None:
            model = load_model()
        started = time.time()
        section = run(model, sae, hook, config, prepend_bos=bool(manifest.get("prepend_bos", True)),
                      progress=progress)
        section["seconds"] = round(time.time() - started, 2)
        results[name] = section
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            cached[name] = {"fingerprint": key, "result": section}
            write_json_atomic(out / METRICS_FILE, cached)
            figure(section).write_html(str(out / f"eval_{name}.html"), include_plotlyjs=True, full_html=True)
    return results


def summary_lines(result: dict[str, Any]) -> list[str]:
    """One line per non-core section of an eval result."""
    lines = []
    if "absorption" in result:
        section = result["absorption"]
        mean = section["eval_result_metrics"]["mean"]
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"absorption: mean_absorption_fraction_score {fmt(mean['mean_absorption_fraction_score'])}, "
                     f"mean_full_absorption_score {fmt(mean['mean_full_absorption_score'])}, "
                     f"mean_num_split_features {fmt(mean['mean_num_split_features'])} over "
                     f"{section['n_letters_used']} letters (mean probe F1 {fmt(section['probe']['mean_probe_f1'])})")
    if "sparse_probing" in result:
        metrics = result["sparse_probing"]["eval_result_metrics"]
        parts = [f"llm {metrics['llm'].get('llm_test_accuracy', float('nan')):.3f}",
                 f"sae {metrics['sae'].get('sae_test_accuracy', float('nan')):.3f}"]
        parts += [f"top_{k.split('_')[2]} {v:.3f}" for k, v in metrics["sae"].items() if k.startswith("sae_top_")]
        lines.append("sparse_probing test accuracy: " + ", ".join(parts))
    return lines


def merge_into_eval(path: Path, base: dict[str, Any], sections: dict[str, Any]) -> dict[str, Any]:
    """An existing eval.json (its keys untouched) or `base`, with the sections added or replaced."""
    result = json.loads(path.read_text()) if path.exists() else dict(base)
    result.update(sections)
    return result


def check_model_width(model: Any, hook: str, d_in: int, ctx_len: int) -> None:
    """ValueError when the model's width at `hook` is not the SAE's d_in."""
    from saekit.data.cache import hook_dims

    width = hook_dims(model, [hook], min(ctx_len, 8))[hook]
    if width != d_in:
        raise ValueError(f"SAE d_in {d_in} does not match the model's {hook!r} width {width}")
