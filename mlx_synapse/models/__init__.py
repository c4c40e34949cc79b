"""Model architectures, one file per Hugging Face ``model_type``.

Nothing here imports MLX at package import time, so ``models.rope`` serves the
NumPy backend too.
"""

from __future__ import annotations

import importlib

# model_type values that share another type's implementation.
MODEL_TYPE_ALIASES = {"mistral": "llama"}
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3")


def get_model_classes(config: dict):
    """``(Model, ModelArgs)`` for a config dict; ValueError for an unknown ``model_type``."""
    model_type = config.get("model_type")
    if model_type is None:
        raise ValueError(
            "[models] config.json has no 'model_type'; expected one of "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}."
        )
    name = MODEL_TYPE_ALIASES.get(model_type, model_type)
    if name not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"[models] model_type {model_type!r} is not supported; supported types are "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}."
        )
    module = importlib.import_module(f"{__name__}.{name}")
    return module.Model, module.ModelArgs
