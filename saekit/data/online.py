"""`OnlineActivationStore`: activations computed on the fly from a model, no cache on disk."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


class OnlineActivationStore:
    """Activations computed on the fly from a model: a mixing buffer, no cache on disk.

    contexts: an iterator of [ctx_len] token arrays (e.g. `saekit.corpus.pack_contexts`).
    Yields [batch_size, d_in] tensors; each refill runs the model over `batch_contexts` contexts at a
    time until the buffer holds `buffer_tokens` rows, then yields a random half of them.
    """

    def __init__(self, model: Any, contexts: Iterator[np.ndarray], hook: str, batch_size: int,
                 buffer_tokens: int = 1 << 16, seed: int = 0, drop_bos: bool = True,
                 batch_contexts: int = 32, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        from saekit.data.cache import _stop_layer

        self.model = model
        self.contexts = contexts
        self.hook = hook
        self.batch_size = batch_size
        self.buffer_tokens = max(buffer_tokens, 2 * batch_size)
        self.generator = torch.Generator().manual_seed(seed)
        self.drop_bos = drop_bos
        self.batch_contexts = batch_contexts
        self.device = torch.device(device)
        self.dtype = dtype
        self._stop = _stop_layer([hook])

    def _run(self, tokens: np.ndarray) -> torch.Tensor:
        grabbed: list[torch.Tensor] = []
        model_device = next(self.model.parameters()).device
        batch = torch.from_numpy(np.stack(tokens).astype(np.int64)).to(model_device)
        with torch.inference_mode():
            self.model.run_with_hooks(batch, stop_at_layer=self._stop,
                                      fwd_hooks=[(self.hook, lambda act, hook: grabbed.append(act))])
        acts = grabbed[0]
        if self.drop_bos:
            acts = acts[:, 1:]
        return acts.reshape(-1, acts.shape[-1]).to("cpu", self.dtype)

    def __iter__(self) -> Iterator[Any]:
        buffer = torch.zeros(0)
        exhausted = False
        while True:
            parts = [buffer]
            n = len(buffer)
            while n < self.buffer_tokens and not exhausted:
                chunk = [c for _, c in zip(range(self.batch_contexts), self.contexts)]
                if not chunk:
                    exhausted = True
                    break
                acts = self._run(chunk)
                parts.append(acts)
                n += len(acts)
            buffer = torch.cat([p for p in parts if p.numel()]) if n else torch.zeros(0)
            if n == 0:
                return
            buffer = buffer[torch.randperm(len(buffer), generator=self.generator)]
            n_out = len(buffer) if exhausted else len(buffer) // 2
            n_out -= n_out % self.batch_size if not exhausted else 0
            for start in range(0, n_out, self.batch_size):
                yield buffer[start:start + self.batch_size].contiguous().to(self.device)
            buffer = buffer[n_out:]
            if exhausted:
                return
