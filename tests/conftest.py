"""Shared fixtures: tiny random TransformerLens models and packed token contexts (all offline)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch


def tiny_random_model(seed: int = 0, d_vocab: int = 500, n_ctx: int = 32, d_model: int = 64):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=d_model, n_heads=4, d_head=d_model // 4,
                                  d_mlp=4 * d_model, d_vocab=d_vocab, n_ctx=n_ctx, act_fn="gelu",
                                  normalization_type="LN", seed=seed)
    return HookedTransformer(cfg)


def random_contexts(n: int, ctx_len: int = 32, d_vocab: int = 500, seed: int = 0, bos: int = 0):
    """(tokens, doc_index) int32 arrays [n, ctx_len] with BOS at position 0."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, d_vocab, size=(n, ctx_len)).astype(np.int32)
    tokens[:, 0] = bos
    docs = np.repeat(np.arange(n, dtype=np.int32)[:, None], ctx_len, axis=1)
    docs[:, 0] = -1
    return tokens, docs


def context_blocks(tokens, docs, block: int = 7):
    from saekit.corpus import PackedContexts

    return iter([PackedContexts(tokens[i:i + block], docs[i:i + block]) for i in range(0, len(tokens), block)])


@pytest.fixture(scope="session")
def tiny_model():
    torch.manual_seed(0)
    return tiny_random_model()


def make_local_model_dir(root, n_ctx: int = 64):
    """A local model folder (random tiny model + a BPE trained on synthetic text) and data.jsonl."""
    import json

    from saekit.models import save_model_dir, train_bpe_tokenizer, wrap_tokenizer

    words = ("the model reads tokens and writes activations to a cache of shards on disk while a "
             "sparse autoencoder learns latent features from residual stream vectors").split()
    docs = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(20 + i % 30)) for i in range(3000)]
    with (root / "data.jsonl").open("w") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}) + "\n")
    tokenizer = train_bpe_tokenizer(docs[:500], vocab_size=300)
    model = tiny_random_model(d_vocab=tokenizer.get_vocab_size(), n_ctx=n_ctx)
    model.set_tokenizer(wrap_tokenizer(tokenizer))
    save_model_dir(model, root / "model")
    return root
