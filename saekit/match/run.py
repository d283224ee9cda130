"""`saekit match SAE_A SAE_B [SAE_C ...]`: how many latents SAEs trained with different seeds share.

`match_saes(config)` is the whole run:
1. load the SAEs (anything `saekit.sae.load_sae` reads: saekit, SAELens and sparsify folders,
   registry and hub ids) and check them: same d_in (else an error naming both), same hook point
   (else an error, or a warning with `force`). Hook names come from each SAE's config, or from
   `hookpoint` for an SAE whose config names none (a sparsify folder without `hook_name`), never
   from a folder's name; they are compared only between SAEs that declare one, and the summary
   (`hook_check`) says when they were not compared;
2. match every pair (i < j) with `pair.match_pair` (exact or scalable assignment, see assign.py);
3. optionally, over the same held-out tokens of a cache: each latent's frequency and the activation
   correlation of matched latents (activations.py); otherwise frequencies come from each SAE's
   eval.json when it holds a per-latent `latent_frequency`;
4. autointerp scores when a score file exists (one per SAE);
5. write the match directory:

    OUT/match.json      format_version, config, the SAEs, per pair the summary (summary.py),
                        seeds: the pairwise matrix and SAE 0's latents shared with every other SAE
    OUT/latents.parquet one row per (pair, side, latent) (report.py), or latents.csv
    OUT/report.html     histograms, threshold curves and the matrix (self-contained plotly)
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saekit.config import config_to_dict, doc
from saekit.data.cache import resolve_device
from saekit.files import write_json_atomic
from saekit.match.assign import METHODS
from saekit.match.pair import PairMatch, match_pair
from saekit.match.report import latent_table, write_report_html, write_table
from saekit.match.summary import by_shared, pair_summary, seed_summary
from saekit.sae import SAE
from saekit.sae.formats import load_sae, output_dir_for, parse_source
from saekit.sae.io import CFG_FILENAME, WEIGHTS_FILENAME
from saekit.sae.sparsify_format import SPARSIFY_WEIGHTS, is_sparsify_cfg, tl_hook_name

FORMAT_VERSION = 1
SUMMARY_FILE = "match.json"
REPORT_FILE = "report.html"
SCORES_FILE = "autointerp_scores.json"


@dataclass
class MatchConfig:
    """What `saekit match` compares, how it assigns, and what it writes."""

    saes: list[str] = doc("SAE folders to match (two or more; the first is the reference)", default_factory=list)
    out: str = doc("match directory to write", "runs/match")
    threshold: float = doc("a latent is shared when both matched cosines are >= this (Paulo & Belrose: 0.7)", 0.7)
    method: str = doc("assignment: auto (exact up to exact_max latents, else sparse) | exact | sparse", "auto")
    exact_max: int = doc("auto: largest SAE width solved with the dense exact assignment", 8192)
    candidates: int = doc("sparse: cosines kept per latent for the first matching graph", 16)
    block_rows: int = doc("rows of the cosine matrix computed at once", 4096)
    device: str = doc("where cosines are computed: auto | cpu | cuda", "auto")
    hookpoint: str = doc("hook point of SAEs whose config names none (sparsify folders without hook_name; a "
                         "sparsify module name such as layers.6 or a TransformerLens hook), and which SAE of a "
                         "sparsify multi-hookpoint checkpoint ('' = from each SAE's config)", "")
    force: bool = doc("match SAEs trained on different hook points (warns instead of failing)", False)
    cache: str = doc("activation cache: latent frequencies and activation correlation of matched latents "
                     "('' = skip)", "")
    n_tokens: int = doc("cache tokens for frequencies and correlations (its last, held-out contexts)", 100_000)
    batch_size: int = doc("tokens per batch when reading the cache", 1024)
    scores: list[str] = doc(f"autointerp score file per SAE ('' = <sae>/{SCORES_FILE} if present): JSON "
                            "{latent: score} or a list, or CSV with latent,score columns", default_factory=list)
    table_format: str = doc("per-latent table: parquet | csv", "parquet")
    figures: bool = doc(f"write {REPORT_FILE}", True)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"MatchConfig.method must be one of {METHODS}, got {self.method!r}")
        if self.table_format not in ("parquet", "csv"):
            raise ValueError(f"MatchConfig.table_format must be parquet or csv, got {self.table_format!r}")
        if not -1 <= self.threshold <= 1:
            raise ValueError(f"MatchConfig.threshold is a cosine, in [-1, 1]; got {self.threshold}")
        for name in ("exact_max", "candidates", "block_rows", "n_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"MatchConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.scores and len(self.scores) != len(self.saes):
            raise ValueError(f"MatchConfig.scores lists {len(self.scores)} files for {len(self.saes)} SAEs")


def _standalone_sparsify_cfg(source: str) -> dict[str, Any] | None:
    """The cfg.json of `source` when it is one local sparsify SAE folder (not a checkpoint of several), else None."""
    try:
        kind, location, _ = parse_source(str(source))
    except (FileNotFoundError, ValueError):
        return None  # load_sae names the problem
    folder = Path(location)
    if kind != "dir" or not (folder / CFG_FILENAME).is_file():
        return None
    try:
        raw = json.loads((folder / CFG_FILENAME).read_text())
    except json.JSONDecodeError:
        return None  # load_sae names the problem
    sparsify = (folder / SPARSIFY_WEIGHTS).is_file() and not (folder / WEIGHTS_FILENAME).is_file()
    return raw if isinstance(raw, dict) and (sparsify or is_sparsify_cfg(raw)) else None


def load_declared(source: str, hookpoint: str = "") -> SAE:
    """`load_sae(source)` with cfg.hook_name the hook the SAE declares: its config's (for a sparsify
    folder, cfg.json's `hook_name`; in a multi-hookpoint checkpoint, the one `hookpoint` selects),
    else `hookpoint` (mapped to a TransformerLens hook), else ''. A folder's name is never used."""
    sparsify_cfg = _standalone_sparsify_cfg(source)
    standalone = sparsify_cfg is not None or Path(str(source)).expanduser().joinpath(CFG_FILENAME).is_file()
    # a standalone folder holds one SAE: hookpoint names its hook, it does not select it
    sae = load_sae(source, hookpoint=None if standalone or not hookpoint else hookpoint)
    declared = (sparsify_cfg.get("hook_name") or "") if sparsify_cfg is not None else sae.cfg.hook_name
    given = tl_hook_name(hookpoint, warn=False) if hookpoint else ""
    if declared and given and declared != given:
        raise ValueError(f"{source} declares hook {declared!r}; --hookpoint {hookpoint!r} ({given!r}) disagrees")
    sae.cfg = dataclasses.replace(sae.cfg, hook_name=declared or given)
    return sae


def load_saes(paths: list[str], force: bool = False, hookpoint: str = "") -> list[SAE]:
    """The SAEs at `paths` (anything `load_sae` reads), checked for a common d_in and, between those
    that declare one, hook point (see the module docstring); an SAE declaring none has hook_name ''."""
    if len(paths) < 2:
        raise ValueError(f"saekit match needs at least two SAE folders, got {len(paths)}")
    saes = [load_declared(path, hookpoint) for path in paths]
    first = saes[0].cfg
    for path, sae in zip(paths[1:], saes[1:]):
        if sae.cfg.d_in != first.d_in:
            raise ValueError(f"cannot match SAEs of different d_in: {paths[0]} has d_in {first.d_in}, "
                             f"{path} has d_in {sae.cfg.d_in}")
    declared = [(path, sae.cfg.hook_name) for path, sae in zip(paths, saes) if sae.cfg.hook_name]
    for path, hook in declared[1:]:
        if hook != declared[0][1]:
            message = (f"SAEs of different hook points: {declared[0][0]} reads {declared[0][1]!r}, "
                       f"{path} reads {hook!r}")
            if not force:
                raise ValueError(message + "; pass force=True (--force true) to match them anyway")
            warnings.warn(message + " (matched anyway: force=True)")
    return saes


def hook_check(paths: list[str], saes: list[SAE]) -> dict[str, Any]:
    """Whether hook points were compared: {"compared": bool, "undeclared": [paths], "note": str}."""
    undeclared = [str(path) for path, sae in zip(paths, saes) if not sae.cfg.hook_name]
    if not undeclared:
        return {"compared": True, "undeclared": [], "note": "hook points compared: all SAEs declare one"}
    return {"compared": False, "undeclared": undeclared,
            "note": f"hook points not compared for {', '.join(undeclared)}: no hook name in the SAE's config "
                    "(pass --hookpoint to name it)"}


def read_scores(path: str | Path, d_sae: int) -> np.ndarray:
    """[d_sae] autointerp scores from a JSON ({latent: score}, {"scores": ...} or a list) or CSV file; NaN where missing."""
    path = Path(path)
    out = np.full(d_sae, np.nan)
    if path.suffix == ".csv":
        import pandas as pd

        table = pd.read_csv(path)
        if not {"latent", "score"} <= set(table.columns):
            raise ValueError(f"{path}: a score CSV needs columns latent and score, has {list(table.columns)}")
        items = zip(table["latent"], table["score"])
    else:
        raw = json.loads(path.read_text())
        raw = raw.get("scores", raw) if isinstance(raw, dict) else raw
        items = raw.items() if isinstance(raw, dict) else enumerate(raw)
    for latent, score in items:
        latent = int(latent)
        if not 0 <= latent < d_sae:
            raise ValueError(f"{path}: latent {latent} is outside the SAE's {d_sae} latents")
        out[latent] = math.nan if score is None else float(score)
    return out


def _scores(config: MatchConfig, saes: list[SAE]) -> list[np.ndarray | None]:
    found: list[np.ndarray | None] = []
    for k, (path, sae) in enumerate(zip(config.saes, saes)):
        given = config.scores[k] if config.scores else ""
        file = Path(given) if given else output_dir_for(path, config.hookpoint or None) / SCORES_FILE
        if given and not file.is_file():
            raise FileNotFoundError(f"MatchConfig.scores[{k}]: {file} not found")
        found.append(read_scores(file, sae.cfg.d_sae) if file.is_file() else None)
    return found


def _eval_frequency(path: str, d_sae: int, hookpoint: str = "") -> np.ndarray | None:
    """The per-latent frequency of <sae>/eval.json, when it holds one (`latent_frequency`)."""
    file = output_dir_for(path, hookpoint or None) / "eval.json"
    if not file.is_file():
        return None
    values = json.loads(file.read_text()).get("latent_frequency")
    return np.asarray(values, dtype=np.float64) if values is not None and len(values) == d_sae else None


def _sae_info(k: int, path: str, sae: SAE) -> dict[str, Any]:
    cfg = sae.cfg
    return {"index": k, "name": f"{k}:{Path(path).name}", "path": str(path), "hook_name": cfg.hook_name or None,
            "architecture": cfg.architecture, "d_in": cfg.d_in, "d_sae": cfg.d_sae,
            "k": cfg.k if cfg.is_sparse else None, "seed": cfg.seed}


def match_saes(config: MatchConfig, progress: bool = True) -> dict[str, Any]:
    """Run the match described by `config` (see the module docstring); returns the summary it writes."""
    started = time.time()
    saes = load_saes(config.saes, config.force, config.hookpoint)
    hooks = hook_check(config.saes, saes)
    if progress and not hooks["compared"]:
        print(f"[match] {hooks['note']}")
    if config.cache and not hooks["compared"]:
        raise ValueError(f"MatchConfig.cache: {hooks['undeclared']} name no hook point to read from the cache; "
                         "pass hookpoint (--hookpoint)")
    device = resolve_device(config.device)
    pairs: dict[tuple[int, int], PairMatch] = {}
    for i in range(len(saes)):
        for j in range(i + 1, len(saes)):
            pairs[(i, j)] = match_pair(saes[i], saes[j], method=config.method, exact_max=config.exact_max,
                                       candidates=config.candidates, block_rows=config.block_rows, device=device)
            if progress:
                print(f"[match] {i}-{j}: {pairs[(i, j)].n_shared(config.threshold)} shared latents")
    correlations: dict[tuple[int, int], np.ndarray] = {}
    if config.cache:
        from saekit.match.activations import activation_stats

        frequencies, correlations = activation_stats(saes, pairs, config.cache, config.n_tokens,
                                                     config.batch_size, device)
    else:
        frequencies = [_eval_frequency(path, sae.cfg.d_sae, config.hookpoint)
                       for path, sae in zip(config.saes, saes)]
    scores = _scores(config, saes)

    summary: dict[str, Any] = {"format_version": FORMAT_VERSION, "config": config_to_dict(config),
                               "saes": [_sae_info(k, p, s) for k, (p, s) in enumerate(zip(config.saes, saes))],
                               "hook_check": hooks, "pairs": {}}
    for (i, j), pair in pairs.items():
        entry = pair_summary(pair, config.threshold)
        shared = pair.small.shared(config.threshold)
        small_index = j if pair.swapped else i
        if (i, j) in correlations:
            entry["activation_corr"] = by_shared(correlations[(i, j)], shared)
        if frequencies[small_index] is not None:
            with np.errstate(divide="ignore"):
                log_freq = np.log10(frequencies[small_index])
            entry["mean_log10_frequency"] = by_shared(np.where(np.isfinite(log_freq), log_freq, np.nan), shared)
            entry["dead_fraction"] = by_shared((frequencies[small_index] == 0).astype(float), shared)
        if scores[small_index] is not None:
            entry["autointerp_score"] = by_shared(scores[small_index], shared)
        summary["pairs"][f"{i}-{j}"] = entry
    summary["seeds"] = seed_summary(len(saes), pairs, config.threshold)
    summary["seconds"] = round(time.time() - started, 2)

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    table = latent_table(pairs, config.threshold, frequencies, scores, correlations)
    write_table(table, out, config.table_format)
    if config.figures:
        write_report_html(summary, out / REPORT_FILE)
    summary = _json_safe(summary)
    write_json_atomic(out / SUMMARY_FILE, summary)
    return summary


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, so match.json is strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def load_match(out: str | Path) -> dict[str, Any]:
    """The summary of a match directory (match.json), checked for its format version."""
    path = Path(out) / SUMMARY_FILE
    summary = json.loads(path.read_text())
    if summary.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {summary['format_version']} is newer than this saekit reads "
                         f"({FORMAT_VERSION})")
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """Human-readable lines of a match summary (what `saekit match` prints)."""
    threshold = summary["config"]["threshold"]
    lines = []
    for name, pair in summary["pairs"].items():
        lines.append(f"pair {name}: {pair['n_shared']} latents shared at cosine >= {threshold} "
                     f"(fraction {pair['fraction_shared']:.3f} of the smaller SAE; a {pair['fraction_shared_a']:.3f}, "
                     f"b {pair['fraction_shared_b']:.3f}); mean matched cosine decoder "
                     f"{pair['decoder']['mean_matched_cos']:.3f}, encoder {pair['encoder']['mean_matched_cos']:.3f}")
    if not summary.get("hook_check", {"compared": True})["compared"]:
        lines.append(summary["hook_check"]["note"])
    if len(summary["saes"]) > 2:
        ref = summary["seeds"]["reference"]
        lines.append(f"SAE 0: {ref['fraction_shared_with_all']:.3f} of its latents shared with every other SAE, "
                     f"{ref['fraction_shared_with_none']:.3f} with none")
    return lines
