"""Activations: the cache writer (`cache_activations`), its format (`shards`) and `ActivationStore`."""

from saekit.data.cache import CacheConfig, cache_activations, write_array_cache, write_cache
from saekit.data.shards import CacheError, open_shard, read_manifest, verify_cache
from saekit.data.store import ActivationStore, OnlineActivationStore

__all__ = ["ActivationStore", "CacheConfig", "CacheError", "OnlineActivationStore", "cache_activations",
           "open_shard", "read_manifest", "verify_cache", "write_array_cache", "write_cache"]
