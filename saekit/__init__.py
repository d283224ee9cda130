"""saekit: sparse-autoencoder interpretability toolkit.

Stages, in the order data flows (a stage imports only earlier ones):
models -> data (activation cache, ActivationStore) -> sae -> train -> eval -> match -> interp -> viz.
"""

__version__ = "0.1.0"
