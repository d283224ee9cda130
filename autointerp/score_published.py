"""Score a published SAE end to end: load it, collect records on a dataset, describe, score, summarize.

    python autointerp/score_published.py autointerp/configs/score_published_gpt2.toml [--field value ...]

The same as `saekit score --published RELEASE/SAE_ID --model NAME`: the config holds the fields of
saekit.interp.pipeline.PublishedConfig (the SAE, model, dataset, latents, explainer and judge, and
`collect`/`explain`/`score` tables of the other fields of each stage's config). Writes, under OUT
(default runs/published/RELEASE/SAE_ID/autointerp for a registry SAE): cache/, records/ (with
explanations.jsonl), scores.jsonl, scores_summary.json, summary.csv and published.json.
"""

from __future__ import annotations

import sys

from saekit.config import config_from_argv
from saekit.interp.pipeline import PublishedConfig, score_published
from saekit.interp.score.run import summary_lines


def main(argv: list[str] | None = None) -> int:
    config = config_from_argv(PublishedConfig, argv, __doc__.split("\n")[0])
    result = score_published(config)
    print(f"[score-published] {config.sae} ({result['architecture']} d_sae={result['d_sae']}, "
          f"{result['hook_name']}, model {result['model']}): {result['n_explanations']} descriptions, "
          f"{result['total_seconds']:.0f} s {result['seconds']}")
    print("\n".join(summary_lines(result["summary"])))
    print(f"[score-published] scores {result['scores']}; table {result['summary_table']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
