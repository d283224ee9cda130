"""saekit.models: init variants (Heap et al. 2025), the local folder format, tokenizer and tiny LM."""

from __future__ import annotations

import inspect
import json
import math
import os
import warnings

import pytest
import torch
from tokenizers import Tokenizer

from saekit.models import (INIT_VARIANT_DOCS, INIT_VARIANTS, default_tiny_lm_dir, load_model, redrawn_parameters,
                           save_model_dir, tiny_config, train_bpe_tokenizer, train_tiny_lm, wrap_tokenizer)
from saekit.models.folder import save_state_dict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=DeprecationWarning)


def _doc_texts() -> list[str]:
    """A few hundred English docstrings of stdlib modules already imported (fast, deterministic)."""
    import collections
    import json as json_module
    import os as os_module
    import pathlib
    import re

    texts = []
    for module in (collections, json_module, os_module, pathlib, re, inspect):
        for name in sorted(vars(module)):
            doc = inspect.getdoc(getattr(module, name))
            if doc and len(doc) > 40:
                texts.append(doc)
    return texts


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return _doc_texts()


@pytest.fixture(scope="module")
def tokenizer(texts):
    return train_bpe_tokenizer(texts, vocab_size=300)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    """A saekit folder whose 'trained' weights are its step-0 weights plus noise on every parameter."""
    path = tmp_path_factory.mktemp("model")
    cfg = tiny_config(tokenizer.get_vocab_size(), n_ctx=32, n_layers=2, d_model=32, n_heads=4, d_mlp=64, seed=7)
    model = load_model(cfg)
    (path / "step0").mkdir()
    save_state_dict(model, path / "step0" / "model.safetensors")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    save_model_dir(model, path, tokenizer=tokenizer)
    return path


@pytest.fixture(scope="module")
def trained(model_dir):
    return load_model(model_dir)


@pytest.fixture(scope="module")
def tokens(trained):
    return torch.randint(1, trained.cfg.d_vocab, (4, trained.cfg.n_ctx), generator=torch.Generator().manual_seed(1))


def _load(model_dir, init, seed=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(model_dir, init=init, seed=seed)


# ---------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trips_text_and_has_bos_id_0(tokenizer):
    text = "Return the path's parent, with ünïcode and  two spaces.\n\tTabbed!"
    assert tokenizer.token_to_id("<|endoftext|>") == 0
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
    assert 0 not in tokenizer.encode(text).ids  # the raw tokenizer adds no special tokens
    assert tokenizer.get_vocab_size() == 300


def test_tokenizer_training_is_deterministic(texts, tokenizer):
    again = train_bpe_tokenizer(texts, vocab_size=300)
    assert again.to_str() == tokenizer.to_str()


def test_wrapped_tokenizer_prepends_bos_in_hooked_transformer(tokenizer):
    model = load_model(tiny_config(tokenizer.get_vocab_size(), n_ctx=16, d_model=16, d_mlp=32))
    model.set_tokenizer(wrap_tokenizer(tokenizer))
    bare = tokenizer.encode("hello world").ids
    assert model.to_tokens("hello world")[0].tolist() == [0] + bare
    assert model.to_tokens("hello world", prepend_bos=False)[0].tolist() == bare
    assert model.tokenizer.bos_token_id == model.tokenizer.eos_token_id == model.tokenizer.pad_token_id == 0
    assert model.tokenizer("hello world", add_special_tokens=False)["input_ids"] == bare


# ---------------------------------------------------------------------------- variants


def test_unknown_init_is_an_error_naming_the_valid_variants(model_dir, trained):
    with pytest.raises(ValueError, match="random-keep-embeddings") as excinfo:
        load_model(model_dir, init="shuffled")
    assert all(name in str(excinfo.value) for name in INIT_VARIANTS)
    assert set(INIT_VARIANT_DOCS) == set(INIT_VARIANTS)
    with pytest.raises(ValueError, match="gaussian-embeddings"):
        redrawn_parameters(trained, "rerandomised")


def test_redrawn_parameters_follow_the_documented_table(trained):
    names = {name for name, _ in trained.named_parameters()}
    assert len(names) == 4 + 2 * 16 + 2  # embeddings, 2 blocks of 16, ln_final
    assert redrawn_parameters(trained, "trained") == set()
    assert redrawn_parameters(trained, "gaussian-embeddings") == set()
    assert redrawn_parameters(trained, "random") == names
    assert redrawn_parameters(trained, "step0") == names
    kept = {"embed.W_E", "pos_embed.W_pos", "unembed.W_U", "unembed.b_U"}
    assert redrawn_parameters(trained, "random-keep-embeddings") == names - kept


@pytest.mark.parametrize("init", INIT_VARIANTS)
def test_variant_redraws_exactly_the_documented_tensors(model_dir, trained, init):
    model = _load(model_dir, init)
    redrawn = redrawn_parameters(trained, init)
    trained_params = dict(trained.named_parameters())
    changed = {name for name, param in model.named_parameters() if not torch.equal(param, trained_params[name])}
    assert changed == redrawn
    trained_buffers = dict(trained.named_buffers())
    for name, buf in model.named_buffers():
        assert torch.equal(buf, trained_buffers[name]), name
    assert model.saekit_info["init"] == init
    json.dumps(model.saekit_info)


def test_random_follows_the_models_init_scheme(model_dir, trained):
    model = _load(model_dir, "random")
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf.startswith("b") or name.endswith(".b"):
            assert torch.count_nonzero(param) == 0, name
        elif name.endswith(".w"):  # LayerNorm scale
            assert torch.all(param == 1), name
        else:  # W_*: GPT-2 init, N(0, initializer_range^2)
            assert param.std().item() == pytest.approx(trained.cfg.initializer_range, rel=0.15), name


def test_random_is_reproducible_per_seed_and_differs_across_seeds(model_dir):
    first, again, other = _load(model_dir, "random", 0), _load(model_dir, "random", 0), _load(model_dir, "random", 1)
    for (name, a), b, c in zip(first.named_parameters(), again.parameters(), other.parameters()):
        assert torch.equal(a, b), name
        if name.rsplit(".", 1)[-1].startswith("W_"):
            assert not torch.equal(a, c), name


def test_random_with_the_models_own_seed_warns(model_dir, trained):
    with pytest.warns(UserWarning, match="step-0"):
        load_model(model_dir, init="random", seed=trained.cfg.seed)


def test_step0_loads_the_step0_folder(model_dir, trained):
    from safetensors.torch import load_file

    step0 = load_model(model_dir, init="step0")
    saved = load_file(str(model_dir / "step0" / "model.safetensors"))
    for name, param in step0.named_parameters():
        assert torch.equal(param, saved[name]), name
    assert step0.tokenizer is not None


def test_step0_is_a_clear_error_without_a_checkpoint(tmp_path, trained):
    save_model_dir(trained, tmp_path / "no-step0")
    with pytest.raises(FileNotFoundError, match="step-0"):
        load_model(tmp_path / "no-step0", init="step0")
    with pytest.raises(ValueError, match="gpt2"):  # decided offline, before any download
        load_model("gpt2", init="step0")


# ---------------------------------------------------------------------------- gaussian-embeddings


def _embed_and_pos(model, tokens):
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in ("hook_embed", "hook_pos_embed"))
    return cache["hook_embed"], cache["hook_pos_embed"]


def test_gaussian_embeddings_are_standard_normal(model_dir, tokens):
    model = _load(model_dir, "gaussian-embeddings")
    embed, _ = _embed_and_pos(model, tokens)  # [4, 32, 32]: 4096 draws
    assert embed.mean().item() == pytest.approx(0.0, abs=0.08)
    assert embed.std().item() == pytest.approx(1.0, abs=0.05)
    assert model.saekit_info["embedding_noise"]["std"] == 1.0


def test_gaussian_noise_depends_only_on_the_row(model_dir, tokens):
    model = _load(model_dir, "gaussian-embeddings")
    batch, _ = _embed_and_pos(model, tokens)
    alone, _ = _embed_and_pos(model, tokens[2:3])
    reordered, _ = _embed_and_pos(model, tokens.flip(0))
    assert torch.equal(batch[2:3], alone)
    assert torch.equal(batch.flip(0), reordered)
    assert not torch.allclose(batch[0], batch[1])
    model.reset_hooks()  # TransformerLens hook reset keeps the module hook
    assert torch.equal(_embed_and_pos(model, tokens)[0], batch)
    other_seed, _ = _embed_and_pos(_load(model_dir, "gaussian-embeddings", seed=1), tokens)
    assert not torch.allclose(other_seed, batch)


def test_gaussian_keeps_the_positional_path_and_all_weights(model_dir, trained, tokens):
    model = _load(model_dir, "gaussian-embeddings")
    embed, pos = _embed_and_pos(model, tokens)
    trained_embed, trained_pos = _embed_and_pos(trained, tokens)
    assert torch.equal(pos, trained_pos)
    assert not torch.allclose(embed, trained_embed)
    _, cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_resid_pre")
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], embed + pos)
    for (name, a), b in zip(model.named_parameters(), trained.parameters()):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------------------- folder format


def test_save_load_round_trip_gives_identical_logits(tmp_path, trained, tokens):
    save_model_dir(trained, tmp_path / "copy")
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["config.json", "model.safetensors",
                                                                     "tokenizer.json"]
    saved_tok = Tokenizer.from_file(str(tmp_path / "copy" / "tokenizer.json"))
    assert saved_tok.encode("hello").ids == trained.to_tokens("hello", prepend_bos=False)[0].tolist()
    config = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert config["dtype"] == "torch.float32" and config["d_model"] == 32
    reloaded = load_model(tmp_path / "copy")
    with torch.no_grad():
        assert torch.equal(reloaded(tokens), trained(tokens))
    assert reloaded.to_tokens("hello").tolist() == trained.to_tokens("hello").tolist()
    info = reloaded.saekit_info
    assert (info["n_layers"], info["d_model"], info["n_ctx"], info["default_prepend_bos"]) == (2, 32, 32, True)
    assert info["tokenizer"] == str(tmp_path / "copy")


def test_config_source_is_built_with_its_seed(tokenizer):
    cfg = tiny_config(tokenizer.get_vocab_size(), n_ctx=16, d_model=16, d_mlp=32, seed=3)
    first, again = load_model(cfg), load_model(cfg)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), again.parameters()))
    assert first.saekit_info["source_kind"] == "config" and first.saekit_info["model_seed"] == 3
    assert first.tokenizer is None


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nothing-here")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)


# ---------------------------------------------------------------------------- tiny LM


def test_train_tiny_lm_lowers_the_loss_and_writes_a_complete_folder(tmp_path, texts):
    out = train_tiny_lm(tmp_path / "tiny", corpus=texts, max_tokens=48 * 8 * 64, batch_size=8, n_ctx=64,
                        vocab_size=512, d_model=64, d_mlp=256, progress=False)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "train_log.jsonl", "train_info.json",
            "step0"} <= names
    assert not any(".tmp" in name for name in names)
    info = json.loads((out / "train_info.json").read_text())
    assert info["initial_val_loss"] == pytest.approx(math.log(info["d_vocab"]), abs=0.6)
    assert info["final_val_loss"] < info["initial_val_loss"] - 0.7
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == list(range(1, 49))
    assert log[-1]["tokens"] == 48 * 8 * 64
    assert sum(r["loss"] for r in log[-5:]) < sum(r["loss"] for r in log[:5])
    model, step0 = load_model(out), load_model(out, init="step0")
    assert not torch.equal(model.blocks[0].attn.W_Q, step0.blocks[0].attn.W_Q)
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert train_tiny_lm(out, corpus=["never read"], progress=False) == out  # complete: returns at once
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime


def test_default_tiny_lm_dir_follows_saekit_home(monkeypatch, tmp_path):
    monkeypatch.setenv("SAEKIT_HOME", str(tmp_path))
    assert default_tiny_lm_dir() == tmp_path / "tiny-lm-v1"
    monkeypatch.delenv("SAEKIT_HOME")
    assert str(default_tiny_lm_dir()) == os.path.expanduser("~/.cache/saekit/tiny-lm-v1")


def test_tiny_lm_name_loads_the_default_folder(monkeypatch, tmp_path, model_dir, trained, tokens):
    import shutil

    monkeypatch.setenv("SAEKIT_HOME", str(tmp_path))
    shutil.copytree(model_dir, tmp_path / "tiny-lm-v1")
    model = load_model("saekit-tiny-lm")
    with torch.no_grad():
        assert torch.equal(model(tokens), trained(tokens))
    assert model.saekit_info["source"] == str((tmp_path / "tiny-lm-v1").resolve())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_variants_are_the_same_on_gpu_and_cpu(model_dir, tokens):
    for init in ("random", "gaussian-embeddings"):
        cpu = _load(model_dir, init)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gpu = load_model(model_dir, init=init, device="cuda")
        for (name, a), b in zip(cpu.named_parameters(), gpu.parameters()):
            assert torch.equal(a, b.cpu()), name
        torch.testing.assert_close(_embed_and_pos(gpu, tokens.cuda())[0].cpu(), _embed_and_pos(cpu, tokens)[0])
