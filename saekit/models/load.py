"""Load a transformer as trained or as one of Heap et al.'s (2025) randomised controls.

Sources for `load_model`:
- a TransformerLens official name ("pythia-70m-deduped", "gpt2"): `from_pretrained_no_processing`,
  i.e. the hub weights as published (no LayerNorm folding or weight centring, so the "random"
  variants below re-draw the same parameters the original model has);
- a `HookedTransformerConfig`: a model built with that config's `seed`, which plays "trained";
- a local folder in saekit's format (see `save_model_dir`), such as the one `train_tiny_lm` writes;
- `"saekit-tiny-lm"`: the default tiny LM (`ensure_tiny_lm()`, trained on first use).

What each variant in `INIT_VARIANTS` re-draws (parameter names as TransformerLens gives them):

- `trained`: nothing re-drawn.
- `random`: every parameter re-drawn as `HookedTransformer(cfg)` with `cfg.seed = seed` initialises:
  each `W_*` from the init scheme (`cfg.init_mode`, GPT-2 style N(0, `cfg.initializer_range`^2) by
  default), each bias (`b_*`, LayerNorm `b`) set to 0, each LayerNorm scale `w` set to 1.
  Kept: buffers only (causal masks, rotary tables).
- `random-keep-embeddings`: as `random`, but `embed.W_E`, `pos_embed.W_pos`, `unembed.W_U` and
  `unembed.b_U` (those the model has) are copied from trained.
- `step0`: every parameter replaced by the step-0 checkpoint (the hub's `checkpoint_value=0`, or a
  local folder's `step0/model.safetensors`). Kept: buffers.
- `gaussian-embeddings`: no parameter re-drawn; the output of `model.embed` (the token embedding,
  [batch, pos, d_model]) is replaced by i.i.d. N(0, 1) noise. The positional embedding is still
  added, and every weight and buffer is the trained one (`embed.W_E` is simply unused).

`redrawn_parameters(model, init)` gives the re-drawn parameter names as a set. The Gaussian noise of a
context depends only on (`seed`, that context's token ids), never on its batch, so an activation
cache of this variant is exactly reproducible. (Incremental decoding with a KV cache feeds `embed`
one position at a time and so sees different noise: use full-context forward passes.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerBase

from saekit.hub import HubError, hub_error_message, hub_token  # noqa: F401 (re-exported)
from saekit.files import file_sha256
from saekit.models.folder import (  # noqa: F401 (re-exported: the folder format was defined here)
    CONFIG_FILE, FORMAT_VERSION, STEP0_DIR, TOKENIZER_FILE, WEIGHTS_FILE, _preserved_rng, _write_atomic,
    config_from_json_dict, config_to_json_dict, is_model_dir, save_model_dir, save_state_dict)
from saekit.models.gguf import HF_TOKENIZER_DIR, PACKAGED_MODELS, gguf_model_dir, is_gguf_source
from saekit.models.processing import process_model, processing_flags
from saekit.models.tokenizer import read_tokenizer

INIT_VARIANTS = ("trained", "random", "random-keep-embeddings", "step0", "gaussian-embeddings")
INIT_VARIANT_DOCS = {
    "trained": "no tensor re-drawn",
    "random": "all parameters re-drawn by the init scheme (W_* random, biases 0, LayerNorm w 1); buffers kept",
    "random-keep-embeddings": "as random, but embed.W_E, pos_embed.W_pos, unembed.W_U, unembed.b_U kept",
    "step0": "all parameters from the step-0 checkpoint; buffers kept",
    "gaussian-embeddings": "no parameter changed; embed output replaced by N(0, 1) noise seeded per context",
}
"""One line per variant, for manifests and CLI help (the module docstring has the details)."""
KEPT_EMBEDDING_PARAMS = ("embed.W_E", "pos_embed.W_pos", "unembed.W_U", "unembed.b_U")
"""Parameters `random-keep-embeddings` copies from trained (those the model has)."""
GAUSSIAN_EMBEDDING_STD = 1.0
TINY_LM_NAME = "saekit-tiny-lm"


def _check_init(init: str) -> None:
    if init not in INIT_VARIANTS:
        raise ValueError(f"unknown init {init!r}; valid variants: {', '.join(INIT_VARIANTS)}")


def redrawn_parameters(model: torch.nn.Module, init: str) -> set[str]:
    """Names of the parameters of `model` that variant `init` re-draws (see the module's table)."""
    _check_init(init)
    names = {name for name, _ in model.named_parameters()}
    if init in ("trained", "gaussian-embeddings"):
        return set()
    if init == "random-keep-embeddings":
        return names - set(KEPT_EMBEDDING_PARAMS)
    return names


# ---------------------------------------------------------------------------- building models


def _build(cfg: HookedTransformerConfig, tokenizer: PreTrainedTokenizerBase | None,
           init_weights: bool, seed: int | None = None) -> HookedTransformer:
    """A HookedTransformer for `cfg`, weights drawn on CPU (same draw on any device) when asked."""
    changes: dict[str, Any] = {"init_weights": init_weights}
    if seed is not None:
        changes["seed"] = seed
    if tokenizer is not None:
        changes["tokenizer_name"] = None  # set below; TL would fetch it from the hub otherwise
    with _preserved_rng():
        model = HookedTransformer(dataclasses.replace(cfg, **changes))
    model.cfg.tokenizer_name, model.cfg.init_weights = cfg.tokenizer_name, True
    if tokenizer is not None:
        model.set_tokenizer(tokenizer)
    return model


def _load_weights(model: HookedTransformer, file: Path, names: tuple[str, ...] | None = None) -> None:
    """Load every parameter of `model` (or only `names`) from a safetensors file of `save_state_dict`.

    The loaded tensors replace the model's (`assign=True`), so no second copy of the weights stays
    in memory.
    """
    state = load_file(str(file))
    params = dict(model.named_parameters())
    if names is not None:
        state = {k: v for k, v in state.items() if k in names}
        params = {k: v for k, v in params.items() if k in names}
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(f"{file}: does not fit the config: missing {missing}, unexpected {unexpected}")
    state = {k: v.to(device=params[k].device, dtype=params[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)


def _randomised(trained: HookedTransformer, seed: int, keep_embeddings: bool) -> HookedTransformer:
    """`random` / `random-keep-embeddings` of `trained` (see the module's table)."""
    if trained.cfg.seed == seed:
        warnings.warn(f"random init with seed={seed}, the seed the model itself was initialised with: "
                      "this re-draws its own initial (step-0) weights; pass another seed for a fresh draw")
    model = _build(trained.cfg, trained.tokenizer, init_weights=True, seed=seed)
    params = dict(trained.named_parameters())
    with torch.no_grad():
        for name, buf in trained.named_buffers():
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            if attr in module._buffers:
                module._buffers[attr] = buf.clone()
        if keep_embeddings:
            for name in KEPT_EMBEDDING_PARAMS:
                if name in params:
                    model.get_parameter(name).copy_(params[name])
    return model


def _row_seed(seed: int, row: torch.Tensor) -> int:
    """A 63-bit seed from (seed, the row's token ids), stable across processes and machines."""
    data = seed.to_bytes(8, "little", signed=True) + row.to(torch.int64).numpy().tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def add_gaussian_embedding_noise(model: HookedTransformer, seed: int,
                                 std: float = GAUSSIAN_EMBEDDING_STD) -> torch.utils.hooks.RemovableHandle:
    """Replace `model.embed`'s output [batch, pos, d_model] by N(0, std^2) noise, per row of tokens.

    Row b of tokens [batch, pos] gets noise from a CPU `torch.Generator` seeded by
    `_row_seed(seed, tokens[b])`: the same tokens give the same noise in any batch, on any device.
    A module forward hook, so `model.reset_hooks()` keeps it; `.remove()` the returned handle to undo.
    """
    def replace_with_noise(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        tokens = args[0].detach().cpu()
        noise = torch.empty(output.shape, dtype=torch.float32)
        for b, row in enumerate(tokens):
            generator = torch.Generator().manual_seed(_row_seed(seed, row))
            noise[b] = torch.randn(output.shape[1:], generator=generator) * std
        return noise.to(device=output.device, dtype=output.dtype)

    return model.embed.register_forward_hook(replace_with_noise)


def step0_revision(official_name: str) -> str | None:
    """The hub revision (git branch) holding the step-0 checkpoint of a TransformerLens official model:
    `step0` for Pythia, `checkpoint-0` for stanford-crfm GPT-2; None for NeelNanda's models (their
    checkpoints are files on main, which TransformerLens downloads itself)."""
    if official_name.startswith("EleutherAI/pythia"):
        return "step0"
    if official_name.startswith("stanford-crfm/"):
        return "checkpoint-0"
    return None


def _hub_model(name: str, init: str, device: str, dtype: torch.dtype) -> tuple[HookedTransformer, str | None]:
    """(the TransformerLens model `name` as `init` from the hub, the hub revision its weights came from)."""
    if init != "step0":
        return HookedTransformer.from_pretrained_no_processing(name, device=device, dtype=dtype), None
    from transformer_lens.loading_from_pretrained import get_checkpoint_labels, get_official_model_name

    try:
        labels, _ = get_checkpoint_labels(name)
    except ValueError as e:
        raise ValueError(f"init='step0': {name} has no training checkpoints that TransformerLens can "
                         f"load (Pythia, stanford-crfm GPT-2 and NeelNanda models do): {e}") from None
    if 0 not in labels:
        raise ValueError(f"init='step0': {name} has no step-0 checkpoint (first: {labels[0]})")
    official = get_official_model_name(name)
    revision = step0_revision(official)
    if revision is None:
        return HookedTransformer.from_pretrained_no_processing(name, checkpoint_value=0, device=device,
                                                               dtype=dtype), None
    # The weights of the revision are loaded here and handed over: TransformerLens's own checkpoint path
    # sends token="" for Pythia when HF_TOKEN is unset, an 'Authorization: Bearer ' header httpx refuses.
    from transformers import AutoModelForCausalLM

    hf_model = AutoModelForCausalLM.from_pretrained(official, revision=revision, dtype=dtype, token=hub_token())
    model = HookedTransformer.from_pretrained_no_processing(name, hf_model=hf_model, device=device, dtype=dtype)
    del hf_model
    return model, revision


def _folder_tokenizer(path: Path) -> PreTrainedTokenizerBase | None:
    """A model folder's tokenizer: `tokenizer.json` (saekit's BPE) or `hf_tokenizer/` (a GGUF's own)."""
    if (path / TOKENIZER_FILE).is_file():
        return read_tokenizer(path)
    if (path / HF_TOKENIZER_DIR).is_dir():
        from transformers import AutoTokenizer

        # add_bos_token=True in its init kwargs, or TransformerLens's set_tokenizer loads it a second time
        return AutoTokenizer.from_pretrained(str(path / HF_TOKENIZER_DIR), add_bos_token=True)
    return None


def _local_model(path: Path, init: str, device: str, dtype: torch.dtype,
                 seed: int | None = None) -> HookedTransformer:
    """A model folder as `init`. For the random variants the trained weights are never loaded (only
    the kept embeddings are read), so one copy of the model is in memory at a time; the buffers come
    from the config, as they do for trained."""
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path}: not a saekit model folder (no {CONFIG_FILE})")
    weights = path / STEP0_DIR / WEIGHTS_FILE if init == "step0" else path / WEIGHTS_FILE
    if not weights.is_file():
        what = "a step-0 checkpoint (train_tiny_lm writes one)" if init == "step0" else "weights"
        raise FileNotFoundError(f"{path}: no {what} at {weights}")
    cfg = config_from_json_dict(json.loads((path / CONFIG_FILE).read_text()), device=device, dtype=dtype)
    tokenizer = _folder_tokenizer(path)
    if init in ("random", "random-keep-embeddings"):
        if cfg.seed == seed:
            warnings.warn(f"random init with seed={seed}, the seed the model itself was initialised with: "
                          "this re-draws its own initial (step-0) weights; pass another seed for a fresh draw")
        model = _build(cfg, tokenizer, init_weights=True, seed=seed)
        if init == "random-keep-embeddings":
            kept = tuple(n for n, _ in model.named_parameters() if n in KEPT_EMBEDDING_PARAMS)
            _load_weights(model, weights, names=kept)
        return model
    model = _build(cfg, tokenizer, init_weights=False)
    _load_weights(model, weights)
    return model


def load_model(
    source: str | Path | HookedTransformerConfig,
    init: str = "trained",
    seed: int = 0,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    tl_name: str | None = None,
    processing: Any = None,
) -> HookedTransformer:
    """Load `source` as variant `init` (one of `INIT_VARIANTS`; see the module's table).

    `source`: a TransformerLens name, a `HookedTransformerConfig`, a saekit model folder,
    `"saekit-tiny-lm"`, `"gemma-3-270m"` (the packaged GGUF) or a `.gguf` file (`tl_name` names its
    TransformerLens model when the file's metadata does not; see `saekit.models.gguf`).
    `seed` seeds the re-drawn weights of `random*` and the noise of `gaussian-embeddings`; it does
    nothing for `trained`/`step0`. `device`/`dtype` override any in a config. `processing`: the
    TransformerLens weight processing to apply to the variant (a spec of `saekit.models.processing`,
    e.g. ("center_writing_weights",); None = none), recorded as `saekit_info["processing"]`. The model comes in
    eval mode, with `model.tokenizer` when there is one, and `model.saekit_info` (a JSON-safe dict
    naming what was loaded, for activation-cache manifests).
    """
    _check_init(init)
    flags = processing_flags(processing, "load_model(processing=)")
    if isinstance(source, str) and source == TINY_LM_NAME:
        from saekit.models.tiny import ensure_tiny_lm

        source = ensure_tiny_lm()
    info: dict[str, Any] = {"init": init, "seed": seed}
    if is_gguf_source(source):
        if init == "step0":
            raise ValueError(f"init='step0': {source} ships no step-0 (untrained) checkpoint; use random, "
                             f"random-keep-embeddings or gaussian-embeddings")
        folder, converted = gguf_model_dir(source, tl_name)
        trained = _local_model(folder, init, device, dtype, seed=seed)
        source_name = str(source) if str(source) in PACKAGED_MODELS else converted["gguf"]
        info.update(source=source_name, source_kind="gguf", tl_name=converted["tl_name"],
                    gguf_sha256=converted["gguf_sha256"])
    elif isinstance(source, HookedTransformerConfig):
        if init == "step0":
            raise ValueError("init='step0' needs a hub name or a local folder, not a bare config")
        cfg = dataclasses.replace(source, device=device, dtype=dtype)
        trained = _build(cfg, None, init_weights=True)
        info.update(source="config", source_kind="config", model_seed=source.seed)
    elif Path(str(source)).expanduser().is_dir():
        path = Path(str(source)).expanduser().resolve()
        trained = _local_model(path, init, device, dtype, seed=seed)
        weights = path / STEP0_DIR / WEIGHTS_FILE if init == "step0" else path / WEIGHTS_FILE
        info.update(source=str(path), source_kind="local", weights_sha256=file_sha256(weights))
    elif isinstance(source, Path) or str(source).startswith((".", "/", "~")):
        raise FileNotFoundError(f"model folder {source} does not exist")
    else:
        try:
            trained, revision = _hub_model(str(source), init, device, dtype)
        except Exception as error:
            message = hub_error_message(error)
            if message is None:
                raise
            raise HubError(f"load_model({str(source)!r}, init={init!r}): {message}") from error
        info.update(source=str(source), source_kind="hub")
        if revision is not None:
            info["hub_revision"] = revision  # the git branch the step-0 weights came from

    if init in ("random", "random-keep-embeddings") and info.get("source_kind") not in ("local", "gguf"):
        model = _randomised(trained, seed, keep_embeddings=init == "random-keep-embeddings")
        del trained
    else:
        model = trained
    if flags:  # before the noise hook: processing rebuilds the LayerNorms, never model.embed
        process_model(model, flags)
        info["processing"] = list(flags)  # absent when unprocessed: old manifests stay identical
    if init == "gaussian-embeddings":
        add_gaussian_embedding_noise(model, seed)
        info["embedding_noise"] = {"std": GAUSSIAN_EMBEDDING_STD, "seed": seed,
                                   "row_seed": "blake2b(seed int64 LE + row token ids int64 LE)"}
    model.eval()
    cfg = model.cfg
    tokenizer_name = getattr(model.tokenizer, "name_or_path", None) if model.tokenizer else cfg.tokenizer_name
    info.update(model_name=cfg.model_name, n_layers=cfg.n_layers, d_model=cfg.d_model,
                d_vocab=cfg.d_vocab, n_ctx=cfg.n_ctx, tokenizer=tokenizer_name or None,
                default_prepend_bos=bool(cfg.default_prepend_bos), dtype=str(cfg.dtype).removeprefix("torch."))
    model.saekit_info = info
    return model

