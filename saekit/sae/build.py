"""`build_sae`: the SAE class of a config's architecture, freshly initialised."""

from __future__ import annotations

from saekit.sae.base import SAE
from saekit.sae.batchtopk import BatchTopKSAE
from saekit.sae.config import SAEConfig
from saekit.sae.gated import GatedSAE
from saekit.sae.jumprelu import JumpReLUSAE
from saekit.sae.matryoshka import MatryoshkaBatchTopKSAE
from saekit.sae.relu import ReLUSAE
from saekit.sae.topk import TopKSAE

SAE_CLASSES: dict[str, type[SAE]] = {
    "relu": ReLUSAE,
    "topk": TopKSAE,
    "batchtopk": BatchTopKSAE,
    "jumprelu": JumpReLUSAE,
    "gated": GatedSAE,
    "matryoshka_batchtopk": MatryoshkaBatchTopKSAE,
}


def build_sae(cfg: SAEConfig) -> SAE:
    """A new SAE for cfg (weights from cfg.seed; b_dec is zero until `weights.init_b_dec`)."""
    return SAE_CLASSES[cfg.architecture](cfg)
