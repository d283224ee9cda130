"""What a run directory holds, found by walking it: SAE folders, latent records, explanations and
scores, match directories, results tables. Only files are read (no model, no SAE weights).

Recognised, at any depth (caches, checkpoints and `shards/` are not entered):

| found | recognised by | read |
|---|---|---|
| SAE folder | `cfg.json` + `sae_weights.safetensors` (or `sae.safetensors`) | its JSON files, training_log.jsonl |
| records directory | `meta.json` whose format is saekit-latent-records | `load_records` (lazily) |
| explanations | `explanations*.jsonl` | rows with `latent`, `method`, `description`, `evidence` |
| scores | `scores*.jsonl` | rows with `latent`, `method`, `scorer`, `score` (bad rows skipped) |
| match directory | `match.json` | the summary, and `latents.parquet`/`latents.csv` |
| results table | a `.csv` whose header has a `variant` column | its rows (`comparison_figure`) |

Explanation and score rows join a records directory by their `records` field, else by the folder
their file is in (the records directory itself, or the folder of an explanations file), else the
only records directory of the run.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saekit.interp.records.format import FORMAT as RECORDS_FORMAT
from saekit.interp.records.format import LatentRecords, load_records

SAE_WEIGHT_FILES = ("sae_weights.safetensors", "sae.safetensors")
SKIPPED_DIRS = {"shards", "checkpoints", "tensorboard", "llm_cache", "__pycache__", "wandb"}


@dataclass
class SaeDir:
    """An SAE folder and the JSON files next to its weights (empty dict / list when absent)."""

    path: Path
    cfg: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RecordsDir:
    """A records directory with the explanation and score rows that name it."""

    path: Path
    records: LatentRecords
    explanations: list[dict[str, Any]] = field(default_factory=list)
    scores: list[dict[str, Any]] = field(default_factory=list)

    @property
    def sae_path(self) -> str:
        return str(self.records.meta.get("sae", ""))


@dataclass
class MatchDir:
    """A match directory: match.json and its per-latent table (None when missing or unreadable)."""

    path: Path
    summary: dict[str, Any]
    table: Any = None


@dataclass
class RunContents:
    """Everything `discover` found under `root`, each list in walk order (sorted paths)."""

    root: Path
    saes: list[SaeDir] = field(default_factory=list)
    records: list[RecordsDir] = field(default_factory=list)
    matches: list[MatchDir] = field(default_factory=list)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # results tables: {path: rows}

    @property
    def roots(self) -> list[Path]:
        """Where a relative path written in one of the run's files may start: the working directory,
        the run directory and its three nearest ancestors (`saekit match runs/x/sae ...` run from the
        repository root writes paths relative to it)."""
        root = self.root.resolve()
        return [Path.cwd(), root, *list(root.parents)[:3]]

    def label(self, path: Path) -> str:
        """A path relative to the run directory, for display."""
        try:
            return str(Path(path).resolve().relative_to(self.root.resolve())) or "."
        except ValueError:
            return str(path)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file's object, or {} (with a warning naming the file) when it cannot be read."""
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError) as error:
        warnings.warn(f"{path}: not readable JSON ({error}); left out of the report")
        return {}


def read_jsonl(path: Path, required: tuple[str, ...] = ("latent",)) -> list[dict[str, Any]]:
    """The JSON-object lines of `path` that hold every key of `required`; other lines are skipped
    (counted in a warning naming the file), so a file still being written reads as far as it goes."""
    rows, bad = [], 0
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        warnings.warn(f"{path}: not readable ({error}); left out of the report")
        return []
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(row, dict) and all(k in row for k in required):
            rows.append(row)
        else:
            bad += 1
    if bad:
        warnings.warn(f"{path}: {bad} line(s) are not JSON objects with {list(required)}; skipped")
    return rows


def _read_sae(path: Path) -> SaeDir:
    log_file = path / "training_log.jsonl"
    return SaeDir(path, read_json(path / "cfg.json"),
                  read_json(path / "metrics.json") if (path / "metrics.json").is_file() else {},
                  read_json(path / "eval.json") if (path / "eval.json").is_file() else {},
                  read_jsonl(log_file, ("step",)) if log_file.is_file() else [])


def _read_match(path: Path) -> MatchDir:
    summary = read_json(path / "match.json")
    table = None
    for name in ("latents.parquet", "latents.csv"):
        if (path / name).is_file():
            import pandas as pd

            try:
                table = pd.read_parquet(path / name) if name.endswith(".parquet") else pd.read_csv(path / name)
            except Exception as error:  # a damaged table: the summary still shows
                warnings.warn(f"{path / name}: not readable ({error}); partners left out")
            break
    return MatchDir(path, summary, table)


def _results_table(path: Path) -> list[dict[str, Any]] | None:
    """A CSV's rows when its header names a `variant` column (checked on the first line only)."""
    try:
        with path.open() as f:
            header = f.readline()
    except OSError:
        return None
    if "variant" not in [h.strip().strip('"') for h in header.split(",")]:
        return None
    import pandas as pd

    return pd.read_csv(path).to_dict("records")


def is_records_dir(path: Path) -> bool:
    meta = path / "meta.json"
    if not meta.is_file():
        return False
    return read_json(meta).get("format") == RECORDS_FORMAT


def discover(root: str | Path) -> RunContents:
    """Walk `root` and read what it holds (see the module docstring); FileNotFoundError when it
    does not exist."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such run directory")
    found = RunContents(root)
    explanation_files: list[Path] = []
    score_files: list[Path] = []
    for folder, dirnames, filenames in os.walk(root):
        here = Path(folder)
        if "manifest.json" in filenames:  # an activation cache: nothing for the report inside
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS and not d.startswith("."))
        names = set(filenames)
        if "cfg.json" in names and names & set(SAE_WEIGHT_FILES):
            found.saes.append(_read_sae(here))
        if "meta.json" in names and is_records_dir(here):
            try:
                found.records.append(RecordsDir(here, load_records(here)))
            except (OSError, ValueError, KeyError) as error:  # e.g. a collect still running
                warnings.warn(f"{here}: records not readable ({error}); left out of the report")
        if "match.json" in names:
            match = _read_match(here)
            if match.summary.get("pairs"):
                found.matches.append(match)
        for name in sorted(names):
            if name.startswith("explanations") and name.endswith(".jsonl"):
                explanation_files.append(here / name)
            elif name.startswith("scores") and name.endswith(".jsonl"):
                score_files.append(here / name)
            elif name.endswith(".csv") and not name.startswith("latents"):
                rows = _results_table(here / name)
                if rows:
                    found.tables[found.label(here / name)] = rows
    _attach(found, explanation_files, score_files)
    return found


def _attach(found: RunContents, explanation_files: list[Path], score_files: list[Path]) -> None:
    """Give each explanation and score row to its records directory (see the module docstring)."""
    by_path = {rec.path.resolve(): rec for rec in found.records}
    folder_owner: dict[Path, RecordsDir] = {}

    def owner(row: dict[str, Any], file: Path) -> RecordsDir | None:
        named = row.get("records")
        if named:
            for candidate in (Path(named), found.root / named):
                if candidate.resolve() in by_path:
                    return by_path[candidate.resolve()]
        folder = file.parent.resolve()
        if folder in by_path:
            return by_path[folder]
        if folder in folder_owner:
            return folder_owner[folder]
        return found.records[0] if len(found.records) == 1 else None

    # explanations first: a scores file next to an explanations file joins the same records
    for files, required, kind in ((explanation_files, ("latent", "method"), "explanations"),
                                  (score_files, ("latent", "score"), "scores")):
        for file in files:
            for row in read_jsonl(file, required):
                rec = owner(row, file)
                if rec is None:
                    warnings.warn(f"{file}: no records directory for its rows; left out of the report")
                    break
                getattr(rec, kind).append(row)
                folder_owner.setdefault(file.parent.resolve(), rec)
