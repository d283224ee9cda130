"""The hub paths run for real, against the local hub of tests/hub (olah serving tiny git repos in the
hub's layout, behind a loopback proxy; docs/hub_fixture.md): hub models (TransformerLens names, the
step0 revision), a streamed hub dataset, a published SAE of sae-lens's registry (eval, score
--published, with its processed weights) and a sparsify hub repo by hookpoint. Each runs saekit in a
child process with HF_ENDPOINT set to the local hub, online, and a fresh HF_HOME."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors

from hub.repos import (DATASET_REPO, GPT2_REPO, GPT2_SIZES, PYTHIA_REPO, PYTHIA_SIZES, SAELENS_HOOK, SAELENS_RELEASE,
                       SAELENS_REPO, SPARSIFY_REPO, dataset_texts, file_at, git, repo_dir)
from saekit.data.shards import open_shard, read_manifest, shard_path

REGISTRY_SAE = f"{SAELENS_RELEASE}/{SAELENS_HOOK}"


def ok(result) -> str:
    """stdout of a finished child process; its stderr in the assertion message when it failed."""
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-4000:]}"
    return result.stdout


def main_sha(hub, repo_id: str, repo_type: str = "model", branch: str = "main") -> str:
    """The commit `branch` of a mirror repo points at (what the hub serves for it)."""
    return git(repo_dir(hub.mirror, repo_id, repo_type), "rev-parse", branch)


def first_context(cache: Path) -> list[int]:
    """The token ids of the cache's first context."""
    return open_shard(shard_path(cache, 0), read_manifest(cache)).tokens[0].tolist()


def test_cache_streams_a_hub_dataset_through_the_hub_gpt2(local_hub, tmp_path):
    """`saekit cache --model gpt2 --dataset OWNER/NAME`: TransformerLens's gpt2 (config, weights and the
    real GPT-2 tokenizer from the hub repo) over the parquet dataset streamed from the hub."""
    out = tmp_path / "cache"
    ok(local_hub.run_saekit(["cache", "--model", "gpt2", "--dataset", DATASET_REPO, "--hooks", SAELENS_HOOK,
                             "--n-tokens", "256", "--ctx-len", "32", "--batch-size", "8", "--device", "cpu",
                             "--out", str(out)], tmp_path / "home", tmp_path))
    manifest = read_manifest(out)
    assert manifest["complete"] and manifest["hooks"] == {SAELENS_HOOK: GPT2_SIZES["n_embd"]}
    model = manifest["model"]
    assert (model["source"], model["source_kind"], model["n_layers"]) == ("gpt2", "hub", GPT2_SIZES["n_layer"])
    assert model["revision"] == main_sha(local_hub, GPT2_REPO)  # the commit the hub served
    assert manifest["dataset"]["resolved_revision"] == main_sha(local_hub, DATASET_REPO, "dataset")

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(repo_dir(local_hub.mirror, GPT2_REPO) / "tokenizer.json"))
    eot = tokenizer.token_to_id("<|endoftext|>")
    expected = [eot, eot] + tokenizer.encode(dataset_texts()[0]).ids  # BOS, separator, document 0
    assert first_context(out) == expected[:32]
    assert any("/datasets/saekit-hub/tiny-text/resolve/" in path and path.endswith(".parquet")
               for _, path, status in local_hub.requests if status == 200)


STEP0_SCRIPT = """
import json
from saekit.data import CacheConfig, cache_activations
from saekit.models import load_model
out = {}
for init in ("step0", "trained"):
    model = load_model("pythia-70m", init=init)
    out[init] = {"W_E": model.embed.W_E.detach().tolist(), "info": model.saekit_info}
manifest = cache_activations(CacheConfig(out="cache", model="pythia-70m", init="step0", n_tokens=64, ctx_len=32,
                                         hooks=["blocks.1.hook_resid_post"], device="cpu"), progress=False)
out["cache_model"] = manifest["model"]
json.dump(out, open("step0.json", "w"))
"""


def test_step0_loads_the_step0_revision_of_the_hub_repo(local_hub, tmp_path):
    """`load_model("pythia-70m", init="step0")` loads the weights of the repo's `step0` branch, and
    `trained` those of main (the mirror's two branches hold different weights); a cache of init step0
    records the commit of the step0 branch, not main's."""
    ok(local_hub.run_python(STEP0_SCRIPT, tmp_path / "home", tmp_path))
    loaded = json.loads((tmp_path / "step0.json").read_text())

    def embed_in(branch: str) -> torch.Tensor:
        return load_safetensors(file_at(local_hub.mirror, PYTHIA_REPO, branch, "model.safetensors"))[
            "gpt_neox.embed_in.weight"]

    step0, main = embed_in("step0"), embed_in("main")
    assert not torch.equal(step0, main)
    assert torch.equal(torch.tensor(loaded["step0"]["W_E"]), step0)
    assert torch.equal(torch.tensor(loaded["trained"]["W_E"]), main)
    assert loaded["step0"]["info"]["hub_revision"] == "step0" and "hub_revision" not in loaded["trained"]["info"]
    assert any(path.startswith(f"/api/models/{PYTHIA_REPO}/revision/step0") for _, path, _ in local_hub.requests)
    step0_commit = main_sha(local_hub, PYTHIA_REPO, branch="step0")
    assert loaded["cache_model"]["revision"] == step0_commit != main_sha(local_hub, PYTHIA_REPO)


@pytest.fixture(scope="module")
def registry_eval(local_hub, tmp_path_factory):
    """`saekit eval gpt2-small-res-jb/blocks.8.hook_resid_pre --model gpt2` run once: its out folder."""
    tmp = tmp_path_factory.mktemp("registry_eval")
    ok(local_hub.run_saekit(["eval", REGISTRY_SAE, "--model", "gpt2", "--n-tokens", "256", "--ce-contexts", "2",
                             "--device", "cpu", "--out", str(tmp / "eval")], tmp / "home", tmp))
    return tmp / "eval"


def test_eval_of_a_published_sae_of_the_registry(local_hub, registry_eval):
    """sae-lens downloads the SAE from the repo and path its registry names for the id; saekit
    evaluates it live on the hub gpt2 (reconstruction and the CE splice)."""
    result = json.loads((registry_eval / "eval.json").read_text())
    assert (result["hook_name"], result["d_in"], result["d_sae"]) == (SAELENS_HOOK, GPT2_SIZES["n_embd"], 64)
    assert result["model"]["source"] == "gpt2" and result["ce_clean"] > 0 and "ce_loss_score" in result
    fetched = {path.split("/", 5)[-1] for _, path, status in local_hub.requests
               if path.startswith(f"/{SAELENS_REPO}/resolve/") and status == 200}
    assert f"{SAELENS_HOOK}/cfg.json" in fetched and f"{SAELENS_HOOK}/sae_weights.safetensors" in fetched


def test_eval_live_mode_processes_the_model_as_the_sae_was_trained(registry_eval):
    assert read_manifest(registry_eval / "eval_cache")["model_processing"] == ["center_writing_weights"]


def test_score_published_registry_sae_with_its_processed_model(local_hub, tmp_path):
    """`saekit score --published gpt2-small-res-jb/... --model gpt2`: the cache is made of gpt2 loaded
    as the registry says the SAE was trained (center_writing_weights), then records, raw MaxAct
    descriptions and the embedding scorer, offline but for the local hub."""
    out = tmp_path / "run"
    collect = {"window": 12, "n_top": 5, "n_quantiles": 2, "n_explain": 4, "n_test": 6, "reservoir": 20,
               "n_random_negatives": 6, "n_hard_negatives": 0}
    score = {"n_activating": 6, "n_negatives": 6, "min_activating": 2, "n_boot": 100}
    config = tmp_path / "published.json"
    config.write_text(json.dumps({"ctx_len": 32, "n_latents": 3, "collect": collect, "score": score}))
    ok(local_hub.run_saekit(["score", "--published", REGISTRY_SAE, "--model", "gpt2", "--dataset", DATASET_REPO,
                             "--n-tokens", "1536", "--device", "cpu", "--config", str(config), "--out", str(out)],
                            tmp_path / "home", tmp_path))
    manifest = read_manifest(out / "cache")
    assert manifest["model_processing"] == ["center_writing_weights"]
    acts = open_shard(shard_path(out / "cache", 0), manifest).acts(SAELENS_HOOK)  # [tokens, d_model]
    assert acts.mean(dim=-1).abs().max() < 1e-4 < acts.std()  # the residual stream is centred, as in training
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines() if line.strip()]
    assert {r["scorer"] for r in rows} == {"embedding"} and sorted({r["latent"] for r in rows}) == [0, 1, 2]


def test_sparsify_hub_repo_by_hookpoint(local_hub, tmp_path):
    """`saekit eval OWNER/REPO/layers.1 --model pythia-70m`: only that hookpoint's folder is downloaded
    (snapshot_download with allow_patterns) and read as a TopK SAE of blocks.1.hook_resid_post."""
    before = len(local_hub.requests)
    out = tmp_path / "eval"
    ok(local_hub.run_saekit(["eval", f"{SPARSIFY_REPO}/layers.1", "--model", "pythia-70m", "--n-tokens", "128",
                             "--ce-contexts", "1", "--device", "cpu", "--out", str(out)], tmp_path / "home", tmp_path))
    result = json.loads((out / "eval.json").read_text())
    assert (result["hook_name"], result["architecture"], result["d_in"]) == ("blocks.1.hook_resid_post", "topk",
                                                                            PYTHIA_SIZES["hidden_size"])
    fetched = [path for _, path, status in local_hub.requests[before:] if f"/{SPARSIFY_REPO}/resolve/" in path]
    assert any(path.endswith("layers.1/sae.safetensors") for path in fetched)
    assert not any("layers.0/" in path for path in fetched)


def test_sparsify_hub_repo_by_transformerlens_hook_name(local_hub, tmp_path):
    """`--hookpoint blocks.0.hook_resid_post` of a sparsify hub repo: the repo is downloaded and the
    folder whose module maps to that hook (layers.0) is the SAE; exported, it equals the repo's tensors."""
    out = tmp_path / "export"
    ok(local_hub.run_saekit(["export", SPARSIFY_REPO, str(out), "--to", "sparsify", "--hookpoint",
                             "blocks.0.hook_resid_post"], tmp_path / "home", tmp_path))
    served = load_safetensors(file_at(local_hub.mirror, SPARSIFY_REPO, "main", "layers.0/sae.safetensors"))
    exported = load_safetensors((out / "sae.safetensors").read_bytes())
    assert torch.allclose(exported["encoder.weight"], served["encoder.weight"])
    assert json.loads((out / "cfg.json").read_text())["hook_name"] == "blocks.0.hook_resid_post"
