"""A tiny GPT-style LM trained offline on the stdlib-docstring corpus: saekit's CPU test subject.

`train_tiny_lm` trains a byte-level BPE tokenizer and a 2-layer TransformerLens model on
`saekit.corpus` text in a few minutes on two CPU cores, and writes a saekit model folder:

    tokenizer.json        byte-level BPE, <|endoftext|> = 0 = BOS/EOS/separator/padding
    step0/model.safetensors  the weights before any training (for init="step0")
    model.safetensors     the trained weights
    train_log.jsonl       one line per logged step: step, tokens, loss, lr
    train_info.json       the training settings, initial/final held-out loss, seconds
    config.json           the HookedTransformerConfig, written last: its presence marks a complete folder
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer, HookedTransformerConfig

from saekit.corpus import STDLIB_CORPUS, iter_texts, pack_contexts, tokenize_texts
from saekit.models.folder import (CONFIG_FILE, STEP0_DIR, WEIGHTS_FILE, _preserved_rng, _write_atomic, is_model_dir,
                                  save_model_dir, save_state_dict)
from saekit.models.load import _build
from saekit.models.tokenizer import BOS_TOKEN_ID, train_bpe_tokenizer, wrap_tokenizer

TINY_LM_DIRNAME = "tiny-lm-v1"
N_VAL_CONTEXTS = 32
INIT_SEED_OFFSET = 1000
"""The tiny LM's weights start from cfg.seed = 1000 + seed, so `load_model(dir, "random", seed=s)`
for a small s draws fresh weights rather than re-drawing its step-0 checkpoint."""


def tiny_config(d_vocab: int, n_ctx: int = 128, n_layers: int = 2, d_model: int = 128, n_heads: int = 4,
                d_mlp: int = 512, seed: int = 0) -> HookedTransformerConfig:
    """A small pre-LayerNorm GPT config: GELU MLPs, learned positional embeddings, GPT-2 init."""
    with _preserved_rng():
        return HookedTransformerConfig(
            model_name="saekit-tiny-lm", n_layers=n_layers, d_model=d_model, n_ctx=n_ctx,
            d_head=d_model // n_heads, n_heads=n_heads, d_mlp=d_mlp, d_vocab=d_vocab, act_fn="gelu",
            normalization_type="LN", positional_embedding_type="standard", default_prepend_bos=True,
            seed=seed, device="cpu",
        )


def default_tiny_lm_dir() -> Path:
    """`$SAEKIT_HOME/tiny-lm-v1`, with `SAEKIT_HOME` defaulting to `~/.cache/saekit`."""
    return Path(os.environ.get("SAEKIT_HOME", "~/.cache/saekit")).expanduser() / TINY_LM_DIRNAME


def ensure_tiny_lm(path: str | Path | None = None) -> Path:
    """The tiny LM's folder (default `default_tiny_lm_dir()`), trained with the defaults if missing."""
    return train_tiny_lm(path if path is not None else default_tiny_lm_dir())


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on `folder/.lock`, so two processes never train into one folder at once."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pack_corpus(texts: list[str], encode_batch: Callable[[list[str]], list[list[int]]],
                 n_ctx: int) -> torch.Tensor:
    """All complete contexts of the texts: [n_contexts, n_ctx] int64, each BOS + n_ctx - 1 tokens."""
    token_docs = tokenize_texts(texts, encode_batch)
    contexts = [tok for tok, _ in pack_contexts(token_docs, n_ctx, BOS_TOKEN_ID, BOS_TOKEN_ID)]
    if len(contexts) <= N_VAL_CONTEXTS:
        raise ValueError(f"corpus too small: {len(contexts)} contexts of {n_ctx} tokens; need > {N_VAL_CONTEXTS}")
    return torch.from_numpy(np.stack(contexts)).long()


def _lr_at(step: int, n_steps: int, lr: float, warmup_steps: int, min_lr_frac: float = 0.1) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr_frac * lr` at the last step."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, n_steps - warmup_steps - 1)
    return lr * (min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@torch.no_grad()
def _eval_loss(model: HookedTransformer, contexts: torch.Tensor, batch_size: int) -> float:
    """Mean next-token loss (nats/token) on contexts [n, n_ctx]."""
    losses = [model(contexts[i:i + batch_size], return_type="loss").item() * len(contexts[i:i + batch_size])
              for i in range(0, len(contexts), batch_size)]
    return sum(losses) / len(contexts)


def _train_steps(model: HookedTransformer, contexts: torch.Tensor, n_steps: int, batch_size: int, lr: float,
                 weight_decay: float, warmup_steps: int, seed: int, progress: bool) -> Iterator[dict]:
    """Train in place with AdamW; yield a log row {step, tokens, loss, lr} after every step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    tokens_per_step = batch_size * contexts.shape[1]
    bar = tqdm(total=n_steps * tokens_per_step, unit="tok", unit_scale=True, disable=not progress,
               desc="train tiny LM")
    model.train()
    for step in range(n_steps):
        if len(order) < batch_size:  # a new epoch, reshuffled
            order = torch.cat([order, torch.randperm(len(contexts), generator=generator)])
        batch, order = contexts[order[:batch_size]], order[batch_size:]
        step_lr = _lr_at(step, n_steps, lr, warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = step_lr
        loss = model(batch, return_type="loss")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        bar.update(tokens_per_step)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        yield {"step": step + 1, "tokens": (step + 1) * tokens_per_step, "loss": round(loss.item(), 5),
               "lr": step_lr}
    bar.close()
    model.eval()


def train_tiny_lm(
    out_dir: str | Path,
    corpus: str | Sequence[str] = STDLIB_CORPUS,
    max_tokens: int = 400_000,
    seed: int = 0,
    batch_size: int = 8,
    lr: float = 6e-3,
    vocab_size: int = 4096,
    n_ctx: int = 128,
    n_layers: int = 2,
    d_model: int = 128,
    n_heads: int = 4,
    d_mlp: int = 512,
    weight_decay: float = 0.1,
    warmup_frac: float = 0.05,
    max_docs: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Train the tiny LM into `out_dir` (see the module docstring for the files); return `out_dir`.

    corpus: a `saekit.corpus.iter_texts` source or a list of documents; `max_docs` keeps the first
        ones. The tokenizer is trained on the same documents (vocab <= `vocab_size`).
    max_tokens: training tokens (steps = max_tokens // (batch_size * n_ctx)); the corpus repeats,
        reshuffled, when it is shorter. The last 32 contexts are held out for the reported loss.
    seed: data order; the weights are initialised with cfg.seed = `INIT_SEED_OFFSET + seed`.
    Returns at once when `out_dir` already holds a complete model, unless `force`.
    """
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    with _folder_lock(out_dir):
        if is_model_dir(out_dir) and not force:
            return out_dir
        (out_dir / CONFIG_FILE).unlink(missing_ok=True)  # incomplete until the new config is written
        started = time.time()
        texts = list(iter_texts(corpus)) if isinstance(corpus, str) else list(corpus)
        texts = texts[:max_docs] if max_docs is not None else texts
        raw_tok = train_bpe_tokenizer(texts, vocab_size=vocab_size)
        encode = lambda batch: [e.ids for e in raw_tok.encode_batch(batch)]  # noqa: E731
        contexts = _pack_corpus(texts, encode, n_ctx)
        val, train = contexts[-N_VAL_CONTEXTS:], contexts[:-N_VAL_CONTEXTS]

        cfg = tiny_config(raw_tok.get_vocab_size(), n_ctx, n_layers, d_model, n_heads, d_mlp,
                          seed=INIT_SEED_OFFSET + seed)
        model = _build(cfg, wrap_tokenizer(raw_tok, name_or_path=str(out_dir)), init_weights=True)
        (out_dir / STEP0_DIR).mkdir(exist_ok=True)
        save_state_dict(model, out_dir / STEP0_DIR / WEIGHTS_FILE)
        initial_loss = _eval_loss(model, val, batch_size)

        n_steps = max(1, max_tokens // (batch_size * n_ctx))
        log_tmp = out_dir / f".train_log.jsonl.tmp{os.getpid()}"
        with log_tmp.open("w") as log, torch.random.fork_rng(devices=[]):
            for row in _train_steps(model, train, n_steps, batch_size, lr, weight_decay,
                                    max(1, int(warmup_frac * n_steps)), seed, progress):
                log.write(json.dumps(row) + "\n")
        os.replace(log_tmp, out_dir / "train_log.jsonl")

        info = {"corpus": corpus if isinstance(corpus, str) else f"<{len(texts)} documents>",
                "n_docs": len(texts), "n_train_contexts": len(train), "n_val_contexts": len(val),
                "n_steps": n_steps, "n_tokens": n_steps * batch_size * n_ctx, "batch_size": batch_size,
                "lr": lr, "weight_decay": weight_decay, "warmup_frac": warmup_frac, "seed": seed,
                "d_vocab": cfg.d_vocab, "initial_val_loss": initial_loss,
                "final_val_loss": _eval_loss(model, val, batch_size),
                "ln_d_vocab": math.log(cfg.d_vocab), "seconds": round(time.time() - started, 1)}
        _write_atomic(out_dir / "train_info.json", lambda tmp: tmp.write_text(json.dumps(info, indent=1)))
        save_model_dir(model, out_dir, tokenizer=raw_tok)
    return out_dir
