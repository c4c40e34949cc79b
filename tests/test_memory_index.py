"""VectorIndex and the INT8 cosine kernels: every path against a float64 reference.

Paths: the numba kernels (fused top-k and full scores), the pure-NumPy fallback,
and the MLX affine 8-bit ``quantized_matmul`` mirror (kept small: MLX's CPU
quantized matmul is slow).  Plus a dict-model property test over random
add/upsert/remove sequences, the input errors, and FAISS as an outside peer.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_synapse.kernels import int8_search as ks
from mlx_synapse.loader import mlx_available
from mlx_synapse.memory.index import VectorIndex
from mlx_synapse.memory.int8 import quantize

ATOL = 2e-6  # cosines are in [-1, 1]: ~1e-5 relative to the scores that make a top-k


def ref_cosines(codes, scales, queries):
    """float64 cosine of each query with each dequantized row ``codes * scale`` (zero row -> 0)."""
    rows = codes.astype(np.float64) * np.asarray(scales, np.float64)[:, None]
    norm = np.linalg.norm(rows, axis=1)
    rows = np.divide(rows, norm[:, None], out=np.zeros_like(rows), where=norm[:, None] > 0)
    q = np.atleast_2d(queries).astype(np.float64)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)) @ rows.T


def ref_topk(ids, cos, k):
    """Top-k by (score desc, id asc) of one query's float64 scores."""
    order = np.lexsort((ids, -cos))[:k]
    return ids[order], cos[order]


def bank(n, d, seed=0):
    rng = np.random.default_rng(seed)
    codes, scales = quantize(rng.standard_normal((n, d)).astype(np.float32))
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    q = rng.standard_normal((3, d)).astype(np.float32)
    return ids, codes, scales, q / np.linalg.norm(q, axis=1, keepdims=True)


def distinct_at(cos, k, gap=1e-5):
    """Whether the top k+1 float64 scores are separated enough for ids to be unambiguous."""
    top = np.sort(cos)[::-1][: k + 1]
    return len(top) < 2 or np.diff(top).min() < -gap


def assert_same_topk(got_ids, got_s, ids, cos, k):
    """Exactly the reference's ids where its scores are distinct; scores to ATOL always."""
    want_ids, want_s = ref_topk(ids, cos, k)
    np.testing.assert_allclose(got_s, want_s, rtol=0, atol=ATOL)
    if distinct_at(cos, k):
        np.testing.assert_array_equal(got_ids, want_ids)
    else:  # near-ties may swap: each id must at least carry its own score
        lookup = dict(zip(ids.tolist(), cos.tolist()))
        np.testing.assert_allclose([lookup[i] for i in got_ids.tolist()], got_s, rtol=0, atol=ATOL)
        assert len(set(got_ids.tolist())) == len(got_ids)
    # Order: scores never increase, and exactly equal scores (zero rows, copies) go by ascending id.
    assert (np.diff(got_s) <= 0).all()
    same = np.diff(got_s) == 0
    assert (np.diff(got_ids)[same] > 0).all()


needs_mlx = pytest.mark.skipif(not mlx_available(), reason="MLX is not installed")


@pytest.fixture
def no_numba(monkeypatch):
    """Force the pure-NumPy fallback, as on a machine without numba."""
    monkeypatch.setattr(ks, "numba_kernels", lambda: None)


# ---- kernels against the reference ----------------------------------------------------


@pytest.mark.parametrize("use_numba", [True, False], ids=["numba", "numpy"])
@pytest.mark.parametrize("n,d", [(1, 1), (31, 33), (257, 100), (4099, 384)])
def test_scores_match_reference(use_numba, n, d):
    ids, codes, scales, q = bank(n, d)
    got = ks.scores(codes, ks.inv_norms(codes), q, use_numba=use_numba)
    assert got.dtype == np.float32 and got.shape == (3, n)
    np.testing.assert_allclose(got, ref_cosines(codes, scales, q), rtol=1e-5, atol=ATOL)


@pytest.mark.parametrize("use_numba", [True, False], ids=["numba", "numpy"])
@pytest.mark.parametrize("k", [1, 8, 200])  # 200 > FUSED_MAX_K: full scores + argpartition
def test_topk_ids_match_reference(use_numba, k):
    ids, codes, scales, q = bank(3001, 384, seed=k)
    got_i, got_s = ks.topk(codes, ks.inv_norms(codes), ids, q, k, use_numba=use_numba)
    cos = ref_cosines(codes, scales, q)
    for j in range(len(q)):
        assert distinct_at(cos[j], k), "test data should have distinct top scores"
        assert_same_topk(got_i[j], got_s[j], ids, cos[j], k)


@pytest.mark.parametrize("use_numba", [True, False], ids=["numba", "numpy"])
def test_exact_ties_rank_by_id_and_zero_rows_score_zero(use_numba):
    d = 40
    rng = np.random.default_rng(1)
    row = rng.integers(-127, 128, d).astype(np.int8)
    codes = np.concatenate([np.tile(row, (50, 1)), np.zeros((5, d), np.int8)])
    ids = rng.permutation(1000)[: len(codes)].astype(np.int64)
    q = row.astype(np.float32)[None] / np.linalg.norm(row)
    got_i, got_s = ks.topk(codes, ks.inv_norms(codes), ids, q, 7, use_numba=use_numba)
    np.testing.assert_array_equal(got_i[0], np.sort(ids[:50])[:7])
    np.testing.assert_allclose(got_s[0], 1.0, atol=ATOL)
    # Anti-aligned query: the zero rows (score exactly 0) come first, by id.
    got_i, got_s = ks.topk(codes, ks.inv_norms(codes), ids, -q, 5, use_numba=use_numba)
    assert got_s[0].tolist() == [0.0] * 5
    np.testing.assert_array_equal(got_i[0], np.sort(ids[50:55]))


@needs_mlx
@pytest.mark.parametrize("d,padded,group", [(384, 384, 128), (576, 576, 64), (100, 128, 128), (40, 64, 64)])
def test_mlx_affine_mirror_matches_reference(d, padded, group):
    import mlx.core as mx

    ids, codes, scales, q = bank(2000, d, seed=d)
    assert ks.affine8_layout(d) == (padded, group)
    w = ks.pack_affine8(codes, padded)
    # The packed words dequantize (scale 1, bias -128) to exactly the int8 codes, zero padded.
    ones = mx.ones((len(codes), padded // group))
    deq = np.array(mx.dequantize(mx.array(w), ones, -128 * ones, group_size=group, bits=8))
    np.testing.assert_array_equal(deq[:, :d], codes)
    assert not deq[:, d:].any()

    inv = ks.inv_norms(codes)
    m = ks.AffineInt8Mirror(d, block_rows=700)  # 3 blocks
    m.sync(codes, inv, len(codes))
    cos = ref_cosines(codes, scales, q)
    np.testing.assert_allclose(np.array(m.scores(q)), cos, rtol=1e-5, atol=ATOL)
    ops = ks.scores_ops(mx.array(codes), mx.array(inv), mx.array(q))
    np.testing.assert_allclose(np.array(ops), cos, rtol=1e-5, atol=ATOL)
    got_i, got_s = m.topk(q, ids, 8)
    for j in range(len(q)):
        assert_same_topk(got_i[j], got_s[j], ids, cos[j], 8)


@needs_mlx
def test_mlx_many_queries_run_in_chunks():
    """More query rows than one quantized_matmul takes (see ks._QMM_ROWS) give the same scores."""
    ids, codes, scales, _ = bank(600, 64, seed=3)
    q = np.random.default_rng(4).standard_normal((2 * ks._QMM_ROWS + 5, 64)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    m = ks.AffineInt8Mirror(64, block_rows=256)
    m.sync(codes, ks.inv_norms(codes), len(codes))
    np.testing.assert_allclose(np.array(m.scores(q)), ref_cosines(codes, scales, q), rtol=1e-5, atol=ATOL)


@needs_mlx
def test_mlx_topk_exact_ties_by_id():
    row = np.arange(-16, 16, dtype=np.int8)
    codes = np.tile(row, (40, 1))
    ids = np.arange(400, 0, -10, dtype=np.int64)
    m = ks.AffineInt8Mirror(32)
    m.sync(codes, ks.inv_norms(codes), 40)
    got_i, _ = m.topk(row.astype(np.float32)[None] / np.linalg.norm(row), ids, 3)
    np.testing.assert_array_equal(got_i[0], [10, 20, 30])


# ---- the index against a dict model ---------------------------------------------------

ops = st.lists(
    st.tuples(st.sampled_from(["add", "remove"]), st.lists(st.integers(0, 40), min_size=1, max_size=12, unique=True)),
    min_size=1,
    max_size=12,
)


def run_model(index, seq, d, seed, after_each=None):
    """Apply ``seq`` to ``index`` and to a dict id -> (codes, scale); return the dict."""
    rng = np.random.default_rng(seed)
    model = {}
    for op, some in seq:
        if after_each is not None and model:
            after_each(model)
        some = np.asarray(some, np.int64)
        if op == "add":
            codes, scales = quantize(rng.standard_normal((len(some), d)).astype(np.float32))
            codes[rng.random(len(some)) < 0.1] = 0  # some zero rows
            index.add(some, codes, scales)
            model.update({i: (c, s) for i, c, s in zip(some.tolist(), codes, scales)})
        else:
            assert index.remove(some) == sum(i in model for i in some.tolist())
            for i in some.tolist():
                model.pop(i, None)
    return model


def check_against_model(index, model, d, k, seed):
    assert len(index) == len(model)
    assert sorted(index.ids().tolist()) == sorted(model)
    q = np.random.default_rng(seed + 1).standard_normal((2, d))
    got_i, got_s = index.search(q, k)
    if not model:
        assert got_i.shape == (2, 0)
        return
    ids = np.array(sorted(model), np.int64)
    codes = np.stack([model[i][0] for i in ids.tolist()])
    scales = np.array([model[i][1] for i in ids.tolist()], np.float32)
    got_c, got_sc = index.get_vectors(ids)
    np.testing.assert_array_equal(got_c, codes)
    np.testing.assert_array_equal(got_sc, scales)
    cos = ref_cosines(codes, scales, q)
    assert got_i.shape == (2, min(k, len(ids)))
    for j in range(2):
        assert_same_topk(got_i[j], got_s[j], ids, cos[j], k)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seq=ops, d=st.integers(1, 70), k=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_index_equals_dict_model_numba(seq, d, k, seed):
    index = VectorIndex(d, backend="numpy")
    check_against_model(index, run_model(index, seq, d, seed), d, k, seed)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seq=ops, d=st.integers(1, 70), k=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_index_equals_dict_model_numpy_fallback(no_numba, seq, d, k, seed):
    index = VectorIndex(d, backend="numpy")
    check_against_model(index, run_model(index, seq, d, seed), d, k, seed)


@needs_mlx
@settings(max_examples=15, deadline=None)
@given(seq=ops, d=st.integers(1, 70), k=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_index_equals_dict_model_mlx_incremental_sync(seq, d, k, seed):
    """Searches between mutations so the mirror's dirty-block repacking is exercised."""
    index = VectorIndex(d, backend="mlx")
    index._mirror = ks.AffineInt8Mirror(d, block_rows=4)  # many blocks at this size
    model = run_model(index, seq, d, seed, after_each=lambda m: check_against_model(index, m, d, k, seed))
    check_against_model(index, model, d, k, seed)


# ---- search semantics -----------------------------------------------------------------


def small_index(backend="numpy"):
    index = VectorIndex(4, backend=backend)
    index.add_vectors([10, 11, 12, 13], np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [-1, 0, 0, 0]], float))
    return index


def test_search_shapes_min_score_and_k_beyond_len():
    index = small_index()
    ids, s = index.search([1.0, 0, 0, 0], k=10)
    assert ids.tolist() == [10, 11, 12, 13]
    np.testing.assert_allclose(s, [1.0, np.sqrt(0.5), 0.0, -1.0], atol=ATOL)
    ids, s = index.search([2.0, 0, 0, 0], k=10, min_score=0.5)
    assert ids.tolist() == [10, 11] and s.dtype == np.float32
    ids, s = index.search([[1.0, 0, 0, 0], [0, 0, 0, 3.0]], k=3, min_score=0.5)
    assert ids.tolist() == [[10, 11, -1], [-1, -1, -1]]
    assert s[0, 2] == -np.inf and (s[1] == -np.inf).all()
    ids, s = index.search([0, 0, 0, 3.0], k=2)
    assert ids.tolist() == [10, 11] and s.tolist() == [0.0, 0.0]  # all orthogonal: ties by id


def test_zero_scale_row_scores_zero():
    index = small_index()
    index.add([20], np.array([[100, 0, 0, 0]], np.int8), np.array([0.0], np.float32))  # dequantizes to 0
    ids, s = index.search([1.0, 0, 0, 0], k=5)
    assert ids.tolist() == [10, 11, 12, 20, 13]
    assert s[3] == 0.0


def test_upsert_replaces_and_remove_swaps_last_row():
    index = small_index()
    index.add_vectors([12], np.array([[-1.0, 0, 0, 0]]))
    assert len(index) == 4 and index.search([-1.0, 0, 0, 0], k=2)[0].tolist() == [12, 13]
    assert index.remove([10, 99, 10]) == 1 and index.remove([]) == 0
    assert 10 not in index and 13 in index and np.int64(13) in index and "13" not in index
    assert sorted(index.ids().tolist()) == [11, 12, 13]
    assert index.search([1.0, 1, 0, 0], k=1)[0].tolist() == [11]
    with pytest.raises(KeyError, match=r"\[10\]"):
        index.get_vectors([11, 10])


def test_empty_index_and_capacity_growth():
    index = VectorIndex(8, backend="numpy")
    ids, s = index.search(np.ones(8), k=3)
    assert ids.shape == (0,) and s.shape == (0,) and ids.dtype == np.int64
    assert index.search(np.ones((2, 8)), k=3)[0].shape == (2, 0)
    before = index.nbytes
    for i in range(200):  # capacity doubles: few reallocations, bytes >= what is held
        index.add_vectors([i], np.ones(8) * (i + 1))
    assert len(index) == 200 and index.nbytes >= 200 * (8 + 4 + 4 + 8) > before
    assert index.remove(np.arange(200)) == 200 and len(index) == 0
    assert index.search(np.ones(8), k=1)[0].shape == (0,)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda i: i.add([1], np.zeros((1, 4), np.float32), [1.0]), "codes must be int8"),
        (lambda i: i.add([1], np.zeros((1, 5), np.int8), [1.0]), r"codes must have shape \(n, 4\)"),
        (lambda i: i.add([1, 2], np.zeros((1, 4), np.int8), [1.0]), "must describe the same n rows"),
        (lambda i: i.add([5, 6, 5], np.zeros((3, 4), np.int8), [1.0] * 3), r"unique within one add call but \[5\]"),
        (lambda i: i.add([1], np.zeros((1, 4), np.int8), [np.nan]), "scales must be finite and >= 0"),
        (lambda i: i.add([1], np.zeros((1, 4), np.int8), [-1.0]), "scales must be finite and >= 0"),
        (lambda i: i.add([-3], np.zeros((1, 4), np.int8), [1.0]), "ids must be >= 0"),
        (lambda i: i.add([1.5], np.zeros((1, 4), np.int8), [1.0]), "add ids must be integers"),
        (lambda i: i.add_vectors([1], np.zeros((1, 3))), r"vectors must have shape \(n, 4\)"),
        (lambda i: i.add_vectors([1], [[0, np.inf, 0, 0]]), "vectors must be finite"),
        (lambda i: i.search(np.zeros(4), k=1), "query 0 is all zeros"),
        (lambda i: i.search([[1, 0, 0, 0], [np.nan, 0, 0, 0]], k=1), "query 1 is not finite"),
        (lambda i: i.search(np.ones(3), k=1), r"queries must have shape \(4,\) or \(q, 4\)"),
        (lambda i: i.search(np.ones(4), k=0), "k must be an int >= 1 but got 0"),
        (lambda i: i.search(np.ones(4), k=2.0), "k must be an int >= 1"),
        (lambda i: i.search(np.ones(4), k=1, min_score=float("nan")), "min_score must be a number"),
    ],
)
def test_bad_input_raises_clear_errors(call, message):
    index = small_index()
    with pytest.raises(ValueError, match=r"^\[memory\.index\] .*" + message):
        call(index)
    assert len(index) == 4  # nothing half-applied


def test_bad_dim_and_backend():
    with pytest.raises(ValueError, match=r"^\[memory\.index\] dim must be a positive int but got 0"):
        VectorIndex(0)
    with pytest.raises(ValueError, match="backend must be one of"):
        VectorIndex(4, backend="cuda")


# ---- numba: lazy import and a cache dir that cannot be written -------------------------


def test_import_is_lazy_and_numpy_backend_never_imports_mlx():
    code = "import sys, numpy as np; from mlx_synapse.memory.index import VectorIndex; " \
           "i = VectorIndex(4, backend='numpy'); assert 'numba' not in sys.modules; " \
           "i.add_vectors([1], np.ones((1, 4))); i.search(np.ones(4), 1); " \
           "assert 'numba' in sys.modules and 'mlx.core' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_unwritable_cache_dirs_fall_back_to_uncached_compile():
    """Package dir and user cache dir both read-only: numba refuses cache=True; we compile uncached."""
    code = textwrap.dedent("""
        import numba, numba.core.caching as caching, numpy as np, pytest
        def read_only(self):
            raise PermissionError("read-only file system")
        caching._CacheLocator.ensure_cache_path = read_only
        with pytest.raises(RuntimeError, match="no locator available"):
            numba.njit(cache=True)(lambda a: a)  # what numba itself does here
        from mlx_synapse.kernels import int8_search as ks
        codes = np.array([[3, 4], [0, 0], [-4, 3]], np.int8)
        ids, s = ks.topk(codes, ks.inv_norms(codes), np.array([7, 8, 9]), np.array([[0.6, 0.8]], np.float32), 2)
        assert ids.tolist() == [[7, 8]] and abs(s[0, 0] - 1) < 1e-6, (ids, s)
        assert type(ks.numba_kernels()[1]._cache).__name__ == "NullCache"
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


# ---- FAISS as a peer ------------------------------------------------------------------


def test_top8_equals_faiss_flat_ip():
    faiss = pytest.importorskip("faiss")
    ids, codes, scales, q = bank(5000, 384, seed=7)
    rows = codes.astype(np.float32) * scales[:, None]
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    flat = faiss.IndexFlatIP(384)
    flat.add(rows)
    f_s, f_rows = flat.search(q, 8)
    index = VectorIndex(384, backend="numpy")
    index.add(ids, codes, scales)
    got_i, got_s = index.search(q, 8)
    cos = ref_cosines(codes, scales, q)
    for j in range(len(q)):
        assert distinct_at(cos[j], 8), "test data should have distinct top scores"
        np.testing.assert_array_equal(got_i[j], ids[f_rows[j]])
        np.testing.assert_allclose(got_s[j], f_s[j], atol=1e-5)
