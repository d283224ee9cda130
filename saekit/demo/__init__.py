"""`make demo` / `saekit demo`: the whole pipeline on one config (steps.py: config, steps, run_demo;
summary.py: summary.json and the printed table)."""

from saekit.demo.steps import MODEL_PRESETS, DemoConfig, llm_settings, run_demo
from saekit.demo.summary import match_numbers, summarize, summary_table

__all__ = ["DemoConfig", "MODEL_PRESETS", "llm_settings", "match_numbers", "run_demo", "summarize", "summary_table"]
