"""The kernels' instantiation on the MLX GPU present (CUDA on NVIDIA, Metal on Apple)
against the float64 NumPy references. Skipped where MLX's default device is no GPU
(CI has none); run on the lent NVIDIA machines."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_synapse.kernels.gpu import affine_qmm as aq
from mlx_synapse.kernels.gpu import dialect
from mlx_synapse.kernels.gpu import int8_topk as tk

BACKEND = dialect.gpu_backend()
pytestmark = pytest.mark.skipif(BACKEND is None, reason="MLX's default device is not a GPU")

# float32: different summation order than float64 (GPU float32 products carry ~1e-6 relative)
QMM_RTOL = {"float32": 2e-5, "float16": 3e-3, "bfloat16": 2e-2}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(1, 16), n=st.integers(1, 70), groups=st.integers(1, 5),
       gs=st.sampled_from([32, 64, 128]), bits=st.sampled_from([4, 8]),
       dtype=st.sampled_from(["float32", "float16", "bfloat16"]), seed=st.integers(0, 2**31 - 1))
def test_affine_qmm_matches_reference(m, n, groups, gs, bits, dtype, seed):
    import mlx.core as mx

    k = groups * gs
    dt = getattr(mx, dtype)
    key = mx.random.key(seed)
    w = mx.random.normal((n, k), key=key)
    wq, s, b = mx.quantize(w, group_size=gs, bits=bits)
    s, b = s.astype(dt), b.astype(dt)
    x = mx.random.normal((m, k), key=mx.random.key(seed + 1)).astype(dt)
    y = aq.affine_qmm(x, wq, s, b, gs, bits)
    assert y.shape == (m, n) and y.dtype == dt
    ref = aq.reference(np.array(x.astype(mx.float32)), np.array(wq), np.array(s.astype(mx.float32)),
                       np.array(b.astype(mx.float32)), gs, bits)
    got = np.array(y.astype(mx.float32)).astype(np.float64)
    assert np.isfinite(got).all()
    assert np.linalg.norm(got - ref) <= QMM_RTOL[dtype] * np.linalg.norm(ref) + 1e-6


def test_affine_qmm_leading_axes_and_model_shape():
    import mlx.core as mx

    wq, s, b = mx.quantize(mx.random.normal((576, 1536), key=mx.random.key(3)), group_size=32, bits=4)
    x = mx.random.normal((2, 3, 1536), key=mx.random.key(4))
    y = aq.affine_qmm(x, wq, s, b, 32, 4)
    ref = aq.reference(np.array(x), np.array(wq), np.array(s), np.array(b), 32, 4)
    assert y.shape == (2, 3, 576)
    assert np.linalg.norm(np.array(y) - ref) <= 2e-5 * np.linalg.norm(ref)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 5000), d4=st.integers(1, 100), q=st.integers(1, 3), k=st.integers(1, 32),
       seed=st.integers(0, 2**31 - 1))
def test_int8_topk_matches_reference(n, d4, q, k, seed):
    import mlx.core as mx

    rng = np.random.default_rng(seed)
    d = 4 * d4
    codes = rng.integers(-128, 128, (n, d)).astype(np.int8)
    codes[rng.integers(0, n)] = 0  # a zero row scores 0, never NaN
    nrm = np.linalg.norm(codes.astype(np.float64), axis=1)
    inv = np.divide(1.0, nrm, out=np.zeros_like(nrm), where=nrm > 0).astype(np.float32)
    qs = rng.standard_normal((q, d)).astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    s, i = tk.int8_topk(mx.array(codes), mx.array(inv), mx.array(qs), k)
    rs, ri = tk.reference(codes, inv, qs, k)
    assert s.shape == rs.shape == i.shape
    assert np.abs(s - rs).max() <= 1e-5
    # ids agree wherever the reference's neighbouring scores are apart by more than float32 noise
    gaps = np.diff(rs, axis=1)
    clear = np.ones_like(rs, bool)
    clear[:, 1:] &= np.abs(gaps) > 1e-5
    clear[:, :-1] &= np.abs(gaps) > 1e-5
    assert np.array_equal(i[clear], ri[clear])


def test_int8_topk_ties_rank_by_id():
    import mlx.core as mx

    codes = np.tile(np.arange(-64, 64, dtype=np.int8), (700, 1))  # every row the same
    inv = np.full(700, 1 / np.linalg.norm(codes[0].astype(np.float64)), np.float32)
    q = (codes[:1].astype(np.float32) / np.linalg.norm(codes[0].astype(np.float32)))
    _, i = tk.int8_topk(mx.array(codes), mx.array(inv), mx.array(q), 12)
    assert i.tolist() == [list(range(12))]
