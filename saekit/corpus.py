"""Text sources and packing into fixed-length token contexts.

The bottom layer that both `saekit.models` (training the tiny LM) and `saekit.data` (the activation
cache) read. Three kinds of source:

- `"stdlib-docstrings"`: the offline English corpus. The docstrings of the Python standard library
  that runs saekit (read with `ast`, never imported), one document per docstring, in a fixed order.
  About 1.6 MB of English on CPython 3.11; licensed under the PSF License like Python itself.
- a local path: `.txt` (one document per file, or per blank-line-separated block with
  `txt_split="paragraph"`), `.jsonl`/`.json` (a text field per line), `.parquet`, `.arrow`, a folder
  written by `datasets.Dataset.save_to_disk`, or a folder of such files.
- a Hugging Face dataset name, optionally `NAME:CONFIG`, read through `datasets` (streaming).

Packing (`pack_contexts`) concatenates documents with a separator token between them and cuts the
stream into contexts of `ctx_len` tokens. With `prepend_bos`, each context is BOS followed by
`ctx_len - 1` stream tokens (the convention of SAELens and TransformerLens models that prepend BOS).
It is deterministic: the same source, tokenizer and settings give the same contexts in the same order.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

STDLIB_CORPUS = "stdlib-docstrings"
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "turtledemo",
              "__pycache__", "ensurepip", "pydoc_data"}


def stdlib_docstrings(min_chars: int = 40) -> list[str]:
    """Docstrings of the Python standard library's modules, classes and functions (sorted walk)."""
    return list(_stdlib_docstrings(min_chars))


@functools.lru_cache(maxsize=2)
def _stdlib_docstrings(min_chars: int) -> tuple[str, ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for filename in sorted(filenames):
            if not filename.endswith(".py"):
                continue
            try:
                tree = ast.parse(Path(dirpath, filename).read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    text = ast.get_docstring(node)
                    if text and len(text) >= min_chars:
                        docs.append(text)
    return tuple(docs)


def _texts_from_records(records: Iterable[dict], text_field: str, where: str) -> Iterator[str]:
    for i, record in enumerate(records):
        if text_field not in record:
            raise KeyError(f"{where}: record {i} has no field {text_field!r} (fields: {sorted(record)})")
        yield record[text_field]


def _local_texts(path: Path, text_field: str, txt_split: str) -> Iterator[str]:
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            import datasets

            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds["train"] if "train" in ds else ds[sorted(ds)[0]]
            yield from _texts_from_records(ds, text_field, str(path))
            return
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _LOCAL_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{path}: no .txt/.jsonl/.json/.parquet/.arrow files in this folder")
        for file in files:
            yield from _local_texts(file, text_field, txt_split)
        return
    suffix = path.suffix
    if suffix == ".txt":
        text = path.read_text(encoding="utf-8")
        if txt_split == "paragraph":
            yield from (block.strip() for block in text.split("\n\n") if block.strip())
        else:
            yield text
    elif suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{lineno}: not a JSON line ({e})") from None
                    yield from _texts_from_records([record], text_field, f"{path}:{lineno}")
    elif suffix in (".parquet", ".arrow"):
        import datasets

        ds = datasets.load_dataset("parquet" if suffix == ".parquet" else "arrow",
                                   data_files=str(path), split="train")
        yield from _texts_from_records(ds, text_field, str(path))
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use {sorted(_LOCAL_SUFFIXES)}")


_LOCAL_SUFFIXES = {".txt", ".jsonl", ".json", ".parquet", ".arrow"}


def iter_texts(source: str, split: str = "train", text_field: str = "text",
               txt_split: str = "file") -> Iterator[str]:
    """Documents of a source: the offline corpus, a local path, or a HF dataset (streamed)."""
    if source == STDLIB_CORPUS:
        yield from stdlib_docstrings()
        return
    path = Path(source).expanduser()
    if path.exists():
        yield from _local_texts(path, text_field, txt_split)
        return
    if source.startswith((".", "/", "~")) or path.suffix in _LOCAL_SUFFIXES:
        raise FileNotFoundError(f"dataset {source!r}: no such file or folder")
    import datasets

    name, _, config = source.partition(":")
    ds = datasets.load_dataset(name, config or None, split=split, streaming=True)
    yield from _texts_from_records(ds, text_field, f"dataset {source}")


def source_fingerprint(source: str, split: str = "train", text_field: str = "text") -> str:
    """A short hash naming a source's content: file bytes for local paths, name/config/split for the hub.

    Local files are hashed whole up to 256 MB each (then their size and the first 256 MB).
    """
    h = hashlib.sha256()
    h.update(f"{split}|{text_field}|".encode())
    if source == STDLIB_CORPUS:
        import sys

        h.update(f"{STDLIB_CORPUS}|{sys.version_info[:3]}|".encode())
        for doc in stdlib_docstrings():
            h.update(doc.encode())
        return h.hexdigest()[:16]
    path = Path(source).expanduser()
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            h.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
            h.update(str(file.stat().st_size).encode())
            with file.open("rb") as f:
                remaining = 256 << 20
                while remaining > 0 and (chunk := f.read(min(1 << 20, remaining))):
                    h.update(chunk)
                    remaining -= len(chunk)
        return h.hexdigest()[:16]
    h.update(f"hub|{source}".encode())
    return h.hexdigest()[:16]


@dataclass
class PackedContexts:
    """A block of packed contexts.

    tokens: [n_contexts, ctx_len] int32 token ids.
    doc_index: [n_contexts, ctx_len] int32 index of the document each token came from
        (-1 for the BOS that starts a context and for separators before the first document).
    """

    tokens: np.ndarray
    doc_index: np.ndarray


def pack_contexts(
    token_docs: Iterable[list[int]],
    ctx_len: int,
    bos_token_id: int | None,
    sep_token_id: int | None,
    prepend_bos: bool = True,
    max_contexts: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (tokens [ctx_len], doc_index [ctx_len]) contexts, int32, from tokenized documents.

    Documents are concatenated with `sep_token_id` before each one (when given), then cut into
    pieces of `ctx_len - 1` tokens with BOS prepended (`prepend_bos`) or `ctx_len` tokens otherwise.
    The final incomplete piece is dropped.
    """
    if ctx_len < 2:
        raise ValueError(f"ctx_len must be >= 2, got {ctx_len}")
    if prepend_bos and bos_token_id is None:
        raise ValueError("prepend_bos=True needs a bos_token_id (the tokenizer has none)")
    body = ctx_len - 1 if prepend_bos else ctx_len
    buf_tokens: list[int] = []
    buf_docs: list[int] = []
    n_out = 0
    for doc_i, ids in enumerate(token_docs):
        if sep_token_id is not None:
            buf_tokens.append(sep_token_id)
            buf_docs.append(doc_i)
        buf_tokens.extend(ids)
        buf_docs.extend([doc_i] * len(ids))
        start = 0
        while len(buf_tokens) - start >= body:
            piece = buf_tokens[start:start + body]
            piece_docs = buf_docs[start:start + body]
            start += body
            if prepend_bos:
                piece = [bos_token_id] + piece
                piece_docs = [-1] + piece_docs
            yield np.asarray(piece, dtype=np.int32), np.asarray(piece_docs, dtype=np.int32)
            n_out += 1
            if max_contexts is not None and n_out >= max_contexts:
                return
        if start:
            del buf_tokens[:start]
            del buf_docs[:start]


def tokenize_texts(texts: Iterable[str], encode_batch: Callable[[list[str]], list[list[int]]],
                   batch_size: int = 256) -> Iterator[list[int]]:
    """Tokenize documents in batches (fast tokenizers run a batch in parallel), in order."""
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == batch_size:
            yield from encode_batch(batch)
            batch = []
    if batch:
        yield from encode_batch(batch)


def batched_contexts(contexts: Iterator[tuple[np.ndarray, np.ndarray]], n: int) -> Iterator[PackedContexts]:
    """Group single contexts into `PackedContexts` blocks of up to `n` contexts."""
    tokens: list[np.ndarray] = []
    docs: list[np.ndarray] = []
    for tok, doc in contexts:
        tokens.append(tok)
        docs.append(doc)
        if len(tokens) == n:
            yield PackedContexts(np.stack(tokens), np.stack(docs))
            tokens, docs = [], []
    if tokens:
        yield PackedContexts(np.stack(tokens), np.stack(docs))
