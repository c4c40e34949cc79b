"""The engine's prefill GEMM (``syn_gemm``, ``TileMat``, ``DecodeEngine.gemm``) and
the quantized-model prefill built on it, against NumPy references.

The math under test: each row of X is (optionally) RMS-normalised and multiplied
by a norm weight, giving v; v is quantized per block of 32 to 16-bit integers
c = rint(v / d), d = max|v| / 32639, held as two int8 planes hi = floor((c + 128)
/ 256), lo = c - 256 hi; a block's products codes . c are exact integers; then
y = sum over blocks of s d (codes . c) + b sum(v)  (+ bias, + y when accumulating).

Tolerances (u = 2**-24, float32 unit roundoff):

* no RMS: ``native.quantize_planes_reference`` repeats the C quantizer's float32 operations,
  so the codes are the same and the reference is the float64 value of the
  formula above, within (KB + 40) u of its magnitude (one rounding per block
  product, the sequential block sums, the final adds), as for the matvec;
* RMS: the row's factor is a float32 reduction whose order differs from any
  NumPy one, so a code may move by one: checked against the exact float64
  W v within the activation rounding, sum |s code| (d / 2 + 16 u max|v|) per
  block, plus the same float rounding term;
* against the exact float64 W v, every case also within that activation bound.
* builds: the native one, the plain-C one and, on a VNNI machine, an AVX-512 build
  without VNNI (its quantizer with the plain-C tile kernel), on 1 and 2 threads;
* models: quantized prefill through the GEMM against the float32 BLAS prefill
  of the same weights; see ``test_quantized_prefill_matches_float_prefill``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx_synapse.kernels import native
from mlx_synapse.kernels.native import KIND_F32, KIND_Q4, KIND_Q8, QMat, TileMat

from . import test_native_engine as _engine_tests
from .test_native_engine import ARCH_NAMES, X_MODES, _mlx_words, _quant_matrix, _x

model_dir = _engine_tests.model_dir  # the same tiny quantized models, built once for this module too

LIB = native.library()
U = 2.0**-24
BLOCK = native.BLOCK


def _avx512_no_vnni_build(out_dir):
    """On a VNNI machine, the engine as an AVX-512 CPU without VNNI gets it (Skylake-X):
    the AVX-512 quantizer with the plain-C tile kernel."""
    import ctypes

    if LIB.syn_simd() != b"avx512bw+vnni":
        return None
    base = [f for f in native._flag_sets(True)[0] if f != "-DSYNAPSE_GENERIC"]
    out = out_dir / "libsynapse_avx512.so"
    ok, err = native._compile(native._compiler(), base + ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma"], out)
    assert ok, err
    lib = ctypes.CDLL(str(out))
    native._declare(lib)
    assert lib.syn_simd() == b"avx512bw" and not lib.syn_gemm_fast()
    return lib


@pytest.fixture(scope="module")
def ctxs(tmp_path_factory):
    """[(label, lib, ctx)]: the native build, the plain-C build [and an AVX-512 build without
    VNNI], each on 1 and 2 threads."""
    gen = native.library(generic=True)
    assert gen is not None, native.build_error(True)
    builds = [("simd", LIB), ("generic", gen)]
    no_vnni = _avx512_no_vnni_build(tmp_path_factory.mktemp("avx512"))
    if no_vnni is not None:
        builds.append(("avx512-no-vnni", no_vnni))
    out = []
    for name, lib in builds:
        for threads in (1, 2):
            ctx = lib.syn_new(1, 32, 1, 1, 32, 32, 32, 1e-5, threads, 2000)
            assert ctx and lib.syn_threads(ctx) == threads
            out.append((f"{name}/t{threads}", lib, ctx))
    yield out
    for _, lib, ctx in out:
        lib.syn_free(ctx)


def _tiles(lib, kind, codes, s, b, group):
    bits = 4 if kind == KIND_Q4 else 8
    m = QMat.from_mlx(_mlx_words(codes, bits), s, b, group, bits)
    return TileMat(m, lib)


def _gemm(lib, ctx, t: TileMat, x, out, flags, norm, bias):
    ptr = lambda a: None if a is None else a.ctypes.data  # noqa: E731
    rc = lib.syn_gemm(ctx, t.kind, t.N, t.K, t.data.ctypes.data, x.ctypes.data, x.strides[0] // 4, x.shape[0],
                      out.ctypes.data, out.strides[0] // 4, flags, ptr(norm), ptr(bias))
    assert rc == 0, f"syn_gemm returned {rc}"


@st.composite
def gemm_cases(draw):
    kind = draw(st.sampled_from([KIND_Q4, KIND_Q8]))
    N = draw(st.integers(1, 70))
    nblk = draw(st.sampled_from([1, 2, 3, 5, 7, 9, 18, 33]))
    K = BLOCK * nblk
    group = draw(st.sampled_from([g for g in (32, 64, 128, 256) if K % g == 0]))
    T = draw(st.integers(1, 20))
    flags = dict(rms=draw(st.booleans()), norm=draw(st.booleans()), bias=draw(st.booleans()),
                 acc=draw(st.booleans()), pad_x=draw(st.integers(0, 3)), pad_y=draw(st.integers(0, 3)))
    return kind, N, K, group, T, draw(st.sampled_from(["normal", "large", "zero_scale_row", "extreme_codes"])), flags, \
        draw(st.integers(0, 2**32 - 1))


@settings(max_examples=200, deadline=None)
@given(case=gemm_cases())
def test_gemm_matches_float64_reference(ctxs, case):
    kind, N, K, group, T, wmode, fl, seed = case
    rng = np.random.default_rng(seed)
    codes, s, b = _quant_matrix(rng, kind, N, K, group, wmode)
    # rows of x in every mode, each row stored `pad_x` floats wider than K (a strided view)
    xs = np.zeros((T, K + fl["pad_x"]), np.float32)
    for t in range(T):
        xs[t, :K] = _x(rng, K, X_MODES[int(rng.integers(len(X_MODES)))])
    x = xs[:, :K]
    norm = (rng.standard_normal(K) * 0.5 + 1).astype(np.float32) if fl["norm"] else None
    bias = rng.standard_normal(N).astype(np.float32) if fl["bias"] else None
    y0 = rng.standard_normal((T, N + fl["pad_y"])).astype(np.float32)
    flags = int(fl["acc"]) | (2 if fl["rms"] else 0)

    # the reference, row by row, in float64
    rep = group // BLOCK
    c64 = codes.reshape(N, K // BLOCK, BLOCK).astype(np.int64)
    sb = np.repeat(s.astype(np.float64), rep, axis=1)
    bb = np.repeat(b.astype(np.float64), rep, axis=1)
    w64 = (c64 * sb[..., None] + bb[..., None]).reshape(N, K)
    base, base_mag = np.zeros((T, N)), np.zeros((T, N))
    if fl["acc"]:
        base += y0[:, :N]
        base_mag += np.abs(y0[:, :N])
    if bias is not None:
        base += bias
        base_mag += np.abs(bias)
    ref, mag, exact, qbound = [], [], [], []
    for t in range(T):
        v = x[t].astype(np.float64)
        if fl["rms"]:
            v = v / np.sqrt(np.mean(v * v) + 1e-5)
        if norm is not None:
            v = v * norm
        v32 = (x[t] * norm if norm is not None else x[t]).astype(np.float32) if not fl["rms"] else v.astype(np.float32)
        c, d, hi, lo = native.quantize_planes_reference(v32)
        assert np.abs(hi).max() <= 127 and -128 <= lo.min() and lo.max() <= 127 and (256 * hi + lo == c).all()
        cb, d64 = c.reshape(-1, BLOCK), d.astype(np.float64)
        vb = v32.astype(np.float64).reshape(-1, BLOCK)
        ref.append((sb * d64 * np.einsum("nbj,bj->nb", c64, cb)).sum(1) + bb @ vb.sum(1))
        mag.append((np.abs(sb) * d64 * np.einsum("nbj,bj->nb", c64, np.abs(cb))).sum(1) + np.abs(bb) @ np.abs(vb).sum(1)
                   + base_mag[t])
        exact.append(w64 @ v)
        amax = np.abs(v).reshape(-1, BLOCK).max(1)
        qbound.append((np.abs(c64 * sb[..., None]).sum(2) * (0.5 * amax / 32639 + 16 * U * amax)).sum(1))
    ref, mag, exact, qbound = (np.array(a) for a in (ref, mag, exact, qbound))
    ref, exact = ref + base, exact + base
    tol = (K // BLOCK + 40) * U * mag

    for label, lib, ctx in ctxs:
        t_mat = _tiles(lib, kind, codes, s, b, group)
        assert (t_mat.N, t_mat.K) == (N, K)
        y = y0.copy()
        _gemm(lib, ctx, t_mat, x, y[:, :N], flags, norm, bias)
        assert (y[:, N:] == y0[:, N:]).all(), f"{label}: wrote past N"
        got = y[:, :N].astype(np.float64)
        assert np.isfinite(got).all(), label
        msg = f"{label} kind={kind} N={N} K={K} group={group} T={T} w={wmode} {fl}"
        if not fl["rms"]:
            bad = np.argwhere(np.abs(got - ref) > tol)
            assert bad.size == 0, f"{msg}: (t, n) {bad[:4].tolist()} got {got[tuple(bad[0])]} want {ref[tuple(bad[0])]}"
        assert (np.abs(got - exact) <= qbound + tol).all(), msg


@pytest.mark.parametrize("kind", [KIND_Q4, KIND_Q8])
def test_gemm_is_exact_on_integer_data(ctxs, kind):
    """Integer activations whose block max is 32639 quantize exactly (d = 1), and with small
    integer scales every partial sum stays an integer below 2**24: any indexing slip shows as a
    wrong number, not a rounding.  (The 32639 sits where every row's code is 0.)"""
    rng = np.random.default_rng(7)
    N, K, T = 37, 7 * BLOCK, 13
    top = 15 if kind == KIND_Q4 else 255
    codes = rng.integers(0, top + 1, (N, K), dtype=np.uint8)
    codes[:, ::BLOCK] = 0
    s = rng.integers(-3, 4, (N, K // BLOCK)).astype(np.float32)
    b = rng.integers(-3, 4, (N, K // BLOCK)).astype(np.float32)
    x = rng.integers(-8, 9, (T, K)).astype(np.float32)
    x[:, ::BLOCK] = np.where(rng.random((T, K // BLOCK)) < 0.5, 32639, -32639)
    want = x.astype(np.int64) @ (codes.astype(np.int64).reshape(N, -1, BLOCK) * s[..., None].astype(np.int64)
                                 + b[..., None].astype(np.int64)).reshape(N, K).T
    for label, lib, ctx in ctxs:
        y = np.full((T, N), np.nan, np.float32)
        _gemm(lib, ctx, _tiles(lib, kind, codes, s, b, BLOCK), x, y, 0, None, None)
        np.testing.assert_array_equal(y.astype(np.int64), want, err_msg=label)


def test_quantize16_planes_reach_the_range_ends(ctxs):
    """Blocks whose values land on +-32639 and half way between hi steps keep hi in [-127, 127]
    and lo in [-128, 127] (an off-by-one there would overflow an int8 plane)."""
    K = 4 * BLOCK
    v = np.linspace(-32639, 32639, K).astype(np.float32)
    v[::7] = np.float32(32639)
    v[1::9] = np.float32(-32639)
    v[2::11] = np.float32(128 + 256 * 5)  # half way between two hi values
    v[3::13] = np.float32(-128 - 256 * 7)
    for label, lib, ctx in ctxs:
        codes = np.ones((1, K), np.uint8)
        y = np.empty((1, 1), np.float32)
        _gemm(lib, ctx, _tiles(lib, KIND_Q8, codes, np.ones((1, K // BLOCK), np.float32),
                               np.zeros((1, K // BLOCK), np.float32), BLOCK), v[None], y, 0, None, None)
        assert y[0, 0] == pytest.approx(float(v.astype(np.float64).sum()), abs=1e-3), label


def test_tiles_and_gemm_errors():
    from mlx_synapse.backends.numpy.engine import prefill_on_codes

    with pytest.raises(ValueError, match="only 4/8-bit"):
        TileMat(QMat(KIND_F32, np.zeros((4, 32), np.float32)), LIB)
    with pytest.raises(ValueError, match="auto, codes or float"):
        prefill_on_codes(LIB, "fast")
    assert prefill_on_codes(LIB, "codes") and not prefill_on_codes(LIB, "float")
    assert prefill_on_codes(LIB, "auto") == bool(LIB.syn_gemm_fast())
    assert not prefill_on_codes(native.library(generic=True), "auto")  # the plain-C GEMM is a reference, not a fast path
    assert LIB.syn_gemm(None, KIND_F32, 4, 32, None, None, 32, 1, None, 4, 0, None, None) == -1


# ---------------------------------------------------------------- models


def _load(path):
    from mlx_synapse.backends.numpy import load_model

    return load_model(path)


def _with_engine(model, prefill, lib=None):
    from mlx_synapse.backends.numpy.engine import DecodeEngine

    model._engine, model._engine_state = DecodeEngine(model, threads=2, lib=lib, prefill=prefill), "on"
    return model._engine


# Measured on these random models (std 0.2): max |GEMM prefill - float prefill| over all logits
# 1.7e-4 .. 6.0e-4 of the largest |logit| (q4, q8, mixed; every architecture), the 16-bit
# activation rounding carried through the layers; the same bound as the decode engine's
# (QUANT_REL in test_native_engine, whose int16 activations measured 2e-4 .. 8.9e-4).
# With 8-bit activations (one plane) it measured up to 4.4e-2.
PREFILL_REL = 2.5e-3


@pytest.mark.parametrize("quant", ["q4", "q8", "mix"])
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_quantized_prefill_matches_float_prefill(model_dir, arch, quant):
    """Every logit of a 13-token forward, the cache it leaves, and the decode steps after it."""
    model = _load(model_dir(arch, quant))
    ids = np.random.default_rng(3).integers(0, model.vocab_size, 13)
    eng = _with_engine(model, "float")
    assert not any(eng.tiles)
    ref_cache = model.make_cache()
    ref = model(ids, ref_cache)
    eng = _with_engine(model, "codes")
    assert any(eng.tiles) and all(set(t) <= {"qkv", "o", "gu", "down"} for t in eng.tiles)
    cache = model.make_cache()
    got = model(ids, cache)
    scale = np.abs(ref).max()
    err = np.abs(got - ref).max()
    assert err <= PREFILL_REL * scale, f"{arch}/{quant}: {err:.3g} > {PREFILL_REL} x {scale:.3g}"
    for c, rc in zip(cache, ref_cache):
        kscale = np.abs(rc.keys[:, : rc.offset]).max()
        assert np.abs(c.keys[:, : c.offset] - rc.keys[:, : rc.offset]).max() <= PREFILL_REL * kscale
    # forward_last and prefill agree with the full forward of the same path
    np.testing.assert_allclose(model.forward_last(ids, model.make_cache()), got[-1], rtol=0, atol=1e-3 * scale)
    c2 = model.make_cache()
    model.prefill(ids[:-1], c2)
    np.testing.assert_allclose(model.step_logits(int(ids[-1]), c2), got[-1], rtol=0, atol=PREFILL_REL * scale)
    model.use_engine(False)


def test_prefill_mode_from_environment(model_dir, monkeypatch):
    model = _load(model_dir("llama", "q4"))
    monkeypatch.setenv("MLX_SYNAPSE_PREFILL", "float")
    model.use_engine(True, threads=1)
    assert not any(model.engine.tiles)
    monkeypatch.setenv("MLX_SYNAPSE_PREFILL", "codes")
    model.use_engine(True, threads=1)
    assert all(set(t) == {"qkv", "o", "gu", "down"} for t in model.engine.tiles)
    assert model.engine.tile_bytes > 0
    monkeypatch.setenv("MLX_SYNAPSE_PREFILL", "bogus")
    with pytest.raises(ValueError, match="MLX_SYNAPSE_PREFILL"):
        model.use_engine(True, threads=1)


def test_engine_gemm_argument_errors(model_dir):
    model = _load(model_dir("llama", "q4"))
    eng = _with_engine(model, "codes")
    t = eng.tiles[0]["qkv"]
    x = np.ones((3, t.K), np.float32)
    with pytest.raises(ValueError, match="float32"):
        eng.gemm(t, x.astype(np.float64))
    with pytest.raises(ValueError, match="float32"):
        eng.gemm(t, np.ones((3, t.K + 1), np.float32))
    with pytest.raises(ValueError, match="accumulate needs out"):
        eng.gemm(t, x, accumulate=True)
    with pytest.raises(ValueError, match="out must be"):
        eng.gemm(t, x, out=np.zeros((3, t.N + 1), np.float32))
    with pytest.raises(ValueError, match="norm/bias"):
        eng.gemm(t, x, rms=True, norm=np.ones(t.K + 1, np.float32))
    y = eng.gemm(t, x, bias=np.ones(t.N, np.float32))
    y2 = eng.gemm(t, x, out=np.ones((3, t.N), np.float32), accumulate=True)
    np.testing.assert_allclose(y, y2, rtol=1e-6)
    model.use_engine(False)
