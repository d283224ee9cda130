"""saekit: sparse-autoencoder interpretability toolkit.

Stages, in the order data flows (a stage imports only earlier ones):
models -> data (activation cache, ActivationStore) -> sae -> train -> eval -> match -> interp -> viz.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`saekit.load_sae` and `saekit.export_sae`, imported on first use so `import saekit` stays light."""
    if name in ("load_sae", "export_sae"):
        from saekit.sae import formats

        return getattr(formats, name)
    raise AttributeError(f"module 'saekit' has no attribute {name!r}")
