"""Provenance of a cache and of what is trained on it: digests, hub revisions, identity checks.

`manifest_digest(manifest)` is a short, stable hash of what a cache *is*: its identity fields (model,
processing, hooks, dtypes, contexts, dataset with its fingerprint and revisions, BOS), its size and,
for caches written by this version of saekit, the checksums of its shards (`shards_sha256`). Two caches
have the same digest exactly when they hold the same activations of the same model and data, wherever
they are on disk; a cache regenerated at the same path from other data or settings gets another one.

Training records the digest in every checkpoint (`state.json`) and in every SAE folder it writes
(`cfg.json`, `saekit.provenance`); a resumed run whose cache has another digest is refused. Evaluation
records both digests in eval.json and refuses a cache of another model or hook point (`check_model`).

Hub specs may carry a revision: a dataset `name[:config]@revision` is streamed at that revision, and the
manifest records the revision asked for and the commit it resolved to (`resolved_revision`, when the hub
or the local HF cache can say); a hub model's resolved commit is recorded as `revision` in its info.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

from saekit.data.shards import MANIFEST, CacheError, done_path, read_manifest

# Manifest fields that must agree for a run to resume into an existing cache.
# model_processing comes before model (whose info also lists it) so a refusal names it; a manifest
# written before it was recorded holds an unprocessed model.
IDENTITY_FIELDS = ("model_processing", "model", "hooks", "dtype", "compute_dtype", "ctx_len", "contexts_per_shard",
                   "n_contexts_requested", "dataset", "prepend_bos")
# What a complete cache holds, on top of its identity (shards_sha256: absent in older manifests).
_CONTENT_FIELDS = ("complete", "n_contexts", "n_tokens", "n_shards", "shards_sha256")
_SHA = re.compile(r"^[0-9a-f]{40}$")


def manifest_digest(manifest: dict[str, Any]) -> str:
    """A 16-hex-digit digest of a manifest's identity and content fields (see the module docstring)."""
    fields = {name: manifest.get(name, [] if name == "model_processing" else None)
              for name in IDENTITY_FIELDS + _CONTENT_FIELDS}
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_digest(cache_dir: str | Path) -> str:
    return manifest_digest(read_manifest(cache_dir))


def shards_sha256(cache_dir: str | Path, n_shards: int) -> str:
    """One sha256 over the done-records' shard checksums, in shard order (CacheError naming a missing or
    unreadable record). Reads the small JSON records only, never the shards."""
    h = hashlib.sha256()
    for index in range(n_shards):
        record = done_path(Path(cache_dir), index)
        try:
            sha = json.loads(record.read_text())["sha256"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CacheError(f"{record}: done-record of shard {index} is missing or unreadable ({e})") from None
        h.update(f"{index}:{sha}|".encode())
    return h.hexdigest()


def model_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """The parts of a manifest naming the model and its weights (not where the files are, nor the dtype)."""
    info = dict(manifest.get("model") or {})
    if info.get("weights_sha256") or info.get("gguf_sha256"):
        info.pop("source", None)  # the weights are hashed: a moved model folder is the same model
    info.pop("dtype", None)
    return {"model": info, "model_processing": list(manifest.get("model_processing") or [])}


def training_provenance(manifest: dict[str, Any], cache: str | Path) -> dict[str, Any]:
    """What an SAE folder records about the cache it was trained on."""
    return {"cache_digest": manifest_digest(manifest), "cache": str(cache), **model_identity(manifest)}


def check_resume_cache(state: dict[str, Any], manifest: dict[str, Any], cache: str | Path, where: str) -> None:
    """CacheError naming both digests and the cache when a checkpoint was written on another cache.

    Checkpoints written before digests were recorded (no `cache_digest`) resume as before."""
    recorded = state.get("cache_digest")
    now = manifest_digest(manifest)
    if recorded is not None and recorded != now:
        raise CacheError(f"{where}: this run was trained on a cache with digest {recorded}, but cache "
                         f"{Path(cache) / MANIFEST} now has digest {now} (regenerated or replaced?); nothing "
                         f"was changed: use another --out, or the cache the run was started on")


def check_same_model(provenance: dict[str, Any] | None, manifest: dict[str, Any], cache: str | Path,
                     sae_name: str) -> None:
    """CacheError when an SAE recorded a training cache of another model than `cache`'s."""
    if not provenance or "model" not in provenance:
        return
    recorded = {"model": provenance["model"], "model_processing": provenance.get("model_processing", [])}
    now = model_identity(manifest)
    if recorded != now:
        diff = sorted(k for k in set(recorded["model"]) | set(now["model"])
                      if recorded["model"].get(k) != now["model"].get(k))
        if recorded["model_processing"] != now["model_processing"]:
            diff.append("model_processing")
        raise CacheError(f"SAE {sae_name} was trained on cache {provenance.get('cache')} (digest "
                         f"{provenance.get('cache_digest')}) of another model than cache {cache} (digest "
                         f"{manifest_digest(manifest)}): they differ in {diff}; pass allow_other_cache=True "
                         f"to evaluate anyway")


# ---- hub revisions ---------------------------------------------------------------------------------
def split_revision(spec: str) -> tuple[str, str | None]:
    """(`name[:config]`, revision) of a hub spec `name[:config][@revision]`."""
    name, at, revision = spec.rpartition("@")
    if not at or not name or not revision:
        return spec, None
    return name, revision


def hub_revision(repo_id: str, repo_type: str = "dataset", revision: str | None = None) -> str | None:
    """The commit a hub repo's `revision` (None: main) resolves to: a full sha as is, else the local HF
    cache's ref, else the hub when online; None when nothing can say."""
    if revision and _SHA.match(revision):
        return revision
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        return None
    ref = Path(HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}" / "refs" / (revision or "main")
    if ref.is_file():
        sha = ref.read_text().strip()
        if _SHA.match(sha):
            return sha
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "") or os.environ.get("HF_DATASETS_OFFLINE", "0") \
            not in ("0", ""):
        return None
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        info = (api.dataset_info if repo_type == "dataset" else api.model_info)(repo_id, revision=revision)
        return info.sha
    except Exception:  # offline, private, unknown: the revision stays as asked
        return None


def hub_dataset_texts(spec: str, split: str, text_field: str) -> Iterator[str]:
    """Documents of hub dataset `name[:config]@revision`, streamed at that revision."""
    import datasets

    from saekit.corpus import _texts_from_records

    base, revision = split_revision(spec)
    name, _, config = base.partition(":")
    ds = datasets.load_dataset(name, config or None, split=split, streaming=True, revision=revision)
    yield from _texts_from_records(ds, text_field, f"dataset {spec}")


def dataset_revisions(spec: str) -> dict[str, Any]:
    """{revision, resolved_revision} of a hub dataset spec (only the keys that are known; {} for a local
    source, so manifests of local datasets stay as they were)."""
    from saekit.corpus import STDLIB_CORPUS

    if spec == STDLIB_CORPUS or Path(spec).expanduser().exists():
        return {}
    base, revision = split_revision(spec)
    out: dict[str, Any] = {"revision": revision} if revision else {}
    resolved = hub_revision(base.partition(":")[0], "dataset", revision)
    if resolved:
        out["resolved_revision"] = resolved
    return out


def hub_model_revision(info: dict[str, Any]) -> str | None:
    """The commit of a hub model (by its TransformerLens official name) in the local HF cache, or None."""
    if info.get("source_kind") != "hub":
        return None
    try:
        from transformer_lens.loading_from_pretrained import get_official_model_name

        repo = get_official_model_name(str(info.get("source")))
    except Exception:
        repo = str(info.get("source"))
    return hub_revision(repo, "model")
