"""Byte-level BPE tokenizers for saekit's own small models, and their TransformerLens wrapper.

`train_bpe_tokenizer` trains a GPT-2-style byte-level BPE (`tokenizers` library) whose single special
token `<|endoftext|>` has id 0 and serves as BOS, EOS, separator and padding. `wrap_tokenizer` turns
it into the `transformers.PreTrainedTokenizerFast` that `HookedTransformer.set_tokenizer` accepts.

Convention (the same as TransformerLens gives GPT-2 and Pythia): the *wrapped* tokenizer prepends BOS
when `add_special_tokens=True` (its default), so `model.to_tokens(text)` starts with BOS and
`tokenizer(texts, add_special_tokens=False)` gives the bare ids that `saekit.corpus.pack_contexts`
packs. The raw `tokenizers.Tokenizer` (as trained and as saved in `tokenizer.json`) never adds
special tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

BOS_TOKEN = "<|endoftext|>"
"""The one special token: BOS, EOS, document separator and padding, always id 0."""
BOS_TOKEN_ID = 0


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE tokenizer on `texts` (deterministic for the same texts in the same order).

    The vocabulary holds `<|endoftext|>` (id 0), the 256 byte symbols and up to
    `vocab_size - 257` merges (fewer when the texts run out of pairs seen `min_frequency` times),
    so `get_vocab_size() <= vocab_size`. No normalizer: every string round-trips exactly.
    """
    if vocab_size < 258:
        raise ValueError(f"vocab_size must be >= 258 (1 special + 256 bytes + 1 merge), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[BOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    assert tok.token_to_id(BOS_TOKEN) == BOS_TOKEN_ID
    return tok


def wrap_tokenizer(tok: Tokenizer, name_or_path: str = "saekit-bpe") -> PreTrainedTokenizerFast:
    """A `PreTrainedTokenizerFast` around a copy of `tok`, ready for `HookedTransformer.set_tokenizer`.

    bos/eos/pad are `<|endoftext|>` (id 0); `add_bos_token=True`, so encoding with special tokens
    prepends BOS (TransformerLens then keeps the tokenizer as is instead of reloading it from the
    hub by `name_or_path`). `name_or_path` is only a label (the folder it was read from, say).
    """
    if tok.token_to_id(BOS_TOKEN) != BOS_TOKEN_ID:
        raise ValueError(f"tokenizer must have {BOS_TOKEN!r} as id {BOS_TOKEN_ID}")
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tok.to_str()),
        bos_token=BOS_TOKEN,
        eos_token=BOS_TOKEN,
        pad_token=BOS_TOKEN,
        add_bos_token=True,
        add_eos_token=False,
        name_or_path=name_or_path,
    )


def raw_tokenizer(tokenizer: Tokenizer | PreTrainedTokenizerFast) -> Tokenizer:
    """The bare `tokenizers.Tokenizer` (a copy, without the BOS-adding post-processor) of either kind."""
    if isinstance(tokenizer, Tokenizer):
        return Tokenizer.from_str(tokenizer.to_str())
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise TypeError(f"expected a tokenizers.Tokenizer or PreTrainedTokenizerFast, got {type(tokenizer)}")
    tok = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    if getattr(tokenizer, "add_bos_token", False) or getattr(tokenizer, "add_eos_token", False):
        tok.post_processor = None  # the one transformers added for add_bos_token
    return tok


def read_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Read a `tokenizer.json` (or the one inside a folder) and wrap it, labelled with its folder."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"{file}: no tokenizer.json")
    return wrap_tokenizer(Tokenizer.from_file(str(file)), name_or_path=str(file.parent))
