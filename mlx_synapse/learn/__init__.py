"""Continual learning: LoRA/DoRA adapters on the package's models, their files, and a trainer."""

from .adapter_set import AdapterSet
from .adapters import adapter_config, adapter_weights, load_adapter, read_adapter_config, save_adapter
from .learner import ContinualLearner
from .lora import DoRALinear, LoRALinear, apply_lora, fuse_lora, lora_layers, remove_lora, set_scale

__all__ = [
    "AdapterSet", "ContinualLearner", "DoRALinear", "LoRALinear", "adapter_config", "adapter_weights", "apply_lora", "fuse_lora",
    "load_adapter", "load_trainable", "lora_layers", "read_adapter_config", "remove_lora", "save_adapter",
    "set_scale",
]


def load_trainable(path=None, dequantize: bool = False):
    """The model in its trainable form (quantized layers kept, q|k|v unfused) and its tokenizer.

    Args:
        path: model directory, ``.gguf`` file or hub id (as ``mlx_synapse.load``); None: the default model.
        dequantize: expand quantized layers to float32 (MLX's CPU backend multiplies float
            weights much faster than 4-bit ones); the adapter trained applies to either form.
    """
    from pathlib import Path

    from ..loader import load_model, resolve_model_path
    from ..tokenizer import load_tokenizer

    if path is None:
        from ..defaults import default_model_path

        path = default_model_path()
    elif str(path).endswith(".gguf"):
        from ..defaults import converted_gguf_path

        path = converted_gguf_path(Path(path))
    else:
        path = resolve_model_path(path)
    model, config = load_model(path, dequantize=dequantize, dtype="float32" if dequantize else None)
    return model, load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
