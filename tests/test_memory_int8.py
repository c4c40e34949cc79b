"""Per-entry symmetric INT8 quantization: error bound, cosine, zeros, extremes, input errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mlx_synapse.memory.int8 import dequantize, quantize

F32 = np.finfo(np.float32)
TINY = float(F32.smallest_subnormal)

# Arbitrary finite float32 matrices: huge, tiny, subnormal, zeros and signed zeros all included.
finite_f32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
matrices = hnp.arrays(
    np.float32,
    st.tuples(st.integers(1, 6), st.integers(1, 48)),
    elements=finite_f32,
)


def _check_bound(v, q, s):
    """|v - deq| <= s/2, plus the float32 rounding of the product q * s."""
    deq = dequantize(q, s)
    assert deq.dtype == np.float32 and deq.shape == v.shape
    assert np.isfinite(deq).all()
    err = np.abs(v.astype(np.float64) - deq.astype(np.float64))
    bound = s.astype(np.float64)[:, None] / 2 * (1 + 1e-12) + np.abs(deq.astype(np.float64)) * 2.0**-24 + TINY
    bad = err > bound
    assert not bad.any(), (v[bad], deq[bad], err[bad], bound[bad])


@settings(max_examples=300, deadline=None)
@given(v=matrices)
def test_error_bound_arbitrary_finite(v):
    q, s = quantize(v)
    assert q.dtype == np.int8 and q.shape == v.shape
    assert s.dtype == np.float32 and s.shape == (v.shape[0],)
    assert np.isfinite(s).all() and (s >= 0).all()
    assert q.min(initial=0) >= -127 and q.max(initial=0) <= 127
    _check_bound(v, q, s)
    # The scale is max|v| / 127 to within one float32 ulp (it is nudged up, never down).
    amax = np.abs(v.astype(np.float64)).max(axis=1)
    assert (s.astype(np.float64) * 127 >= amax).all()
    nz = amax > 0
    below = np.nextafter(s[nz], np.float32(0)).astype(np.float64) * 127
    assert (below <= amax[nz] * (1 + 2.0**-23)).all()
    # The largest element maps to +-127 (where the scale is a normal number).
    normal = nz & (s >= F32.tiny)
    if normal.any():
        assert (np.abs(q[normal]).max(axis=1) == 127).all()


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 4),
    d=st.integers(64, 1024),
    seed=st.integers(0, 2**32 - 1),
    dist=st.sampled_from(["normal", "uniform", "laplace", "normal+offset", "sparse"]),
    log10_mag=st.floats(-30, 30),
)
def test_cosine_random_vectors(n, d, seed, dist, log10_mag):
    rng = np.random.default_rng(seed)
    if dist == "normal":
        v = rng.standard_normal((n, d))
    elif dist == "uniform":
        v = rng.uniform(-1, 1, (n, d))
    elif dist == "laplace":
        v = rng.laplace(size=(n, d))
    elif dist == "normal+offset":  # e.g. non-centred embeddings
        v = rng.standard_normal((n, d)) + rng.uniform(-3, 3, (n, 1))
    else:  # a quarter of the coordinates active
        v = rng.standard_normal((n, d)) * (rng.random((n, d)) < 0.25)
        v[:, 0] += 1.0  # never all-zero
    v = (v * 10.0**log10_mag).astype(np.float32)
    q, s = quantize(v)
    deq = dequantize(q, s).astype(np.float64)
    v64 = v.astype(np.float64)
    cos = (v64 * deq).sum(1) / (np.linalg.norm(v64, axis=1) * np.linalg.norm(deq, axis=1))
    assert (cos >= 0.999).all(), cos


def test_zero_rows_and_signed_zeros():
    v = np.zeros((3, 8), np.float32)
    v[1] = -0.0
    v[2, 3] = 2.5
    q, s = quantize(v)
    assert s[0] == 0 and s[1] == 0
    assert s[2] == pytest.approx(2.5 / 127, rel=2e-7) and float(s[2]) * 127 >= 2.5
    assert not np.isnan(s).any()
    assert (q[:2] == 0).all() and q[2, 3] == 127 and (np.delete(q[2], 3) == 0).all()
    deq = dequantize(q, s)
    assert not np.isnan(deq).any()
    assert (deq[:2] == 0).all()
    assert deq[2, 3] == pytest.approx(2.5, rel=1e-6)


def test_extremes_do_not_overflow_or_vanish():
    v = np.array(
        [
            [F32.max, -F32.max, 1.0],
            [TINY, -TINY, 0.0],
            [F32.tiny, TINY * 3, -F32.tiny / 2],
        ],
        np.float32,
    )
    q, s = quantize(v)
    _check_bound(v, q, s)
    deq = dequantize(q, s)
    assert deq[0, 0] == F32.max and deq[0, 1] == -F32.max
    assert (s > 0).all()  # tiny rows keep a non-zero scale


def test_empty_batch_and_dtypes():
    q, s = quantize(np.zeros((0, 16), np.float32))
    assert q.shape == (0, 16) and q.dtype == np.int8 and s.shape == (0,)
    assert dequantize(q, s).shape == (0, 16)
    # float64 and float16 and integer inputs are accepted (values taken as float32).
    for dt in (np.float64, np.float16, np.int32):
        q, s = quantize(np.arange(-8, 8, dtype=dt).reshape(2, 8))
        assert q.dtype == np.int8
    q, s = quantize(np.array([[1.0, -0.5]]))
    assert dequantize(q, s[0]).shape == (1, 2)  # 0-d scale for one row


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rejected(bad):
    v = np.ones((2, 4), np.float32)
    v[1, 2] = bad
    with pytest.raises(ValueError, match=r"non-finite.*row 1, column 2"):
        quantize(v)


def test_float64_beyond_float32_range_rejected():
    with pytest.raises(ValueError, match="non-finite"):
        quantize(np.array([[1e39, 0.0]]))


@pytest.mark.parametrize("shape", [(), (4,), (2, 3, 4), (3, 0)], ids=["scalar", "1d", "3d", "d0"])
def test_wrong_dims_rejected(shape):
    with pytest.raises(ValueError, match=r"\(N, D\)|D >= 1"):
        quantize(np.zeros(shape, np.float32))


def test_bad_dtypes_and_dequantize_inputs():
    with pytest.raises(ValueError, match="dtype"):
        quantize(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="dtype"):
        quantize(np.ones((1, 2), np.complex64))
    q, s = quantize(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="int8"):
        dequantize(q.astype(np.int16), s)
    with pytest.raises(ValueError, match="one scale per row"):
        dequantize(q, s[:1])
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        dequantize(q[0], s)
    with pytest.raises(ValueError, match="finite and >= 0"):
        dequantize(q, np.array([1.0, np.nan], np.float32))
    with pytest.raises(ValueError, match="finite and >= 0"):
        dequantize(q, np.array([1.0, -1.0], np.float32))
