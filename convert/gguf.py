"""GGUF import: convert a llama/qwen2 GGUF file into an mlx-lm model directory.

``convert_gguf`` turns a llama/qwen2 GGUF into ``config.json`` +
``model.safetensors`` + tokenizer files that load in mlx-lm and in
``mlx_synapse.loader``. Q4_0/Q4_1/Q8_0 tensors stay quantized: they map
exactly onto MLX's affine format with group size 32 (``gguf_blocks``). The container
itself is parsed by ``gguf_reader`` (``read_gguf`` and its types are re-exported here).
Everything here needs NumPy only, so the NumPy backend imports GGUFs without MLX.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .gguf_reader import (  # noqa: F401  (re-exported: the reader's public names)
    DEFAULT_ALIGNMENT,
    GGML_TYPES,
    GGUF_MAGIC,
    SUPPORTED_VERSIONS,
    GGUFInfo,
    TensorInfo,
    read_gguf,
)
from ..kernels.affine import dequantize_numpy
from ..models.config_check import check_config
from .gguf_blocks import f32_to_bf16_bits, float_tensor, quant_triple
from .save import BF16, save_model_dir

SUPPORTED_TENSOR_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0")
_QUANT_BITS = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}
_GROUP_SIZE = 32  # every supported ggml quant type uses blocks of 32 along a row
SUPPORTED_ARCHITECTURES = ("llama", "qwen2")

_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_NORMS = ("model.norm", "input_layernorm", "post_attention_layernorm")


def hf_tensor_name(gguf_name: str) -> Optional[str]:
    """Map a llama.cpp tensor name to its Hugging Face name, or None if unknown.

    Args:
        gguf_name: e.g. ``blk.3.attn_q.weight``.

    Returns:
        e.g. ``model.layers.3.self_attn.q_proj.weight``.
    """
    base, dot, suffix = gguf_name.rpartition(".")
    if not dot or suffix not in ("weight", "bias"):
        return None
    if base in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[base]}.{suffix}"
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{int(parts[1])}.{_BLOCK_NAMES[parts[2]]}.{suffix}"
    return None


def unpermute_rows(w: Any, n_head: int) -> Any:
    """Undo llama.cpp's q/k row interleave (its HF->GGUF ``permute``).

    llama.cpp reorders each head's rows from HF's half-split rotary layout to
    interleaved pairs: ``w.reshape(n_head, 2, r // 2, ...).swapaxes(1, 2)``.
    This is its inverse. It acts on rows only, so it applies unchanged to a
    quantized weight's packed rows, scales and biases (groups run along a row).

    Args:
        w: MLX or NumPy array with ``n_head * r`` rows (``r`` even).
        n_head: heads the rows split into (``n_head_kv`` for k).

    Returns:
        The array with rows in Hugging Face order.
    """
    rows = w.shape[0]
    if rows % n_head or (rows // n_head) % 2:
        raise ValueError(f"cannot un-permute {rows} rows into {n_head} heads of even size.")
    rest = tuple(w.shape[1:])
    return w.reshape(n_head, rows // n_head // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def _need(info: GGUFInfo, key: str) -> Any:
    if key not in info.metadata:
        raise ValueError(f"{info.path}: GGUF metadata lacks {key!r}, which the conversion needs.")
    return info.metadata[key]


def _count(info: GGUFInfo, key: str, default: Any = None) -> int:
    """A positive integer from the metadata (``default`` when absent), else a clear error."""
    v = info.metadata.get(key, default) if default is not None else _need(info, key)
    if type(v) is not int or v <= 0:
        raise ValueError(
            f"{info.path}: GGUF metadata {key!r} must be a positive integer but is {v!r}; "
            "the file is corrupt — re-download or re-export it."
        )
    return v


def _f32(x: float) -> float:
    # float32 metadata (1e-5 stored as 9.99999974e-06): keep its shortest decimal.
    return float(str(np.float32(x)))


def _hf_config(info: GGUFInfo, arch: str) -> dict:
    """Hugging Face style config.json entries from GGUF metadata."""
    md, p = info.metadata, arch + "."
    tensors = {t.name: t for t in info.tensors}
    hidden = _count(info, p + "embedding_length")
    heads = _count(info, p + "attention.head_count")
    head_dim = _count(info, p + "attention.key_length", hidden // heads)
    rope_dim = md.get(p + "rope.dimension_count", head_dim)
    if rope_dim != head_dim:
        raise ValueError(
            f"{info.path}: partial rotary embeddings ({rope_dim} of {head_dim} dims) are not supported."
        )
    if "token_embd.weight" in tensors:
        vocab = tensors["token_embd.weight"].shape[1]
    else:
        vocab = md.get(p + "vocab_size") or len(_need(info, "tokenizer.ggml.tokens"))
    config = {
        "architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
        "model_type": arch,
        "hidden_size": hidden,
        "intermediate_size": _count(info, p + "feed_forward_length"),
        "num_hidden_layers": _count(info, p + "block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": _count(info, p + "attention.head_count_kv", heads),
        "head_dim": head_dim,
        "rms_norm_eps": _f32(_need(info, p + "attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32(md.get(p + "rope.freq_base", 10000.0)),
        "max_position_embeddings": int(md.get(p + "context_length", 2048)),
        "vocab_size": int(vocab),
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in tensors,
        "rope_traditional": False,  # q/k are un-permuted back to HF's half-split layout
    }
    if arch == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in tensors
        config["mlp_bias"] = "blk.0.ffn_up.bias" in tensors
    for key in ("bos", "eos"):
        if f"tokenizer.ggml.{key}_token_id" in md:
            config[f"{key}_token_id"] = int(md[f"tokenizer.ggml.{key}_token_id"])
    # Older GGUFs carry only ``rope.scale_linear``; newer ones a type + factor.
    scaling = md.get(p + "rope.scaling.type", "linear" if p + "rope.scale_linear" in md else "none")
    factor = md.get(p + "rope.scaling.factor", md.get(p + "rope.scale_linear", 1.0))
    if scaling == "linear" and factor != 1.0:
        config["rope_scaling"] = {"type": "linear", "rope_type": "linear", "factor": _f32(factor)}
    elif scaling not in ("none", "linear"):
        raise ValueError(f"rope scaling {scaling!r} in GGUF is not supported (only 'linear').")
    return config


def _check_convertible(info: GGUFInfo) -> str:
    """Validate architecture, tensor types and names before any heavy work."""
    arch = info.metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"{info.path}: GGUF architecture {arch!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}."
        )
    names = {t.name for t in info.tensors}
    if "rope_freqs.weight" in names:
        raise ValueError(
            f"{info.path}: llama3 rope_freqs in GGUF not supported yet; convert the model "
            "from its Hugging Face checkpoint instead."
        )
    bad = [f"{t.name} ({t.type_name})" for t in info.tensors if t.type_name not in SUPPORTED_TENSOR_TYPES]
    if bad:
        raise ValueError(
            f"{info.path}: unsupported GGUF tensor type(s): {', '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}. Supported types: "
            f"{', '.join(SUPPORTED_TENSOR_TYPES)}. Fix: re-export the GGUF as Q4_0, Q4_1, Q8_0 or "
            "F16 (llama-quantize), or convert from the Hugging Face checkpoint."
        )
    unknown = [t.name for t in info.tensors if hf_tensor_name(t.name) is None]
    if unknown:
        raise ValueError(
            f"{info.path}: unknown tensor(s) for architecture {arch!r}: {', '.join(unknown[:8])}"
            f"{' ...' if len(unknown) > 8 else ''}."
        )
    return arch


def _cast(x: np.ndarray, dtype: str):
    """A float tensor in the output dtype (NumPy, or ``BF16`` bits for bfloat16)."""
    if dtype == "bfloat16":
        return BF16(f32_to_bf16_bits(x.astype(np.float32)))
    return x.astype(dtype)


_DTYPES = ("float16", "bfloat16", "float32")


def convert_gguf(
    gguf_path: Union[str, Path],
    out_dir: Union[str, Path],
    *,
    dtype: Optional[str] = None,
    dequantize: bool = False,
    progress: bool = True,
) -> Path:
    """Convert a llama/qwen2 GGUF file into an mlx-lm model directory.

    Q4_0/Q4_1 (4 bit) and Q8_0 (8 bit) tensors stay quantized as MLX affine
    triples (weight, scales, biases; group size 32) unless ``dequantize``.
    llama's q/k rows are un-permuted back to Hugging Face order.

    Args:
        gguf_path: the ``.gguf`` file.
        out_dir: directory to write (created if missing).
        dtype: "float16" (default), "bfloat16" or "float32": the dtype of float
            tensors (norms, F16/F32 matrices), of quantization scales/biases and
            of dequantized weights. GGUF scales are fp16, so "bfloat16" rounds them.
        dequantize: write float weights instead of quantized ones.
        progress: show a tqdm bar over the tensors.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ValueError: unsupported architecture, tensor type or tensor name, or a
            malformed/truncated file.
    """
    from tqdm import tqdm

    from .gguf_tokenizer import write_tokenizer_from_gguf

    dtype = dtype or "float16"
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}.")
    info = read_gguf(gguf_path)
    arch = _check_convertible(info)
    config = _hf_config(info, arch)
    check_config(config, f"{info.path} (as config.json)")  # e.g. kv heads not dividing heads
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if "tokenizer.ggml.model" in info.metadata:
        write_tokenizer_from_gguf(info.metadata, out)
    else:
        warnings.warn(f"{info.path} has no tokenizer metadata; writing the model without one.")

    # llama.cpp interleaves rotary pairs only for llama (qwen2 uses NeoX rope, unpermuted).
    heads = {"self_attn.q_proj": config["num_attention_heads"],
             "self_attn.k_proj": config["num_key_value_heads"]}
    weights, module_bits = {}, {}
    for t in tqdm(info.tensors, desc="Converting GGUF", unit="tensor", disable=not progress):
        name = hf_tensor_name(t.name)
        module = name.rpartition(".")[0]
        n_head = heads.get(module.split(".", 3)[-1]) if arch == "llama" else None
        start = info.data_offset + t.offset
        if t.type_name not in _QUANT_BITS:
            w = float_tensor(info.path, start, t.type_name, t.shape)
            weights[name] = _cast(unpermute_rows(w, n_head) if n_head else w, dtype)
            continue
        bits = _QUANT_BITS[t.type_name]
        triple = quant_triple(info.path, start, t.type_name, t.shape)
        if n_head:
            triple = [unpermute_rows(a, n_head) for a in triple]
        # Only Linear/Embedding weights can stay packed; a quantized norm is expanded.
        is_matrix = name.endswith(".weight") and len(t.shape) == 2 and not module.endswith(_NORMS)
        if is_matrix and not dequantize:
            weights[name] = triple[0]
            weights[module + ".scales"] = _cast(triple[1], dtype)
            weights[module + ".biases"] = _cast(triple[2], dtype)
            module_bits[module] = bits
        else:
            # Dequantize in float32 so the only rounding is the final cast.
            w, s, b = (a.reshape(-1, a.shape[-1]) for a in triple)
            full = dequantize_numpy(w, s, b, group_size=_GROUP_SIZE, bits=bits)
            weights[name] = _cast(full.reshape(tuple(reversed(t.shape))), dtype)

    if module_bits:
        counts: dict = {}
        for b in module_bits.values():
            counts[b] = counts.get(b, 0) + 1
        default = max(sorted(counts), key=lambda b: counts[b])  # most common; ties -> fewer bits
        quant = {"group_size": _GROUP_SIZE, "bits": default, "mode": "affine"}
        for module, b in sorted(module_bits.items()):
            if b != default:  # mlx-lm's per-module override, keyed by the module path
                quant[module] = {"group_size": _GROUP_SIZE, "bits": b, "mode": "affine"}
        config["quantization"] = quant
        config["quantization_config"] = dict(quant)
    config["torch_dtype"] = dtype
    save_model_dir(out, weights, config, progress=progress)
    return out
