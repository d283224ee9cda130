"""Provenance: cache digests, hub revisions in manifests, digests in checkpoints and SAE folders,
resume refused on a regenerated cache, eval records both digests and refuses another model's cache."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from saekit.data import CacheError, read_manifest, write_array_cache
from conftest import small_train_config as config
from saekit.sae import load_sae_dir
from saekit.train import train

N, CTX, D = 40, 16, 16
INFO = {"source": "arrays", "model_name": "toy"}


def acts(seed: int) -> torch.Tensor:
    return torch.randn(N, CTX, D, generator=torch.Generator().manual_seed(seed))


def array_cache(path: Path, seed: int = 0, info: dict | None = None) -> Path:
    write_array_cache(path, {"syn": acts(seed)}, contexts_per_shard=10, info=dict(info or INFO))
    return path


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_manifest_digest_follows_content_not_location(tmp_path):
    from saekit.data.provenance import cache_digest, manifest_digest

    a, b, c = array_cache(tmp_path / "a"), array_cache(tmp_path / "b"), array_cache(tmp_path / "c", seed=1)
    assert cache_digest(a) == cache_digest(b) == manifest_digest(read_manifest(a))
    assert cache_digest(c) != cache_digest(a)  # same settings, other activations
    assert len(cache_digest(a)) == 16
    manifest = read_manifest(a)
    assert manifest_digest({**manifest, "dataset": {"source": "other"}}) != cache_digest(a)
    assert manifest_digest({**manifest, "finished": "later", "config": {"x": 1}}) == cache_digest(a)


def fake_hf_cache(root: Path, kind: str, repo: str, ref: str, sha: str) -> None:
    refs = root / f"{kind}s--{repo.replace('/', '--')}" / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / ref).write_text(sha)


def test_hub_dataset_and_model_revisions_are_recorded(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub.constants

    import saekit.models
    from conftest import make_local_model_dir
    from saekit.data import CacheConfig, cache_activations
    from saekit.data.provenance import cache_digest

    root = make_local_model_dir(tmp_path)
    docs = [json.loads(line) for line in (root / "data.jsonl").read_text().splitlines()[:200]]
    calls = []

    def load_dataset(name, config=None, split="train", streaming=False, **kwargs):
        calls.append({"name": name, "config": config, "split": split, **kwargs})
        return iter(docs)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    hub = tmp_path / "hf"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    fake_hf_cache(hub, "dataset", "org/corpus", "v1.0", "a" * 40)
    fake_hf_cache(hub, "dataset", "org/corpus", "main", "b" * 40)
    real_load = saekit.models.load_model

    def hub_model(source, **kwargs):  # the local model, as if it came from the hub
        model = real_load(root / "model", **kwargs)
        model.saekit_info.update(source="gpt2", source_kind="hub")
        return model

    monkeypatch.setattr(saekit.models, "load_model", hub_model)
    from transformer_lens.loading_from_pretrained import get_official_model_name

    fake_hf_cache(hub, "model", get_official_model_name("gpt2"), "main", "c" * 40)

    def run(out: str, dataset: str) -> dict:
        return cache_activations(CacheConfig(out=str(tmp_path / out), model="gpt2", dataset=dataset,
                                             n_tokens=8 * CTX, ctx_len=CTX, hooks=["blocks.0.hook_resid_post"],
                                             device="cpu"), progress=False)

    pinned = run("pinned", "org/corpus:en@v1.0")
    assert calls[-1] == {"name": "org/corpus", "config": "en", "split": "train", "revision": "v1.0"}
    assert pinned["dataset"]["revision"] == "v1.0" and pinned["dataset"]["resolved_revision"] == "a" * 40
    assert pinned["model"]["revision"] == "c" * 40
    main = run("main", "org/corpus:en")
    assert "revision" not in main["dataset"] and main["dataset"]["resolved_revision"] == "b" * 40
    assert main["dataset"]["fingerprint"] != pinned["dataset"]["fingerprint"]
    assert cache_digest(tmp_path / "main") != cache_digest(tmp_path / "pinned")  # same text, other revision


def test_checkpoints_and_sae_folders_record_the_cache_digest(tmp_path):
    from saekit.data.provenance import cache_digest

    cache = array_cache(tmp_path / "cache")
    folder, = train(config(cache, tmp_path / "run"), progress=False)
    root = tmp_path / "run" / "checkpoints"
    state = json.loads((root / json.loads((root / "latest.json").read_text())["path"] / "state.json").read_text())
    assert state["cache_digest"] == cache_digest(cache)
    provenance = json.loads((folder / "cfg.json").read_text())["saekit"]["provenance"]
    assert provenance["cache_digest"] == cache_digest(cache) and provenance["cache"] == str(cache)
    assert provenance["model"] == INFO
    assert load_sae_dir(folder).provenance == provenance


def test_resume_on_a_regenerated_cache_is_refused(tmp_path):
    from saekit.data.provenance import cache_digest

    cache = array_cache(tmp_path / "cache")
    run = tmp_path / "run"
    train(config(cache, run), progress=False)
    old = cache_digest(cache)
    shutil.rmtree(cache)
    array_cache(cache)  # regenerated with the same data: the same cache, resumes
    train(config(cache, run), progress=False)
    shutil.rmtree(cache)
    array_cache(cache, seed=1)  # same path and settings, other activations
    before = tree_hashes(run)
    with pytest.raises(CacheError) as err:
        train(config(cache, run), progress=False)
    message = str(err.value)
    assert old in message and cache_digest(cache) in message and str(cache / "manifest.json") in message
    assert tree_hashes(run) == before  # nothing written or removed


def test_eval_records_both_digests_and_accepts_a_held_out_cache_of_the_same_model(tmp_path):
    from saekit.data.provenance import cache_digest
    from saekit.eval import EvalConfig, evaluate

    folder, = train(config(array_cache(tmp_path / "train"), tmp_path / "run"), progress=False)
    other = array_cache(tmp_path / "heldout", seed=7)
    result = evaluate(EvalConfig(sae=str(folder), cache=str(other), n_tokens=4 * CTX, ce_contexts=0,
                                 device="cpu"), progress=False)
    assert result["cache_digest"] == cache_digest(other)
    assert result["sae_cache_digest"] == cache_digest(tmp_path / "train") != result["cache_digest"]
    written = json.loads((folder / "eval.json").read_text())
    assert written["sae_cache_digest"] == result["sae_cache_digest"]


def test_eval_on_a_cache_of_another_model_is_refused_unless_allowed(tmp_path):
    from saekit.data.provenance import cache_digest
    from saekit.eval import EvalConfig, evaluate

    train_cache = array_cache(tmp_path / "train")
    folder, = train(config(train_cache, tmp_path / "run"), progress=False)
    other = array_cache(tmp_path / "other", info={"source": "arrays", "model_name": "another"})
    eval_config = EvalConfig(sae=str(folder), cache=str(other), n_tokens=4 * CTX, ce_contexts=0, device="cpu",
                             write=False)
    with pytest.raises(CacheError) as err:
        evaluate(eval_config, progress=False)
    message = str(err.value)
    assert cache_digest(train_cache) in message and cache_digest(other) in message and "model_name" in message
    eval_config.allow_other_cache = True
    assert evaluate(eval_config, progress=False)["sae_cache_digest"] == cache_digest(train_cache)
