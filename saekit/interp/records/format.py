"""The latent-records directory that `saekit collect` writes and explain and score read.

    records/meta.json                   format, version, SAE, cache, token range, config, counts
    records/latents.parquet             one row per recorded latent: frequency, mean and max activation, ...
    records/examples_00000.safetensors  the example windows of a chunk of latents (`latent_chunk` per file)

An examples file holds, for its `c` latents (`latents` int64 [c]) and each kind of example:

    <kind>/tokens   int32   [c, slots, window]  token ids of the window (0 in empty slots)
    <kind>/acts     float32 [c, slots, window]  the latent's activation at every token (activating kinds)
    <kind>/context  int32   [c, slots]          global context index in the cache (-1: empty slot)
    <kind>/start    int32   [c, slots]          first position of the window in its context
    <kind>/anchor   int32   [c, slots]          the position the window was placed around (max token)
    <kind>/value    float32 [c, slots]          the latent's max activation in the context (top) or window
    <kind>/quantile int8    [c, slots]          explain/test: quantile bin, 0 = strongest (delphi's order)

Kinds: `top` (the strongest contexts, strongest first, one window per context around its max),
`explain` and `test` (delphi's samples of activating windows from activation quantiles; `value` is
the window's max), `random` (random windows where the latent is zero on every token) and `hard`
(contexts holding the latent's top tokens where it never fires). Negative kinds have no `acts` or
`value` tensors: the latent is zero on every token of their windows by construction.

Everything is safetensors, parquet and JSON (no pickle); `load_records` opens the files lazily and
reads one latent's rows at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "saekit-latent-records"
FORMAT_VERSION = 2  # 2: quantile examples and random negatives are windows, not contexts
META_FILE = "meta.json"
TABLE_FILE = "latents.parquet"
ACTIVATING_KINDS = ("top", "explain", "test")
NEGATIVE_KINDS = ("random", "hard")
KINDS = ACTIVATING_KINDS + NEGATIVE_KINDS


def examples_file(index: int) -> str:
    return f"examples_{index:05d}.safetensors"


@dataclass
class Example:
    """One example window of one latent.

    tokens [window] token ids; acts [window] the latent's activation at each (zeros for negatives);
    context: global context index in the cache; start: window's first position in the context;
    anchor: position (in the context) the window was placed around; value: the latent's max
    activation over the context; quantile: bin of explain/test examples (0 = strongest), else -1.
    """

    kind: str
    tokens: np.ndarray
    acts: np.ndarray
    context: int
    start: int
    anchor: int
    value: float = 0.0
    quantile: int = -1

    @property
    def max_act(self) -> float:
        """The largest activation inside the window."""
        return float(self.acts.max()) if len(self.acts) else 0.0

    @property
    def anchor_in_window(self) -> int:
        return self.anchor - self.start


@dataclass
class LatentRecords:
    """A records directory, opened lazily: per-latent stats in `table`, examples read on demand."""

    path: Path
    meta: dict[str, Any]
    table: Any  # pandas.DataFrame, one row per latent (index: latent id)
    _chunk_of: dict[int, tuple[int, int]] = field(default_factory=dict)
    _handles: dict[int, Any] = field(default_factory=dict)

    @property
    def latents(self) -> list[int]:
        """The recorded latent ids, in the order they were recorded."""
        return [int(i) for i in self.table.index]

    @property
    def hook_name(self) -> str:
        return self.meta["hook_name"]

    def stats(self, latent: int) -> dict[str, Any]:
        """The latent's row of latents.parquet as a dict (frequency, mean/max activation, counts)."""
        self._check(latent)
        def plain(value: Any) -> Any:
            if isinstance(value, np.ndarray):
                return value.tolist()
            return value.item() if hasattr(value, "item") else value
        return {k: plain(v) for k, v in self.table.loc[latent].items()}

    def _check(self, latent: int) -> None:
        if latent not in self._chunk_of:
            raise KeyError(f"{self.path}: latent {latent} was not recorded "
                           f"({len(self._chunk_of)} latents, e.g. {self.latents[:5]})")

    def _handle(self, chunk: int) -> Any:
        from safetensors import safe_open

        if chunk not in self._handles:
            self._handles[chunk] = safe_open(str(self.path / examples_file(chunk)), framework="numpy")
        return self._handles[chunk]

    def examples(self, latent: int, kind: str) -> list[Example]:
        """The latent's examples of one kind (empty slots left out), in stored order."""
        if kind not in KINDS:
            raise ValueError(f"unknown example kind {kind!r}; use one of {KINDS}")
        self._check(latent)
        chunk, row = self._chunk_of[latent]
        handle = self._handle(chunk)
        if f"{kind}/context" not in handle.keys():
            return []
        read = lambda name: handle.get_slice(f"{kind}/{name}")[row]  # noqa: E731
        context, start, anchor, tokens = read("context"), read("start"), read("anchor"), read("tokens")
        activating = kind in ACTIVATING_KINDS
        acts = read("acts") if activating else np.zeros(tokens.shape, dtype=np.float32)
        values = read("value") if activating else np.zeros(len(context), dtype=np.float32)
        quantiles = read("quantile") if kind in ("explain", "test") else np.full(len(context), -1)
        return [Example(kind, tokens[i].astype(np.int64), acts[i].astype(np.float32), int(context[i]),
                        int(start[i]), int(anchor[i]), float(values[i]), int(quantiles[i]))
                for i in range(len(context)) if context[i] >= 0]


def load_records(path: str | Path) -> LatentRecords:
    """Open a records directory written by `saekit collect` (errors name the file)."""
    import pandas as pd

    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: no records metadata; run `saekit collect` first")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{meta_path}: format_version {meta['format_version']} is newer than this saekit "
                         f"reads ({FORMAT_VERSION})")
    table_path = path / TABLE_FILE
    if not table_path.exists():
        raise FileNotFoundError(f"{table_path}: missing latent table")
    table = pd.read_parquet(table_path).set_index("latent", drop=False)
    chunk_of: dict[int, tuple[int, int]] = {}
    size = meta["latent_chunk"]
    for position, latent in enumerate(table["latent"].tolist()):
        chunk_of[int(latent)] = (position // size, position % size)
    for chunk in range(meta["n_chunks"]):
        if not (path / examples_file(chunk)).exists():
            raise FileNotFoundError(f"{path / examples_file(chunk)}: missing examples file")
    return LatentRecords(path, meta, table, chunk_of)
