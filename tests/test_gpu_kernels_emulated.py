"""Every kernel's Metal instantiation, run by the emulator, against its float64 NumPy
reference over odd shapes (hypothesis), under random and ordered schedules."""

import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_synapse.kernels.gpu import affine_qmm as aq
from mlx_synapse.kernels.gpu import int8_topk as tk

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="the Metal emulator needs g++")

# Relative Frobenius error: float32 accumulation differs from float64 by ~1e-7 per term;
# float16 activations/scales are rounded to float16 for the reference too, the output is
# float16 (~5e-4 relative).
QMM_RTOL = {np.float32: 1e-5, np.float16: 2e-3}


def _quantize(w, group_size, bits):
    """MLX's affine quantization of a float matrix in NumPy (codes, scales, biases)."""
    n, k = w.shape
    g = w.reshape(n, k // group_size, group_size)
    lo, hi = g.min(-1), g.max(-1)
    scale = np.maximum(hi - lo, 1e-8) / (2**bits - 1)
    q = np.clip(np.round((g - lo[..., None]) / scale[..., None]), 0, 2**bits - 1).astype(np.uint32)
    q = q.reshape(n, k // (32 // bits), 32 // bits)
    words = np.bitwise_or.reduce(q << (np.arange(32 // bits, dtype=np.uint32) * bits), axis=-1)
    return words.astype(np.uint32), scale.astype(np.float32), lo.astype(np.float32)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.sampled_from([1, 2, 3, 5, 8, 11, 16]), n=st.integers(1, 21), groups=st.integers(1, 3),
       gs=st.sampled_from([32, 64, 128]), bits=st.sampled_from([4, 8]),
       dtype=st.sampled_from([np.float32, np.float16]), policy=st.sampled_from(["random", "reverse"]),
       seed=st.integers(0, 2**31 - 1))
def test_affine_qmm_emulated_matches_reference(m, n, groups, gs, bits, dtype, policy, seed):
    rng = np.random.default_rng(seed)
    k = groups * gs
    w, s, b = _quantize(rng.standard_normal((n, k)).astype(np.float32), gs, bits)
    s, b = s.astype(dtype), b.astype(dtype)
    x = rng.standard_normal((m, k)).astype(dtype)
    y = aq.affine_qmm_emulated(x, w, s, b, gs, bits, policy=policy, seed=seed)
    ref = aq.reference(x, w, s, b, gs, bits)
    assert y.shape == (m, n) and y.dtype == dtype
    assert np.isfinite(y).all()  # every output written (the emulator poisons with NaN)
    assert np.linalg.norm(y - ref) <= QMM_RTOL[dtype] * np.linalg.norm(ref)


def test_affine_qmm_reference_is_the_dequantized_product():
    rng = np.random.default_rng(7)
    w, s, b = _quantize(rng.standard_normal((5, 64)).astype(np.float32), 32, 4)
    x = rng.standard_normal((2, 64))
    codes = np.stack([(w >> (4 * j)) & 15 for j in range(8)], -1).reshape(5, 64)
    dense = codes * np.repeat(s, 32, 1) + np.repeat(b, 32, 1)
    np.testing.assert_allclose(aq.reference(x, w, s, b, 32, 4), x @ dense.T, rtol=1e-12)


def test_affine_qmm_rejects_bad_shapes():
    w = np.zeros((4, 8), np.uint32)  # 4 rows of 64 4-bit codes
    s = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="bits=3"):
        aq.check((1, 64), w.shape, s.shape, 32, 3)
    with pytest.raises(ValueError, match="group_size=16"):
        aq.check((1, 64), w.shape, s.shape, 16, 4)
    with pytest.raises(ValueError, match=r"last axis must be K=64"):
        aq.check((1, 63), w.shape, s.shape, 32, 4)
    with pytest.raises(ValueError, match=r"expected \(4, 2\)"):
        aq.check((1, 64), w.shape, (4, 1), 32, 4)


def _bank(rng, n, d):
    codes = rng.integers(-128, 128, (n, d)).astype(np.int8)
    codes[rng.integers(0, n)] = 0
    if n > 3:
        codes[n // 2] = codes[1]  # an exact tie: the lower id ranks first
    nrm = np.linalg.norm(codes.astype(np.float64), axis=1)
    return codes, np.divide(1.0, nrm, out=np.zeros_like(nrm), where=nrm > 0).astype(np.float32)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 400), d4=st.integers(1, 40), q=st.integers(1, 2), k=st.integers(1, 32),
       policy=st.sampled_from(["random", "reverse", "forward"]), seed=st.integers(0, 2**31 - 1))
def test_int8_topk_emulated_matches_reference(n, d4, q, k, policy, seed):
    rng = np.random.default_rng(seed)
    d = 4 * d4
    codes, inv = _bank(rng, n, d)
    qs = rng.standard_normal((q, d)).astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    s, i = tk.int8_topk_emulated(codes, inv, qs, k, policy=policy, seed=seed)
    rs, ri = tk.reference(codes, inv, qs, k)
    assert s.shape == rs.shape == (q, min(k, n))
    assert np.abs(s - rs).max() <= 1e-5
    gaps = np.abs(np.diff(rs, axis=1)) > 1e-5
    clear = np.ones_like(rs, bool)
    clear[:, 1:] &= gaps
    clear[:, :-1] &= gaps
    assert np.array_equal(i[clear], ri[clear])


def test_int8_topk_emulated_ties_and_zero_rows():
    codes = np.zeros((300, 8), np.int8)
    codes[::3] = [1, 2, 3, 4, 5, 6, 7, 8]  # rows 0, 3, 6, ... tie; the rest are zero and score 0
    nrm = np.linalg.norm(codes.astype(np.float64), axis=1)
    inv = np.divide(1.0, nrm, out=np.zeros_like(nrm), where=nrm > 0).astype(np.float32)
    q = -codes[:1].astype(np.float32) / np.float32(nrm[0])  # anti-parallel: the tied rows score -1
    s, i = tk.int8_topk_emulated(codes, inv, q, 5, rpw=2)
    assert i.tolist() == [[1, 2, 4, 5, 7]]  # zero rows (score 0) beat -1, by ascending id
    assert np.all(s == 0)


def test_int8_topk_rejects_bad_input():
    with pytest.raises(ValueError, match="D=6"):
        tk.check((10, 6), (10,), (1, 6), 3)
    with pytest.raises(ValueError, match="k=33"):
        tk.check((10, 8), (10,), (1, 8), 33)
    with pytest.raises(ValueError, match=r"expected \(10,\)"):
        tk.check((10, 8), (9,), (1, 8), 3)
