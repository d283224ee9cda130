"""A saekit model folder as a `transformers` causal LM, for the local LLM backend (no hub, no GGUF parse).

    model, tokenizer = hf_causal_lm("gemma-3-270m")   # Gemma3ForCausalLM + its tokenizer, offline

A GGUF (`gemma-3-270m`, a .gguf path) is converted once into a saekit folder of TransformerLens
weights (`saekit.models.gguf`). Loading it into transformers straight from the GGUF
(`from_pretrained(dir, gguf_file=...)`) re-parses the file and its 262K-token vocabulary every time
(about 47 s for Gemma 3 270M on 2 cores); this module instead inverts TransformerLens's
`convert_gemma_weights` on the converted folder's `model.safetensors` (a few seconds):

| TransformerLens | transformers (Gemma3ForCausalLM) |
|---|---|
| `unembed.W_U` [d_model, d_vocab] | `embed_tokens.weight` = W_U.T (tied with `lm_head`; TL's `embed.W_E` is it times sqrt(d_model)) |
| `attn.W_Q` / `_W_K` / `_W_V` [n, d_model, d_head] | `q_proj` / `k_proj` / `v_proj.weight` [(n d_head), d_model] |
| `attn.W_O` [n, d_head, d_model] | `o_proj.weight` [d_model, (n d_head)] |
| `mlp.W_in` / `W_gate` / `W_out` | `up_proj` / `gate_proj` / `down_proj.weight`, transposed |
| `ln1`, `ln1_post`, `ln2`, `ln2_post`, `q_norm`, `k_norm`, `ln_final` `.w` | input, post_attention, pre_feedforward, post_feedforward layernorms, q_norm, k_norm, norm: w - 1 (Gemma's RMSNorm multiplies by 1 + w) |

The config comes from the folder's TransformerLens config (sizes, `attn_types` -> `layer_types`,
`rotary_base`/`rotary_base_local`, `attn_scale`^2 = `query_pre_attn_scalar`, `window_size`), the
tokenizer from its `hf_tokenizer/`. Biases are all zero in Gemma and are dropped (checked).
Only text-only Gemma 3 (`original_architecture` Gemma3ForCausalLM) is supported; other folders are
refused naming the architecture.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch

SUPPORTED_ARCHITECTURES = ("Gemma3ForCausalLM",)


def saekit_model_folder(source: str | Path) -> Path | None:
    """The saekit model folder `source` names (a packaged GGUF, a .gguf file, converted on first use,
    or a folder whose config.json saekit wrote), or None when it names none (a HF folder or hub name)."""
    from saekit.models.gguf import gguf_model_dir, is_gguf_source

    if is_gguf_source(source):
        return gguf_model_dir(source)[0]
    path = Path(str(source)).expanduser()
    config = path / "config.json"
    if config.is_file() and (path / "model.safetensors").is_file():
        try:
            if "saekit_format_version" in json.loads(config.read_text()):
                return path
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
    return None


def gemma3_config(tl: dict[str, Any], tokenizer: Any = None) -> Any:
    """The transformers Gemma3TextConfig of a Gemma 3 TransformerLens config (config_to_json_dict form)."""
    from transformers import Gemma3TextConfig

    layer_types = [{"local": "sliding_attention", "global": "full_attention"}[t] for t in tl["attn_types"]]
    values: dict[str, Any] = dict(
        vocab_size=tl["d_vocab"], hidden_size=tl["d_model"], intermediate_size=tl["d_mlp"],
        num_hidden_layers=tl["n_layers"], num_attention_heads=tl["n_heads"],
        num_key_value_heads=tl.get("n_key_value_heads") or tl["n_heads"], head_dim=tl["d_head"],
        hidden_activation=tl["act_fn"], max_position_embeddings=tl["n_ctx"], rms_norm_eps=tl["eps"],
        query_pre_attn_scalar=round(tl["attn_scale"] ** 2) if tl.get("use_attn_scale", True) else 1,
        sliding_window=tl["window_size"], layer_types=layer_types, tie_word_embeddings=True,
        final_logit_softcapping=tl["output_logits_soft_cap"] if tl.get("output_logits_soft_cap", -1) > 0 else None,
        attn_logit_softcapping=tl["attn_scores_soft_cap"] if tl.get("attn_scores_soft_cap", -1) > 0 else None,
    )
    if "rope_parameters" in inspect.signature(Gemma3TextConfig.__init__).parameters:  # transformers >= 5
        values["rope_parameters"] = {"full_attention": {"rope_type": "default", "rope_theta": float(tl["rotary_base"])},
                                     "sliding_attention": {"rope_type": "default",
                                                           "rope_theta": float(tl["rotary_base_local"])}}
    else:
        values.update(rope_theta=float(tl["rotary_base"]), rope_local_base_freq=float(tl["rotary_base_local"]))
    if tokenizer is not None:
        values.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    return Gemma3TextConfig(**values)


def gemma3_state_dict(tl: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """Gemma3ForCausalLM's state dict from TransformerLens's (the table of the module docstring).
    Pops the tensors from `tl` as it goes, so one copy of the weights is held at a time."""
    biases = [name for name in tl if name.split(".")[-1] in ("b_Q", "_b_K", "_b_V", "b_O", "b_in", "b_out", "b_U")]
    nonzero = [name for name in biases if bool(tl[name].any())]
    if nonzero:
        raise ValueError(f"TransformerLens biases {nonzero[:3]} are not zero: not a Gemma model's weights")
    for name in biases:
        del tl[name]
    heads = lambda w: w.permute(0, 2, 1).reshape(-1, w.shape[1]).contiguous()  # [n, m, h] -> [(n h), m]
    norm = lambda w: (w.float() - 1.0)
    out: dict[str, torch.Tensor] = {"model.embed_tokens.weight": tl.pop("unembed.W_U").T.contiguous(),
                                    "model.norm.weight": norm(tl.pop("ln_final.w"))}
    del tl["embed.W_E"]  # = W_U.T * sqrt(d_model): Gemma's embedding scale, applied by transformers
    for layer in range(n_layers):
        tl_prefix, prefix = f"blocks.{layer}.", f"model.layers.{layer}."
        take = lambda name: tl.pop(tl_prefix + name)
        out.update({
            prefix + "self_attn.q_proj.weight": heads(take("attn.W_Q")),
            prefix + "self_attn.k_proj.weight": heads(take("attn._W_K")),
            prefix + "self_attn.v_proj.weight": heads(take("attn._W_V")),
            prefix + "self_attn.o_proj.weight": take("attn.W_O").flatten(0, 1).T.contiguous(),
            prefix + "self_attn.q_norm.weight": norm(take("attn.q_norm.w")),
            prefix + "self_attn.k_norm.weight": norm(take("attn.k_norm.w")),
            prefix + "mlp.up_proj.weight": take("mlp.W_in").T.contiguous(),
            prefix + "mlp.gate_proj.weight": take("mlp.W_gate").T.contiguous(),
            prefix + "mlp.down_proj.weight": take("mlp.W_out").T.contiguous(),
            prefix + "input_layernorm.weight": norm(take("ln1.w")),
            prefix + "post_attention_layernorm.weight": norm(take("ln1_post.w")),
            prefix + "pre_feedforward_layernorm.weight": norm(take("ln2.w")),
            prefix + "post_feedforward_layernorm.weight": norm(take("ln2_post.w")),
        })
    if tl:
        raise ValueError(f"TransformerLens tensors {sorted(tl)[:5]} have no place in Gemma3ForCausalLM")
    return out


def hf_causal_lm(source: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(transformers causal LM in eval mode, its tokenizer) for a saekit model folder or GGUF source
    (see `saekit_model_folder`). ValueError naming the folder for an architecture not supported."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, Gemma3ForCausalLM

    from saekit.models.gguf import HF_TOKENIZER_DIR

    folder = saekit_model_folder(source)
    if folder is None:
        raise ValueError(f"{source}: not a saekit model folder or GGUF model")
    tl_config = json.loads((folder / "config.json").read_text())
    architecture = tl_config.get("original_architecture")
    if architecture not in SUPPORTED_ARCHITECTURES or not (folder / HF_TOKENIZER_DIR).is_dir():
        raise ValueError(f"{folder}: a transformers causal LM is built from saekit folders of "
                         f"{SUPPORTED_ARCHITECTURES} with a {HF_TOKENIZER_DIR}/ (this one: original_architecture="
                         f"{architecture!r}); pass a transformers folder or hub name instead")
    tokenizer = AutoTokenizer.from_pretrained(str(folder / HF_TOKENIZER_DIR))
    config = gemma3_config(tl_config, tokenizer)
    state = gemma3_state_dict(load_file(str(folder / "model.safetensors")), tl_config["n_layers"])
    # transformers builds the model on meta, assigns the tensors, ties lm_head and makes the rotary buffers
    model = Gemma3ForCausalLM.from_pretrained(None, config=config, state_dict=state, dtype=dtype)
    return model.eval(), tokenizer
