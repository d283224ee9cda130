"""`saekit VERB ...`: one verb per stage. Each verb parses its stage's config dataclass and calls one function.

    saekit cache [CONFIG] [--field value ...]   cache activations (saekit.data.cache_activations)
    saekit train [CONFIG] [--field value ...]   train a grid of SAEs on a cache (saekit.train.train)
    saekit eval SAE_DIR --cache CACHE          reconstruction, sparsity, CE/KL spliced (saekit.eval.evaluate)
    saekit eval RELEASE/SAE_ID --model NAME     the same for a published SAE (sae-lens registry id, sparsify repo)
    saekit export SAE --to saelens|sparsify OUT write an SAE in SAELens's or sparsify's layout (saekit.export_sae)
    saekit match SAE_A SAE_B [...] [--field value ...]  latents shared across seeds (saekit.match.match_saes)
    saekit collect SAE_DIR --cache CACHE       per-latent records: stats, top/quantile/negative examples
    saekit explain RECORDS_DIR [--methods ...]  describe latents: MaxAct, VocabProj, TokenChange, ensembles
    saekit score RECORDS_DIR [--scorers ...]    score descriptions: detection, fuzzing, embedding, simulation, output, input
    saekit score --published RELEASE/SAE_ID --model NAME  collect, describe and score a published SAE
    saekit report RUN_DIR [--out FILE]          one self-contained HTML report: figures, latent dashboards
    saekit info PATH [--verify]                 what a cache, an SAE or a report directory holds
    saekit demo [--config FILE] [--out DIR]     the main job on the embedded default (make demo; saekit.demo)
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from pathlib import Path

from saekit.config import add_config_args, load_config


def _config(cls: type, args: argparse.Namespace, positional: str = "", field: str = "") -> Any:
    """The verb's config: its file (if any), then the options given, then the positional argument."""
    skip = {"verb", "config", "func", positional}
    overrides = {k: v for k, v in vars(args).items() if k not in skip}
    if positional and getattr(args, positional):
        overrides[field] = getattr(args, positional)
    return load_config(cls, args.config, overrides)


def _cmd_cache(args: argparse.Namespace) -> int:
    from saekit.data import CacheConfig, cache_activations

    config = _config(CacheConfig, args)
    manifest = cache_activations(config)
    print(f"cache {config.out}: {manifest['n_tokens']:,} tokens, {manifest['n_shards']} shards, "
          f"hooks {manifest['hooks']}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from saekit.train import TrainConfig, train

    config = _config(TrainConfig, args)
    folders = train(config)
    if int(__import__("os").environ.get("RANK", 0)) == 0:
        for folder in folders:
            metrics = json.loads((folder / "metrics.json").read_text())
            print(f"{folder}: fvu {metrics.get('fvu', float('nan')):.4f}, l0 {metrics.get('l0', float('nan')):.1f}, "
                  f"dead {metrics['dead_fraction']:.3f}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from saekit.eval import EvalConfig, evaluate, summary_line

    config = _config(EvalConfig, args, "sae_dir", "sae")
    print(summary_line(evaluate(config)))
    return 0


def _cmd_match(args: argparse.Namespace) -> int:
    from saekit.match import MatchConfig, match_saes, summary_lines

    config = _config(MatchConfig, args, "sae_dirs", "saes")
    summary = match_saes(config)
    print("\n".join(summary_lines(summary)))
    print(f"match directory: {config.out}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from saekit.sae.formats import export_sae

    out = export_sae(args.source, args.to, args.out, hookpoint=args.hookpoint, allow_pickle=args.allow_pickle)
    print(f"exported {args.source} to {args.to}: {out}")
    return 0


def _cmd_collect(args: argparse.Namespace) -> int:
    from saekit.interp.records.collect import CollectConfig, collect_records
    from saekit.interp.records.format import load_records

    config = _config(CollectConfig, args, "sae_dir", "sae")
    out = collect_records(config)
    meta = load_records(out).meta
    print(f"records {out}: {meta['n_latents']} latents "
          f"over {meta['n_tokens']:,} tokens ({meta['n_dead']} never active), examples {meta['examples']}, "
          f"{meta['seconds']:.0f} s")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from saekit.interp.explain.run import ExplainConfig, explain_latents

    config = _config(ExplainConfig, args, "records_dir", "records")
    rows = explain_latents(config)
    print(f"{len(rows)} explanations ({', '.join(config.methods)}) of "
          f"{len({r['latent'] for r in rows})} latents, backend {rows[0]['backend'] if rows else '-'}")
    for row in rows[:6]:
        print(f"  latent {row['latent']} {row['method']}: {row['description'][:160]}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from saekit.interp.score.run import SCORES_FILE, ScoreConfig, score_latents, summarize_scores, summary_lines

    if args.published:
        return _score_published(args)
    for name in ("published", "dataset", "n_tokens", "cache"):
        if getattr(args, name) is not None:
            raise ValueError(f"saekit score: --{name.replace('_', '-')} goes with --published SAE")
        delattr(args, name)
    config = _config(ScoreConfig, args, "records_dir", "records")
    rows = score_latents(config)
    out = config.out or (str(Path(rows[0]["explanations"]).with_name(SCORES_FILE)) if rows else "-")
    print(f"{len(rows)} scores ({', '.join(config.scorers)}) of {len({r['latent'] for r in rows})} latents: {out}")
    print("\n".join(summary_lines(summarize_scores(rows, config.n_boot, config.seed))))
    return 0


def _score_published(args: argparse.Namespace) -> int:
    """`saekit score --published SAE`: cache, collect, explain and score (saekit.interp.pipeline)."""
    from saekit.interp.pipeline import published_config, score_published
    from saekit.interp.score.run import summary_lines

    if args.records_dir:
        raise ValueError("saekit score: give RECORDS_DIR or --published SAE, not both")
    skip = {"verb", "config", "func", "records_dir", "published"}
    options = {k: v for k, v in vars(args).items() if k not in skip}
    result = score_published(published_config(args.config, {**options, "sae": args.published}))
    print(f"{args.published}: {result['n_explanations']} descriptions scored ({result['scores']}); "
          f"table {result['summary_table']}")
    print("\n".join(summary_lines(result["summary"])))
    return 0


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def describe_path(path: Path, verify: bool = False) -> list[str]:
    """Human-readable lines about a saekit directory: an activation cache, an SAE, or a run/report dir."""
    lines: list[str] = []
    if (path / "manifest.json").exists():
        from saekit.data.shards import completed_shards, read_manifest, verify_cache

        manifest = verify_cache(path, checksums=True) if verify else read_manifest(path)
        size = sum(p.stat().st_size for p in (path / "shards").glob("*.safetensors"))
        model = manifest.get("model", {})
        lines += [
            f"activation cache: {path}",
            f"  model:      {model.get('model_name') or model.get('source')} ({model.get('source_kind', '?')}, init {model.get('init', '?')}, seed {model.get('seed', '?')})",
            f"  dataset:    {manifest['dataset'].get('source')} (fingerprint {manifest['dataset'].get('fingerprint')})",
            f"  hooks:      " + ", ".join(f"{h} (d_in {d})" for h, d in manifest["hooks"].items()),
            f"  dtype:      {manifest['dtype']}, ctx_len {manifest['ctx_len']}, prepend_bos {manifest['prepend_bos']}",
        ]
        if manifest.get("complete"):
            lines.append(f"  tokens:     {manifest['n_tokens']:,} in {manifest['n_contexts']:,} contexts, "
                         f"{manifest['n_shards']} shards, {_human_bytes(size)}")
        else:
            done = len(completed_shards(path))
            planned = -(-manifest["n_contexts_requested"] // manifest["contexts_per_shard"])
            lines.append(f"  INCOMPLETE: {done} of {planned} shards written; rerun the same command to resume")
        if verify:
            lines.append("  verified:   every shard's size, header and sha256 checksum match")
        return lines
    if (path / "cfg.json").exists():
        cfg = json.loads((path / "cfg.json").read_text())
        keys = ("architecture", "d_in", "d_sae", "k", "hook_name", "model_name", "dtype")
        lines.append(f"SAE: {path}")
        lines += [f"  {k}: {cfg[k]}" for k in keys if k in cfg]
        for name in ("metrics.json", "eval.json"):
            if (path / name).exists():
                lines.append(f"  {name}: " + json.dumps(json.loads((path / name).read_text()))[:400])
        return lines
    children = sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
    found = [c for c in children if (c / "manifest.json").exists() or (c / "cfg.json").exists()]
    if found or any(path.glob("*.json*")) or any(path.glob("*.html")):
        lines.append(f"run directory: {path}")
        for child in found:
            lines += ["  " + line for line in describe_path(child)]
        for file in sorted(list(path.glob("*.json")) + list(path.glob("*.jsonl")) + list(path.glob("*.html"))):
            lines.append(f"  {file.name} ({_human_bytes(file.stat().st_size)})")
        return lines
    raise FileNotFoundError(f"{path}: not a saekit cache (manifest.json), SAE (cfg.json) or run directory")


def _cmd_report(args: argparse.Namespace) -> int:
    from saekit.viz import ReportConfig, build_report

    out = build_report(_config(ReportConfig, args, "run_dir_path", "run_dir"))
    print(f"report: {out} ({_human_bytes(out.stat().st_size)}; open it in a browser, it needs no network)")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    print("\n".join(describe_path(Path(args.path), verify=args.verify)))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from saekit.demo import DemoConfig, run_demo

    run_demo(_config(DemoConfig, args))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from saekit.data import CacheConfig
    from saekit.demo import DemoConfig
    from saekit.eval import EvalConfig
    from saekit.interp.records.collect import CollectConfig
    from saekit.interp.explain.run import ExplainConfig
    from saekit.interp.score.run import ScoreConfig
    from saekit.match import MatchConfig
    from saekit.train import TrainConfig
    from saekit.viz import ReportConfig

    parser = argparse.ArgumentParser(prog="saekit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)

    cache = verbs.add_parser("cache", help="cache hook-point activations of a model over a dataset")
    cache.add_argument("config", nargs="?", help="a TOML/YAML config file (fields of CacheConfig)")
    add_config_args(cache, CacheConfig)
    cache.set_defaults(func=_cmd_cache)

    train = verbs.add_parser("train", help="train SAEs (a grid of seeds, sizes, k, hooks) on a cache")
    train.add_argument("config", nargs="?", help="a TOML/YAML config file (fields of TrainConfig)")
    add_config_args(train, TrainConfig)
    train.set_defaults(func=_cmd_train)

    evaluate = verbs.add_parser("eval", help="evaluate an SAE: reconstruction, sparsity, CE/KL spliced into the model")
    evaluate.add_argument("sae_dir", help="SAE: a saekit/SAELens/sparsify folder, or a published SAE: a sae-lens "
                                          "registry id RELEASE/SAE_ID or a sparsify hub repo OWNER/REPO/HOOKPOINT")
    evaluate.add_argument("--config", help="a TOML/YAML config file (fields of EvalConfig)")
    add_config_args(evaluate, EvalConfig)
    evaluate.set_defaults(func=_cmd_eval)

    match = verbs.add_parser("match", help="match the latents of SAEs trained with different seeds (shared fraction)")
    match.add_argument("sae_dirs", nargs="*", help="SAEs (saekit/SAELens/sparsify folders or ids load_sae reads); "
                                                   "the first is the reference (or --saes / config)")
    match.add_argument("--config", help="a TOML/YAML config file (fields of MatchConfig)")
    add_config_args(match, MatchConfig)
    match.set_defaults(func=_cmd_match)

    export = verbs.add_parser("export", help="write an SAE in SAELens's or sparsify's layout")
    export.add_argument("source", help="SAE: folder (saekit, SAELens, sparsify), RELEASE/SAE_ID, or hub repo")
    export.add_argument("out", help="folder to write")
    export.add_argument("--to", required=True, choices=("saelens", "sparsify"), help="layout to write")
    export.add_argument("--hookpoint", default=None, help="which SAE of a sparsify multi-hookpoint checkpoint")
    export.add_argument("--allow-pickle", action="store_true",
                        help="read weights stored only as a pickle (.pt/.bin), with torch.load(weights_only=True)")
    export.set_defaults(func=_cmd_export)

    collect = verbs.add_parser("collect", help="latent records: frequency, mean/max, top, quantile and negative examples")
    collect.add_argument("sae_dir", nargs="?", help="SAE folder (or a published SAE id; or --sae / config)")
    collect.add_argument("--config", help="a TOML/YAML config file (fields of CollectConfig)")
    add_config_args(collect, CollectConfig)
    collect.set_defaults(func=_cmd_collect)

    explain = verbs.add_parser("explain", help="describe latents: MaxAct, VocabProj, TokenChange, ensembles (raw or LLM)")
    explain.add_argument("records_dir", nargs="?", help="records directory from `saekit collect` (or the SAE folder)")
    explain.add_argument("--config", help="a TOML/YAML config file (fields of ExplainConfig)")
    add_config_args(explain, ExplainConfig)
    explain.set_defaults(func=_cmd_explain)

    score = verbs.add_parser("score", help="score descriptions: detection, fuzzing, embedding, simulation, output, input")
    score.add_argument("records_dir", nargs="?", help="records directory from `saekit collect` (or the SAE folder)")
    score.add_argument("--config", help="a TOML/YAML config file (fields of ScoreConfig)")
    add_config_args(score, ScoreConfig)
    score.add_argument("--published", metavar="SAE", help="score a published SAE end to end instead of RECORDS_DIR: "
                       "RELEASE/SAE_ID, a SAELens/sparsify folder or OWNER/REPO (saekit.interp.pipeline; --config "
                       "is then a PublishedConfig file, --out a run directory)")
    score.add_argument("--dataset", help="with --published: dataset to collect records on (default stdlib-docstrings)")
    score.add_argument("--n-tokens", dest="n_tokens", type=int, help="with --published: tokens to cache and scan")
    score.add_argument("--cache", help="with --published: an existing activation cache with the SAE's hook point")
    score.set_defaults(func=_cmd_score)

    report = verbs.add_parser("report", help="one self-contained HTML file: figures and latent dashboards of a run")
    report.add_argument("run_dir_path", nargs="?", metavar="RUN_DIR", help="run directory (or --run-dir / config)")
    report.add_argument("--config", help="a TOML/YAML config file (fields of ReportConfig)")
    add_config_args(report, ReportConfig)
    report.set_defaults(func=_cmd_report)

    info = verbs.add_parser("info", help="print what a cache, SAE or run directory holds")
    info.add_argument("path")
    info.add_argument("--verify", action="store_true", help="re-hash every shard of a cache (reads it all)")
    info.set_defaults(func=_cmd_info)

    demo = verbs.add_parser("demo", help="the main job on the embedded default (what `make demo` runs)")
    demo.add_argument("--config", help="a TOML/YAML config file (fields of DemoConfig)")
    add_config_args(demo, DemoConfig)
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as e:
        message = _hub_message(e)
        if message is None and not isinstance(e, (ValueError, FileNotFoundError, KeyError)):
            raise
        print(f"saekit {args.verb}: error: {message or e}", file=sys.stderr)
        return 2


def _hub_message(error: BaseException) -> str | None:
    """What a failed hub download was about, in words (saekit.hub.hub_error_message), or None."""
    from saekit.hub import HubError, hub_error_message

    return str(error) if isinstance(error, HubError) else hub_error_message(error)


if __name__ == "__main__":
    sys.exit(main())
