"""A local `transformers` causal LM as an LLM backend (a chat model on a GPU box).

The model and tokenizer load with `AutoModelForCausalLM` / `AutoTokenizer` from `config.model`: a
local folder, or a hub name on a machine that can reach the hub. A saekit model (`gemma-3-270m`, a
.gguf file, a saekit model folder of Gemma 3) is built from its converted TransformerLens weights
instead (`saekit.models.hf.hf_causal_lm`, offline, a few seconds). Messages are rendered with the
tokenizer's chat template when it has one (`add_generation_prompt=True`), else as "role: content"
lines ending in "assistant:". Concurrent `chat()` calls are gathered into left-padded batches of up
to `batch_size` prompts with the same sampling parameters, and each batch's `generate()` runs in a
worker thread, so `chat()` stays async and the event loop keeps filling the next batch.

Sampling keywords: `temperature` (0 = greedy), `max_tokens` (-> max_new_tokens), `top_p`; others are
ignored. Token counts are real: prompt tokens without padding, completion tokens up to and
including the first end-of-sequence token.
"""

from __future__ import annotations

import asyncio
import copy
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from saekit.interp.llm.backend import Backend, Completion, LLMConfig, Messages


def plain_prompt(messages: Messages) -> str:
    """Messages as "role: content" lines followed by "assistant:" (for tokenizers without a chat template)."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"


def merge_system_message(messages: Messages) -> Messages:
    """System messages folded into the first user message (for templates that reject the system role)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if system and rest and rest[0]["role"] == "user":
        rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
    elif system:
        rest.insert(0, {"role": "user", "content": system})
    return rest


def _torch_dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


@dataclass
class _Pending:
    """A prompt waiting for a batch slot, and the future its `chat()` awaits."""

    prompt: str
    sampling: dict[str, Any]
    future: asyncio.Future = field(repr=False)


class TransformersBackend(Backend):
    """Batched generation with a local causal LM (see the module docstring)."""

    def __init__(self, config: LLMConfig) -> None:
        super().__init__(config, f"transformers:{config.model}")
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from saekit.models.hf import hf_causal_lm, saekit_model_folder

        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
        dtype = _torch_dtype(config.dtype, self.device)
        if saekit_model_folder(config.model) is not None:  # gemma-3-270m, a .gguf, a saekit folder
            self.model, self.tokenizer = hf_causal_lm(config.model, dtype)
        else:
            major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
            dtype_kwarg = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
            self.tokenizer = AutoTokenizer.from_pretrained(config.model)
            self.model = AutoModelForCausalLM.from_pretrained(config.model, **{dtype_kwarg: dtype})
        self.tokenizer.padding_side = "left"
        self.tokenizer.truncation_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.to(self.device).eval()
        self.has_chat_template = bool(getattr(self.tokenizer, "chat_template", None))
        self._pending: list[_Pending] = []
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="saekit-generate")

    @property
    def concurrency(self) -> int:
        """Enough requests in flight to fill the running batch and the next one."""
        return max(self.config.max_concurrency, 2 * self.config.batch_size)

    def render(self, messages: Messages) -> str:
        """The prompt text for `messages` (chat template if the tokenizer has one)."""
        if not self.has_chat_template:
            return plain_prompt(messages)
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # e.g. a template that rejects the system role
            return self.tokenizer.apply_chat_template(merge_system_message(messages), tokenize=False,
                                                      add_generation_prompt=True)

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return set(eos) if isinstance(eos, (list, tuple)) else ({eos} if eos is not None else set())

    def generate(self, prompts: list[str], sampling: dict[str, Any]) -> list[Completion]:
        """One left-padded batched `generate()` (blocking); a Completion per prompt."""
        import torch

        max_new_tokens = int(sampling.get("max_tokens", self.config.max_tokens))
        temperature = float(sampling.get("temperature", self.config.temperature))
        n_positions = getattr(self.model.config, "max_position_embeddings", None)
        max_length = n_positions - max_new_tokens if n_positions and n_positions > max_new_tokens else None
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, truncation=max_length is not None,
                                 max_length=max_length, add_special_tokens=not self.has_chat_template)
        encoded = {name: tensor.to(self.device) for name, tensor in encoded.items() if name != "token_type_ids"}
        generation_config = copy.deepcopy(self.model.generation_config)
        generation_config.max_new_tokens = max_new_tokens
        generation_config.pad_token_id = self.tokenizer.pad_token_id
        generation_config.do_sample = temperature > 0
        if temperature > 0:
            generation_config.temperature = temperature
            generation_config.top_p = float(sampling.get("top_p", 1.0))
        else:
            generation_config.temperature = generation_config.top_p = generation_config.top_k = None
        with torch.inference_mode():
            output = self.model.generate(**encoded, generation_config=generation_config)
        new_tokens = output[:, encoded["input_ids"].shape[1]:].tolist()
        eos_ids = self._eos_ids()
        prompt_lengths = encoded["attention_mask"].sum(dim=1).tolist()
        completions = []
        for ids, prompt_length in zip(new_tokens, prompt_lengths):
            n_generated = next((i + 1 for i, token in enumerate(ids) if token in eos_ids), len(ids))
            text = self.tokenizer.decode(ids[:n_generated], skip_special_tokens=True)
            completions.append(Completion(text.strip(), int(prompt_length), n_generated))
        return completions

    async def _complete(self, messages: Messages, sampling: dict[str, Any]) -> Completion:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._pending.append(_Pending(self.render(messages), sampling, future))
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._worker = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """Generate for pending prompts, a batch at a time, until none are left."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0)  # let the requests started alongside this one join the first batch
        while self._pending:
            self._pending = [p for p in self._pending if not p.future.done() and p.future.get_loop() is loop]
            if not self._pending:
                break
            sampling = self._pending[0].sampling
            batch = [p for p in self._pending if p.sampling == sampling][:self.config.batch_size]
            self._pending = [p for p in self._pending if all(p is not q for q in batch)]
            try:
                completions = await loop.run_in_executor(self._executor, self.generate,
                                                         [p.prompt for p in batch], sampling)
            except Exception as error:  # handed to each request, which records and retries it
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(error)
                continue
            for p, completion in zip(batch, completions):
                if not p.future.done():
                    p.future.set_result(completion)

    def close(self) -> None:
        """Stop the worker thread and free the model's memory."""
        import torch

        self._executor.shutdown(wait=True)
        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
