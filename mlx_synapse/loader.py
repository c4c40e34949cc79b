"""Find, read and build a model directory (mlx-lm format: config.json + safetensors).

``load`` is the one entry point: a local directory, a Hugging Face hub id, a
``.gguf`` file, or nothing (the default model), on the MLX or NumPy backend.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Union

BACKENDS = ("auto", "mlx", "numpy")


def mlx_available() -> bool:
    """Whether ``mlx.core`` imports on this machine."""
    try:
        import mlx.core  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str = "auto") -> str:
    """Pick the backend: ``auto`` is MLX on a GPU, else the NumPy backend (its engine).

    ``backend_choice.choose`` decides by the device and times the two only where
    the engine cannot be built (cached in ``$MLX_SYNAPSE_CACHE/backend.json``);
    ``MLX_SYNAPSE_BACKEND=mlx|numpy`` overrides it, as does naming the backend.
    """
    if backend not in BACKENDS:
        raise ValueError(f"[load] backend must be one of {', '.join(BACKENDS)} but got {backend!r}.")
    if backend == "auto":
        env = os.environ.get("MLX_SYNAPSE_BACKEND", "").strip().lower()
        if env in ("mlx", "numpy"):
            backend = env
        elif env not in ("", "auto", "remeasure"):
            raise ValueError(
                f"[load] MLX_SYNAPSE_BACKEND must be mlx, numpy, auto or remeasure but got {env!r}."
            )
    if backend != "auto":
        if backend == "mlx" and not mlx_available():
            raise ValueError(
                "[load] backend 'mlx' was requested but MLX cannot be imported here; "
                "install it (pip install 'mlx[cpu]' on Linux) or use --backend numpy."
            )
        return backend
    if not mlx_available():
        return "numpy"
    from . import backend_choice

    remeasure = os.environ.get("MLX_SYNAPSE_BACKEND", "").strip().lower() == "remeasure"
    return backend_choice.choose(remeasure=remeasure, log=lambda m: print(m, file=sys.stderr))["backend"]


def resolve_model_path(path_or_repo: Union[str, Path], revision: Optional[str] = None) -> Path:
    """A local model directory for a path or a Hugging Face hub id (downloaded on request)."""
    path = Path(os.path.expanduser(str(path_or_repo)))
    if path.exists():
        return path
    text = str(path_or_repo)
    looks_local = text.startswith((".", "/", "~")) or text.count("/") != 1 or text.endswith(".gguf")
    if looks_local:
        raise FileNotFoundError(
            f"[load] model path {text!r} does not exist; pass an existing model directory, "
            "a .gguf file, or a Hugging Face id such as 'HuggingFaceTB/SmolLM2-135M-Instruct'."
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                text,
                revision=revision,
                allow_patterns=["*.json", "*.safetensors", "*.bin", "*.pt", "*.model", "*.txt", "*.jinja", "tokenizer*"],
            )
        )
    except Exception as e:  # the hub raises many types; all mean "not available"
        raise FileNotFoundError(
            f"[load] could not fetch {text!r} from the Hugging Face hub ({type(e).__name__}: {e}). "
            "Check the id and the network, or pass a local directory."
        ) from e


def load_config(model_path: Union[str, Path]) -> dict:
    """Read and check ``config.json``: clear errors for a missing, garbled or invalid file."""
    path = Path(model_path) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"[load] {path} not found: a model directory needs config.json beside its "
            "safetensors; convert the checkpoint with `python -m mlx_synapse.convert`."
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"[load] {path} is not valid JSON ({e}); re-download or re-convert the model."
        ) from e
    if not isinstance(config, dict):
        raise ValueError(f"[load] {path} must hold a JSON object but holds {type(config).__name__}.")
    from .models.config_check import check_config

    return check_config(config, path)


def weight_files(model_path: Union[str, Path]) -> list:
    """The model's safetensors files (sharded or single), sorted."""
    files = sorted(glob.glob(str(Path(model_path) / "model*.safetensors")))
    if not files:
        files = sorted(glob.glob(str(Path(model_path) / "*.safetensors")))
    if not files:
        raise FileNotFoundError(
            f"[load] no *.safetensors in {model_path}; PyTorch .bin checkpoints must be "
            "converted first: python -m mlx_synapse.convert --hf-path DIR --out OUT."
        )
    return files


def load_weights(model_path: Union[str, Path]) -> dict:
    """All tensors of the model as MLX arrays (lazily mapped)."""
    import mlx.core as mx

    weights = {}
    for f in weight_files(model_path):
        try:
            weights.update(mx.load(f))
        except Exception as e:  # MLX raises RuntimeError/ValueError for bad files
            raise ValueError(
                f"[load] cannot read {f} ({e}); the file is truncated or not safetensors — "
                "re-download or re-convert it."
            ) from e
    return weights


def _quant_predicate(quantization: dict, weights: dict):
    """mlx-lm's rule: per-module overrides first, else quantize what has scales."""

    def predicate(path: str, module: Any):
        if path in quantization:
            return quantization[path]
        return hasattr(module, "to_quantized") and f"{path}.scales" in weights

    return predicate


def build_model(config: dict, weights: dict, source: Union[str, Path] = "the checkpoint"):
    """The MLX model of ``config`` holding ``weights``, checked strictly.

    Quantizes the modules ``config["quantization"]`` names (mlx-lm's rule),
    then loads every tensor with its shape checked.

    Raises:
        ValueError: unknown model_type, incomplete config, or weights that do
            not fit the config (missing, extra, or wrongly shaped tensors).
    """
    import mlx.nn as nn

    from .models import get_model_classes

    model_class, args_class = get_model_classes(config)
    model = model_class(args_class.from_dict(config))
    weights = model.sanitize(weights)
    quantization = config.get("quantization")
    if quantization:
        nn.quantize(
            model,
            group_size=quantization["group_size"],
            bits=quantization["bits"],
            class_predicate=_quant_predicate(quantization, weights),
        )
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise ValueError(
            f"[load] weights in {source} do not fit config.json ({e}); the config and the "
            "weights come from different models or the checkpoint is incomplete — "
            "re-download or re-convert it."
        ) from e
    return model


def load_model(
    model_path: Union[str, Path], *, dequantize: bool = False, dtype: Optional[str] = None
):
    """Build the MLX model from a directory.

    Args:
        model_path: mlx-lm format directory.
        dequantize: turn quantized layers back into float ones (faster on MLX's CPU backend).
        dtype: cast float weights ("float32", "float16", "bfloat16"); None keeps the file's.

    Returns:
        ``(model, config)``.
    """
    import mlx.core as mx
    import mlx.nn as nn

    model_path = Path(model_path)
    config = load_config(model_path)
    model = build_model(config, load_weights(model_path), model_path)
    if dequantize and config.get("quantization"):
        _dequantize_layers(model)
    if dtype is not None:
        target = getattr(mx, dtype)
        model.update(
            nn.utils.tree_map(lambda a: a.astype(target) if mx.issubdtype(a.dtype, mx.floating) else a,
                              model.parameters())
        )
    mx.eval(model.parameters())
    return model, config


def _dequantize_layers(model) -> None:
    """Replace every quantized Linear/Embedding of ``model`` by its float equivalent."""
    import mlx.core as mx
    import mlx.nn as nn

    def swap(module):
        changes = []
        for name, child in module.children().items():
            if isinstance(child, list):
                for c in child:
                    swap(c)
                continue
            if isinstance(child, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
                # float32 scales: the expanded weights keep every bit of scale*q + bias.
                s, b = child.scales.astype(mx.float32), child.biases.astype(mx.float32)
                w = mx.dequantize(child.weight, s, b, child.group_size, child.bits)
                if isinstance(child, nn.QuantizedEmbedding):
                    new = nn.Embedding(*w.shape)
                    new.weight = w
                else:
                    new = nn.Linear(w.shape[1], w.shape[0], bias="bias" in child)
                    new.weight = w
                    if "bias" in child:
                        new.bias = child.bias
                changes.append((name, new))
            elif isinstance(child, nn.Module):
                swap(child)
        if changes:
            module.update_modules(dict(changes))

    swap(model)


def load(
    path_or_repo: Optional[Union[str, Path]] = None,
    *,
    backend: str = "auto",
    revision: Optional[str] = None,
    dequantize: Optional[bool] = None,
    dtype: Optional[str] = None,
    adapter_path: Optional[Union[str, Path]] = None,
):
    """Load a model and its tokenizer.

    Args:
        path_or_repo: model directory, ``.gguf`` file, or hub id; None = the default model.
        backend: "mlx", "numpy", or "auto" (the faster one for this machine).
        revision: hub revision.
        dequantize: MLX only — None picks what is fastest (float on CPU, quantized on GPU).
        dtype: MLX only — cast float weights; None keeps the file's on a GPU, float32 on a CPU.
        adapter_path: a LoRA adapter directory (mlx-lm's format) to apply, on either backend.

    Returns:
        ``(model, tokenizer)``; ``model.backend`` is "mlx" or "numpy".
    """
    from .tokenizer import load_tokenizer

    backend = resolve_backend(backend)
    if path_or_repo is None:
        from .defaults import default_model_path

        model_path = default_model_path()
    elif str(path_or_repo).endswith(".gguf"):
        from .defaults import converted_gguf_path

        model_path = converted_gguf_path(Path(path_or_repo))
    else:
        model_path = resolve_model_path(path_or_repo, revision)
    if backend == "numpy":
        from .backends.numpy import load_model as load_numpy_model

        model = load_numpy_model(model_path)
        config = model.config
        if adapter_path is not None:
            from .backends.numpy.adapter import apply_adapter

            apply_adapter(model, adapter_path)
    else:
        import mlx.core as mx

        from .models.llama import fuse_projections
        from .models.parallel import split_rows_across_cpu_streams

        on_cpu = mx.default_device() == mx.cpu
        # On MLX's CPU backend quantized matmuls run ~30x slower than float ones: CPU runs
        # expand 4-bit weights. To float32, not bfloat16: bfloat16 decodes ~1.3x and
        # prefills ~2x faster there, but its rounding moves greedy text off the NumPy
        # backend's float32 reference within a few tokens; float32 gives the same tokens.
        if dequantize is None:
            dequantize = on_cpu
        if dtype is None and on_cpu:
            dtype = "float32"
        model, config = load_model(model_path, dequantize=dequantize, dtype=dtype)
        if adapter_path is not None:  # before fusing: adapted layers stay unfused, the rest fuse as usual
            from .learn.adapters import load_adapter

            load_adapter(model, adapter_path)
        fuse_projections(model)
        if on_cpu:
            split_rows_across_cpu_streams(model, min(os.cpu_count() or 1, 8))
            mx.eval(model.parameters())
        model.backend = "mlx"
    model.model_path = model_path
    # The prompt bound of generate (an int or None: never a parameter of an MLX module).
    model.context_length = config.get("max_position_embeddings")
    return model, load_tokenizer(model_path, eos_token_ids=config.get("eos_token_id"))
