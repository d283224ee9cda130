"""Every recipe config in the repo parses into its stage's config dataclass."""

from pathlib import Path

import pytest

from saekit.config import load_config
from saekit.data import CacheConfig

ROOT = Path(__file__).parent.parent
CACHE_CONFIGS = sorted((ROOT / "training" / "configs").glob("cache_*.toml"))


@pytest.mark.parametrize("path", CACHE_CONFIGS, ids=lambda p: p.name)
def test_cache_recipe_configs_parse(path):
    config = load_config(CacheConfig, path)
    assert config.hooks and config.n_tokens > 0 and config.dtype in ("float32", "float16", "bfloat16")


def test_recipes_exist():
    assert len(CACHE_CONFIGS) >= 2


def test_unknown_field_is_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('out = "x"\nhoks = ["a"]\n')
    with pytest.raises(ValueError, match="hoks"):
        load_config(CacheConfig, bad)
