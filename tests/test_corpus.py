"""Text sources and packing: local formats, the offline corpus, deterministic BOS-prefixed contexts."""

import json

import numpy as np
import pytest

from saekit.corpus import (STDLIB_CORPUS, batched_contexts, iter_texts, pack_contexts, source_fingerprint,
                           stdlib_docstrings)

DOCS = ["first document here", "second one", "third and last document"]


def test_pack_contexts_prepends_bos_and_separates_documents():
    token_docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]
    out = list(pack_contexts(token_docs, ctx_len=4, bos_token_id=0, sep_token_id=99))
    stream = [99, 1, 2, 3, 99, 4, 5, 99, 6, 7, 8, 9, 99, 10]
    assert [t.tolist() for t, _ in out] == [[0] + stream[i:i + 3] for i in range(0, 12, 3)]
    assert out[0][1].tolist() == [-1, 0, 0, 0]  # BOS then doc 0's separator and tokens
    assert out[1][1].tolist() == [-1, 0, 1, 1]
    assert all(t.dtype == np.int32 for t, _ in out)


def test_pack_contexts_without_bos_and_max_contexts():
    token_docs = [list(range(1, 30))]
    out = list(pack_contexts(token_docs, ctx_len=5, bos_token_id=None, sep_token_id=None, prepend_bos=False,
                             max_contexts=3))
    assert [t.tolist() for t, _ in out] == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 15]]
    with pytest.raises(ValueError, match="bos_token_id"):
        list(pack_contexts(token_docs, ctx_len=5, bos_token_id=None, sep_token_id=None))


def test_batched_contexts_groups_in_order():
    contexts = [(np.full(4, i, dtype=np.int32), np.full(4, i, dtype=np.int32)) for i in range(7)]
    blocks = list(batched_contexts(iter(contexts), 3))
    assert [len(b.tokens) for b in blocks] == [3, 3, 1]
    assert np.concatenate([b.tokens[:, 0] for b in blocks]).tolist() == list(range(7))


def test_local_jsonl_txt_parquet_and_saved_dataset(tmp_path):
    import datasets

    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in DOCS) + "\n")
    (tmp_path / "d.txt").write_text("\n\n".join(DOCS))
    datasets.Dataset.from_dict({"text": DOCS}).to_parquet(str(tmp_path / "d.parquet"))
    datasets.Dataset.from_dict({"body": DOCS}).save_to_disk(str(tmp_path / "saved"))
    assert list(iter_texts(str(tmp_path / "d.jsonl"))) == DOCS
    assert list(iter_texts(str(tmp_path / "d.txt"), txt_split="paragraph")) == DOCS
    assert list(iter_texts(str(tmp_path / "d.txt"))) == ["\n\n".join(DOCS)]
    assert list(iter_texts(str(tmp_path / "d.parquet"))) == DOCS
    assert list(iter_texts(str(tmp_path / "saved"), text_field="body")) == DOCS


def test_missing_field_and_missing_file_are_named(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"content": "x"}) + "\n")
    with pytest.raises(KeyError, match="d.jsonl:1.*'text'"):
        list(iter_texts(str(tmp_path / "d.jsonl")))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        list(iter_texts(str(tmp_path / "nope.jsonl")))
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        list(iter_texts(str(tmp_path / "bad.jsonl")))


def test_fingerprint_follows_content(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "a"}) + "\n")
    first = source_fingerprint(str(path))
    assert source_fingerprint(str(path)) == first
    path.write_text(json.dumps({"text": "b"}) + "\n")
    assert source_fingerprint(str(path)) != first


def test_offline_corpus_is_english_prose_in_a_fixed_order():
    docs = stdlib_docstrings()
    assert len(docs) > 3000 and sum(map(len, docs)) > 1_000_000
    assert docs[:50] == stdlib_docstrings()[:50]
    assert next(iter_texts(STDLIB_CORPUS)) == docs[0]
    text = " ".join(docs[:500]).lower()
    assert text.count(" the ") > 500
