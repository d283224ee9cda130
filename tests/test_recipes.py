"""Every recipe config in the repo parses into its stage's config dataclass."""

from pathlib import Path

import pytest

from saekit.config import load_config
from saekit.data import CacheConfig
from saekit.train import TrainConfig

ROOT = Path(__file__).parent.parent
CACHE_CONFIGS = sorted((ROOT / "training" / "configs").glob("cache_*.toml"))


@pytest.mark.parametrize("path", CACHE_CONFIGS, ids=lambda p: p.name)
def test_cache_recipe_configs_parse(path):
    config = load_config(CacheConfig, path)
    assert config.hooks and config.n_tokens > 0 and config.dtype in ("float32", "float16", "bfloat16")


TRAIN_CONFIGS = sorted((ROOT / "training" / "configs").glob("train_*"))


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_train_recipe_configs_parse(path):
    from saekit.train import sae_grid

    config = load_config(TrainConfig, path)
    assert config.n_tokens > 0
    hooks = config.hooks or ([] if config.transcode else ["blocks.3.hook_resid_post"])
    widths = {h: 512 for h in [*hooks, *config.transcode, *config.transcode.values()]}  # transcoders' hooks too
    assert sae_grid(config, {h: 512 for h in hooks}, widths)


def test_recipes_exist():
    assert len(CACHE_CONFIGS) >= 2 and len(TRAIN_CONFIGS) >= 3


def test_unknown_field_is_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('out = "x"\nhoks = ["a"]\n')
    with pytest.raises(ValueError, match="hoks"):
        load_config(CacheConfig, bad)
