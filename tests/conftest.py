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


def make_local_model_dir(root, n_ctx: int = 64, make_model=None):
    """A local model folder (random tiny model + a BPE trained on synthetic text) and data.jsonl.
    make_model(d_vocab) builds another HookedTransformer in place of tiny_random_model."""
    import json

    from saekit.models import save_model_dir, train_bpe_tokenizer, wrap_tokenizer

    words = ("the model reads tokens and writes activations to a cache of shards on disk while a "
             "sparse autoencoder learns latent features from residual stream vectors").split()
    docs = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(20 + i % 30)) for i in range(3000)]
    with (root / "data.jsonl").open("w") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}) + "\n")
    tokenizer = train_bpe_tokenizer(docs[:500], vocab_size=300)
    d_vocab = tokenizer.get_vocab_size()
    model = make_model(d_vocab) if make_model else tiny_random_model(d_vocab=d_vocab, n_ctx=n_ctx)
    model.set_tokenizer(wrap_tokenizer(tokenizer))
    save_model_dir(model, root / "model")
    return root


def make_report_run(root):
    """A small run directory with every file the report reads, offline, in seconds: a local model
    and cache, two TopK seeds trained on it (training_log.jsonl, metrics.json) and evaluated
    (eval.json), both collected into records, 8 latents of each explained in raw mode (MaxAct,
    VocabProj, TokenChange), the two seeds matched, and a scores.jsonl for seed 0's records."""
    import json

    from saekit.data import CacheConfig, cache_activations
    from saekit.eval import EvalConfig, evaluate
    from saekit.interp import CollectConfig, ExplainConfig, collect_records, explain_latents
    from saekit.match import MatchConfig, match_saes
    from saekit.train import TrainConfig, train

    hook, ctx = "blocks.0.hook_resid_post", 32
    make_local_model_dir(root)
    cache = root / "cache"
    cache_activations(CacheConfig(out=str(cache), model=str(root / "model"), dataset=str(root / "data.jsonl"),
                                  hooks=[hook], n_tokens=64 * ctx, ctx_len=ctx, shard_tokens=ctx * 16, device="cpu"),
                      progress=False)
    saes = train(TrainConfig(cache=str(cache), out=str(root / "sae"), architecture="topk", d_sae=[64], k=[8],
                             seeds=[0, 1], n_tokens=6000, batch_size=256, warmup_steps=2, log_every=2,
                             checkpoint_every=0, device="cpu"), progress=False)
    for folder in saes:
        evaluate(EvalConfig(sae=str(folder), cache=str(cache), n_tokens=4 * ctx, ce_contexts=2, device="cpu"),
                 progress=False)
        records = collect_records(CollectConfig(sae=str(folder), cache=str(cache), n_tokens=0, n_top=6, n_explain=8,
                                                n_test=8, n_quantiles=4, n_random_negatives=2, n_hard_negatives=0,
                                                window=16, device="cpu"), progress=False)
        explain_latents(ExplainConfig(records=str(records), n_latents=8, tc_sequences=4, tc_seq_len=16,
                                      vocab_tokens=10, maxact_examples=4, device="cpu"), progress=False)
    match_saes(MatchConfig(saes=[str(s) for s in saes], out=str(root / "match"), device="cpu"), progress=False)
    with (saes[0] / "records" / "scores.jsonl").open("w") as f:
        for latent in range(8):
            for method in ("maxact", "vocabproj"):
                f.write(json.dumps({"latent": latent, "method": method, "scorer": "detection",
                                    "score": round(0.5 + latent / 20, 3)}) + "\n")
        f.write("not json: a line cut by a kill\n")
    return root, saes


@pytest.fixture(scope="session")
def report_run(tmp_path_factory):
    """(run directory, [SAE folder seed 0, seed 1]) of `make_report_run`, built once per session."""
    return make_report_run(tmp_path_factory.mktemp("report_run"))


def small_train_config(cache, out, **changes):
    """A TopK TrainConfig of 6 steps of 256 tokens, no checkpoints, logs every 2 steps (changes override)."""
    from saekit.train import TrainConfig

    values = dict(cache=str(cache), out=str(out), d_sae=[32], k=[4], seeds=[0], n_tokens=256 * 6, batch_size=256,
                  lr=1e-3, warmup_steps=1, drop_bos=False, checkpoint_every=0, log_every=2,
                  normalize_sample_tokens=256, device="cpu")
    values.update(changes)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def local_hub(tmp_path_factory):
    """The local Hugging Face hub of tests/hub: tiny repos in the hub's layout served by olah (a real
    hub-protocol server, from .venv-hub) behind a loopback proxy, on free ports; stopped at the end.
    Child processes reach it with `local_hub.env(home)` / `local_hub.run_saekit(...)` (docs/hub_fixture.md)."""
    from hub.server import HubServer

    server = HubServer(tmp_path_factory.mktemp("hub")).start()
    yield server
    server.stop()
