"""Cache the same hook points for several init variants of one model (Heap et al.'s comparison).

    python training/cache_variants.py training/configs/cache_pythia70m.toml \
        --inits trained random random-keep-embeddings step0 gaussian-embeddings

Writes `<out>/<init>/` per variant; each is an ordinary resumable cache (rerun to resume).
Under torchrun every variant is split across the ranks.
"""

import argparse
import dataclasses

from saekit.config import load_config
from saekit.data import CacheConfig, cache_activations
from saekit.models import INIT_VARIANTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a CacheConfig TOML/YAML file")
    parser.add_argument("--inits", nargs="+", default=list(INIT_VARIANTS), choices=INIT_VARIANTS)
    parser.add_argument("--seed", type=int, default=0, help="seed of the re-drawn weights / noise")
    args = parser.parse_args()
    base = load_config(CacheConfig, args.config)
    for init in args.inits:
        config = dataclasses.replace(base, init=init, model_seed=args.seed, out=f"{base.out}/{init}")
        manifest = cache_activations(config)
        print(f"{init}: {manifest['n_tokens']:,} tokens -> {config.out}")


if __name__ == "__main__":
    main()
