"""`saekit eval SAE_DIR --cache CACHE_DIR`: the same report card for every SAE.

Steps: load the SAE; check it against the cache (hook point, d_in); stream the held-out contexts'
activations through it (reconstruction and sparsity metrics); splice it into the model over the
same contexts (CE, KL); write `eval.json` and `eval_frequency.html` next to the SAE.

Held out: by default the last `n_tokens` worth of contexts of the cache, which `saekit train` leaves
out of training with its `holdout_fraction`. Live mode (`--model NAME --dataset ...`, no cache)
first caches the evaluation tokens into `<out>/eval_cache`.

The SAE is anything `saekit.load_sae` reads: a saekit/SAELens/sparsify folder, a sae-lens registry
id `RELEASE/SAE_ID`, a sparsify hub repo. Results go to the SAE's folder, or for a registry/hub SAE
to `runs/published/<release>/<sae_id>/` (`--out` overrides both).
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from saekit.config import config_to_dict, doc
from saekit.data import ActivationStore, CacheConfig, CacheError, cache_activations, open_shard, read_manifest
from saekit.data.cache import hook_dims, resolve_device
from saekit.data.provenance import check_same_model, manifest_digest
from saekit.data.shards import shard_path
from saekit.files import write_json_atomic
from saekit.eval.extra import metric_names
from saekit.eval.metrics import ReconstructionStats, run_record
from saekit.eval.splice import splice_losses
from saekit.sae import SAE
from saekit.sae.formats import load_sae, output_dir_for

EVAL_FILE = "eval.json"
HISTOGRAM_FILE = "eval_frequency.html"


@dataclass
class EvalConfig:
    """What `saekit eval` measures, on which tokens."""

    sae: str = doc("SAE: a saekit/SAELens/sparsify folder, a sae-lens registry id RELEASE/SAE_ID, or a "
                   "sparsify hub repo OWNER/REPO/HOOKPOINT", "")
    out: str = doc("folder for eval.json ('' = the SAE's folder; runs/published/<source> for a registry or "
                   "hub SAE)", "")
    cache: str = doc("activation cache holding the SAE's hook point ('' = live mode with --model)", "")
    model: str = doc("model for the CE/KL splice: name or folder ('' = the one the cache names)", "")
    init: str = doc("init variant of --model (default: the cache's)", "")
    dataset: str = doc("live mode: dataset to run the model on", "stdlib-docstrings")
    n_tokens: int = doc("tokens to evaluate (the last contexts of the cache: its held-out part)", 100_000)
    first_context: int = doc("evaluate from this context on instead of the last n_tokens (-1: last)", -1)
    ce_contexts: int = doc("contexts used for the CE/KL splice (0: skip the splice)", 128)
    batch_size: int = doc("tokens per batch of the reconstruction pass", 4096)
    device: str = doc("auto | cpu | cuda", "auto")
    write: bool = doc("write eval.json and the histogram next to the SAE", True)
    allow_other_cache: bool = doc("evaluate on a cache of another model than the SAE was trained on "
                                  "(its cfg.json records the training cache)", False)
    allow_training_contexts: bool = doc("with first_context: evaluate on contexts the SAE was trained on (warns) "
                                        "instead of refusing", False)
    metrics: list[str] = doc("metrics to compute: core (reconstruction, sparsity, CE/KL) | absorption | "
                             "sparse_probing, each optionally NAME:FIELD=VALUE,... (saekit.eval.extra; finished "
                             "ones are kept in eval_metrics.json and skipped on a rerun)",
                             default_factory=lambda: ["core"])


def _model_for(manifest: dict[str, Any], config: EvalConfig, device: torch.device) -> Any:
    from saekit.models import reload_model

    return reload_model(manifest.get("model", {}), config.model, config.init, str(device))


def check_sae_against_cache(sae: SAE, manifest: dict[str, Any], cache: str | Path, check_model: bool = False) -> str:
    """The hook point to evaluate; CacheError naming both sides when SAE and cache disagree.

    check_model: also refuse a cache of another model (or weight processing) than the cache the SAE
    recorded training on (`sae.provenance`; SAEs without it pass). Another cache of the same model
    and hook point (held-out data) is fine: eval.json records both digests."""
    if check_model:
        check_same_model(getattr(sae, "provenance", None), manifest, cache, str(sae.cfg.hook_name))
    hook = sae.cfg.hook_name
    hooks = manifest["hooks"]
    if hook not in hooks:
        raise CacheError(f"SAE hook point {hook!r} is not in cache {cache} (it holds {sorted(hooks)})")
    if hooks[hook] != sae.cfg.d_in:
        raise CacheError(f"SAE d_in {sae.cfg.d_in} does not match cache {cache}: {hook!r} has d_in {hooks[hook]}")
    return hook


def _live_cache(config: EvalConfig, sae: SAE) -> str:
    if not config.model:
        raise ValueError("saekit eval needs --cache CACHE_DIR, or --model NAME (and --dataset) to run live")
    from saekit.models.processing import resolve_model_processing, spec_string

    # the model processed as the SAE was trained (e.g. center_writing_weights for gpt2-small-res-jb)
    processing = resolve_model_processing("auto", config.sae, sae, "EvalConfig.model")
    out = _output_dir(config) / "eval_cache"
    cache_activations(CacheConfig(out=str(out), model=config.model, init=config.init or "trained",
                                  dataset=config.dataset, hooks=[sae.cfg.hook_name], n_tokens=config.n_tokens,
                                  model_processing=spec_string(processing), device=config.device))
    return str(out)


def evaluate(config: EvalConfig, progress: bool = True) -> dict[str, Any]:
    """All metrics of the SAE in `config.sae` (see the module docstring); writes eval.json when asked."""
    device = resolve_device(config.device)
    sae = load_sae(config.sae, device=device).eval()
    cache = config.cache or _live_cache(config, sae)
    manifest = read_manifest(cache)
    hook = check_sae_against_cache(sae, manifest, cache, check_model=not config.allow_other_cache)
    if "core" not in metric_names(config.metrics):
        return _extra_metrics_only(config, sae, manifest, hook, cache, device, progress)
    context_range = held_out_range(sae, manifest, config)
    if sae.cfg.transcode:  # reads one hook, predicts another: saekit/eval/transcoder.py
        from saekit.eval.transcoder import evaluate_transcoder

        return evaluate_transcoder(config, sae, manifest, cache, context_range, device, progress,
                                   lambda: _model_for(manifest, config, device),
                                   lambda: _context_tokens(cache, manifest, context_range, config.ce_contexts),
                                   _output_dir(config))
    started = time.time()

    store = ActivationStore(cache, hook, batch_size=config.batch_size, shuffle=False, context_range=context_range,
                            drop_bos=True, device=device, dtype=getattr(torch, sae.cfg.dtype))
    stats = ReconstructionStats(sae.cfg.d_in, sae.cfg.d_sae)
    bar = tqdm(total=store.n_tokens, unit="tok", unit_scale=True, desc="eval", disable=not progress)
    with torch.no_grad():
        for x in store:
            latents = sae.encode(x)
            stats.update(x, latents, sae.decode(latents))
            bar.update(len(x))
    bar.close()
    result: dict[str, Any] = {"sae": str(config.sae), "hook_name": hook, "architecture": sae.cfg.architecture,
                              "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae, **stats.summary()}

    if config.ce_contexts > 0:
        model = _model_for(manifest, config, device)
        model_d = hook_dims(model, [hook], manifest["ctx_len"])[hook]
        if model_d != sae.cfg.d_in:
            raise CacheError(f"SAE d_in {sae.cfg.d_in} does not match the model's {hook!r} width {model_d}")
        contexts = _context_tokens(cache, manifest, context_range, config.ce_contexts)
        bar = tqdm(total=contexts.numel(), unit="tok", unit_scale=True, desc="eval splice", disable=not progress)
        result.update(splice_losses(model, sae, hook, contexts, stats.mean_activation,
                                    skip_bos=bool(manifest.get("prepend_bos")), progress=bar.update))
        bar.close()

    result.update(run_record(cache, context_range, manifest, started, sae, stats, config))
    result.update(_extra_metrics(config, sae, manifest, hook, device, progress))
    if config.write:
        out = _output_dir(config)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / EVAL_FILE, result)
        write_frequency_html(result, out / HISTOGRAM_FILE)
    return result


def _extra_metrics(config: EvalConfig, sae: SAE, manifest: dict[str, Any], hook: str, device: torch.device,
                   progress: bool) -> dict[str, Any]:
    """The sections of the non-core metrics of config.metrics (saekit.eval.extra), model as for CE."""
    from saekit.eval.extra import check_model_width, run_extra_metrics

    def load() -> Any:
        model = _model_for(manifest, config, device)
        check_model_width(model, hook, sae.cfg.d_in, manifest["ctx_len"])
        return model

    return run_extra_metrics(config.metrics, sae, hook, manifest, load, _output_dir(config) if config.write else None,
                             progress)


def _extra_metrics_only(config: EvalConfig, sae: SAE, manifest: dict[str, Any], hook: str, cache: str | Path,
                        device: torch.device, progress: bool) -> dict[str, Any]:
    """--metrics without core: the sections added to the existing eval.json (its keys kept) or to a
    new one holding only the SAE's identity."""
    from saekit.eval.extra import merge_into_eval

    sections = _extra_metrics(config, sae, manifest, hook, device, progress)
    out = _output_dir(config)
    base = {"sae": str(config.sae), "hook_name": hook, "architecture": sae.cfg.architecture, "d_in": sae.cfg.d_in,
            "d_sae": sae.cfg.d_sae, "cache": str(cache), "model": manifest.get("model", {}),
            "cache_digest": manifest_digest(manifest), "config": config_to_dict(config)}
    result = merge_into_eval(out / EVAL_FILE, base, sections)
    if config.write:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / EVAL_FILE, result)
    return result


def held_out_range(sae: SAE, manifest: dict[str, Any], config: EvalConfig) -> tuple[int, int]:
    """The contexts [first, end) to evaluate: the cache's last n_tokens, cut to the contexts the SAE
    was not trained on when its folder records them (`train_contexts` in saekit.provenance, on this
    very cache); an explicit first_context inside them is refused unless allow_training_contexts."""
    ctx_len, total = manifest["ctx_len"], manifest["n_contexts"]
    n_contexts = min(total, max(1, -(-config.n_tokens // ctx_len)))
    first = total - n_contexts if config.first_context < 0 else config.first_context
    end = min(total, first + n_contexts)
    provenance = getattr(sae, "provenance", None) or {}
    trained = provenance.get("train_contexts")
    if not trained or provenance.get("cache_digest") != manifest_digest(manifest):
        return first, end
    t0, t1 = trained
    if max(first, t0) >= min(end, t1):
        return first, end
    if config.first_context >= 0:
        what = (f"EvalConfig.first_context {config.first_context} with n_tokens {config.n_tokens:,} covers contexts "
                f"[{first}, {end}) of {config.cache}, and the SAE was trained on contexts [{t0}, {t1})")
        if not config.allow_training_contexts:
            raise ValueError(f"{what}: metrics there are not held out; evaluate from context {t1} on, or pass "
                             f"allow_training_contexts")
        warnings.warn(f"{what}: evaluating on training contexts (allow_training_contexts)")
        return first, end
    if t1 >= total:
        raise ValueError(f"{config.cache}: the SAE was trained on all {total} of its contexts: nothing is held out "
                         f"to evaluate on (train with holdout_fraction > 0, or evaluate on another cache)")
    warnings.warn(f"EvalConfig.n_tokens {config.n_tokens:,} is more than the {total - t1} contexts of {config.cache} "
                  f"the SAE was not trained on ({(total - t1) * ctx_len:,} tokens): evaluating those only")
    return max(first, t1), end


def _output_dir(config: EvalConfig) -> Path:
    """Where eval.json (and a live-mode cache) go: --out, else the SAE's folder or runs/published/<source>."""
    return Path(config.out) if config.out else output_dir_for(config.sae)


def _context_tokens(cache: str | Path, manifest: dict[str, Any], context_range: tuple[int, int],
                    limit: int) -> torch.Tensor:
    """[n, ctx_len] int64 token ids of the first `limit` contexts of context_range."""
    per = manifest["contexts_per_shard"]
    lo, hi = context_range[0], min(context_range[1], context_range[0] + limit)
    rows = []
    for index in range(lo // per, (hi - 1) // per + 1):
        shard = open_shard(shard_path(Path(cache), index), manifest)
        a, b = max(lo, index * per) - index * per, min(hi, (index + 1) * per) - index * per
        rows.append(torch.from_numpy(shard.tokens[a:b].astype("int64")))
    return torch.cat(rows)


def frequency_figure(results: dict[str, dict[str, Any]]) -> Any:
    """The log10 activation-frequency histograms of eval results ({name: eval.json dict}): bars for
    one SAE, a step line per SAE for several (dead latents are counted in the legend, not drawn)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, result in results.items():
        hist = result["frequency_histogram"]
        edges = hist["edges"]
        centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        label = f"{name} ({hist['n_dead']} dead)"
        fig.add_trace(go.Bar(x=centers, y=hist["counts"], name=label) if len(results) == 1 else
                      go.Scatter(x=centers, y=hist["counts"], name=label, mode="lines", line_shape="hvh"))
    if len(results) == 1:
        result = next(iter(results.values()))
        title = (f"{result['hook_name']} {result['architecture']} d_sae={result['d_sae']}: log10 activation "
                 f"frequency ({result['frequency_histogram']['n_dead']} dead latents not shown)")
    else:
        title = "log10 activation frequency of live latents (eval.json)"
    fig.update_layout(title=title, xaxis_title="log10(fraction of tokens active)", yaxis_title="latents", bargap=0.05)
    return fig


def write_frequency_html(result: dict[str, Any], path: Path) -> Path:
    """The log10 activation-frequency histogram as a self-contained plotly HTML file."""
    frequency_figure({"live latents": result}).write_html(str(path), include_plotlyjs=True, full_html=True)
    return path


def summary_line(result: dict[str, Any]) -> str:
    from saekit.eval.extra import summary_lines

    if "fvu" not in result:  # --metrics without core, no earlier eval.json
        return "\n".join([f"{result['sae']}:"] + summary_lines(result))
    parts = [f"fvu {result['fvu']:.4f}", f"cossim {result['cossim']:.4f}", f"l0 {result['l0']:.1f}",
             f"dead {result['dead_fraction']:.3f}", f"dense {result['dense_fraction']:.3f}"]
    if "ce_loss_score" in result:
        parts += [f"CE clean {result['ce_clean']:.4f} sae {result['ce_sae']:.4f} zero {result['ce_zero']:.4f}",
                  f"ce_loss_recovered {result['ce_loss_score']:.4f}", f"KL {result['kl_sae']:.4f}"]
    return "\n".join([f"{result['sae']}: " + ", ".join(parts) + f" ({result['n_tokens']:,} tokens)"]
                     + summary_lines(result))


def load_eval(sae_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(sae_dir) / EVAL_FILE).read_text())
