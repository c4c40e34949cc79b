"""K-quant / IQ4 / Q5 dequantization: bit-exact against gguf.quants over random raw blocks, and bad sizes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402

from mlx_synapse.convert.gguf_kquants import AFFINE_BITS, BLOCKS, TYPES, affine_triple, dequantize  # noqa: E402
from mlx_synapse.kernels.affine import dequantize_numpy  # noqa: E402

# Byte offsets of each type's fp16 super-block scales (Q8_K: one fp32 at 0).
HALF_FIELDS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
               "IQ4_NL": (0,), "IQ4_XS": (0,), "Q5_0": (0,), "Q5_1": (0, 2)}
# Any finite fp16 bit pattern (subnormals, -0.0 included): an all-ones exponent loses its top bit.
finite_half_bits = st.integers(0, 0xFFFF).map(lambda b: b & ~0x4000 if b & 0x7C00 == 0x7C00 else b)


@st.composite
def raw_tensors(draw, type_name):
    """(raw bytes, GGUF shape): 1-3 rows of 1-3 blocks of random bytes with finite (drawn) scales."""
    block, size = BLOCKS[type_name]
    rows, per_row = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    n = rows * per_row
    # Seeded random bytes (whole blocks are too large for hypothesis' own byte budget) ...
    raw = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(0, 256, (n, size), dtype=np.uint8)
    # ... with edge-case bytes (0x00, 0xFF: extreme codes and scales) in some blocks.
    for b, v in draw(st.lists(st.tuples(st.integers(0, n - 1), st.sampled_from([0, 0xFF])), max_size=3)):
        raw[b] = v
    if type_name == "Q8_K":
        big = float(np.float32(1e35))  # d * 127 stays finite
        d = np.array(draw(st.lists(st.floats(-big, big, width=32), min_size=n, max_size=n)), np.float32)
        raw[:, 0:4] = d.view(np.uint8).reshape(n, 4)
    else:
        for at in HALF_FIELDS[type_name]:
            bits = np.array(draw(st.lists(finite_half_bits, min_size=n, max_size=n)), "<u2")
            raw[:, at:at + 2] = bits.view(np.uint8).reshape(n, 2)
    return raw.reshape(rows, per_row * size), (per_row * block, rows)


def _bits(x):
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize("type_name", [t for t in TYPES if t != "Q8_K"])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_bit_exact_against_gguf_reference(type_name, data):
    raw, shape = data.draw(raw_tensors(type_name))
    ref = gguf.quants.dequantize(raw, Q[type_name])  # (rows, row_len) float32
    got = dequantize(raw, type_name, shape, name="t")
    assert got.dtype == np.float32 and got.shape == ref.shape == tuple(reversed(shape))
    np.testing.assert_array_equal(_bits(got), _bits(ref))  # every bit, -0.0 and NaN patterns included


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_q8_k_is_scale_times_int8(data):
    # gguf.quants has no Q8_K decoder: ggml's definition is y = d * q with an fp32 d.
    raw, (row_len, rows) = data.draw(raw_tensors("Q8_K"))
    blocks = raw.reshape(-1, 292)
    d = blocks[:, 0:4].copy().view(np.float32)
    ref = (d * blocks[:, 4:260].view(np.int8).astype(np.float32)).reshape(rows, row_len)
    np.testing.assert_array_equal(_bits(dequantize(raw, "Q8_K", (row_len, rows))), _bits(ref))


def test_known_q4_k_block_by_hand():
    # One Q4_K block: d=0.5, dmin=0.25, scale j = j+1 and min j = 2 (j < 4) via the 6-bit packing.
    blk = np.zeros(144, np.uint8)
    blk[0:2] = np.array([0.5], np.float16).view(np.uint8)
    blk[2:4] = np.array([0.25], np.float16).view(np.uint8)
    sc, mn = np.arange(1, 9), np.full(8, 2)
    blk[4:8] = sc[:4]
    blk[8:12] = mn[:4]
    blk[12:16] = (sc[4:] & 0xF) | ((mn[4:] & 0xF) << 4)
    blk[16:144] = 0x93  # every low nibble 3, every high nibble 9
    got = dequantize(blk, "Q4_K", (256, 1))[0].reshape(8, 32)
    want = np.array([0.5 * (j + 1) * (3 if j % 2 == 0 else 9) - 0.25 * 2 for j in range(8)], np.float32)
    np.testing.assert_array_equal(got, np.repeat(want[:, None], 32, axis=1))


@pytest.mark.parametrize("type_name", TYPES)
def test_wrong_size_names_tensor_and_type(type_name):
    block, size = BLOCKS[type_name]
    raw = np.zeros(2 * size - 5, np.uint8)  # a truncated second block
    with pytest.raises(ValueError) as e:
        dequantize(raw, type_name, (block, 2), name="blk.3.ffn_up.weight")
    msg = str(e.value)
    assert "'blk.3.ffn_up.weight'" in msg and type_name in msg and str(2 * size) in msg
    assert "\n" not in msg
    with pytest.raises(ValueError, match=rf"'w' of type {type_name} has row length {block + 1}, not a multiple"):
        dequantize(np.zeros(size, np.uint8), type_name, (block + 1, 1), name="w")


def test_unknown_type_names_tensor():
    with pytest.raises(ValueError, match=r"tensor 'x': GGML type IQ2_XXS cannot be dequantized; supported: Q2_K"):
        dequantize(np.zeros(66, np.uint8), "IQ2_XXS", (256,), name="x")


def test_needs_numpy_only():
    # The decoder must work where neither gguf nor MLX is installed.
    code = ("import sys; sys.modules['gguf'] = sys.modules['mlx'] = sys.modules['torch'] = None\n"
            "import numpy as np\n"
            "from mlx_synapse.convert.gguf_kquants import dequantize\n"
            "print(dequantize(np.zeros(144, np.uint8), 'Q4_K', (256,)).sum())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0.0"


def test_large_tensor_decoded_in_chunks_matches_reference():
    # More blocks than one decoding chunk (2**14): the chunked path must stitch rows exactly.
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 256, (2 * 16384 + 7, 18), dtype=np.uint8)  # 6555 rows of 5 blocks
    raw[:, 0:2] = rng.uniform(-1, 1, (raw.shape[0], 1)).astype(np.float16).view(np.uint8)
    raw = raw.reshape(raw.shape[0] // 5, 5 * 18)  # rows of 160 elements
    got = dequantize(raw, "IQ4_NL", (160, raw.shape[0]))
    np.testing.assert_array_equal(_bits(got), _bits(gguf.quants.dequantize(raw, Q.IQ4_NL)))


@pytest.mark.parametrize("type_name", list(AFFINE_BITS))
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_affine_form_equals_dequantization(type_name, data):
    # MLX's scale * code + bias (float32 scales, group 32) gives the decoder's values: exactly
    # (up to the sign of zero) where every product is exact in float32, else to the last bit.
    raw, shape = data.draw(raw_tensors(type_name))
    w, scales, biases = affine_triple(raw, type_name, shape, name="t")
    bits = AFFINE_BITS[type_name]
    assert w.dtype == np.uint32 and w.shape == (shape[1], shape[0] * bits // 32)
    assert scales.shape == biases.shape == (shape[1], shape[0] // 32) and scales.dtype == np.float32
    with np.errstate(over="ignore", invalid="ignore"):
        got = dequantize_numpy(w, scales, biases, group_size=32, bits=bits)
    ref = dequantize(raw, type_name, shape)
    if type_name in ("IQ4_XS", "Q8_K"):
        # scale * (v + 128) - 128 scale: two float32 roundings of the group's scale magnitude.
        tol = 2 * np.spacing(np.abs(scales).astype(np.float32) * 256)
        err = np.abs(got - ref).reshape(shape[1], -1, 32)
        ok = np.isfinite(ref).reshape(err.shape)
        assert np.all((err <= tol[:, :, None]) | ~ok)
    else:
        np.testing.assert_array_equal(got, ref)


def test_affine_form_refuses_q2_k_and_q6_k():
    with pytest.raises(ValueError, match=r"tensor 'w': GGML type Q6_K has no exact MLX affine form; those that do"):
        affine_triple(np.zeros(210, np.uint8), "Q6_K", (256,), name="w")
    with pytest.raises(ValueError, match=r"'w' of type Q4_K with shape \[256, 2\] needs 288 bytes"):
        affine_triple(np.zeros(200, np.uint8), "Q4_K", (256, 2), name="w")
