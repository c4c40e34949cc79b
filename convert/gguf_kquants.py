"""GGML K-quant and IQ4 blocks to float32 with NumPy alone.

Each ``_dq_*`` decoder takes ``raw``, a ``(n_blocks, block_bytes)`` uint8 array,
and returns ``(n_blocks, block_elems)`` float32. The float arithmetic follows
ggml's ``dequantize_row_*`` step by step (same products in the same order, all
in float32), so the results are bit-identical to ggml and to
``gguf.quants.dequantize``.

Block layouts (``QK_K`` = 256 elements; ``d``/``dmin`` are fp16 unless noted):

* Q2_K  ``scales[16] qs[64] d dmin``: 16 groups of 16; a scale byte holds a
  4-bit scale (low) and a 4-bit min (high); 2-bit codes, ``dl*q - ml``.
* Q3_K  ``hmask[32] qs[64] scales[12] d``: 16 groups of 16, 6-bit signed
  scales (offset 32), 2 low bits in ``qs`` plus a high bit in ``hmask``
  (a clear bit subtracts 4).
* Q4_K  ``d dmin scales[12] qs[128]``: 8 groups of 32, 6-bit scales and mins
  packed in 12 bytes, 4-bit codes.
* Q5_K  ``d dmin scales[12] qh[32] qs[128]``: Q4_K plus a fifth bit per code.
* Q6_K  ``ql[128] qh[64] scales[16] d``: 16 groups of 16, int8 scales,
  6-bit codes offset by 32.
* Q8_K  ``d(fp32) qs[256] bsums[16 x int16]``: ``d*q``.
* IQ4_NL ``d qs[16]``: 32 elements, 4-bit indices into a non-linear table.
* IQ4_XS ``d scales_h(u16) scales_l[4] qs[128]``: 8 groups of 32, 6-bit
  scales (offset 32), IQ4_NL's table.
* Q5_0 ``d qh(u32) qs[16]`` and Q5_1 ``d m qh qs[16]``: 32 elements, 5-bit codes.

In the 4-bit types a 32-byte run of ``qs`` carries two runs of 32 elements:
the low nibbles first, then the high nibbles.
"""

from __future__ import annotations

import math

import numpy as np

QK_K = 256

# type -> (elements per block, bytes per block); ggml.h.
BLOCKS = {
    "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176),
    "Q6_K": (256, 210), "Q8_K": (256, 292), "IQ4_NL": (32, 18), "IQ4_XS": (256, 136),
    "Q5_0": (32, 22), "Q5_1": (32, 24),
}

# The IQ4 non-linear code book (ggml's kvalues_iq4nl).
IQ4_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113],
                      dtype=np.float32)


def _half(raw: np.ndarray, at: int) -> np.ndarray:
    """The fp16 at byte ``at`` of every block, as float32 of shape (n, 1)."""
    return raw[:, at:at + 2].copy().view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(..., k) bytes -> (..., 2k): the k low nibbles, then the k high nibbles."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _bits(x: np.ndarray, shifts, mask: int) -> np.ndarray:
    """(n, 1, k) unsigned -> (n, len(shifts), k): ``(x >> s) & mask`` for each shift."""
    return (x >> np.asarray(shifts, dtype=x.dtype).reshape(1, -1, 1)) & mask


def _k4_scales_mins(s: np.ndarray):
    """Q4_K/Q5_K's 12 packed bytes -> eight 6-bit scales and eight 6-bit mins, (n, 8) each."""
    lo, mid, hi = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    scales = np.concatenate([lo & 0x3F, (hi & 0x0F) | ((lo >> 6) << 4)], axis=1)
    mins = np.concatenate([mid & 0x3F, (hi >> 4) | ((mid >> 6) << 4)], axis=1)
    return scales.astype(np.float32), mins.astype(np.float32)


def _dq_q2_k(raw):
    n = raw.shape[0]
    sc, d, dmin = raw[:, 0:16], _half(raw, 80), _half(raw, 82)
    # Each 32-byte half of qs holds four 2-bit planes of 32 elements.
    q = _bits(raw[:, 16:80].reshape(n * 2, 1, 32), (0, 2, 4, 6), 3).reshape(n, 16, 16)
    dl = (d * (sc & 0x0F).astype(np.float32))[:, :, None]
    ml = (dmin * (sc >> 4).astype(np.float32))[:, :, None]
    return dl * q.astype(np.float32) - ml


def _dq_q3_k(raw):
    n = raw.shape[0]
    d = _half(raw, 108)
    s = raw[:, 96:108]
    low = _nibbles(s[:, 0:8])  # (n, 16): low 4 bits of scales 0..15
    high = _bits(s[:, 8:12].reshape(n, 1, 4), (0, 2, 4, 6), 3).reshape(n, 16)
    scales = (low | (high << 4)).astype(np.int16) - 32
    q = _bits(raw[:, 32:96].reshape(n * 2, 1, 32), (0, 2, 4, 6), 3).reshape(n, 8, 32)
    h = _bits(raw[:, 0:32].reshape(n, 1, 32), range(8), 1)  # (n, 8, 32): plane i's high bits
    q = q.view(np.int8) - ((h ^ 1) << 2).view(np.int8)  # a clear high bit subtracts 4
    dl = (d * scales.astype(np.float32))[:, :, None]
    return dl * q.reshape(n, 16, 16).astype(np.float32)


def _dq_q4_k(raw):
    n = raw.shape[0]
    d, dmin = _half(raw, 0), _half(raw, 2)
    sc, m = _k4_scales_mins(raw[:, 4:16])
    q = _nibbles(raw[:, 16:144].reshape(n, 4, 32)).reshape(n, 8, 32)
    return (d * sc)[:, :, None] * q.astype(np.float32) - (dmin * m)[:, :, None]


def _dq_q5_k(raw):
    n = raw.shape[0]
    d, dmin = _half(raw, 0), _half(raw, 2)
    sc, m = _k4_scales_mins(raw[:, 4:16])
    high = _bits(raw[:, 16:48].reshape(n, 1, 32), range(8), 1)  # (n, 8, 32)
    q = _nibbles(raw[:, 48:176].reshape(n, 4, 32)).reshape(n, 8, 32) | (high << 4)
    return (d * sc)[:, :, None] * q.astype(np.float32) - (dmin * m)[:, :, None]


def _dq_q6_k(raw):
    n = raw.shape[0]
    d = _half(raw, 208)
    scales = raw[:, 192:208].view(np.int8).astype(np.float32)
    low = _nibbles(raw[:, 0:128].reshape(n, 2, 64))  # (n, 2, 128) per half
    high = _bits(raw[:, 128:192].reshape(n * 2, 1, 32), (0, 2, 4, 6), 3).reshape(n, 2, 128)
    q = (low | (high << 4)).view(np.int8) - np.int8(32)  # 0..63 -> -32..31
    return (d * scales)[:, :, None] * q.reshape(n, 16, 16).astype(np.float32)


def _dq_q8_k(raw):
    d = raw[:, 0:4].copy().view("<f4")
    return d * raw[:, 4:260].view(np.int8).astype(np.float32)


def _dq_iq4_nl(raw):
    return _half(raw, 0) * IQ4_VALUES[_nibbles(raw[:, 2:18])]


def _dq_iq4_xs(raw):
    n = raw.shape[0]
    d = _half(raw, 0)
    sh = raw[:, 2:4].copy().view("<u2")  # (n, 1)
    low = ((raw[:, 4:8, None] >> np.array([0, 4], np.uint8)) & 0x0F).reshape(n, 8)  # scales 2i, 2i+1: byte i
    high = (sh >> (2 * np.arange(8, dtype=np.uint16))) & 3
    scales = (low.astype(np.int16) | (high.astype(np.int16) << 4)) - 32
    q = IQ4_VALUES[_nibbles(raw[:, 8:136].reshape(n, 8, 16))]  # (n, 8, 32)
    return (d * scales.astype(np.float32))[:, :, None] * q


def _q5_codes(raw, qh_at):
    qh = raw[:, qh_at:qh_at + 4].copy().view("<u4")  # (n, 1): bit j is element j's fifth bit
    high = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
    return (_nibbles(raw[:, qh_at + 4:qh_at + 20]) | (high << 4)).astype(np.float32)


def _dq_q5_0(raw):
    return (_q5_codes(raw, 2) - 16) * _half(raw, 0)


def _dq_q5_1(raw):
    return _q5_codes(raw, 4) * _half(raw, 0) + _half(raw, 2)


_DECODERS = {
    "Q2_K": _dq_q2_k, "Q3_K": _dq_q3_k, "Q4_K": _dq_q4_k, "Q5_K": _dq_q5_k, "Q6_K": _dq_q6_k,
    "Q8_K": _dq_q8_k, "IQ4_NL": _dq_iq4_nl, "IQ4_XS": _dq_iq4_xs, "Q5_0": _dq_q5_0, "Q5_1": _dq_q5_1,
}
TYPES = tuple(_DECODERS)
_CHUNK_BLOCKS = 1 << 14  # decode 4M elements at a time: bounded temporaries on big matrices


def _blocks(raw: np.ndarray, type_name: str, shape: tuple, name: str) -> np.ndarray:
    """``raw`` as ``(n_blocks, block_bytes)`` after checking it against ``shape``."""
    block, size = BLOCKS[type_name]
    if not shape or shape[0] % block:
        raise ValueError(f"tensor {name!r} of type {type_name} has row length {shape[0] if shape else 0}, "
                         f"not a multiple of its block size {block}; the file is corrupt.")
    n_blocks = math.prod(shape) // block
    raw = np.asarray(raw).reshape(-1).view(np.uint8)
    if raw.size != n_blocks * size:
        raise ValueError(f"tensor {name!r} of type {type_name} with shape {list(shape)} needs "
                         f"{n_blocks * size} bytes ({n_blocks} blocks of {size}) but has {raw.size}; "
                         "the file is truncated or corrupt — re-download it.")
    return raw.reshape(n_blocks, size)


def dequantize(raw: np.ndarray, type_name: str, shape: tuple, name: str = "tensor") -> np.ndarray:
    """Raw GGML blocks of one tensor -> float32 in NumPy order.

    Args:
        raw: the tensor's bytes (any uint8 array; flattened).
        type_name: a ggml type of ``TYPES`` (e.g. "Q4_K").
        shape: GGUF order (row length first).
        name: the tensor's name, for error messages.

    Returns:
        float32 array of shape ``reversed(shape)``.

    Raises:
        ValueError: an unknown type, a row length that is not a whole number of
            blocks, or a byte count that does not match the shape.
    """
    if type_name not in _DECODERS:
        raise ValueError(f"tensor {name!r}: GGML type {type_name} cannot be dequantized; "
                         f"supported: {', '.join(TYPES)}.")
    block = BLOCKS[type_name][0]
    blocks = _blocks(raw, type_name, shape, name)
    n_blocks = blocks.shape[0]
    decode = _DECODERS[type_name]
    if n_blocks <= _CHUNK_BLOCKS:
        return decode(blocks).reshape(tuple(reversed(shape)))
    out = np.empty((n_blocks, block), dtype=np.float32)
    for i in range(0, n_blocks, _CHUNK_BLOCKS):
        out[i:i + _CHUNK_BLOCKS] = decode(blocks[i:i + _CHUNK_BLOCKS]).reshape(-1, block)
    return out.reshape(tuple(reversed(shape)))


# ----------------------------------------------------------------------------- exact MLX affine form
#
# Several of these types are affine per run of 32 weights, w = scale * code + bias, with
# integer codes: they map onto MLX's affine format (group size 32) and keep their blocks.
# Q4_K codes fit 4 bits; the others need MLX's 8 bits (still half of float16, and the
# NumPy backend's C engine runs both). float32 scales and biases reproduce the float
# dequantization exactly for Q4_K, Q5_K, Q3_K, Q5_0, Q5_1 and IQ4_NL (every product is
# exact in float32); IQ4_XS and Q8_K may differ from it in the last bit of float32.
# Q2_K and Q6_K are not: two different mins (Q2_K) or a 13-bit code range (Q6_K) share a
# run of 32. Each ``_aff_*`` returns (codes uint8 (n, elems), scales f32 (n, elems / 32),
# biases f32 (n, elems / 32)).

AFFINE_BITS = {"Q4_K": 4, "Q5_K": 8, "Q3_K": 8, "Q5_0": 8, "Q5_1": 8, "Q8_K": 8, "IQ4_NL": 8, "IQ4_XS": 8}
AFFINE_GROUP = 32


def _aff_q4_k(raw):
    n = raw.shape[0]
    sc, m = _k4_scales_mins(raw[:, 4:16])
    codes = _nibbles(raw[:, 16:144].reshape(n, 4, 32)).reshape(n, 256)
    return codes, _half(raw, 0) * sc, -(_half(raw, 2) * m)


def _aff_q5_k(raw):
    n = raw.shape[0]
    sc, m = _k4_scales_mins(raw[:, 4:16])
    high = _bits(raw[:, 16:48].reshape(n, 1, 32), range(8), 1)
    codes = (_nibbles(raw[:, 48:176].reshape(n, 4, 32)).reshape(n, 8, 32) | (high << 4)).reshape(n, 256)
    return codes, _half(raw, 0) * sc, -(_half(raw, 2) * m)


def _aff_q3_k(raw):
    # w = d * s * q with s in -32..31, q in -4..3: codes 128 - s q in 0..252, scale -d, bias 128 d.
    n = raw.shape[0]
    d = _half(raw, 108)
    s = raw[:, 96:108]
    scales = (_nibbles(s[:, 0:8]) | (_bits(s[:, 8:12].reshape(n, 1, 4), (0, 2, 4, 6), 3).reshape(n, 16) << 4))
    sq = scales.view(np.int8).astype(np.int16) - 32  # (n, 16)
    q = _bits(raw[:, 32:96].reshape(n * 2, 1, 32), (0, 2, 4, 6), 3).reshape(n, 8, 32)
    h = _bits(raw[:, 0:32].reshape(n, 1, 32), range(8), 1)
    q = q.astype(np.int16) - ((h ^ 1).astype(np.int16) << 2)
    codes = (128 - sq[:, :, None] * q.reshape(n, 16, 16)).astype(np.uint8).reshape(n, 256)
    return codes, np.repeat(-d, 8, axis=1), np.repeat(d * 128, 8, axis=1)


def _aff_q5_0(raw):
    d = _half(raw, 0)
    return _q5_codes(raw, 2).astype(np.uint8), d, d * -16


def _aff_q5_1(raw):
    return _q5_codes(raw, 4).astype(np.uint8), _half(raw, 0), _half(raw, 2)


def _aff_q8_k(raw):
    d = raw[:, 0:4].copy().view("<f4")
    codes = (raw[:, 4:260].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return codes, np.repeat(d, 8, axis=1), np.repeat(d * -128, 8, axis=1)


_IQ4_CODES = (IQ4_VALUES.astype(np.int16) + 128).astype(np.uint8)  # 1..241


def _aff_iq4_nl(raw):
    d = _half(raw, 0)
    return _IQ4_CODES[_nibbles(raw[:, 2:18])], d, d * -128


def _aff_iq4_xs(raw):
    n = raw.shape[0]
    d = _half(raw, 0)
    sh = raw[:, 2:4].copy().view("<u2")
    low = ((raw[:, 4:8, None] >> np.array([0, 4], np.uint8)) & 0x0F).reshape(n, 8)
    high = (sh >> (2 * np.arange(8, dtype=np.uint16))) & 3
    dl = d * ((low.astype(np.int16) | (high.astype(np.int16) << 4)) - 32).astype(np.float32)
    return _IQ4_CODES[_nibbles(raw[:, 8:136].reshape(n, 8, 16))].reshape(n, 256), dl, dl * -128


_AFFINE = {"Q4_K": _aff_q4_k, "Q5_K": _aff_q5_k, "Q3_K": _aff_q3_k, "Q5_0": _aff_q5_0, "Q5_1": _aff_q5_1,
           "Q8_K": _aff_q8_k, "IQ4_NL": _aff_iq4_nl, "IQ4_XS": _aff_iq4_xs}


def affine_triple(raw: np.ndarray, type_name: str, shape: tuple, name: str = "tensor"):
    """A type of ``AFFINE_BITS`` as MLX affine ``(codes uint32, scales f32, biases f32)``, group 32.

    Shapes (NumPy order, ``rows`` = ``reversed(shape[1:])``): codes ``(*rows, row_len * bits / 32)``,
    scales and biases ``(*rows, row_len / 32)``. ``mx.dequantize`` of the triple (float32
    scales) equals :func:`dequantize` (see the note above for IQ4_XS and Q8_K).

    Raises:
        ValueError: as :func:`dequantize`, or a type without an exact affine form.
    """
    if type_name not in _AFFINE:
        raise ValueError(f"tensor {name!r}: GGML type {type_name} has no exact MLX affine form; "
                         f"those that do: {', '.join(_AFFINE)}.")
    codes, scales, biases = _AFFINE[type_name](_blocks(raw, type_name, shape, name))
    rows = tuple(reversed(shape[1:]))
    codes = codes.reshape(-1, shape[0])
    if AFFINE_BITS[type_name] == 4:  # MLX: two codes a byte, low nibble first
        codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
    words = np.ascontiguousarray(codes, dtype=np.uint8).view("<u4").astype(np.uint32)
    groups = shape[0] // AFFINE_GROUP
    return (words.reshape(*rows, -1), scales.astype(np.float32).reshape(*rows, groups),
            biases.astype(np.float32).reshape(*rows, groups))
