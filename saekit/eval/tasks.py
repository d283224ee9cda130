"""Offline data for the probing evaluations: first-letter spelling prompts and labelled text contexts.

Nothing here downloads anything: the spelling words come from the model's own vocabulary, the
texts from `saekit.corpus` (the stdlib docstrings) and the Debian documentation folder written by
analysis/fetch_debian_docs.py (`~/.cache/saekit/text/debian-docs/{python3.11-doc,linux-doc-6.1}/*.txt`).

- `alpha_words(tokenizer)`: the vocabulary tokens that are one alphabetic word with a leading space
  (" cat", " LOOK"), as SAEBench's `get_alpha_tokens` keeps them, re-encoded to check they stay one token;
- `spelling_prompts(...)`: SAEBench's ICL prompt "{word} has the first letter: C" lines, built from
  token ids; `words_per_prompt` > 1 reads several words from one prompt (each after at least
  `icl_examples` answered lines) instead of one word per prompt, to save CPU;
- `rst_line_labels(text)`: per line of a reStructuredText document, 1 = code, 0 = prose, -1 = neither;
- `probing_contexts(tokenizer, ...)`: token contexts from the three sources with per-token labels
  (source, code/prose line, capitalised/lower-case word token).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

LETTERS = "abcdefghijklmnopqrstuvwxyz"
SOURCES = ("stdlib-docstrings", "python3.11-doc", "linux-doc-6.1")
DEBIAN_DOCS = Path.home() / ".cache" / "saekit" / "text" / "debian-docs"
CODE_DIRECTIVES = ("code-block", "code", "sourcecode", "doctest", "testcode", "testoutput", "productionlist")
_UNDERLINE = re.compile(r"^([=\-~^*#+`:'\"._])\1{2,}\s*$")
_WORD = re.compile(r"[A-Za-z]{2,}")


@dataclass
class Word:
    """A vocabulary token that is one word: `text` as decoded (" cat"), its id, its first letter (0..25)."""

    text: str
    token_id: int
    letter: int


def alpha_words(tokenizer: Any, n_words: int = 0, seed: int = 42) -> list[Word]:
    """Single-token words " xyz" (ASCII letters only, any case) of `tokenizer`, sorted by id, or
    `n_words` of them drawn at random (seeded); each encodes back to its own single token."""
    vocab = tokenizer.get_vocab()
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = sorted(i for i in vocab.values() if i not in special)
    texts = tokenizer.batch_decode([[i] for i in ids])
    candidates = [(i, t) for i, t in zip(ids, texts)
                  if len(t) > 1 and t[0] == " " and t[1:].isascii() and t[1:].isalpha()]
    if n_words and n_words < len(candidates):
        candidates = sorted(random.Random(seed).sample(candidates, min(len(candidates), int(n_words * 1.2) + 8)))
    words = []
    for token_id, text in candidates:
        if tokenizer.encode(text, add_special_tokens=False) == [token_id]:
            words.append(Word(text, token_id, LETTERS.index(text[1].lower())))
    return words[:n_words] if n_words else words


@dataclass
class SpellingPrompt:
    """One prompt: token ids [length], the positions read [m] and the index of each read word."""

    tokens: list[int]
    positions: list[int]
    words: list[int]


def spelling_prompts(words: list[Word], tokenizer: Any, icl_examples: int = 10, words_per_prompt: int = 1,
                     template: str = "{word} has the first letter:", bos: int | None = None,
                     seed: int = 42) -> list[SpellingPrompt]:
    """Prompts reading every word of `words` once: lines "\\n{word} has the first letter: C" where
    the first `icl_examples` lines are answered examples drawn from the other words (as SAEBench draws
    them from the same split) and the next `words_per_prompt` lines hold the words read (their own
    answers follow them; a word's activation, read at its token, never sees its answer)."""
    prefix, suffix = template.split("{word}")
    if prefix.strip():
        raise ValueError(f"template {template!r}: the word must open the line (SAEBench reads the word token)")
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    newline, suffix_ids = encode("\n"), encode(suffix)
    answers = {i: encode(" " + LETTERS[i].upper()) for i in range(26)}
    rng = random.Random(seed)
    order = list(range(len(words)))
    rng.shuffle(order)
    prompts = []
    for start in range(0, len(order), words_per_prompt):
        read = order[start:start + words_per_prompt]
        pool = [i for i in range(len(words)) if i not in set(read)] if len(words) < 4 * (icl_examples + 8) else None
        examples: list[int] = []
        while len(examples) < min(icl_examples, len(words) - len(read)):
            i = rng.choice(pool) if pool is not None else rng.randrange(len(words))
            if i not in read and i not in examples:
                examples.append(i)
        tokens = [bos] if bos is not None else []
        positions = []
        for n, index in enumerate(examples + read):
            tokens += newline
            if n >= len(examples):
                positions.append(len(tokens))
            tokens += [words[index].token_id] + suffix_ids + answers[words[index].letter]
        prompts.append(SpellingPrompt(tokens, positions, read))
    return prompts


def rst_line_labels(text: str) -> list[int]:
    """Per line of `text`: 1 = code (a literal block after "::", the body of a code directive, or a
    doctest line ">>> "/"... "), 0 = prose (outside those, not a directive, heading underline or
    field, with at least 4 words of 2+ letters), -1 = neither (blank lines, markup, short lines)."""
    labels: list[int] = []
    block_indent: int | None = None  # indentation of the line that opened a code block
    opening = False
    for line in text.split("\n"):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if block_indent is not None and stripped:
            if indent > block_indent and not (opening and stripped.startswith(":")):
                opening = False
                labels.append(1)
                continue
            if not (opening and stripped.startswith(":")):
                block_indent = None
        if not stripped:
            labels.append(-1)
            continue
        if opening and block_indent is not None:  # a directive's option lines (":linenos:")
            labels.append(-1)
            continue
        directive = re.match(r"\.\.\s+([\w-]+)::", stripped)
        if directive:
            if directive.group(1) in CODE_DIRECTIVES:
                block_indent, opening = indent, True
            labels.append(-1)
            continue
        if stripped.startswith((">>> ", "... ")) or stripped == ">>>":
            labels.append(1)
            continue
        if stripped.endswith("::"):
            block_indent, opening = indent, False
        if _UNDERLINE.match(stripped) or stripped.startswith(":") or stripped.startswith(".."):
            labels.append(-1)
        else:
            labels.append(0 if len(_WORD.findall(stripped)) >= 4 else -1)
    return labels


def source_documents(source: str, debian_docs: str | Path = DEBIAN_DOCS) -> list[str]:
    """The documents of one of SOURCES: the stdlib docstrings, or a Debian docs subfolder's .txt files."""
    if source == "stdlib-docstrings":
        from saekit.corpus import stdlib_docstrings

        return stdlib_docstrings()
    folder = Path(debian_docs).expanduser() / source
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no Debian docs folder (write it with analysis/fetch_debian_docs.py, "
                                f"or leave the dataset out of SparseProbingConfig.datasets)")
    return [p.read_text(encoding="utf-8", errors="replace") for p in sorted(folder.glob("*.txt"))]


@dataclass
class LabelledContext:
    """A context of token ids [L] (BOS first when asked) with per-token labels [L] (-1 = unlabelled):
    `line`: 1 code / 0 prose; `line_id`: which line of the document (-1 BOS); `case`: 1 a word token
    starting with a capital letter, 0 with a lower-case one. `source` indexes SOURCES."""

    tokens: np.ndarray
    source: int
    line: np.ndarray
    line_id: np.ndarray
    case: np.ndarray
    split: str = field(default="train")


def _token_case(piece: str) -> int:
    word = piece.lstrip(" \u2581\u0120")
    if not word or not word[0].isascii() or not word[0].isalpha():
        return -1
    return 1 if word[0].isupper() else 0


def probing_contexts(tokenizer: Any, sources: tuple[str, ...] = SOURCES, n_per_source: int = 150,
                     ctx_len: int = 64, min_tokens: int = 24, train_fraction: float = 0.75,
                     bos: int | None = None, debian_docs: str | Path = DEBIAN_DOCS,
                     seed: int = 42) -> list[LabelledContext]:
    """`n_per_source` contexts of each source: one window of up to ctx_len tokens (less one for BOS)
    at a random offset of a random document with at least `min_tokens` tokens (for half of the
    documents that have code lines, an offset a quarter-window before one of them); the first
    `train_fraction` of each source's contexts are split "train", the rest "test" (documents differ)."""
    rng = random.Random(seed)
    contexts: list[LabelledContext] = []
    room = ctx_len - (bos is not None)
    for source_index, source in enumerate(sources):
        documents = source_documents(source, debian_docs)
        order = list(range(len(documents)))
        rng.shuffle(order)
        chosen: list[LabelledContext] = []
        for doc_index in order:
            if len(chosen) >= n_per_source:
                break
            text = documents[doc_index][:20_000]
            encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
            if len(ids) < min_tokens:
                continue
            line_starts = np.cumsum([0] + [len(s) + 1 for s in text.split("\n")])
            labels = rst_line_labels(text)
            line_id = np.searchsorted(line_starts, [max(a, b - 1) for a, b in offsets], side="right") - 1
            line = np.array([labels[i] if 0 <= i < len(labels) else -1 for i in line_id])
            code = np.flatnonzero(line == 1)
            if len(code) and rng.random() < 0.5:  # half the windows open just before a code line
                start = max(0, min(int(code[rng.randrange(len(code))]) - room // 4, len(ids) - room))
            else:
                start = rng.randrange(0, max(1, len(ids) - room + 1))
            ids, line, line_id = ids[start:start + room], line[start:start + room], line_id[start:start + room]
            case = np.array([_token_case(p) for p in tokenizer.convert_ids_to_tokens(ids)])
            if bos is not None:
                ids, line, line_id, case = [bos] + list(ids), np.r_[-1, line], np.r_[-1, line_id], np.r_[-1, case]
            chosen.append(LabelledContext(np.asarray(ids, dtype=np.int64), source_index, line.astype(np.int64),
                                          np.asarray(line_id, dtype=np.int64), case.astype(np.int64)))
        n_train = int(round(len(chosen) * train_fraction))
        for i, context in enumerate(chosen):
            context.split = "train" if i < n_train else "test"
        contexts += chosen
    return contexts


def model_activations(model: Any, sequences: list[list[int]] | list[np.ndarray], hook: str, batch_size: int = 8,
                      progress: Any = None) -> list[Any]:
    """Activations [len(seq), d] (float32, CPU torch tensors) at `hook` for each token sequence.

    Sequences are batched by length and right-padded: with causal attention the padding never changes
    the activations of the tokens before it. The forward pass stops after the hook's block
    (`stop_at_layer`), skipping the later blocks and the unembedding. `progress(n)` gets the tokens done."""
    import torch

    match = re.match(r"blocks\.(\d+)\.", hook)
    stop = int(match.group(1)) + 1 if match else None
    if stop is not None and stop >= model.cfg.n_layers:
        stop = None
    pad = getattr(model.tokenizer, "pad_token_id", None) or 0
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out: list[Any] = [None] * len(sequences)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = max(len(sequences[i]) for i in batch)
            tokens = torch.full((len(batch), width), pad, dtype=torch.long)
            for row, i in enumerate(batch):
                tokens[row, :len(sequences[i])] = torch.as_tensor(np.asarray(sequences[i]), dtype=torch.long)
            device = getattr(model.cfg, "device", None) or "cpu"
            _, cache = model.run_with_cache(tokens.to(device), names_filter=[hook], stop_at_layer=stop)
            acts = cache[hook].float().cpu()
            for row, i in enumerate(batch):
                out[i] = acts[row, :len(sequences[i])].clone()
            if progress is not None:
                progress(sum(len(sequences[i]) for i in batch))
    return out
