"""Latent records: the streaming passes over a cache (scan.py), example windows (windows.py), the
records directory `saekit collect` writes (collect.py) and reads back lazily (format.py)."""

from saekit.interp.records.format import Example, LatentRecords, load_records
from saekit.interp.records.collect import CollectConfig, collect_records

__all__ = ["Example", "LatentRecords", "load_records", "CollectConfig", "collect_records"]
