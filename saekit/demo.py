"""`make demo`: the main job on the embedded default, offline, on a CPU in a few minutes.

1. train (once; reused afterwards) the tiny LM on the offline corpus of stdlib docstrings;
2. cache its residual-stream activations, for the trained model and for a re-randomised copy
   (Heap et al.'s `random` variant), into `OUT/cache-trained` and `OUT/cache-random`;
3. train TopK SAEs with two seeds on each cache in one pass (`OUT/sae-trained`, `OUT/sae-random`);
4. evaluate every SAE on the held-out contexts (FVU, L0, dead latents, CE loss recovered);
5. print what was made and the trained-vs-random comparison.

Later stages (SAE training, matching, autointerp, the report) extend this same run directory.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from saekit.cli import describe_path
from saekit.data import ActivationStore, CacheConfig, cache_activations
from saekit.eval import EvalConfig, evaluate, summary_line
from saekit.train import TrainConfig, train

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
    rows = []
    for init in ("trained", "random"):
        t0 = time.time()
        folders = train(TrainConfig(cache=str(out / f"cache-{init}"), out=str(out / f"sae-{init}"),
                                    architecture="topk", d_sae=[1024], k=[16], seeds=[0, 1], n_tokens=2 * n_tokens,
                                    batch_size=2048, warmup_steps=20, dead_tokens=n_tokens, checkpoint_every=0,
                                    log_every=20, device="auto"))
        print(f"[demo] trained {len(folders)} TopK SAEs (seeds 0, 1) on the {init} model in {time.time() - t0:.0f} s")
        for folder in folders:
            result = evaluate(EvalConfig(sae=str(folder), cache=str(out / f"cache-{init}"), n_tokens=20_000,
                                         ce_contexts=64, device="auto"))
            print("[demo]   " + summary_line(result))
            rows.append((init, folder.name, result))
    print(f"\n[demo] {'model':<9}{'SAE':<24}{'FVU':>8}{'L0':>7}{'dead':>7}{'CE recovered':>14}")
    for init, name, r in rows:
        print(f"[demo] {init:<9}{name:<24}{r['fvu']:>8.4f}{r['l0']:>7.1f}{r['dead_fraction']:>7.3f}"
              f"{r['ce_loss_score']:>14.4f}")
    print(f"[demo] done in {time.time() - start:.0f} s; outputs under {out}")
