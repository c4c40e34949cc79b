"""The compiled CPU decode engine (kernels/csrc/synapse_cpu.c, kernels/native.py,
backends/numpy/engine.py) against NumPy references.

* kernels: every matrix kind (float32 rows, 4-bit, 8-bit) against a float64
  NumPy reference of the same math, on odd shapes, for the SIMD build, the
  plain-C build (``library(generic=True)``) and, on x86 machines with AVX-512,
  an extra AVX2 build, each on 1 and 2 threads;
* packing: ``pack_q4`` / ``unpack_q4`` / ``pack_q8`` against MLX's layout;
* activation quantization: ``quantize_act_reference`` against ``syn_quantize_act``;
* prefill helpers (causal softmax, silu * up, rope) against NumPy, and full
  forwards with them against the NumPy-only forward;
* whole-token decode: ``step_logits`` on the engine against the NumPy decode
  path on tiny random models of every architecture in ``hf_models.ARCHS``,
  float and 4-/8-bit/mixed quantized, through KV-cache growth, rotating caches
  and greedy generation; error paths; a thread-pool start-up regression.

Tolerances (u = 2**-24, float32 unit roundoff):

* float32 rows: |y - W x| <= (K + 4) u sum|w||x| -- the textbook bound for a
  float32 dot product of length K in any summation order (exact float64
  reference); plus exact equality on integer data, where every partial sum is
  representable, so that no indexing mistake can hide under the bound.
* 4/8-bit rows: the kernels quantize x to int16 per block of 32 (x_hat = q d)
  and use the float block sums for the bias part, so the reference is
  sum_g s_g (codes . x_hat) + b_g sum(x) in float64, within (nblk + 40) u of
  its magnitude (one rounding per block product, the block sums and the final
  adds); against the exact float x the extra error is the activation rounding,
  bounded by sum |s code| (d/2 + 4 u amax) per block.
* float models, engine vs NumPy: 1e-4 abs + 1e-4 rel on logits of scale ~6
  (measured: <= 2.5e-5 abs, both are float32 with different summation orders).
* quantized models: 2.5e-3 of the largest |logit|.  Measured 2e-4 .. 8.9e-4:
  this is the int16 activation rounding, not the engine -- a float64 NumPy
  emulation of the engine's math (activations quantized the same way) sits
  as far (2e-4 .. 7.7e-4) from the NumPy path; rounding differences flip
  int16 codes from one layer to the next, so no model-level reference can be
  tighter than that.  The kernels' own tolerances above are the tight check.
* causal softmax / silu: the engine's exp is a polynomial with a documented
  relative error below 3e-7 (EXP_REL below, checked on its own), so
  2 EXP_REL (+ T u) per probability and EXP_REL (+ 8 u) for silu * up.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx_synapse.kernels import affine, native
from mlx_synapse.kernels.native import KIND_F32, KIND_Q4, KIND_Q8, QMat

from .hf_models import ARCHS

LIB = native.library()
if LIB is None:
    pytest.skip(
        f"the compiled CPU engine is unavailable: {native.build_error() or 'MLX_SYNAPSE_NATIVE=0'}",
        allow_module_level=True,
    )

U = 2.0**-24
BLOCK = native.BLOCK


# --------------------------------------------------------------- libraries


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _avx2_build(out_dir: Path):
    """An AVX2 build of the engine, where the native build is AVX-512 and the CPU
    runs AVX2 too (so a machine with AVX-512 still tests the AVX2 kernels)."""
    if not LIB.syn_simd().startswith(b"avx512bw") or not {"avx2", "fma"} <= _cpu_flags():
        return None
    cc = native._compiler()
    base = [f for f in native._flag_sets(True)[0] if f != "-DSYNAPSE_GENERIC"]
    out = out_dir / "libsynapse_avx2.so"
    ok, err = native._compile(cc, base + ["-mavx2", "-mfma"], out)
    assert ok, err
    lib = ctypes.CDLL(str(out))
    native._declare(lib)
    assert lib.syn_simd() == b"avx2"
    return lib


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    """name -> library: the native SIMD build, the plain C build, [an AVX2 build]."""
    out = {"simd": LIB, "generic": native.library(generic=True)}
    assert out["generic"] is not None, native.build_error(True)
    assert out["generic"].syn_simd() == b"generic"
    avx2 = _avx2_build(tmp_path_factory.mktemp("avx2"))
    if avx2 is not None:
        out["avx2"] = avx2
    return out


@pytest.fixture(scope="module")
def kernels(libs):
    """[(label, lib, ctx)] for every library on 1 and 2 threads (a minimal engine
    context: syn_matvec runs one matrix on that context's thread pool)."""
    ctxs = []
    for name, lib in libs.items():
        for threads in (1, 2):
            ctx = lib.syn_new(1, 32, 1, 1, 32, 32, 32, 1e-5, threads, 2000)
            assert ctx, "syn_new failed"
            assert lib.syn_threads(ctx) == threads
            ctxs.append((f"{name}/t{threads}", lib, ctx))
    yield ctxs
    for _, lib, ctx in ctxs:
        lib.syn_free(ctx)


def _matvec(lib, ctx, kind, N, K, group, w, s, b, x):
    x = np.ascontiguousarray(x, np.float32)
    y = np.full(N, np.nan, np.float32)
    ptr = lambda a: None if a is None else a.ctypes.data
    rc = lib.syn_matvec(ctx, kind, N, K, group, ptr(w), ptr(s), ptr(b), x.ctypes.data, y.ctypes.data)
    assert rc == 0, f"syn_matvec returned {rc}"
    return y


# --------------------------------------------------------------- test data


def _mlx_words(codes: np.ndarray, bits: int) -> np.ndarray:
    """codes uint8 [N, K] -> MLX's uint32 [N, K * bits / 32] (element j of a word at bits * j)."""
    N, K = codes.shape
    per = 32 // bits
    c = codes.astype(np.uint32).reshape(N, K // per, per)
    shifts = np.arange(per, dtype=np.uint32) * np.uint32(bits)
    return np.bitwise_or.reduce(c << shifts, axis=-1).astype(np.uint32)


X_MODES = ["normal", "zero", "equal", "large", "mixed_blocks", "sparse", "positive"]
W_MODES = ["normal", "large", "zero_scale_row", "zero_row", "extreme_codes"]


def _x(rng, K, mode):
    if mode == "zero":
        return np.zeros(K, np.float32)
    if mode == "equal":
        return np.full(K, np.float32(rng.uniform(-3, 3)), np.float32)
    x = rng.standard_normal(K)
    if mode == "large":
        x *= 1e4
    elif mode == "mixed_blocks":  # blocks of very different magnitudes, some zero
        nb = -(-K // BLOCK)
        mags = 10.0 ** rng.uniform(-3, 4, nb) * (rng.random(nb) > 0.2)
        x *= np.repeat(mags, BLOCK)[:K]
    elif mode == "sparse":
        x *= rng.random(K) < 0.1
    elif mode == "positive":
        x = np.abs(x) + 0.5
    return x.astype(np.float32)


@st.composite
def quant_cases(draw):
    kind = draw(st.sampled_from([KIND_Q4, KIND_Q8]))
    N = draw(st.integers(1, 70))
    nblk = draw(st.sampled_from([1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 33]))
    K = BLOCK * nblk
    group = draw(st.sampled_from([g for g in (32, 64, 128, 256) if K % g == 0]))
    return kind, N, K, group, draw(st.sampled_from(X_MODES)), draw(st.sampled_from(W_MODES)), draw(
        st.integers(0, 2**32 - 1))


def _quant_matrix(rng, kind, N, K, group, wmode):
    top = 15 if kind == KIND_Q4 else 255
    codes = rng.integers(0, top + 1, (N, K), dtype=np.uint8)
    G = K // group
    s = (rng.standard_normal((N, G)) * 0.05).astype(np.float32)
    b = (rng.standard_normal((N, G)) * 0.3).astype(np.float32)
    if wmode == "large":
        s *= np.float32(1e4)
        b *= np.float32(1e4)
    elif wmode in ("zero_scale_row", "zero_row"):
        r = rng.integers(0, N)
        s[r] = 0
        if wmode == "zero_row":
            b[r] = 0
    elif wmode == "extreme_codes":  # largest integer block sums the kernels can see
        codes[:] = top
        s = np.abs(s)
    return codes, s, b


def _quant_reference(codes, s, b, group, x):
    """(ref, mag, ref_exact, qbound) in float64; see the module docstring."""
    N, K = codes.shape
    nb, rep = K // BLOCK, group // BLOCK
    q, d, _ = native.quantize_act_reference(x)
    q = q.reshape(nb, BLOCK).astype(np.int64)
    c = codes.reshape(N, nb, BLOCK).astype(np.int64)
    sb = np.repeat(s.astype(np.float64), rep, axis=1)  # per block
    bb = np.repeat(b.astype(np.float64), rep, axis=1)
    d64 = d.astype(np.float64)
    xb = x.astype(np.float64).reshape(nb, BLOCK)
    ref = (sb * d64 * np.einsum("nbj,bj->nb", c, q)).sum(1) + bb @ xb.sum(1)
    mag = (np.abs(sb) * d64 * np.einsum("nbj,bj->nb", c, np.abs(q))).sum(1) + np.abs(bb) @ np.abs(xb).sum(1)
    w = (c * sb[..., None] + bb[..., None]).reshape(N, K)
    exact = w @ x.astype(np.float64)
    amax = np.abs(xb).max(1)
    qbound = (np.abs(c * sb[..., None]).sum(2) * (0.5 * d64 + 4 * U * amax)).sum(1)
    return ref, mag, exact, qbound


# ------------------------------------------------------ kernels: 4/8-bit


@settings(max_examples=300, deadline=None)
@given(case=quant_cases())
def test_quantized_matvec_matches_float64_reference(kernels, case):
    kind, N, K, group, xmode, wmode, seed = case
    rng = np.random.default_rng(seed)
    codes, s, b = _quant_matrix(rng, kind, N, K, group, wmode)
    x = _x(rng, K, xmode)
    bits = 4 if kind == KIND_Q4 else 8
    m = QMat.from_mlx(_mlx_words(codes, bits), s, b, group, bits)  # packing under test too
    assert (m.kind, m.N, m.K, m.group) == (kind, N, K, group)
    ref, mag, exact, qbound = _quant_reference(codes, s, b, group, x)
    tol = (K // BLOCK + 40) * U * mag
    for label, lib, ctx in kernels:
        y = _matvec(lib, ctx, kind, N, K, group, m.w, m.s, m.b, x)
        assert np.isfinite(y).all(), label
        err = np.abs(y - ref)
        bad = np.nonzero(err > tol)[0]
        assert bad.size == 0, (
            f"{label} kind={kind} N={N} K={K} group={group} x={xmode} w={wmode}: rows {bad[:5]} "
            f"got {y[bad[:5]]} want {ref[bad[:5]]} (tol {tol[bad[:5]]})"
        )
        # against the exact float x: the activation rounding on top
        assert (np.abs(y - exact) <= qbound + tol).all(), label


@pytest.mark.parametrize("kind", [KIND_Q4, KIND_Q8])
@pytest.mark.parametrize("nblk,group", [(1, 32), (3, 32), (5, 32), (9, 32), (4, 64), (12, 128), (16, 64)])
def test_quantized_matvec_is_exact_on_integer_data(kernels, kind, nblk, group):
    """amax = 32767 per block makes d = 1 and x_hat = x; power-of-two scales and
    integer biases keep every partial sum an exact float: any lane, nibble or
    group indexing mistake shows as an inequality."""
    rng = np.random.default_rng(nblk * 100 + group + kind)
    N, K = 37, BLOCK * nblk
    top = 15 if kind == KIND_Q4 else 255
    codes = rng.integers(0, top + 1, (N, K), dtype=np.uint8)
    s = (2.0 ** rng.integers(-1, 2, (N, K // group))).astype(np.float32)
    b = rng.integers(-3, 4, (N, K // group)).astype(np.float32)
    x = rng.integers(-8, 9, K).astype(np.float32)
    x[::BLOCK] = 32767 * rng.choice([-1, 1], nblk)
    codes[:, ::BLOCK] &= 1  # keeps code * 32767 small enough for exact float partial sums
    bits = 4 if kind == KIND_Q4 else 8
    m = QMat.from_mlx(_mlx_words(codes, bits), s, b, group, bits)
    want = np.repeat(s, group, 1).astype(np.float64) * codes @ x + np.repeat(b, group, 1).astype(np.float64) @ x
    assert np.abs(want).max() < 2**22  # all partial sums exact in float32
    for label, lib, ctx in kernels:
        np.testing.assert_array_equal(_matvec(lib, ctx, kind, N, K, group, m.w, m.s, m.b, x), want, err_msg=label)


# ------------------------------------------------------ kernels: float32

F32_K = [1, 2, 7, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 100, 127, 129, 257, 1000, 4099]


@settings(max_examples=200, deadline=None)
@given(
    N=st.integers(1, 70),
    K=st.sampled_from(F32_K),
    xmode=st.sampled_from(X_MODES),
    wmode=st.sampled_from(["normal", "large", "zero_row", "equal"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_f32_matvec_matches_float64_reference(kernels, N, K, xmode, wmode, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, K)).astype(np.float32)
    if wmode == "large":
        w *= np.float32(1e4)
    elif wmode == "zero_row":
        w[rng.integers(0, N)] = 0
    elif wmode == "equal":
        w[:] = np.float32(rng.uniform(-2, 2))
    x = _x(rng, K, xmode)
    ref = w.astype(np.float64) @ x.astype(np.float64)
    tol = (K + 4) * U * (np.abs(w).astype(np.float64) @ np.abs(x).astype(np.float64))
    for label, lib, ctx in kernels:
        y = _matvec(lib, ctx, KIND_F32, N, K, 0, w, None, None, x)
        bad = np.nonzero(np.abs(y - ref) > tol)[0]
        assert bad.size == 0, f"{label} N={N} K={K}: rows {bad[:5]} got {y[bad[:5]]} want {ref[bad[:5]]}"


@pytest.mark.parametrize("K", F32_K)
def test_f32_matvec_is_exact_on_integer_data(kernels, K):
    rng = np.random.default_rng(K)
    N = 53
    w = rng.integers(-8, 9, (N, K)).astype(np.float32)
    x = rng.integers(-8, 9, K).astype(np.float32)
    want = w.astype(np.int64) @ x.astype(np.int64)
    for label, lib, ctx in kernels:
        np.testing.assert_array_equal(_matvec(lib, ctx, KIND_F32, N, K, 0, w, None, None, x), want, err_msg=label)


def test_tiny_activation_blocks_keep_relative_accuracy(kernels):
    rng = np.random.default_rng(0)
    N, K = 8, 64
    codes, s, b = _quant_matrix(rng, KIND_Q8, N, K, 32, "normal")
    b[:] = 0
    m = QMat.from_mlx(_mlx_words(codes, 8), s, b, 32, 8)
    x = (rng.standard_normal(K) * 1e-36).astype(np.float32)
    exact = m.dequantize().astype(np.float64) @ x.astype(np.float64)
    scale = np.abs(m.dequantize()).astype(np.float64) @ np.abs(x).astype(np.float64)
    for label, lib, ctx in kernels:
        y = _matvec(lib, ctx, KIND_Q8, N, K, 32, m.w, m.s, m.b, x)
        assert (np.abs(y - exact) <= 1e-3 * scale).all(), label


# ----------------------------------------------------------------- packing


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 40), nblk=st.sampled_from([1, 2, 3, 5, 8]), seed=st.integers(0, 2**32 - 1))
def test_pack_q4_round_trip_and_layout(N, nblk, seed):
    rng = np.random.default_rng(seed)
    K = BLOCK * nblk
    codes = rng.integers(0, 16, (N, K), dtype=np.uint8)
    w_q = _mlx_words(codes, 4)
    # the MLX words really hold these codes (the loader's dequantizer as the judge)
    ones, zeros = np.ones((N, K // 32), np.float32), np.zeros((N, K // 32), np.float32)
    np.testing.assert_array_equal(affine.dequantize_numpy(w_q, ones, zeros, 32, 4), codes)
    packed = native.pack_q4(w_q, 32)
    assert packed.dtype == np.uint8 and packed.shape == (N, K // 2)
    np.testing.assert_array_equal(native.unpack_q4(packed), codes)
    # byte j of block i: code 32 i + j (low nibble) and 32 i + j + 16 (high nibble)
    blocks = codes.reshape(N, nblk, 32)
    want = (blocks[..., :16] | (blocks[..., 16:] << 4)).reshape(N, K // 2)
    np.testing.assert_array_equal(packed, want)


@settings(max_examples=30, deadline=None)
@given(N=st.integers(1, 40), nblk=st.sampled_from([1, 2, 3, 5, 8]), seed=st.integers(0, 2**32 - 1))
def test_pack_q8_is_mlx_bytes(N, nblk, seed):
    rng = np.random.default_rng(seed)
    K = BLOCK * nblk
    codes = rng.integers(0, 256, (N, K), dtype=np.uint8)
    w_q = _mlx_words(codes, 8)
    ones, zeros = np.ones((N, K // 32), np.float32), np.zeros((N, K // 32), np.float32)
    np.testing.assert_array_equal(affine.dequantize_numpy(w_q, ones, zeros, 32, 8), codes)
    packed = native.pack_q8(w_q, 32)
    assert packed.dtype == np.uint8 and packed.shape == (N, K)
    np.testing.assert_array_equal(packed, codes)


@pytest.mark.parametrize("bits,group", [(4, 32), (4, 64), (4, 128), (8, 32), (8, 64), (8, 128)])
def test_qmat_dequantize_matches_affine(bits, group):
    """QMat (from quantize_numpy's MLX words) dequantizes to exactly what the loader uses."""
    rng = np.random.default_rng(bits * group)
    w = rng.standard_normal((19, 384)).astype(np.float32)
    w_q, s, b = affine.quantize_numpy(w, group, bits)
    m = QMat.from_mlx(w_q, s, b, group, bits)
    assert m.kind == (KIND_Q4 if bits == 4 else KIND_Q8) and (m.N, m.K, m.group) == (19, 384, group)
    np.testing.assert_array_equal(m.dequantize(), affine.dequantize_numpy(w_q, s, b, group, bits))
    # concat stacks rows, scale_rows scales a row range's outputs
    m2 = QMat.from_mlx(*affine.quantize_numpy(w[:5] * 2, group, bits), group, bits)
    cat = QMat.concat([m, m2])
    np.testing.assert_array_equal(cat.dequantize(), np.concatenate([m.dequantize(), m2.dequantize()]))
    before = cat.dequantize()
    cat.scale_rows(slice(3, 9), 0.125)
    after = cat.dequantize()
    np.testing.assert_array_equal(after[:3], before[:3])
    np.testing.assert_array_equal(after[9:], before[9:])
    np.testing.assert_allclose(after[3:9], before[3:9] * 0.125, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="different kinds"):
        QMat.concat([m, QMat(KIND_F32, w)])


# ---------------------------------------------------- activation quantizer


@settings(max_examples=200, deadline=None)
@given(
    nblk=st.integers(1, 20),
    mode=st.sampled_from(X_MODES + ["ties", "tiny"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_quantize_act_reference_matches_c(nblk, mode, seed):
    rng = np.random.default_rng(seed)
    K = BLOCK * nblk
    if mode == "ties":  # amax 32767 -> x * inv lands exactly on .5: round half to even
        x = (rng.integers(-200, 200, K) + 0.5).astype(np.float32)
        x[::BLOCK] = 32767
    elif mode == "tiny":  # smallest magnitudes where inv = 32767 / amax stays finite
        x = (rng.standard_normal(K) * 1e-30).astype(np.float32)
    else:
        x = _x(rng, K, mode)
    q, d, sums = np.empty(K, np.int16), np.empty(nblk, np.float32), np.empty(nblk, np.float32)
    LIB.syn_quantize_act(x.ctypes.data, K, q.ctypes.data, d.ctypes.data, sums.ctypes.data)
    rq, rd, rs = native.quantize_act_reference(x)
    np.testing.assert_array_equal(q, rq)
    np.testing.assert_array_equal(d, rd)
    absum = np.abs(x.astype(np.float64)).reshape(nblk, BLOCK).sum(1)
    assert (np.abs(sums.astype(np.float64) - rs) <= 1e-6 * absum).all()
    assert (np.abs(rs - x.astype(np.float64).reshape(nblk, BLOCK).sum(1)) <= 1e-6 * absum).all()
    # codes span the int16 range: the largest element of each non-zero block maps to +-32767
    qb = np.abs(q.astype(np.int32)).reshape(nblk, BLOCK)
    assert (qb.max(1)[d > 0] == 32767).all() and (qb[d == 0] == 0).all()
    # and x_hat = q d is within half a step (plus float rounding) of x
    amax = np.abs(x.astype(np.float64)).reshape(nblk, BLOCK).max(1)
    err = np.abs(q.astype(np.float64) * np.repeat(d, BLOCK) - x).reshape(nblk, BLOCK).max(1)
    assert (err <= 0.5 * d + 4 * U * amax).all()


# ------------------------------------------------------------ bad inputs


def test_bad_group_sizes_are_refused():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, (4, 96), dtype=np.uint8)
    s = np.ones((4, 2), np.float32)
    w4, w8 = _mlx_words(codes, 4), _mlx_words(codes, 8)
    for group in (48, 16, 0, 96):
        with pytest.raises(ValueError, match=f"group size {group} "):
            native.pack_q4(w4, group)
        with pytest.raises(ValueError, match=f"group size {group} "):
            native.pack_q8(w8, group)
        with pytest.raises(ValueError, match=f"group size {group} "):
            QMat(KIND_Q4, native.pack_q4(w4, 32), s, s, group, 96)
        with pytest.raises(ValueError, match=f"group size {group} "):
            QMat.from_mlx(w8, s, s, group, 8)
    with pytest.raises(ValueError, match="group size 64 .* dividing 96"):  # power of two, does not divide K
        QMat.from_mlx(w4, s, s, 64, 4)
    with pytest.raises(ValueError, match="2-bit"):
        QMat.from_mlx(_mlx_words(codes & 3, 2), s, s, 32, 2)
    with pytest.raises(ValueError, match="scales/biases"):
        QMat(KIND_Q4, native.pack_q4(w4, 32), s[:, :1], s[:, :1], 32, 96)
    with pytest.raises(ValueError, match="float32"):
        QMat(KIND_F32, np.ones((2, 3), np.float64))


# ====================================================== whole-model decode

PROMPT = 7
STEPS = 20
F32_TOL = {"atol": 1e-4, "rtol": 1e-4}
QUANT_REL = 2.5e-3

QUANTS = {
    "f32": None,
    "q4": {"group_size": 32, "bits": 4},  # intermediate 96: 3 blocks, odd
    "q8": {"group_size": 64, "bits": 8},
    # every engine kind in one model; 2-bit, and q/k/v of different bit widths, fall back
    # to float rows; the head (tied or not) 8-bit
    "mix": {
        "group_size": 32,
        "bits": 4,
        "model.embed_tokens": {"group_size": 32, "bits": 8},
        "lm_head": {"group_size": 64, "bits": 8},
        "model.layers.0.mlp.down_proj": {"group_size": 64, "bits": 2},
        "model.layers.1.mlp.down_proj": {"group_size": 128, "bits": 8},
        "model.layers.0.self_attn.o_proj": {"group_size": 64, "bits": 8},
        "model.layers.1.self_attn.k_proj": {"group_size": 64, "bits": 8},
    },
}


ARCH_NAMES = list(ARCHS)  # every architecture the fixtures build (hf_models imports torch lazily)


def _quantized_dir(hf, path: Path, cfg: dict) -> None:
    """``hf`` saved as an mlx-lm quantized directory (NumPy packer, float16 scales as mlx-lm stores)."""
    from safetensors.numpy import save_file

    path.mkdir(parents=True)
    out = {}
    tied = bool(getattr(hf.config, "tie_word_embeddings", False))
    for name, w in hf.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        w = w.numpy()
        if w.ndim == 2:
            prefix = name[: -len(".weight")]
            over = cfg.get(prefix, {})
            gs, bits = over.get("group_size", cfg["group_size"]), over.get("bits", cfg["bits"])
            wq, sc, bi = affine.quantize_numpy(w, gs, bits)
            out[name], out[prefix + ".scales"], out[prefix + ".biases"] = wq, sc.astype(np.float16), bi.astype(np.float16)
        else:
            out[name] = w
    save_file(out, str(path / "model.safetensors"))
    config = json.loads(hf.config.to_json_string())
    config["quantization"] = cfg
    (path / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """(arch, quant) -> a model directory, built once per module."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from .hf_models import hf_model

    made = {}

    def get(arch: str, quant: str = "f32") -> Path:
        key = (arch, quant)
        if key not in made:
            # groups of 64/128 need the MLP width to split into them
            inter = {} if quant in ("f32", "q4") else {"intermediate_size": 128}
            hf = hf_model(arch, seed=0, std=0.2, **inter)
            path = tmp_path_factory.mktemp(f"{arch}_{quant}")
            if QUANTS[quant] is None:
                hf.save_pretrained(path, safe_serialization=True)
            else:
                _quantized_dir(hf, path / "m", QUANTS[quant])
                path = path / "m"
            made[key] = path
        return made[key]

    return get


def _load(path):
    from mlx_synapse.backends.numpy import load_model

    return load_model(path)


def _ids(seed, n, vocab):
    return np.random.default_rng(seed).integers(0, vocab, n)


def _decode(model, engine, prompt, steps, cache=None, max_kv_size=None):
    """Teacher-forced logits (len(steps), V): prefill ``prompt`` on NumPy, then
    ``step_logits`` per token on ``engine`` (a DecodeEngine, or None for NumPy)."""
    if engine is None:
        model.use_engine(False)
    else:  # no public API takes a library: install the engine as model.engine does
        model._engine, model._engine_state = engine, "on"
    try:
        cache = cache if cache is not None else model.make_cache(max_kv_size)
        model.prefill(prompt, cache)
        out = np.stack([model.step_logits(int(t), cache).copy() for t in steps])
        return out, cache
    finally:
        model.use_engine(False)


def _engine(model, lib, threads=1, prefill="float"):
    """An engine on ``lib``; prefill on float32 BLAS by default, so that decode steps are
    compared from the same caches (the int8 prefill GEMM has its own tests)."""
    from mlx_synapse.backends.numpy.engine import DecodeEngine

    return DecodeEngine(model, threads=threads, lib=lib, prefill=prefill)


def _check_quant(got, ref, label):
    scale = np.abs(ref).max()
    err = np.abs(got - ref).max()
    assert err <= QUANT_REL * scale, f"{label}: max |engine - numpy| {err:.3g} > {QUANT_REL} x {scale:.3g}"


EXPECTED_KINDS = {"f32": {KIND_F32}, "q4": {KIND_Q4}, "q8": {KIND_Q8}, "mix": {KIND_F32, KIND_Q4, KIND_Q8}}


@pytest.mark.parametrize("quant", list(QUANTS))
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_engine_decode_matches_numpy(model_dir, libs, arch, quant):
    model = _load(model_dir(arch, quant))
    V = model.vocab_size
    prompt, steps = _ids(1, PROMPT, V), _ids(2, STEPS, V)
    ref, ref_cache = _decode(model, None, prompt, steps)
    for name, lib in libs.items():
        eng = _engine(model, lib)
        assert eng.kinds == EXPECTED_KINDS[quant], (name, eng.kinds)
        assert eng.simd == lib.syn_simd().decode() and eng.threads == 1
        got, cache = _decode(model, eng, prompt, steps)
        assert np.isfinite(got).all()
        label = f"{arch}/{quant}/{name}"
        if quant == "f32":
            np.testing.assert_allclose(got, ref, **F32_TOL, err_msg=label)
            # the engine's keys/values (rotated keys, raw values) are what NumPy stores
            for c, rc in zip(cache, ref_cache):
                assert c.offset == rc.offset == PROMPT + STEPS
                np.testing.assert_allclose(c.keys[:, : c.offset], rc.keys[:, : rc.offset], **F32_TOL)
                np.testing.assert_allclose(c.values[:, : c.offset], rc.values[:, : rc.offset], **F32_TOL)
        else:
            _check_quant(got, ref, label)


@pytest.mark.parametrize("arch,quant", [("llama", "f32"), ("qwen3", "q4"), ("phi3", "mix"), ("qwen2", "q8")])
def test_engine_two_threads_is_bitwise_one_thread(model_dir, libs, arch, quant):
    """Rows and heads are split between threads, never a sum: 2 threads give the
    very bits of 1 thread (and so the same tolerance against NumPy)."""
    model = _load(model_dir(arch, quant))
    V = model.vocab_size
    prompt, steps = _ids(3, PROMPT, V), _ids(4, STEPS, V)
    for name in ("simd", "generic") if arch == "llama" else ("simd",):
        one, _ = _decode(model, _engine(model, libs[name], 1), prompt, steps)
        eng2 = _engine(model, libs[name], 2)
        assert eng2.threads == 2
        two, _ = _decode(model, eng2, prompt, steps)
        np.testing.assert_array_equal(two, one, err_msg=f"{arch}/{quant}/{name}")


def test_use_engine_api(model_dir):
    model = _load(model_dir("llama"))
    assert model.engine_status == "unbuilt"
    model.use_engine(True, threads=2)
    assert model.engine_status == "on" and model.engine.threads == 2
    assert model.engine.weight_bytes > 0
    model.use_engine(True, threads=1)
    assert model.engine.threads == 1
    prompt, steps = _ids(5, PROMPT, model.vocab_size), _ids(6, 6, model.vocab_size)
    cache = model.make_cache()
    model.prefill(prompt, cache)
    first = model.step_logits(int(steps[0]), cache)
    assert first is model.engine.logits  # the engine's own buffer, as documented
    model.use_engine(False)
    assert model.engine is None and model.engine_status.startswith("off")
    ref, _ = _decode(model, None, prompt, steps[:1])
    np.testing.assert_allclose(first, ref[0], **F32_TOL)


def test_engine_matvec_wrapper(model_dir):
    model = _load(model_dir("llama", "q4"))
    eng = _engine(model, LIB, 2)
    m = model.layers[0].packed["gu"]
    x = np.random.default_rng(0).standard_normal(m.K).astype(np.float32)
    codes = native.unpack_q4(m.w)
    ref, mag, _, _ = _quant_reference(codes, m.s, m.b, m.group, x)
    np.testing.assert_array_less(np.abs(eng.matvec(m, x) - ref), (m.K // BLOCK + 40) * U * mag + 1e-30)
    with pytest.raises(ValueError, match="shape"):
        eng.matvec(m, x[:-1])


@pytest.mark.parametrize("arch", ["llama", "qwen3", "phi3_partial_rotary"])
def test_greedy_generation_identical(model_dir, arch):
    from mlx_synapse.backends.numpy import generate_step

    model = _load(model_dir(arch))
    prompt = _ids(7, 9, model.vocab_size).tolist()
    model.use_engine(False)
    ref = [(t, lp.copy()) for t, lp in generate_step(prompt, model, max_tokens=16)]
    model.use_engine(True, threads=1)
    assert model.engine_status == "on"
    got = [(t, lp.copy()) for t, lp in generate_step(prompt, model, max_tokens=16)]
    assert [t for t, _ in got] == [t for t, _ in ref]
    np.testing.assert_allclose(np.stack([lp for _, lp in got]), np.stack([lp for _, lp in ref]), **F32_TOL)


# ------------------------------------------------------- prefill helpers


# The engine's exp (exp_neg, for x <= 0) is 2^rint(x log2 e) times a degree-7 polynomial
# of the reduced argument (Cody-Waite ln2 split); documented relative error < 3e-7 on [-87, 0].
EXP_REL = 3e-7


@pytest.fixture(scope="module")
def helper_engine(model_dir):
    """An engine of the partial-rotary phi3 (its rope partner index is not a half swap)."""
    model = _load(model_dir("phi3_partial_rotary"))
    return model, _engine(model, LIB, 2)


@pytest.mark.parametrize("heads,n,base,T", [(1, 1, 0, 1), (3, 5, 11, 16), (2, 7, 0, 7), (4, 3, 40, 30),
                                            (2, 130, 5, 150), (1, 4, 2, 64)])
def test_softmax_causal_matches_numpy(helper_engine, heads, n, base, T):
    """Row r is query r % n at position base + r % n over keys 0..T-1; later keys get 0
    (T < base + n: the visible prefix is clamped to T)."""
    _, eng = helper_engine
    rng = np.random.default_rng(heads * 1000 + n + base + T)
    s = (rng.standard_normal((heads, n, T)) * rng.choice([0.1, 3.0, 30.0])).astype(np.float32)
    s[0, 0, 0] = 60.0  # scores far below the maximum: exp underflows
    ref = np.zeros((heads, n, T))
    arg = np.zeros((heads, n, T))
    for r in range(n):
        lim = min(T, base + r + 1)
        arg[:, r, :lim] = s[:, r, :lim].astype(np.float64) - s[:, r, :lim].max(-1, keepdims=True)
        e = np.exp(arg[:, r, :lim])
        ref[:, r, :lim] = e / e.sum(-1, keepdims=True)
    got = s.reshape(heads * n, T).copy()
    eng.softmax_causal(got, n, base)
    got = got.reshape(heads, n, T)
    # each probability: its exp and the row's sum of exps, float32 sums, and the float32
    # rounding of its argument s - max (half an ulp of |arg|: a relative |arg| u in exp)
    tol = ref * (2 * EXP_REL + T * U + np.abs(arg) * U) + 1e-30
    bad = np.abs(got - ref) > tol
    assert not bad.any(), f"{bad.sum()} probabilities off, worst relative {(np.abs(got - ref) / np.maximum(ref, 1e-30))[bad].max():.3g}"
    assert (got[ref == 0] == 0).all()  # masked keys exactly 0
    with pytest.raises(ValueError, match="float32"):
        eng.softmax_causal(s.astype(np.float64), n, base)


def test_silu_mul_matches_numpy(helper_engine):
    model, eng = helper_engine
    inter = model.args.intermediate_size
    rng = np.random.default_rng(0)
    gate = rng.standard_normal((9, inter)) * np.array([0.01, 1, 5, 20, 80, 86, 88, 100, 1e4])[:, None]
    gate[0, :4] = [0.0, -0.0, 1e-30, -1e-30]
    up = rng.standard_normal((9, inter))
    gu = np.concatenate([gate, up], axis=1).astype(np.float32)
    g64, u64 = gu[:, :inter].astype(np.float64), gu[:, inter:].astype(np.float64)
    got = eng.silu_mul(gu, inter)
    assert got.shape == (9, inter) and got.dtype == np.float32
    # below exp(-87) the engine's exp is clamped: off by < 1e-37 |g u|
    with np.errstate(over="ignore"):
        ref = g64 / (1 + np.exp(-g64)) * u64
    np.testing.assert_allclose(got, ref, rtol=EXP_REL + 8 * U, atol=1e-37 * np.abs(g64 * u64).max())
    with pytest.raises(ValueError, match="2 \\* inter"):
        eng.silu_mul(gu[:, 1:], inter)


def test_exp_accuracy_as_documented(helper_engine):
    """Scores (0, -x) in a row of two: p1 = 1 / (1 + e), p2 = e p1, so p2 / p1 is the
    engine's exp(-x) to one rounding."""
    _, eng = helper_engine
    x = np.concatenate([np.linspace(0, 87, 20001), np.log(2) * np.arange(1, 125) * (1 - 1e-6)])
    s = np.zeros((x.size, 2), np.float32)
    s[:, 1] = -x
    x = -s[:, 1].astype(np.float64)  # the float32 arguments
    eng.softmax_causal(s, 1, 1)
    rel = np.abs(s[:, 1].astype(np.float64) / s[:, 0] / np.exp(-x) - 1)
    assert rel.max() <= 3e-7 + 2 * U, f"max relative error {rel.max():.3g} at x = -{x[rel.argmax()]:.6g}"


@pytest.mark.parametrize("L", [1, 5, 33])
def test_rope_matches_numpy(helper_engine, L):
    model, eng = helper_engine
    a = model.args
    hall, heads = a.num_heads + 2 * a.num_kv_heads, a.num_heads + a.num_kv_heads
    rng = np.random.default_rng(L)
    qkv = rng.standard_normal((L, hall, a.head_dim)).astype(np.float32)
    cos, sin = model.rope.tables(300 + L, L)
    ref = qkv.copy()
    model.rope.apply(ref[:, :heads], cos, sin)
    got = qkv.copy()
    eng.rope(got, heads, cos, sin)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got[:, heads:], qkv[:, heads:])  # values untouched


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_full_forward_with_engine_helpers_matches_numpy(model_dir, arch):
    """model(ids) runs rope / causal softmax / silu through the engine when there is
    one: one sequence whole (300 tokens: several causal query blocks) and in chunks."""
    model = _load(model_dir(arch))
    ids = _ids(16, 300, model.vocab_size)
    model.use_engine(False)
    ref = model(ids)
    cache = model.make_cache()
    ref_chunks = np.concatenate([model(ids[:5], cache), model(ids[5:140], cache), model(ids[140:], cache)])
    model.use_engine(True, threads=2)
    assert model.engine is not None
    np.testing.assert_allclose(model(ids), ref, **F32_TOL)
    cache = model.make_cache()
    got = np.concatenate([model(ids[:5], cache), model(ids[5:140], cache), model(ids[140:], cache)])
    np.testing.assert_allclose(got, ref_chunks, **F32_TOL)
    np.testing.assert_allclose(got, ref, **F32_TOL)


# ------------------------------------------------------------------ caches


@pytest.mark.parametrize("quant,prompt_len", [("f32", 7), ("f32", 13), ("q4", 7)])
def test_rotating_cache_past_the_wrap(model_dir, libs, quant, prompt_len):
    """max_kv_size=10 (4 kept + a ring of 6): decoding wraps the ring three times;
    a 13-token prompt starts past the window (the multi-token path of the cache)."""
    from mlx_synapse.backends.numpy import RotatingKVCache

    model = _load(model_dir("llama", quant))
    V = model.vocab_size
    prompt, steps = _ids(8, prompt_len, V), _ids(9, STEPS, V)
    ref, rc = _decode(model, None, prompt, steps, max_kv_size=10)
    assert isinstance(rc[0], RotatingKVCache) and rc[0].size() == 10
    for name in ("simd", "generic"):
        got, c = _decode(model, _engine(model, libs[name]), prompt, steps, max_kv_size=10)
        assert c[0].offset == prompt_len + STEPS and c[0].keys.shape[1] == 10
        if quant == "f32":
            np.testing.assert_allclose(got, ref, **F32_TOL, err_msg=name)
        else:
            _check_quant(got, ref, name)
    # the window matters here: the unbounded cache gives other logits after the wrap
    full, _ = _decode(model, None, prompt, steps)
    assert np.abs(full[-1] - ref[-1]).max() > 1e-2


def test_cache_growth_rebinds_buffers(model_dir, libs):
    """KVCache(step=8): the buffers are reallocated every 8 positions, by the engine's
    slot reservation and by NumPy multi-token forwards in between; the engine must
    follow every move (and its keys/values must serve the NumPy path)."""
    from mlx_synapse.backends.numpy import KVCache

    model = _load(model_dir("qwen3"))
    V, nl = model.vocab_size, model.num_layers
    prompt, toks = _ids(10, 5, V), _ids(11, 40, V)
    plan = [("step", toks[:12]), ("chunk", toks[12:17]), ("step", toks[17:30]), ("chunk", toks[30:33]),
            ("step", toks[33:])]

    def run(engine):
        cache = [KVCache(step=8) for _ in range(nl)]
        model.prefill(prompt, cache)
        out, buffers = [], set()
        for what, ids in plan:
            if what == "chunk":  # always NumPy: a multi-token forward
                model.use_engine(False)
                out.append(model(ids, cache))
            else:
                if engine is None:
                    model.use_engine(False)
                else:
                    model._engine, model._engine_state = engine, "on"
                for t in ids:
                    out.append(model.step_logits(int(t), cache).copy()[None])
                    buffers.add(id(cache[0].keys))
        model.use_engine(False)
        return np.concatenate(out), cache, len(buffers)

    ref, _, _ = run(None)
    for name in ("simd", "generic"):
        eng = _engine(model, libs[name])
        got, cache, n_buffers = run(eng)
        assert cache[0].offset == 5 + 40 and cache[0].keys.shape[1] == 48
        assert n_buffers >= 4  # grown under the engine several times
        assert eng._bound is cache[0].keys
        np.testing.assert_allclose(got, ref, **F32_TOL, err_msg=name)


@pytest.mark.parametrize("prompt_len", [250, 2040])
def test_default_cache_step_and_rope_table_boundaries(model_dir, prompt_len):
    """Past the default KVCache step (256) and past the rope table's first 2048 rows
    (a model of its own, so the table grows under the engine, not the reference)."""
    model = _load(model_dir("llama3_rope"))
    V = model.vocab_size
    prompt, steps = _ids(12, prompt_len, V), _ids(13, 12, V)
    got, c = _decode(model, _engine(model, LIB), prompt, steps)
    ref, rc = _decode(_load(model_dir("llama3_rope")), None, prompt, steps)
    assert c[0].keys.shape[1] == rc[0].keys.shape[1] > prompt_len + 6
    np.testing.assert_allclose(got, ref, **F32_TOL)


def test_supports_only_the_two_cache_types(model_dir):
    from mlx_synapse.backends.numpy import KVCache, RotatingKVCache

    class Other(KVCache):
        pass

    eng = _engine(_load(model_dir("llama")), LIB)
    assert eng.supports([KVCache(), KVCache()]) and eng.supports([RotatingKVCache(8), RotatingKVCache(8)])
    assert not eng.supports([]) and not eng.supports(None) and not eng.supports([Other(), Other()])


# ------------------------------------------------------------- error paths


def test_token_out_of_range(model_dir):
    model = _load(model_dir("llama"))
    model.use_engine(True, threads=1)
    cache = model.make_cache()
    model.prefill(_ids(14, 4, model.vocab_size), cache)
    for bad in (model.vocab_size, model.vocab_size + 1000, -1):
        with pytest.raises(ValueError, match="out of range"):
            model.step_logits(bad, cache)
    assert cache[0].offset == 4  # refused before any slot was taken
    model.step_logits(model.vocab_size - 1, cache)
    assert cache[0].offset == 5


@pytest.mark.parametrize("value", ["0", "off", "False"])
def test_native_disabled_by_env(monkeypatch, model_dir, value):
    from mlx_synapse.backends.numpy.engine import DecodeEngine

    monkeypatch.setenv("MLX_SYNAPSE_NATIVE", value)
    monkeypatch.setattr(native, "_libs", {})  # no cached library to fall back on
    monkeypatch.setattr(native, "_errors", {})
    assert native.library() is None and native.library(generic=True) is None
    model = _load(model_dir("llama"))
    assert model.engine is None
    assert model.engine_status.startswith("off") and "MLX_SYNAPSE_NATIVE=0" in model.engine_status
    with pytest.raises(RuntimeError, match="MLX_SYNAPSE_NATIVE"):
        DecodeEngine(model)
    cache = model.make_cache()  # decoding goes on, on NumPy
    model.prefill(_ids(15, 4, model.vocab_size), cache)
    assert np.isfinite(model.step_logits(3, cache)).all()
    monkeypatch.undo()
    assert native.library() is LIB  # the cached library is back


def test_pool_starts_jobs_posted_before_its_workers_run():
    """Regression: a worker that read the job counter only once running missed a job
    posted right after syn_new, and the caller spun forever.  On one CPU the workers
    start late; a hang fails through the timeout."""
    code = (
        "import os, numpy as np\n"
        "from mlx_synapse.kernels import native\n"
        "if hasattr(os, 'sched_setaffinity'):\n"
        "    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
        "lib = native.library()\n"
        "w = np.ones((64, 64), np.float32); x = np.ones(64, np.float32); y = np.zeros(64, np.float32)\n"
        "for i in range(40):\n"
        "    ctx = lib.syn_new(1, 32, 1, 1, 32, 32, 32, 1e-5, 2, 20000)\n"
        "    assert lib.syn_matvec(ctx, 0, 64, 64, 0, w.ctypes.data, None, None, x.ctypes.data, y.ctypes.data) == 0\n"
        "    assert (y == 64).all()\n"
        "    lib.syn_free(ctx)\n"
        "print('ok')\n"
    )
    root = Path(__file__).resolve().parents[1]
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=60,
                           check=False, env={**os.environ, "MLX_SYNAPSE_NATIVE": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail("thread pool deadlock: a job posted right after syn_new never completed")
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
