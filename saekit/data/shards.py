"""The on-disk format of an activation cache, and its verification.

A cache directory holds:

    manifest.json                 what the cache is (model, hooks, dtype, contexts, dataset, ...)
    shards/shard_00000.safetensors  one fixed-size block of contexts
    shards/shard_00000.json         the shard's done-record (written after the shard, atomically)

A shard is a standard safetensors file with, for `n` contexts of `ctx_len` tokens:

    tokens          int32 [n, ctx_len]       token ids
    doc_index       int32 [n, ctx_len]       document each token came from (-1: BOS)
    context_index   int64 [n]                global index of each context in the packed dataset
    acts/<hook>     dtype [n * ctx_len, d_in] activations, token-major (row = context * ctx_len + pos)

Why safetensors: it is the safe format the rest of saekit uses (no pickle), any tool can read it,
and its layout is a JSON header followed by raw little-endian arrays, so we memory-map each tensor
with numpy at its byte offset (`open_shard`): random access to rows without reading the file,
including bfloat16 (mapped as uint16 and viewed as torch.bfloat16).

A shard is complete iff its done-record exists and the safetensors file has the size the record
says; a shard without a done-record is redone on resume (it is written to a temporary name and
renamed, so a killed run leaves at worst a stray `.tmp` file).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saekit.files import file_sha256, write_json_atomic  # noqa: F401 (re-exported)

FORMAT = "saekit-activation-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_DIR = "shards"

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I32": np.int32, "I64": np.int64}
_ST_NAMES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


class CacheError(ValueError):
    """A cache that cannot be used as asked: the message names the file and what is wrong."""


def shard_path(cache_dir: Path, index: int) -> Path:
    return Path(cache_dir) / SHARD_DIR / f"shard_{index:05d}.safetensors"


def done_path(cache_dir: Path, index: int) -> Path:
    return Path(cache_dir) / SHARD_DIR / f"shard_{index:05d}.json"


def read_manifest(cache_dir: str | Path) -> dict[str, Any]:
    """The manifest of a cache directory, checked to be a saekit activation cache."""
    path = Path(cache_dir) / MANIFEST
    if not path.exists():
        raise CacheError(f"{path}: no manifest; {cache_dir} is not a saekit activation cache")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CacheError(f"{path}: manifest is not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise CacheError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise CacheError(f"{path}: format_version {manifest['format_version']} is newer than this saekit "
                         f"reads ({FORMAT_VERSION}); upgrade saekit")
    return manifest


def save_shard(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> int:
    """Write a shard atomically (temp file, fsync, rename); returns its size in bytes."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # disk full, say: no partial file left, the error names the shard
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, f"cannot write shard ({e.strerror or e}); the shards already written are "
                               f"intact: free space and run the same command again", str(path)) from e
    return path.stat().st_size


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """(safetensors header, byte offset of the data) — CacheError on a truncated or corrupt file."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CacheError(f"{path}: shard file is missing") from None
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CacheError(f"{path}: truncated shard ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            raise CacheError(f"{path}: corrupt shard header (header length {n}, file size {size})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CacheError(f"{path}: corrupt shard header (not JSON)") from None
    data_start = 8 + n
    try:
        end = max((int(info["data_offsets"][1]) for k, info in header.items() if k != "__metadata__"), default=0)
    except (AttributeError, KeyError, TypeError, IndexError, ValueError):
        raise CacheError(f"{path}: corrupt shard header (not a safetensors tensor table)") from None
    if data_start + end != size:
        raise CacheError(f"{path}: truncated or corrupt shard: the header describes "
                         f"{data_start + end} bytes, the file has {size}")
    return header, data_start


@dataclass
class Shard:
    """A memory-mapped shard. Arrays are numpy memmaps (read-only); `acts(hook)` gives a torch view."""

    path: Path
    tokens: np.ndarray
    doc_index: np.ndarray
    context_index: np.ndarray
    _acts: dict[str, np.ndarray]
    _dtypes: dict[str, torch.dtype]

    @property
    def n_contexts(self) -> int:
        return self.tokens.shape[0]

    def acts(self, hook: str) -> torch.Tensor:
        """[n_contexts * ctx_len, d_in] activations, memory-mapped (no copy)."""
        if hook not in self._acts:
            raise CacheError(f"{self.path}: no activations for hook {hook!r}; it holds {sorted(self._acts)}")
        import warnings

        with warnings.catch_warnings():  # read-only memmap: torch warns that it is not writable
            warnings.simplefilter("ignore")
            tensor = torch.from_numpy(self._acts[hook])
        return tensor.view(torch.bfloat16) if self._dtypes[hook] == torch.bfloat16 else tensor


def open_shard(path: Path, manifest: dict[str, Any] | None = None) -> Shard:
    """Memory-map a shard, checking it against the manifest (hooks, d_in, dtype, ctx_len)."""
    import warnings

    header, data_start = _read_header(path)
    arrays: dict[str, np.ndarray] = {}
    dtypes: dict[str, torch.dtype] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _ST_DTYPES:
            raise CacheError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        np_dtype = _ST_DTYPES[info["dtype"]]
        if end - start != int(np.prod(shape)) * np.dtype(np_dtype).itemsize:
            raise CacheError(f"{path}: tensor {name!r} byte range does not match its shape {shape}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arrays[name] = np.memmap(path, dtype=np_dtype, mode="r", offset=data_start + start, shape=shape) \
                if end > start else np.zeros(shape, dtype=np_dtype)
        if name.startswith("acts/"):
            dtypes[name[5:]] = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[info["dtype"]]
    for required in ("tokens", "doc_index", "context_index"):
        if required not in arrays:
            raise CacheError(f"{path}: shard has no {required!r} tensor")
    acts = {name[5:]: arr for name, arr in arrays.items() if name.startswith("acts/")}
    shard = Shard(path, arrays["tokens"], arrays["doc_index"], arrays["context_index"], acts, dtypes)
    if manifest is not None:
        check_shard(shard, manifest)
    return shard


def check_shard(shard: Shard, manifest: dict[str, Any]) -> None:
    """Raise CacheError naming the shard file when it does not match the manifest."""
    ctx_len = manifest["ctx_len"]
    if shard.tokens.ndim != 2 or shard.tokens.shape[1] != ctx_len:
        raise CacheError(f"{shard.path}: tokens have shape {shard.tokens.shape}, the manifest says "
                         f"ctx_len {ctx_len}")
    n_rows = shard.n_contexts * ctx_len
    for hook, d_in in manifest["hooks"].items():
        if hook not in shard._acts:
            raise CacheError(f"{shard.path}: no activations for hook {hook!r} listed in the manifest")
        shape = shard._acts[hook].shape
        if shape != (n_rows, d_in):
            raise CacheError(f"{shard.path}: activations of {hook!r} have shape {tuple(shape)}, "
                             f"the manifest says ({n_rows}, {d_in})")
        if shard._dtypes[hook] != DTYPES[manifest["dtype"]]:
            raise CacheError(f"{shard.path}: activations of {hook!r} are {shard._dtypes[hook]}, "
                             f"the manifest says {manifest['dtype']}")


def completed_shards(cache_dir: Path) -> dict[int, dict[str, Any]]:
    """{shard index: done-record} for shards whose done-record exists and whose file size matches."""
    shard_dir = Path(cache_dir) / SHARD_DIR
    done: dict[int, dict[str, Any]] = {}
    if not shard_dir.exists():
        return done
    for record_path in sorted(shard_dir.glob("shard_*.json")):
        try:
            record = json.loads(record_path.read_text())
            index = int(record_path.stem.split("_")[1])
        except (json.JSONDecodeError, ValueError):
            continue
        path = shard_path(cache_dir, index)
        if path.exists() and path.stat().st_size == record.get("n_bytes"):
            done[index] = record
    return done


def verify_cache(cache_dir: str | Path, checksums: bool = False, expected_d_in: dict[str, int] | None = None
                 ) -> dict[str, Any]:
    """Check every shard of a complete cache against its manifest and done-records.

    With `checksums`, re-hash every shard file and compare with the sha256 in its done-record
    (reads the whole cache). Returns the manifest; raises CacheError naming the first bad file.
    """
    cache_dir = Path(cache_dir)
    manifest = read_manifest(cache_dir)
    if expected_d_in:
        check_hooks(manifest, expected_d_in, cache_dir)
    if not manifest.get("complete"):
        raise CacheError(f"{cache_dir / MANIFEST}: the cache is incomplete (run the same `saekit cache` "
                         f"command again to resume it)")
    n_total = 0
    for index in range(manifest["n_shards"]):
        record_file = done_path(cache_dir, index)
        if not record_file.exists():
            raise CacheError(f"{record_file}: missing done-record for shard {index}")
        record = json.loads(record_file.read_text())
        path = shard_path(cache_dir, index)
        shard = open_shard(path, manifest)
        if shard.n_contexts != record["n_contexts"]:
            raise CacheError(f"{path}: holds {shard.n_contexts} contexts, its record says {record['n_contexts']}")
        if checksums and file_sha256(path) != record["sha256"]:
            raise CacheError(f"{path}: checksum mismatch: the shard is corrupt")
        n_total += shard.n_contexts
    check_manifest_matches_shards(cache_dir, manifest)
    if n_total != manifest["n_contexts"]:
        raise CacheError(f"{cache_dir / MANIFEST}: manifest says {manifest['n_contexts']} contexts, "
                         f"the shards hold {n_total}")
    return manifest


def check_hooks(manifest: dict[str, Any], expected_d_in: dict[str, int], cache_dir: Path) -> None:
    """CacheError when a hook is missing from the cache or has another d_in than expected."""
    for hook, d_in in expected_d_in.items():
        if hook not in manifest["hooks"]:
            raise CacheError(f"{Path(cache_dir) / MANIFEST}: no hook {hook!r} in this cache "
                             f"(it holds {sorted(manifest['hooks'])})")
        if manifest["hooks"][hook] != d_in:
            raise CacheError(f"{Path(cache_dir) / MANIFEST}: hook {hook!r} has d_in "
                             f"{manifest['hooks'][hook]}, expected {d_in}")


def check_manifest_matches_shards(cache_dir: str | Path, manifest: dict[str, Any]) -> None:
    """CacheError when the manifest records shard checksums (`shards_sha256`) other than the shards'
    done-records hold: a manifest copied from another cache. Reads the done-records only."""
    recorded = manifest.get("shards_sha256")
    if recorded is None or not manifest.get("complete"):
        return
    from saekit.data.provenance import shards_sha256

    if shards_sha256(cache_dir, manifest["n_shards"]) != recorded:
        raise CacheError(f"{Path(cache_dir) / MANIFEST}: the manifest does not belong to these shards (its "
                         f"shards_sha256 differs from their done-records'): copied from another cache?")
