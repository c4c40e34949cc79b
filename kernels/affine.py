"""MLX affine quantization: a NumPy twin of ``mx.dequantize`` (mode="affine").

Layout (MLX's own): a quantized matrix of logical shape ``[out, in]`` is stored as

* ``w_q``    uint32 ``[out, in * bits / 32]`` -- ``32 / bits`` codes per word,
  element ``j`` of a word is ``(word >> (bits * j)) & (2**bits - 1)``, words and
  elements both running left to right along the row;
* ``scales`` ``[out, in / group_size]`` and ``biases`` of the same shape,
  any float dtype;

and ``w[o, g * group_size + k] = scales[o, g] * q + biases[o, g]``.

:func:`dequantize_numpy` needs only NumPy (it is what the NumPy backend uses
at load time).  :func:`dequantize` takes MLX arrays and calls ``mx.dequantize``
(the reference), importing MLX lazily so this module stays importable without it.
"""

from __future__ import annotations

import sys

import numpy as np

SUPPORTED_BITS = (2, 4, 8)

# Rows dequantized per block: bounds the temporary uint32/float32 buffers
# (a 49152 x 576 4-bit embedding would otherwise need several 100 MB copies).
_ROW_BLOCK = 2048


def check_params(group_size: int, bits: int) -> None:
    """Raise ValueError unless (group_size, bits) is something this kernel handles."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(
            f"affine dequantization: bits={bits} is not supported "
            f"(supported: {', '.join(map(str, SUPPORTED_BITS))}); "
            "re-quantize the model with 2, 4 or 8 bits"
        )
    if not isinstance(group_size, (int, np.integer)) or group_size <= 0:
        raise ValueError(f"affine dequantization: group_size must be a positive int, got {group_size!r}")


def _as_float32(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == np.float32:
        return a
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"affine dequantization: scales/biases must be floating point, got {a.dtype}")
    return a.astype(np.float32)


def unpacked_size(w_q_cols: int, bits: int) -> int:
    """Number of logical input columns held in ``w_q_cols`` uint32 words."""
    return w_q_cols * (32 // bits)


def dequantize_numpy(
    w_q: np.ndarray,
    scales: np.ndarray,
    biases: np.ndarray,
    group_size: int,
    bits: int,
) -> np.ndarray:
    """Dequantize MLX affine-quantized weights with NumPy; returns float32 ``[..., out, in]``.

    ``scales``/``biases`` may be float16/float32/float64 (bfloat16 must already
    have been widened to float32, NumPy has no bfloat16); the arithmetic is done
    in float32 exactly as ``scale * q + bias``.
    """
    check_params(group_size, bits)
    w_q = np.asarray(w_q)
    if w_q.dtype != np.uint32:
        raise ValueError(f"affine dequantization: packed weights must be uint32, got {w_q.dtype}")
    if w_q.ndim < 1:
        raise ValueError("affine dequantization: packed weights must have at least 1 dimension")
    scales = _as_float32(scales)
    biases = _as_float32(biases)
    n_in = unpacked_size(w_q.shape[-1], bits)
    if n_in % group_size != 0:
        raise ValueError(f"affine dequantization: {n_in} input columns are not a multiple of group_size={group_size}")
    n_groups = n_in // group_size
    expect = w_q.shape[:-1] + (n_groups,)
    if scales.shape != expect or biases.shape != expect:
        raise ValueError(
            f"affine dequantization: packed weight {w_q.shape} with bits={bits}, "
            f"group_size={group_size} needs scales/biases of shape {expect}, "
            f"got {scales.shape} / {biases.shape} (wrong bits or group_size in config?)"
        )

    lead = w_q.shape[:-1]
    rows = int(np.prod(lead, dtype=np.int64)) if lead else 1
    wq2 = w_q.reshape(rows, w_q.shape[-1])
    sc2 = scales.reshape(rows, n_groups)
    bi2 = biases.reshape(rows, n_groups)
    out = np.empty((rows, n_in), dtype=np.float32)

    per_word = 32 // bits
    shifts = (np.arange(per_word, dtype=np.uint32) * np.uint32(bits)).astype(np.uint32)
    mask = np.uint32((1 << bits) - 1)
    # On little-endian machines the words' bytes are the codes in order (8 bit) or
    # two codes each, low nibble first (4 bit): unpack bytes, 4x less work than words.
    byte_path = sys.byteorder == "little" and bits in (4, 8)
    for r0 in range(0, rows, _ROW_BLOCK):
        r1 = min(rows, r0 + _ROW_BLOCK)
        if byte_path:
            b = np.ascontiguousarray(wq2[r0:r1]).view(np.uint8)
            codes = b if bits == 8 else np.stack([b & 0x0F, b >> 4], axis=-1)
        else:
            codes = (wq2[r0:r1, :, None] >> shifts) & mask  # (r, words, per_word)
        blk = out[r0:r1].reshape(r1 - r0, n_groups, group_size)
        # Integer codes convert to float32 exactly inside the multiply (one pass, no temporary).
        np.multiply(codes.reshape(r1 - r0, n_groups, group_size), sc2[r0:r1, :, None], out=blk, dtype=np.float32)
        blk += bi2[r0:r1, :, None]
    return out.reshape(lead + (n_in,))


def quantize_numpy(w: np.ndarray, group_size: int = 64, bits: int = 4):
    """Affine-quantize ``w`` [..., in] the way MLX lays it out; returns (w_q, scales, biases).

    A convenience for tests and tools that run without MLX.  It uses a plain
    min/max grid (scale = (max - min) / (2**bits - 1), bias = min), which is
    close to but not bit-identical with ``mx.quantize``; what matters for
    loading is only that :func:`dequantize_numpy` inverts the packing.
    """
    check_params(group_size, bits)
    w = np.asarray(w, dtype=np.float32)
    n_in = w.shape[-1]
    if n_in % group_size or (n_in * bits) % 32:
        raise ValueError(
            f"quantize_numpy: last dim {n_in} must be a multiple of group_size={group_size} and of {32 // bits}"
        )
    lead = w.shape[:-1]
    g = w.reshape(lead + (n_in // group_size, group_size))
    lo = g.min(axis=-1)
    hi = g.max(axis=-1)
    n_levels = (1 << bits) - 1
    scales = (hi - lo) / n_levels
    scales = np.where(scales == 0, np.float32(1.0), scales).astype(np.float32)
    biases = lo.astype(np.float32)
    q = np.clip(np.rint((g - biases[..., None]) / scales[..., None]), 0, n_levels).astype(np.uint32)
    per_word = 32 // bits
    q = q.reshape(lead + (n_in // per_word, per_word))
    shifts = (np.arange(per_word, dtype=np.uint32) * np.uint32(bits)).astype(np.uint32)
    w_q = np.bitwise_or.reduce(q << shifts, axis=-1).astype(np.uint32)
    return w_q, scales, biases


def dequantize(w_q, scales, biases, group_size: int, bits: int):
    """Dequantize with the MLX reference (``mx.dequantize``) when given MLX arrays.

    NumPy inputs are routed to :func:`dequantize_numpy` so callers without MLX
    can use one entry point.
    """
    check_params(group_size, bits)
    if isinstance(w_q, np.ndarray):
        return dequantize_numpy(w_q, scales, biases, group_size, bits)
    import mlx.core as mx  # lazy: only the MLX path needs it

    return mx.dequantize(w_q, scales, biases, group_size=group_size, bits=bits, mode="affine")
