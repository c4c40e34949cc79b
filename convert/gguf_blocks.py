"""GGML blocks to MLX's affine layout with NumPy alone (no MLX needed to import a GGUF).

Q4_0, Q4_1 and Q8_0 blocks of 32 map exactly onto MLX affine triples with group
size 32 (``kernels/affine.py`` describes the layout):

* Q4_0 (fp16 d, 16 bytes of nibbles): ``w = d * (q - 8)``  -> scale d, bias -8d
* Q4_1 (fp16 d, fp16 m, nibbles):     ``w = d * q + m``    -> scale d, bias m
* Q8_0 (fp16 d, 32 int8):             ``w = d * q``        -> codes q + 128, scale d, bias -128d

A GGML nibble block keeps element j (j < 16) in the low nibble of byte j and
element j + 16 in its high nibble; MLX packs consecutive elements low nibble
first. The biases are exact in fp16 (a power-of-two multiple of d).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

BLOCK = 32
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}
BITS = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}
_FLOAT_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}


def read_raw(path: Path, offset: int, count: int, dtype) -> np.ndarray:
    """``count`` items of ``dtype`` at byte ``offset`` of ``path``."""
    return np.fromfile(path, dtype=dtype, count=count, offset=offset)


def float_tensor(path: Path, offset: int, type_name: str, shape: tuple) -> np.ndarray:
    """An F32/F16 tensor as stored, or a BF16 one widened exactly to float32.

    ``shape`` is GGUF order (row length first); the result has NumPy order.
    """
    arr = read_raw(path, offset, math.prod(shape), _FLOAT_DTYPES[type_name]).reshape(tuple(reversed(shape)))
    return bf16_bits_to_f32(arr) if type_name == "BF16" else arr


def quant_triple(path: Path, offset: int, type_name: str, shape: tuple):
    """``(codes uint32, scales fp16, biases fp16)`` in MLX layout for a Q4_0/Q4_1/Q8_0 tensor.

    Shapes: codes ``(*rows, row_len * bits / 32)``, scales and biases ``(*rows, row_len / 32)``.
    """
    rows = tuple(reversed(shape[1:]))
    n_blocks = math.prod(shape) // BLOCK
    raw = read_raw(path, offset, n_blocks * BLOCK_BYTES[type_name], np.uint8).reshape(n_blocks, -1)
    d = raw[:, 0:2].copy().view("<f2")[:, 0]
    if type_name == "Q8_0":
        codes = (raw[:, 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)  # (n, 32)
        bias = (d.astype(np.float32) * -128.0).astype(np.float16)
    else:
        qs = raw[:, 4:] if type_name == "Q4_1" else raw[:, 2:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1)  # (n, 32): elements in order
        codes = q[:, 0::2] | (q[:, 1::2] << 4)  # MLX: two elements a byte, low nibble first
        if type_name == "Q4_1":
            bias = raw[:, 2:4].copy().view("<f2")[:, 0]
        else:
            bias = (d.astype(np.float32) * -8.0).astype(np.float16)
    words = np.ascontiguousarray(codes).view("<u4").reshape(*rows, -1).astype(np.uint32)
    per_row = shape[0] // BLOCK
    return words, d.astype(np.float16).reshape(*rows, per_row), bias.astype(np.float16).reshape(*rows, per_row)


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32, exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even (as MLX does)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    nan = np.isnan(x)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    return np.where(nan, np.uint16(0x7FC0), rounded)
