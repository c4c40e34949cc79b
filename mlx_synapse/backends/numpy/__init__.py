"""NumPy inference backend: runs where MLX cannot be imported, and is the fast
path on x86 CPUs (OpenBLAS float32 matmuls).  Nothing here imports MLX.

    from mlx_synapse.backends.numpy import load_model, generate_step, make_sampler
    model = load_model("path/to/model_dir")
    for token, logprobs in generate_step(prompt_ids, model, max_tokens=64):
        ...
"""

from .cache import KVCache, RotatingKVCache, make_cache
from .config import SUPPORTED_MODEL_TYPES, ModelArgs
from .generate import generate_step, log_softmax
from .model import NumpyModel, load_model
from .safetensors import SafetensorsFile, load_safetensors
from .sample import make_logits_processors, make_sampler

__all__ = [
    "KVCache",
    "ModelArgs",
    "NumpyModel",
    "RotatingKVCache",
    "SUPPORTED_MODEL_TYPES",
    "SafetensorsFile",
    "generate_step",
    "load_model",
    "load_safetensors",
    "log_softmax",
    "make_cache",
    "make_logits_processors",
    "make_sampler",
]
