"""GGUF import: convert a llama/qwen2 GGUF file into an mlx-lm model directory.

``convert_gguf`` turns a llama/qwen2 GGUF into ``config.json`` +
``model.safetensors`` + tokenizer files that load in mlx-lm and in
``mlx_synapse.loader``. Q4_0/Q4_1/Q8_0 tensors stay quantized: they map
exactly onto MLX's affine format with group size 32 (``gguf_blocks``), and so do
Q4_K (4 bit) and Q3_K, Q5_K, Q5_0, Q5_1, Q8_K, IQ4_NL, IQ4_XS (8-bit codes):
per run of 32 weights they are ``scale * code + bias`` (``gguf_kquants.affine_triple``;
scales exact in float32, rounded in float16/bfloat16). Q2_K and Q6_K are not, and are
dequantized bit-exactly (``gguf_kquants``) and written as floats, or re-quantized to
MLX affine blocks on request (``quantize``). A llama3 ``rope_freqs`` tensor
becomes the equivalent Hugging Face ``rope_scaling``. The container
itself is parsed by ``gguf_reader`` (``read_gguf`` and its types are re-exported here).
Everything here needs NumPy only, so the NumPy backend imports GGUFs without MLX.
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Union

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
from ..kernels.affine import check_params, dequantize_numpy, quantize_numpy
from ..models.config_check import check_config
from ..models.rope import rope_inv_freq
from . import gguf_kquants
from .gguf_blocks import bf16_bits_to_f32, f32_to_bf16_bits, float_tensor, quant_triple, read_raw
from .save import BF16, save_model_dir

_FLOAT_TYPES = ("F32", "F16", "BF16")
_QUANT_BITS = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}  # kept as MLX affine blocks, exactly
SUPPORTED_TENSOR_TYPES = _FLOAT_TYPES + tuple(_QUANT_BITS) + gguf_kquants.TYPES
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


ROPE_FREQS = "rope_freqs.weight"


def _llama3_divisors(head_dim: int, theta: float, scaling: dict) -> np.ndarray:
    """What llama.cpp stores as ``rope_freqs`` for an HF llama3 ``rope_scaling``: base / scaled frequency."""
    base = rope_inv_freq(head_dim, theta).astype(np.float64)
    return base / rope_inv_freq(head_dim, theta, scaling).astype(np.float64)


def _llama3_candidates(r: np.ndarray, x: np.ndarray, factor: float, known: list):
    """``(high_freq_factor, original context)`` pairs (low_freq_factor 1) that may produce ``r``.

    ``x`` is 1 / wavelength per frequency. The table is 1 below wavelength
    ``original / high``, ``factor`` above ``original``, and in between
    ``1 / r = 1/f + s (1 - 1/f)`` with ``s = (original x - 1) / (high - 1)``.
    """
    s = (1 / r - 1 / factor) / (1 - 1 / factor)
    at_factor, at_one = r >= factor * (1 - 1e-6), r <= 1 + 1e-6
    mid = ~at_factor & ~at_one
    lo = 1 / x[~at_factor].min() if (~at_factor).any() else 0.0  # original >= every shorter wavelength
    hi = 1 / x[at_factor].max() if at_factor.any() else float("inf")
    originals = list(known)
    if mid.sum() >= 2:  # s is linear in x: its zero is 1 / original
        slope, intercept = np.polyfit(x[mid], s[mid], 1)
        if slope > 0 and intercept < 0:
            originals += [float(round(-slope / intercept)), -slope / intercept]
    if 0 < lo < hi:
        k = math.ceil(math.log2(lo))
        originals += [2.0 ** j for j in range(k, k + 40) if 2.0 ** j <= hi]  # round numbers first
        originals.append(math.sqrt(lo * hi) if math.isfinite(hi) else 2 * lo)
    w1 = 1 / x[at_one].min() if at_one.any() else 0.0  # longest unscaled wavelength
    for orig in originals:
        if mid.any():
            high = 1 + float(np.mean((orig * x[mid] - 1) / s[mid]))
            highs = [round(high, k) for k in (2, 4, 6)] + [high]  # the simplest value that fits
        else:  # no blended frequency: any high with orig / high above every unscaled wavelength
            highs = [4.0] + ([math.sqrt(orig / w1)] if w1 > 0 else [])
        for high in highs:
            if high > 1:
                yield high, orig


def llama3_scaling_from_rope_freqs(freqs: np.ndarray, head_dim: int, theta: float,
                                   original_context: Optional[int] = None) -> Optional[dict]:
    """The HF llama3 ``rope_scaling`` whose frequencies equal a GGUF ``rope_freqs`` table.

    llama.cpp divides each rotary frequency by ``rope_freqs[i]``: 1 for short
    wavelengths, ``factor`` for long ones, and a smooth blend between. Only the
    two wavelength bounds (``original / high_freq_factor`` and ``original /
    low_freq_factor``) matter, so ``low_freq_factor`` is taken as 1 (Llama 3.x's
    value) and the rest is solved from the table; every candidate is checked by
    recomputing the whole table.

    Args:
        freqs: the ``rope_freqs`` table, ``head_dim // 2`` divisors.
        head_dim: rotary dimension.
        theta: ``rope_theta``.
        original_context: a known pre-scaling context length, tried first.

    Returns:
        The ``rope_scaling`` dict, or None when every divisor is 1 (no scaling).

    Raises:
        ValueError: no llama3 scaling reproduces the table.
    """
    r = np.asarray(freqs, dtype=np.float64).reshape(-1)
    if r.shape != (head_dim // 2,) or not np.all(np.isfinite(r)) or r.min() <= 0:
        raise ValueError(f"{ROPE_FREQS} must hold {head_dim // 2} positive finite divisors "
                         f"(head_dim {head_dim}) but has {r.size} values in "
                         f"[{r.min() if r.size else 'n/a'}, {r.max() if r.size else 'n/a'}].")
    if np.all(r == 1.0):
        return None
    factor = float(np.float32(r.max()))
    x = rope_inv_freq(head_dim, theta).astype(np.float64) / (2 * math.pi)  # 1 / wavelength
    if factor > 1 and np.all(np.diff(r) >= 0):  # divisors grow with wavelength
        known = [float(c) for c in (original_context, 8192) if c]
        for high, orig in _llama3_candidates(r, x, factor, known):
            scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
                       "high_freq_factor": high,
                       "original_max_position_embeddings": int(orig) if float(orig).is_integer() else orig}
            if np.allclose(_llama3_divisors(head_dim, theta, scaling), r, rtol=2e-6, atol=0):
                return scaling
    raise ValueError(
        f"{ROPE_FREQS} (divisors {r.min():.4g}..{r.max():.4g}) matches no llama3 rope scaling "
        "(factor, low/high frequency factors, original context); convert the model from its Hugging "
        "Face checkpoint instead."
    )


def _expected_shapes(config: dict) -> dict:
    """GGUF-order shapes (row length first) of each per-layer tensor kind and global tensor."""
    h, i = config["hidden_size"], config["intermediate_size"]
    q, kv = config["num_attention_heads"] * config["head_dim"], config["num_key_value_heads"] * config["head_dim"]
    return {
        "token_embd.weight": (h, config["vocab_size"]), "output.weight": (h, config["vocab_size"]),
        "output_norm.weight": (h,), "attn_norm.weight": (h,), "ffn_norm.weight": (h,),
        "attn_q.weight": (h, q), "attn_k.weight": (h, kv), "attn_v.weight": (h, kv), "attn_output.weight": (q, h),
        "attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,), "attn_output.bias": (h,),
        "ffn_gate.weight": (h, i), "ffn_up.weight": (h, i), "ffn_down.weight": (i, h),
        "ffn_gate.bias": (i,), "ffn_up.bias": (i,), "ffn_down.bias": (h,),
    }


def _check_shapes(info: GGUFInfo, config: dict) -> None:
    """Every tensor's shape and layer index against the metadata, before anything is written."""
    want = _expected_shapes(config)
    layers = config["num_hidden_layers"]
    for t in info.tensors:
        if t.name == ROPE_FREQS:
            continue
        parts = t.name.split(".")
        if parts[0] == "blk":
            if int(parts[1]) >= layers:
                raise ValueError(f"{info.path}: tensor {t.name!r} ({t.type_name}) belongs to layer {parts[1]} "
                                 f"but the metadata has {layers} layers; the file is corrupt.")
            key = ".".join(parts[2:])
        else:
            key = t.name
        if key in want and tuple(t.shape) != want[key]:
            raise ValueError(
                f"{info.path}: tensor {t.name!r} ({t.type_name}) has shape {list(t.shape)} but the metadata "
                f"(hidden {config['hidden_size']}, {config['num_attention_heads']} heads / "
                f"{config['num_key_value_heads']} kv heads of {config['head_dim']}, feed-forward "
                f"{config['intermediate_size']}, vocab {config['vocab_size']}) needs {list(want[key])}; "
                "the file is corrupt — re-download or re-export it."
            )


def _check_convertible(info: GGUFInfo) -> str:
    """Validate architecture, tensor types and names before any heavy work."""
    arch = info.metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"{info.path}: GGUF architecture {arch!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}."
        )
    bad = [f"{t.name} ({t.type_name})" for t in info.tensors if t.type_name not in SUPPORTED_TENSOR_TYPES]
    if bad:
        raise ValueError(
            f"{info.path}: unsupported GGUF tensor type(s): {', '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}. Supported types: "
            f"{', '.join(SUPPORTED_TENSOR_TYPES)}. Fix: re-export the GGUF in one of them, e.g. "
            "Q4_K_M, Q8_0 or F16 (llama-quantize), or convert from the Hugging Face checkpoint."
        )
    rope = [t for t in info.tensors if t.name == ROPE_FREQS]
    if rope and (arch != "llama" or rope[0].type_name != "F32" or len(rope[0].shape) != 1):
        raise ValueError(
            f"{info.path}: tensor {ROPE_FREQS!r} ({rope[0].type_name}, shape {list(rope[0].shape)}) is "
            "not the 1-D F32 llama3 frequency table llama.cpp writes for architecture 'llama'."
        )
    unknown = [t.name for t in info.tensors if t.name != ROPE_FREQS and hf_tensor_name(t.name) is None]
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


def _rounding(x: np.ndarray, dtype: str) -> float:
    """Largest relative change of ``x`` (float32) when stored in ``dtype`` (0.0: exact)."""
    if dtype == "float32" or not x.size:
        return 0.0
    if dtype == "bfloat16":
        back = bf16_bits_to_f32(f32_to_bf16_bits(x))
    else:
        with np.errstate(over="ignore"):  # beyond float16: inf, reported as an infinite error
            back = x.astype(np.float16).astype(np.float32)
    nz = x != 0
    return float(np.max(np.abs(back[nz] - x[nz]) / np.abs(x[nz]), initial=0.0))


# Affine forms whose float32 product scale * code may round (the float decoding does not).
_LAST_BIT = ("IQ4_XS", "Q8_K")
_DTYPES = ("float16", "bfloat16", "float32")
_F16_MAX = 65504.0


def _summary(actions: dict) -> list:
    """One line per (source type, outcome): ``Q4_K -> float16, dequantized (7 tensors)``.

    ``actions`` maps (type, outcome) to (tensor count, largest relative rounding or 0).
    """
    lines = []
    for (src, outcome), (n, err) in sorted(actions.items()):
        note = f" (relative error <= {err:.1e})" if err else ""
        lines.append(f"{src} -> {outcome}{note} ({n} tensor{'s' if n != 1 else ''})")
    return lines


def _count_action(actions: dict, key: tuple, err: float = 0.0) -> None:
    n, worst = actions.get(key, (0, 0.0))
    actions[key] = (n + 1, max(worst, err))


def convert_gguf(
    gguf_path: Union[str, Path],
    out_dir: Union[str, Path],
    *,
    dtype: Optional[str] = None,
    dequantize: bool = False,
    quantize: bool = False,
    q_bits: int = 4,
    q_group_size: int = 64,
    progress: bool = True,
    log: Optional[Callable[[str], None]] = None,
) -> Path:
    """Convert a llama/qwen2 GGUF file into an mlx-lm model directory.

    Q4_0/Q4_1/Q4_K (4 bit) and Q8_0/Q3_K/Q5_K/Q5_0/Q5_1/Q8_K/IQ4_NL/IQ4_XS
    (8-bit codes) matrices stay quantized as MLX affine triples (weight,
    scales, biases; group size 32) unless ``dequantize``. Q2_K and Q6_K
    tensors are dequantized exactly to float32 and written in ``dtype``, or,
    with ``quantize``, every float matrix (dequantized or F16/F32/BF16 in the
    file) is affine-quantized to ``q_bits`` with groups of ``q_group_size``. llama's q/k rows are un-permuted back to Hugging Face
    order; a llama3 ``rope_freqs`` table becomes ``rope_scaling``.

    Args:
        gguf_path: the ``.gguf`` file.
        out_dir: directory to write (created if missing).
        dtype: "float16" (default), "bfloat16" or "float32": the dtype of float
            tensors (norms, F16/F32 matrices), of quantization scales/biases and
            of dequantized weights. GGUF scales are fp16, so "bfloat16" rounds them.
        dequantize: write float weights instead of quantized ones.
        quantize: re-quantize float (and dequantized) matrices to MLX affine blocks.
        q_bits: bits of ``quantize`` (2, 3, 4, 5, 6 or 8).
        q_group_size: group size of ``quantize`` (32, 64 or 128).
        progress: show a tqdm bar over the tensors.
        log: receives one line per source type saying what became of it
            (default: stderr when ``progress``, else nothing).

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
    if quantize and dequantize:
        raise ValueError("choose one of dequantize (float weights) and quantize (affine blocks), not both.")
    if quantize:
        check_params(q_group_size, q_bits)
    if log is None:
        log = (lambda line: print(f"[convert] {line}", file=sys.stderr)) if progress else (lambda line: None)
    info = read_gguf(gguf_path)
    arch = _check_convertible(info)
    config = _hf_config(info, arch)
    tensors = {t.name: t for t in info.tensors}
    if ROPE_FREQS in tensors:
        rope = tensors[ROPE_FREQS]
        freqs = float_tensor(info.path, info.data_offset + rope.offset, "F32", rope.shape)
        try:
            scaling = llama3_scaling_from_rope_freqs(
                freqs, config["head_dim"], config["rope_theta"],
                info.metadata.get(arch + ".rope.scaling.original_context_length"))
        except ValueError as e:
            raise ValueError(f"{info.path}: {e}") from None
        if scaling and "rope_scaling" in config:
            raise ValueError(f"{info.path}: both {ROPE_FREQS} and {config['rope_scaling']['type']} rope "
                             "scaling are set; the file is inconsistent — re-export it.")
        if scaling:
            config["rope_scaling"] = scaling
            log(f"{ROPE_FREQS} -> rope_scaling llama3 (factor {scaling['factor']:g}, low/high frequency "
                f"factors {scaling['low_freq_factor']:g}/{scaling['high_freq_factor']:g}, original context "
                f"{scaling['original_max_position_embeddings']:g})")
    check_config(config, f"{info.path} (as config.json)")  # e.g. kv heads not dividing heads
    _check_shapes(info, config)

    # llama.cpp interleaves rotary pairs only for llama (qwen2 uses NeoX rope, unpermuted).
    heads = {"self_attn.q_proj": config["num_attention_heads"],
             "self_attn.k_proj": config["num_key_value_heads"]}
    weights, module_quant, actions = {}, {}, {}
    for t in tqdm(info.tensors, desc="Converting GGUF", unit="tensor", disable=not progress):
        if t.name == ROPE_FREQS:
            continue
        name = hf_tensor_name(t.name)
        module = name.rpartition(".")[0]
        n_head = heads.get(module.split(".", 3)[-1]) if arch == "llama" else None
        start = info.data_offset + t.offset
        # Only Linear/Embedding weights can be packed; norms and biases stay float.
        is_matrix = name.endswith(".weight") and len(t.shape) == 2 and not module.endswith(_NORMS)
        if (t.type_name in _QUANT_BITS or t.type_name in gguf_kquants.AFFINE_BITS) and is_matrix \
                and not dequantize:
            if t.type_name in _QUANT_BITS:  # fp16 scales; biases exact multiples of them
                bits = _QUANT_BITS[t.type_name]
                triple = [a.astype(np.float32) if a.dtype == np.float16 else a
                          for a in quant_triple(info.path, start, t.type_name, t.shape)]
            else:
                bits = gguf_kquants.AFFINE_BITS[t.type_name]
                raw = read_raw(info.path, start, t.nbytes, np.uint8)
                triple = gguf_kquants.affine_triple(raw, t.type_name, t.shape, name=t.name)
            rounding = max(_rounding(triple[1], dtype), _rounding(triple[2], dtype))
            if not math.isfinite(rounding):
                raise ValueError(
                    f"{info.path}: tensor {t.name!r} ({t.type_name}) has block scales beyond {dtype}'s "
                    "range; convert with --dtype float32."
                )
            if rounding:
                outcome = f"blocks kept, scales rounded to {dtype}"
            elif t.type_name in _LAST_BIT:
                outcome = "blocks kept (float32 rounding only)"
            else:
                outcome = "blocks kept exactly"
            if n_head:
                triple = [unpermute_rows(a, n_head) for a in triple]
            weights[name] = triple[0]
            weights[module + ".scales"] = _cast(triple[1], dtype)
            weights[module + ".biases"] = _cast(triple[2], dtype)
            module_quant[module] = (bits, _GROUP_SIZE)
            _count_action(actions, (t.type_name, f"{bits}-bit affine (group {_GROUP_SIZE}), {outcome}"), rounding)
            continue
        if t.type_name in _FLOAT_TYPES:
            w, how = float_tensor(info.path, start, t.type_name, t.shape), ""
        elif t.type_name in _QUANT_BITS:
            # Dequantize in float32 so the only rounding is the final cast.
            ws, s, b = (a.reshape(-1, a.shape[-1]) for a in quant_triple(info.path, start, t.type_name, t.shape))
            full = dequantize_numpy(ws, s, b, group_size=_GROUP_SIZE, bits=_QUANT_BITS[t.type_name])
            w, how = full.reshape(tuple(reversed(t.shape))), ", dequantized"
        else:
            raw = read_raw(info.path, start, t.nbytes, np.uint8)
            w, how = gguf_kquants.dequantize(raw, t.type_name, t.shape, name=t.name), ", dequantized"
        if n_head:
            w = unpermute_rows(w, n_head)
        if quantize and is_matrix and t.shape[0] % q_group_size == 0:
            wq, sq, bq = quantize_numpy(w, group_size=q_group_size, bits=q_bits)
            weights[name] = wq
            weights[module + ".scales"] = _cast(sq, dtype)
            weights[module + ".biases"] = _cast(bq, dtype)
            module_quant[module] = (q_bits, q_group_size)
            outcome = f"{q_bits}-bit affine (group {q_group_size}){how or ''}, re-quantized"
        else:
            if dtype == "float16" and w.size and float(np.max(np.abs(w))) > _F16_MAX:
                raise ValueError(
                    f"{info.path}: tensor {t.name!r} ({t.type_name}) holds values up to "
                    f"{float(np.max(np.abs(w))):.4g}, beyond float16's range; convert with --dtype bfloat16 "
                    "or float32."
                )
            weights[name] = _cast(w, dtype)
            outcome = f"{dtype}{how}"
            if quantize and is_matrix:
                outcome += f", kept float (rows of {t.shape[0]} not a multiple of {q_group_size})"
        _count_action(actions, (t.type_name, outcome))

    if module_quant:
        counts: dict = {}
        for q in module_quant.values():
            counts[q] = counts.get(q, 0) + 1
        default = max(sorted(counts), key=lambda q: counts[q])  # most common; ties -> fewer bits
        quant = {"group_size": default[1], "bits": default[0], "mode": "affine"}
        for module, (b, g) in sorted(module_quant.items()):
            if (b, g) != default:  # mlx-lm's per-module override, keyed by the module path
                quant[module] = {"group_size": g, "bits": b, "mode": "affine"}
        config["quantization"] = quant
        config["quantization_config"] = dict(quant)
    config["torch_dtype"] = dtype
    for line in _summary(actions):
        log(line)
    # Written only now: a tensor refused above (e.g. beyond float16) leaves no partial directory.
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if "tokenizer.ggml.model" in info.metadata:
        write_tokenizer_from_gguf(info.metadata, out)
    else:
        warnings.warn(f"{info.path} has no tokenizer metadata; writing the model without one.")
    save_model_dir(out, weights, config, progress=progress)
    return out
