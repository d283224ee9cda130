"""Models: load a transformer as trained or randomised (Heap et al. 2025), and saekit's tiny LM.

    load_model(source, init="trained", seed=0, device="cpu", dtype=torch.float32) -> HookedTransformer
    INIT_VARIANTS, redrawn_parameters(model, init)        which tensors each variant re-draws
    save_model_dir(model, path, tokenizer=None)           saekit's folder format (safetensors + JSON)
    reload_model(manifest["model"], ...)                  the model a cache's manifest names, again
    load_model(..., processing=spec), process_model       TransformerLens weight processing (fold_ln,
                                                          center_writing_weights...) as an SAE was trained
    "gemma-3-270m" / PATH.gguf (saekit.models.gguf)       a real pretrained LM offline, any GGUF TL knows
    train_bpe_tokenizer / wrap_tokenizer                  byte-level BPE, <|endoftext|> = id 0
    tiny_config / train_tiny_lm / ensure_tiny_lm          the offline CPU test model

Imports only `saekit.corpus` and `saekit.sae.saelens_format` (what SAEs say about their model) from saekit.
"""

from saekit.models.load import (INIT_VARIANT_DOCS, INIT_VARIANTS, KEPT_EMBEDDING_PARAMS, TINY_LM_NAME,
                                add_gaussian_embedding_noise, config_from_json_dict, config_to_json_dict,
                                is_model_dir, load_model, redrawn_parameters, save_model_dir)
from saekit.models.reload import forget_reloaded_model, reload_model
from saekit.models.processing import (FROM_PRETRAINED_DEFAULTS, PROCESSING_FLAGS, process_model, processing_flags,
                                      resolve_model_processing)
from saekit.models.gguf import GEMMA_3_270M, GGUFError, convert_gguf
from saekit.models.tiny import default_tiny_lm_dir, ensure_tiny_lm, tiny_config, train_tiny_lm
from saekit.models.tokenizer import (BOS_TOKEN, BOS_TOKEN_ID, raw_tokenizer, read_tokenizer, train_bpe_tokenizer,
                                     wrap_tokenizer)

__all__ = [
    "BOS_TOKEN", "BOS_TOKEN_ID", "INIT_VARIANT_DOCS", "INIT_VARIANTS", "KEPT_EMBEDDING_PARAMS", "TINY_LM_NAME",
    "add_gaussian_embedding_noise", "config_from_json_dict", "config_to_json_dict", "default_tiny_lm_dir",
    "ensure_tiny_lm", "is_model_dir", "load_model", "reload_model", "forget_reloaded_model", "GEMMA_3_270M", "GGUFError", "convert_gguf", "raw_tokenizer", "read_tokenizer", "redrawn_parameters",
    "save_model_dir", "tiny_config", "train_bpe_tokenizer", "train_tiny_lm", "wrap_tokenizer",
    "FROM_PRETRAINED_DEFAULTS", "PROCESSING_FLAGS", "process_model", "processing_flags", "resolve_model_processing",
]
