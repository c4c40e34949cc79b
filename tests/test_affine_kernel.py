"""kernels/affine.py: the NumPy twin of mx.dequantize (MLX affine quantization)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

try:
    from mlx_synapse.kernels import affine
except ImportError:  # source checkout, package not installed: same module via the backend's loader
    from mlx_synapse.backends.numpy.weights import affine

ROWS = [1, 3, 31, 33]
GROUPS = [32, 64, 128]
BITS = [2, 4, 8]


def _mx():
    return pytest.importorskip("mlx.core")


@settings(max_examples=60, deadline=None)
@given(
    rows=st.sampled_from(ROWS),
    group=st.sampled_from(GROUPS),
    bits=st.sampled_from(BITS),
    n_groups=st.integers(1, 4),
    lead=st.sampled_from([(), (2,)]),
    scale=st.sampled_from([1e-3, 1.0, 50.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_mx_dequantize(rows, group, bits, n_groups, lead, scale, seed):
    mx = _mx()
    w = np.random.default_rng(seed).standard_normal(lead + (rows, group * n_groups)).astype(np.float32) * scale
    wq, s, b = mx.quantize(mx.array(w), group_size=group, bits=bits)
    ref = np.array(mx.dequantize(wq, s, b, group_size=group, bits=bits))
    ours = affine.dequantize_numpy(np.array(wq), np.array(s), np.array(b), group, bits)
    assert ours.dtype == np.float32 and ours.shape == w.shape
    np.testing.assert_array_equal(ours, ref)  # fp32 scales: bit-exact

    # float16 scales/biases (what mlx-lm writes): exact against MLX fed the same
    # values in fp32, and within fp16 rounding of MLX's own fp16 arithmetic.
    s16, b16 = s.astype(mx.float16), b.astype(mx.float16)
    ours16 = affine.dequantize_numpy(np.array(wq), np.array(s16), np.array(b16), group, bits)
    ref32 = np.array(mx.dequantize(wq, s16.astype(mx.float32), b16.astype(mx.float32), group_size=group, bits=bits))
    np.testing.assert_allclose(ours16, ref32, rtol=1e-6, atol=1e-6 * scale)
    ref16 = np.array(mx.dequantize(wq, s16, b16, group_size=group, bits=bits)).astype(np.float32)
    # MLX rounds scale*q and the sum to fp16: the error is relative to the operands
    mag = np.abs(np.array(b16)) + np.abs(np.array(s16)) * (2**bits - 1)
    ulp = np.repeat(np.spacing(mag.astype(np.float16)).astype(np.float32), group, axis=-1)
    assert np.all(np.abs(ours16 - ref16) <= 2 * ulp)


@pytest.mark.parametrize("bits", BITS)
def test_mx_entry_point_and_numpy_dispatch(bits):
    mx = _mx()
    w = mx.random.normal((5, 128), key=mx.random.key(bits))
    wq, s, b = mx.quantize(w, group_size=64, bits=bits)
    via_mx = affine.dequantize(wq, s, b, 64, bits)
    assert isinstance(via_mx, mx.array)
    via_np = affine.dequantize(np.array(wq), np.array(s), np.array(b), 64, bits)
    assert isinstance(via_np, np.ndarray)
    np.testing.assert_array_equal(np.array(via_mx), via_np)


@pytest.mark.parametrize("bits", BITS)
def test_bit_layout_by_hand(bits):
    """Element j of a word is (word >> bits*j) & mask, words left to right."""
    per = 32 // bits
    codes = (np.arange(2 * per * 16) * 7 + 3) % (1 << bits)  # 2 rows of 16 words
    codes = codes.reshape(2, -1).astype(np.uint64)
    n_in = codes.shape[1]
    words = codes.reshape(2, n_in // per, per)
    packed = (words << (np.arange(per, dtype=np.uint64) * bits)).sum(-1).astype(np.uint32)
    g = 32
    scales = np.full((2, n_in // g), 0.5, np.float32)
    biases = np.full((2, n_in // g), -1.0, np.float32)
    out = affine.dequantize_numpy(packed, scales, biases, g, bits)
    np.testing.assert_array_equal(out, codes.astype(np.float32) * 0.5 - 1.0)


@settings(max_examples=30, deadline=None)
@given(rows=st.sampled_from(ROWS), group=st.sampled_from(GROUPS), bits=st.sampled_from(BITS), seed=st.integers(0, 999))
def test_numpy_quantize_roundtrip(rows, group, bits, seed):
    w = np.random.default_rng(seed).standard_normal((rows, 2 * group)).astype(np.float32)
    wq, s, b = affine.quantize_numpy(w, group, bits)
    assert wq.dtype == np.uint32 and wq.shape == (rows, 2 * group * bits // 32)
    back = affine.dequantize_numpy(wq, s, b, group, bits)
    step = np.repeat(s, group, axis=1)
    assert np.all(np.abs(back - w) <= 0.5 * step + 1e-5)


def test_rejects_bad_input():
    wq = np.zeros((2, 8), np.uint32)
    s = np.ones((2, 2), np.float32)
    with pytest.raises(ValueError, match="bits=3 is not supported"):
        affine.dequantize_numpy(wq, s, s, 32, 3)
    with pytest.raises(ValueError, match="bits=16 is not supported"):
        affine.dequantize(wq, s, s, 32, 16)
    with pytest.raises(ValueError, match="scales/biases of shape"):
        affine.dequantize_numpy(wq, s, s, 64, 4)  # 64 columns -> one group of 64, not two
    with pytest.raises(ValueError, match="uint32"):
        affine.dequantize_numpy(wq.astype(np.int32), s, s, 32, 4)
    with pytest.raises(ValueError, match="not a multiple of group_size"):
        affine.dequantize_numpy(
            np.zeros((2, 1), np.uint32), np.ones((2, 1), np.float32), np.ones((2, 1), np.float32), 32, 8
        )
