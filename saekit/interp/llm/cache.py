"""On-disk cache of LLM replies: a rerun, or a restart after a crash, costs no new calls.

One small JSON file per request under `cache_dir/<first two hex digits>/<sha256>.json`; the key is
the sha256 of the JSON of (backend name, messages, sampling parameters). Each file is written to a
temporary name and renamed into place (`os.replace`, atomic on POSIX and Windows), so a crash
mid-write leaves either no entry or a whole one, never a torn file, and concurrent writers of the
same key simply race to an identical result.

Only replies that passed every check (`ChatResult.ok`) are stored. A file holds the reply text and
its token counts, never the API key (which is no part of the key or the request body) and not the
prompt (a reader who wants prompts has them in their own run files).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

CACHE_FORMAT_VERSION = 1


def cache_key(model: str, messages: list[dict[str, str]], sampling: dict[str, Any]) -> str:
    """sha256 hex digest of the canonical JSON of (model, messages, sampling parameters)."""
    payload = json.dumps({"model": model, "messages": messages, "sampling": sampling},
                         sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class ResponseCache:
    """Reply cache in `folder` (created on first write); see the module docstring for the format."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        """The file that holds (or would hold) the entry for `key`."""
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored entry ({"text", "prompt_tokens", "completion_tokens", ...}) or None.

        A missing, unreadable or foreign-format file counts as a miss (the request is made again).
        """
        try:
            entry = json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT_VERSION \
                or not isinstance(entry.get("text"), str):
            return None
        return entry

    def put(self, key: str, text: str, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Store an accepted reply atomically (temporary file + rename)."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"format": CACHE_FORMAT_VERSION, "model": model, "text": text,
                 "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(entry, f, ensure_ascii=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __len__(self) -> int:
        """Number of stored entries."""
        return sum(1 for _ in self.folder.glob("??/*.json")) if self.folder.exists() else 0
