"""Collect latent records and describe the latents of one SAE: any method, any explainer backend.

    python autointerp/explain.py autointerp/configs/explain_tiny.toml [--sae DIR] [--cache DIR]
        [--records DIR] [--n-latents N] [--methods maxact vocabproj ...] [--backend none|openai|transformers]
        [--llm-model NAME] [--fresh]

The config file has a [collect] table (fields of saekit.interp.CollectConfig) and an [explain]
table (fields of saekit.interp.ExplainConfig), plus `reuse_records`: skip collecting when the
records directory already holds records (the default; `--fresh` collects again). Steps:
1. `collect_records` -> RECORDS (default <sae>/records): stats and examples per latent;
2. `explain_latents` -> RECORDS/explanations.jsonl (or [explain].out);
3. print timing, the explainer's usage and a few descriptions per method.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

from saekit.config import build_config, read_config_file
from saekit.interp import CollectConfig, ExplainConfig, collect_records, explain_latents
from saekit.interp.records.format import META_FILE
from saekit.sae.formats import output_dir_for


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", help="TOML/YAML file with [collect] and [explain] tables")
    parser.add_argument("--sae", help="SAE folder (overrides [collect].sae)")
    parser.add_argument("--cache", help="activation cache (overrides [collect].cache)")
    parser.add_argument("--records", help="records directory (overrides [collect].out)")
    parser.add_argument("--n-latents", type=int, help="latents to record and describe")
    parser.add_argument("--methods", nargs="+", help="description methods (overrides [explain].methods)")
    parser.add_argument("--backend", help="none | openai | transformers (overrides [explain].backend)")
    parser.add_argument("--llm-model", help="explainer model (overrides [explain].llm_model)")
    parser.add_argument("--fresh", action="store_true", help="collect again even when records exist")
    return parser.parse_args(argv)


def configs(args: argparse.Namespace) -> tuple[CollectConfig, ExplainConfig, bool]:
    """(CollectConfig, ExplainConfig, reuse records) from the file and the command line."""
    raw = read_config_file(args.config)
    unknown = sorted(set(raw) - {"collect", "explain", "reuse_records"})
    if unknown:
        raise ValueError(f"{args.config}: unknown key(s) {unknown}; use [collect], [explain], reuse_records")
    collect = dict(raw.get("collect", {}))
    explain = dict(raw.get("explain", {}))
    for key, value in (("sae", args.sae), ("cache", args.cache), ("out", args.records), ("n_latents", args.n_latents)):
        if value is not None:
            collect[key] = value
    for key, value in (("methods", args.methods), ("backend", args.backend), ("llm_model", args.llm_model),
                       ("n_latents", args.n_latents)):
        if value is not None:
            explain[key] = value
    collect_config = build_config(CollectConfig, collect, source=f"{args.config} [collect]")
    records = collect_config.out or str(output_dir_for(collect_config.sae) / "records")
    explain_config = build_config(ExplainConfig, {**explain, "records": records}, source=f"{args.config} [explain]")
    return collect_config, explain_config, bool(raw.get("reuse_records", True)) and not args.fresh


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    collect_config, explain_config, reuse = configs(args)
    started = time.time()
    if reuse and (Path(explain_config.records) / META_FILE).exists():
        print(f"[autointerp] reusing records in {explain_config.records}")
    else:
        collect_records(collect_config)
        print(f"[autointerp] collected records in {explain_config.records} ({time.time() - started:.0f} s)")
    described = time.time()
    rows = explain_latents(explain_config)
    print(f"[autointerp] {len(rows)} explanations ({', '.join(explain_config.methods)}) in "
          f"{time.time() - described:.0f} s, backend {explain_config.backend}")
    by_method: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_method[row["method"]].append(row)
    for method, method_rows in by_method.items():
        print(f"[autointerp] {method}:")
        for row in method_rows[:3]:
            print(f"    latent {row['latent']}: {row['description'][:200]}")
    print(f"[autointerp] done in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
