"""Training: many SAEs in one pass over an activation cache, resumable, data-parallel under torchrun.

    from saekit.train import TrainConfig, train
    folders = train(TrainConfig(cache="runs/cache", d_sae=[4096], k=[32], seeds=[0, 1]))
"""

from saekit.train.config import TrainConfig, default_lr, sae_grid, sae_name
from saekit.train.trainer import train

__all__ = ["TrainConfig", "default_lr", "sae_grid", "sae_name", "train"]
