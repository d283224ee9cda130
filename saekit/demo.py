"""`make demo`: the main job on the embedded default, offline, on a CPU in a few minutes.

1. train (once; reused afterwards) the tiny LM on the offline corpus of stdlib docstrings;
2. cache its residual-stream activations, for the trained model and for a re-randomised copy
   (Heap et al.'s `random` variant), into `OUT/cache-trained` and `OUT/cache-random`;
3. print what was made and a first comparison (activation norms per variant).

Later stages (SAE training, matching, autointerp, the report) extend this same run directory.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from saekit.cli import describe_path
from saekit.data import ActivationStore, CacheConfig, cache_activations

DEMO_HOOK = "blocks.1.hook_resid_post"


def run_demo(out: Path, n_tokens: int = 200_000) -> None:
    from saekit.models import ensure_tiny_lm

    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    model_dir = ensure_tiny_lm()
    print(f"[demo] tiny LM ready at {model_dir} ({time.time() - start:.0f} s)")
    for init in ("trained", "random"):
        t0 = time.time()
        config = CacheConfig(out=str(out / f"cache-{init}"), model=str(model_dir), init=init, hooks=[DEMO_HOOK],
                             n_tokens=n_tokens, dataset="stdlib-docstrings", device="auto")
        manifest = cache_activations(config)
        store = ActivationStore(config.out, DEMO_HOOK, batch_size=4096, seed=0)
        norms = torch.cat([batch.norm(dim=-1) for batch in store])
        print(f"[demo] cached {manifest['n_tokens']:,} tokens of the {init} model in {time.time() - t0:.0f} s; "
              f"mean |x| at {DEMO_HOOK}: {norms.mean():.2f} (std {norms.std():.2f})")
        print("\n".join(describe_path(Path(config.out))))
    print(f"[demo] done in {time.time() - start:.0f} s; outputs under {out}")
