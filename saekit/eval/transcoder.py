"""`saekit eval` for transcoders: the prediction of the output hook from the input hook, and the
transcoder spliced in place of what it replaces (e.g. the MLP: blocks.L.ln2.hook_normalized ->
blocks.L.hook_mlp_out).

Reconstruction metrics compare the prediction y_hat = transcoder(x) with the cached y, row by row
(the cache holds both hooks, row-aligned). The splice runs the model with a hook on the input hook
that keeps x and a hook on the output hook that replaces y by the prediction from that x
(`splice.splice_losses` with a capture hook), so CE recovered and KL are those of the model whose MLP
is replaced by the transcoder; zero- and mean-ablation act on the output hook, as for an SAE there.
Extra metrics (absorption, sparse probing) are for SAEs and are not run on transcoders.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from saekit.data import ActivationStore, CacheError
from saekit.data.cache import hook_dims
from saekit.eval.metrics import ReconstructionStats, run_record
from saekit.eval.splice import splice_losses
from saekit.files import write_json_atomic
from saekit.sae import SAE


class CapturedInput:
    """What `splice_losses` edits the output hook with: encode/decode of the output activation act
    computed from the input hook's activation captured earlier in the same forward pass.

    `capture_hook` goes on the input hook (it keeps act[:, start:], the positions the splice edits)."""

    def __init__(self, transcoder: SAE, start: int) -> None:
        self.transcoder, self.start = transcoder, start
        self.W_enc = transcoder.W_enc  # splice_losses reads the dtype from it
        self.x: torch.Tensor | None = None

    def capture_hook(self, act: torch.Tensor, hook: Any) -> torch.Tensor:
        self.x = act[:, self.start:].reshape(-1, act.shape[-1]).to(self.W_enc.dtype)
        return act

    def encode(self, flat_out: torch.Tensor) -> torch.Tensor:
        if self.x is None or self.x.shape[0] != flat_out.shape[0]:
            raise RuntimeError(f"transcoder splice: no input captured at {self.transcoder.cfg.hook_name!r} for this "
                               "forward pass (the input hook must run before the output hook)")
        return self.transcoder.encode(self.x)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        assert self.x is not None
        return self.transcoder.with_skip(self.transcoder.decode(latents), self.x)


def check_transcoder_against_cache(sae: SAE, manifest: dict[str, Any], cache: Any) -> str:
    """The output hook; CacheError when the cache lacks it or its width is not d_out."""
    hook_out, hooks = sae.cfg.hook_name_out, manifest["hooks"]
    if hook_out not in hooks:
        raise CacheError(f"transcoder output hook {hook_out!r} is not in cache {cache} (it holds {sorted(hooks)}): "
                         f"cache both {sae.cfg.hook_name!r} and {hook_out!r}")
    if hooks[hook_out] != sae.cfg.resolved_d_out:
        raise CacheError(f"transcoder d_out {sae.cfg.resolved_d_out} does not match cache {cache}: {hook_out!r} "
                         f"has width {hooks[hook_out]}")
    return hook_out


def evaluate_transcoder(config: Any, sae: SAE, manifest: dict[str, Any], cache: Any, context_range: tuple[int, int],
                        device: torch.device, progress: bool, load_model: Callable[[], Any],
                        context_tokens: Callable[[], torch.Tensor], out_dir: Any) -> dict[str, Any]:
    """eval.json's content for a transcoder (see the module docstring); written to out_dir when config.write."""
    from saekit.eval.run import EVAL_FILE, HISTOGRAM_FILE, write_frequency_html

    hook_in = sae.cfg.hook_name
    hook_out = check_transcoder_against_cache(sae, manifest, cache)
    started = time.time()
    store = ActivationStore(cache, [hook_in, hook_out], batch_size=config.batch_size, shuffle=False,
                            context_range=context_range, drop_bos=True, device=device,
                            dtype=getattr(torch, sae.cfg.dtype))
    stats = ReconstructionStats(sae.cfg.resolved_d_out, sae.cfg.d_sae)
    bar = tqdm(total=store.n_tokens, unit="tok", unit_scale=True, desc="eval", disable=not progress)
    with torch.no_grad():
        for batch in store:
            x, y = batch[hook_in], batch[hook_out]
            latents = sae.encode(x)
            stats.update(y, latents, sae.with_skip(sae.decode(latents), x))
            bar.update(len(x))
    bar.close()
    result: dict[str, Any] = {"sae": str(config.sae), "hook_name": hook_in, "hook_name_out": hook_out,
                              "architecture": sae.cfg.architecture, "transcoder": True,
                              "skip_connection": sae.cfg.skip_connection, "d_in": sae.cfg.d_in,
                              "d_out": sae.cfg.resolved_d_out, "d_sae": sae.cfg.d_sae, **stats.summary()}
    if config.ce_contexts > 0:
        model = load_model()
        widths = hook_dims(model, [hook_in, hook_out], manifest["ctx_len"])
        if (widths[hook_in], widths[hook_out]) != (sae.cfg.d_in, sae.cfg.resolved_d_out):
            raise CacheError(f"transcoder widths (d_in {sae.cfg.d_in}, d_out {sae.cfg.resolved_d_out}) do not match "
                             f"the model's {hook_in!r} {widths[hook_in]} and {hook_out!r} {widths[hook_out]}")
        contexts = context_tokens()
        skip_bos = bool(manifest.get("prepend_bos"))
        spliced = CapturedInput(sae, 1 if skip_bos else 0)
        bar = tqdm(total=contexts.numel(), unit="tok", unit_scale=True, desc="eval splice", disable=not progress)
        result.update(splice_losses(model, spliced, hook_out, contexts, stats.mean_activation, skip_bos=skip_bos,
                                    progress=bar.update, extra_hooks=[(hook_in, spliced.capture_hook)]))
        bar.close()
    result.update(run_record(cache, context_range, manifest, started, sae, stats, config))
    if config.write:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out_dir / EVAL_FILE, result)
        write_frequency_html(result, out_dir / HISTOGRAM_FILE)
    return result
