"""Hugging Face / PyTorch checkpoint import to an mlx-lm model directory.

Reads safetensors (single or sharded) or PyTorch state dicts
(``pytorch_model*.bin``, ``*.pt``, ``*.pth``), checks them against the MLX
model of the config's ``model_type`` (strict: every tensor, every shape),
optionally casts and affine-quantizes, and writes config.json, safetensors and
the tokenizer files.
"""

from __future__ import annotations

import glob
import shutil
from pathlib import Path
from typing import Optional, Union

from .save import save_model_dir

# Files beside the weights that the runtime reads (tokenizer, generation defaults).
_SIDE_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json", "chat_template.jinja",
    "chat_template.json",
)
_TORCH_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.bin")


def _torch_state_dict(files: list) -> dict:
    """Tensors of PyTorch checkpoint files as MLX arrays."""
    import mlx.core as mx

    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "[convert] reading PyTorch .bin/.pt checkpoints needs torch: pip install torch "
            "(or convert the checkpoint to safetensors first)."
        ) from e
    out = {}
    for f in files:
        try:
            sd = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"[convert] cannot read PyTorch checkpoint {f} ({e}); re-download it.") from e
        # Training scripts often wrap the weights: {"state_dict": ...} or {"model": ...}.
        for key in ("state_dict", "model", "module"):
            if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
                sd = sd[key]
        for name, t in sd.items():
            if not hasattr(t, "detach"):
                continue
            t = t.detach()
            if t.dtype == torch.bfloat16:
                out[name] = mx.array(t.float().numpy()).astype(mx.bfloat16)
            else:
                out[name] = mx.array(t.numpy())
    return out


def read_hf_weights(model_path: Union[str, Path]) -> dict:
    """All tensors of a Hugging Face checkpoint directory as MLX arrays."""
    import mlx.core as mx

    model_path = Path(model_path)
    files = sorted(glob.glob(str(model_path / "*.safetensors")))
    if files:
        weights = {}
        for f in files:
            try:
                weights.update(mx.load(f))
            except Exception as e:
                raise ValueError(
                    f"[convert] cannot read {f} ({e}); the file is truncated or not safetensors."
                ) from e
        return weights
    for pattern in _TORCH_PATTERNS:
        files = sorted(glob.glob(str(model_path / pattern)))
        if files:
            return _torch_state_dict(files)
    raise FileNotFoundError(
        f"[convert] no weights in {model_path}: expected *.safetensors or pytorch_model*.bin / *.pt."
    )


def convert_hf(
    hf_path: Union[str, Path],
    out_dir: Union[str, Path],
    *,
    dtype: Optional[str] = None,
    quantize: bool = False,
    q_bits: int = 4,
    q_group_size: int = 64,
    revision: Optional[str] = None,
    progress: bool = True,
) -> Path:
    """Convert a Hugging Face checkpoint (directory or hub id) to ``out_dir``.

    Args:
        hf_path: local directory or hub id.
        out_dir: output directory (created).
        dtype: "float32", "float16" or "bfloat16"; None keeps the checkpoint's float type.
        quantize: affine-quantize Linear and Embedding weights.
        q_bits, q_group_size: quantization bits (2, 3, 4, 5, 6, 8) and group size (32, 64, 128).
        revision: hub revision.
        progress: show progress bars.

    Returns:
        ``out_dir`` as a Path.
    """
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from mlx_synapse.loader import build_model, load_config, resolve_model_path
    from mlx_synapse.models import get_model_classes

    if dtype not in (None, "float32", "float16", "bfloat16"):
        raise ValueError(f"[convert] --dtype must be float32, float16 or bfloat16 but got {dtype!r}.")
    if quantize and q_group_size not in (32, 64, 128):
        raise ValueError(f"[convert] --q-group-size must be 32, 64 or 128 but got {q_group_size}.")
    if quantize and q_bits not in (2, 3, 4, 5, 6, 8):
        raise ValueError(f"[convert] --q-bits must be one of 2, 3, 4, 5, 6, 8 but got {q_bits}.")
    src = resolve_model_path(hf_path, revision)
    config = load_config(src)
    if config.get("quantization"):
        raise ValueError(f"[convert] {src} is already quantized; convert from the float checkpoint.")
    # Check the config before reading gigabytes of weights.
    args_class = get_model_classes(config)[1]
    args_class.from_dict(config)
    weights = read_hf_weights(src)
    if dtype is not None:
        target = getattr(mx, dtype)
        weights = {k: v.astype(target) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in weights.items()}
    model = build_model(config, weights, src)
    config = dict(config)
    if quantize:
        nn.quantize(model, group_size=q_group_size, bits=q_bits)
        config["quantization"] = {"group_size": q_group_size, "bits": q_bits}
        config["quantization_config"] = config["quantization"]
    if dtype is not None:
        config["torch_dtype"] = dtype
    out_dir = Path(out_dir)
    save_model_dir(out_dir, dict(tree_flatten(model.parameters())), config, progress=progress)
    for name in _SIDE_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out_dir / name)
    return out_dir
