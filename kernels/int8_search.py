"""INT8 cosine top-k: one product of the int8 bank with the query, then top-k.

A bank row is int8 codes ``c`` with a per-row scale ``s`` (``memory.int8``); its
vector is ``c * s``.  The cosine with a unit query ``q`` is ``(c . q) / ||c||``:
the scale cancels, so the kernels read only the codes and a precomputed
``inv_norm = 1 / ||c||`` (0 for a zero row, so it scores 0, never NaN)::

    score[j, i] = (codes[i] . queries[j]) * inv_norm[i]          # (Q, N)

Implementations, all with that meaning:

* :func:`scores_reference` -- plain NumPy in float64, the reference.
* numba kernels (CPU): a parallel int8 x float32 dot per row; the top-k one
  keeps a sorted top-k per row block inside the kernel (no (Q, N) score matrix,
  no argpartition over N), and the blocks' winners are merged in NumPy.
* :func:`scores_numpy` -- the fallback when numba is absent: rows dequantized to
  float32 in chunks, then BLAS.
* MLX: the bank in MLX's affine 8-bit layout so that one ``mx.quantized_matmul``
  does the product on the int8 matrix (:class:`AffineInt8Mirror`);
  :func:`scores_ops` is its plain-MLX reference.

Ranking is total: descending score, ties by ascending id, so results never
depend on row order, block split or thread count.
"""

from __future__ import annotations

import functools
import threading

import numpy as np

# Rows dequantized per BLAS call in the NumPy fallback (bounds the float32 copy).
_CHUNK_ROWS = 16384
# Up to this k the numba kernel keeps the top-k itself (insertion into a sorted
# list of k); above it a full score matrix + argpartition is cheaper in the worst case.
FUSED_MAX_K = 128
# Fast reassociated sums (vectorised reductions) but defined inf/NaN handling,
# so a -inf sentinel or comparison is never optimised away.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp", "afn"}
# numba's default "workqueue" threading layer (macOS pip wheels) aborts when two
# threads launch parallel kernels at once; each kernel already uses every core,
# so serialising launches from different indexes costs no throughput.
_LAUNCH_LOCK = threading.Lock()


def inv_norms(codes: np.ndarray) -> np.ndarray:
    """``1 / ||codes[i]||`` as float32 ``(N,)``, 0 for an all-zero row."""
    sq = np.einsum("ij,ij->i", codes, codes, dtype=np.int64).astype(np.float64)
    out = np.zeros(codes.shape[0], np.float64)
    np.divide(1.0, np.sqrt(sq), out=out, where=sq > 0)
    return out.astype(np.float32)


def scores_reference(codes: np.ndarray, scales: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Cosine of each query with each dequantized row, in float64 ``(Q, N)`` (the reference)."""
    rows = codes.astype(np.float64) * scales.astype(np.float64)[:, None]
    norm = np.linalg.norm(rows, axis=1)
    rows = np.divide(rows, norm[:, None], out=np.zeros_like(rows), where=norm[:, None] > 0)
    q = np.atleast_2d(queries).astype(np.float64)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)) @ rows.T


def scores_numpy(codes: np.ndarray, inv_norm: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """``(Q, N)`` float32 scores with NumPy only: chunked int8 -> float32, then BLAS."""
    n = codes.shape[0]
    out = np.empty((queries.shape[0], n), np.float32)
    for r0 in range(0, n, _CHUNK_ROWS):
        r1 = min(n, r0 + _CHUNK_ROWS)
        out[:, r0:r1] = queries @ codes[r0:r1].astype(np.float32).T
    out *= inv_norm[None, :]
    return out


def select_topk(scores: np.ndarray, ids: np.ndarray, k: int):
    """Top-k of a ``(Q, N)`` score matrix as ``(ids (Q, k'), scores (Q, k'))``, k' = min(k, N).

    Exact under the total order (score desc, id asc): every row tied with the
    k-th score is a candidate before the final sort.
    """
    nq, n = scores.shape
    kk = min(k, n)
    out_i = np.empty((nq, kk), np.int64)
    out_s = np.empty((nq, kk), np.float32)
    for j in range(nq):
        s = scores[j]
        if kk < n:
            part = np.argpartition(-s, kk - 1)[:kk]
            cand = np.flatnonzero(s >= s[part].min())
        else:
            cand = np.arange(n)
        order = np.lexsort((ids[cand], -s[cand]))[:kk]
        out_i[j] = ids[cand[order]]
        out_s[j] = s[cand[order]]
    return out_i, out_s


def _merge_blocks(top_s: np.ndarray, top_r: np.ndarray, ids: np.ndarray, k: int):
    """Merge per-block top-k lists ``(B, Q, k)`` (row -1 = unfilled) into ``(Q, k')``."""
    nb, nq, _ = top_s.shape
    kk = min(k, ids.shape[0])
    s = np.ascontiguousarray(top_s.transpose(1, 0, 2)).reshape(nq, -1)
    r = np.ascontiguousarray(top_r.transpose(1, 0, 2)).reshape(nq, -1)
    out_i = np.empty((nq, kk), np.int64)
    out_s = np.empty((nq, kk), np.float32)
    for j in range(nq):
        keep = r[j] >= 0
        rows, sc = r[j][keep], s[j][keep]
        order = np.lexsort((ids[rows], -sc))[:kk]
        out_i[j] = ids[rows[order]]
        out_s[j] = sc[order]
    return out_i, out_s


def _njit(fn, numba):
    """``numba.njit`` with an on-disk cache, or without one where no cache dir is writable."""
    opts = dict(parallel=True, fastmath=_FASTMATH, nogil=True)
    try:
        return numba.njit(cache=True, **opts)(fn)
    except RuntimeError:
        # "cannot cache function ...: no locator available": neither the package's
        # __pycache__ nor the user cache dir (or NUMBA_CACHE_DIR) is writable.
        return numba.njit(cache=False, **opts)(fn)


@functools.lru_cache(maxsize=None)
def numba_kernels():
    """The compiled ``(scores, topk)`` numba kernels, or None when numba cannot be imported.

    Imported and built on first use, so ``import mlx_synapse.memory`` stays cheap;
    the machine code is cached on disk after the first call (several seconds).
    """
    try:
        import numba
        from numba import prange
    except ImportError:
        return None

    def scores_kernel(codes, inv_norm, queries):  # (N, D) int8, (N,) f32, (Q, D) f32 -> (Q, N)
        n, d = codes.shape
        nq = queries.shape[0]
        out = np.empty((nq, n), np.float32)
        for r in prange(n):
            for j in range(nq):
                acc = np.float32(0.0)
                for c in range(d):
                    acc += np.float32(codes[r, c]) * queries[j, c]
                out[j, r] = acc * inv_norm[r]
        return out

    def topk_kernel(codes, inv_norm, ids, queries, k, n_blocks):  # -> (B, Q, k) scores, rows
        n, d = codes.shape
        nq = queries.shape[0]
        top_s = np.full((n_blocks, nq, k), -np.inf, np.float32)
        top_r = np.full((n_blocks, nq, k), -1, np.int64)
        step = (n + n_blocks - 1) // n_blocks
        for b in prange(n_blocks):
            ts = top_s[b]
            tr = top_r[b]
            for r in range(b * step, min(n, (b + 1) * step)):
                rid = ids[r]
                for j in range(nq):
                    acc = np.float32(0.0)
                    for c in range(d):
                        acc += np.float32(codes[r, c]) * queries[j, c]
                    s = np.float32(acc * inv_norm[r])  # compared with stored float32 scores: same type
                    w = tr[j, k - 1]
                    if w >= 0 and (s < ts[j, k - 1] or (s == ts[j, k - 1] and rid > ids[w])):
                        continue  # not better than the current k-th: the common case
                    p = k - 1  # insertion into the sorted list (score desc, id asc)
                    while p > 0:
                        pr = tr[j, p - 1]
                        if pr >= 0 and (s < ts[j, p - 1] or (s == ts[j, p - 1] and rid > ids[pr])):
                            break
                        ts[j, p] = ts[j, p - 1]
                        tr[j, p] = pr
                        p -= 1
                    ts[j, p] = s
                    tr[j, p] = r
        return top_s, top_r

    return _njit(scores_kernel, numba), _njit(topk_kernel, numba)


def scores(codes, inv_norm, queries, use_numba: bool = True) -> np.ndarray:
    """``(Q, N)`` float32 scores; numba when available and asked for, else :func:`scores_numpy`."""
    kernels = numba_kernels() if use_numba else None
    if kernels is None or codes.shape[0] == 0:
        return scores_numpy(codes, inv_norm, queries)
    with _LAUNCH_LOCK:
        return kernels[0](codes, inv_norm, queries)


def topk(codes, inv_norm, ids, queries, k: int, use_numba: bool = True):
    """Top-k rows for each query: ``(ids (Q, k'), scores (Q, k'))``, k' = min(k, N).

    Args:
        codes: ``(N, D)`` int8, C-contiguous.  inv_norm: ``(N,)`` float32.
        ids: ``(N,)`` int64, the id of each row (ties rank by ascending id).
        queries: ``(Q, D)`` float32, unit rows.  k: >= 1.
    """
    n = codes.shape[0]
    if n == 0:
        return np.empty((queries.shape[0], 0), np.int64), np.empty((queries.shape[0], 0), np.float32)
    kernels = numba_kernels() if use_numba else None
    if kernels is None:
        return select_topk(scores_numpy(codes, inv_norm, queries), ids, k)
    if k > FUSED_MAX_K:
        with _LAUNCH_LOCK:
            return select_topk(kernels[0](codes, inv_norm, queries), ids, k)
    import numba

    # Many small blocks handed out one at a time: on a busy machine a thread that is
    # descheduled holds up only its current block (static halves measured 2x slower
    # at p50 with one core taken); each block returns only k rows to merge.
    n_blocks = max(1, min(16 * numba.get_num_threads(), n // 2048))
    with _LAUNCH_LOCK, numba.parallel_chunksize(1):
        top_s, top_r = kernels[1](codes, inv_norm, ids, queries, min(k, n), n_blocks)
    return _merge_blocks(top_s, top_r, ids, k)


# ---- MLX: the bank in MLX's affine 8-bit quantized layout ----------------------------


_QMM_ROWS = 32  # query rows per mx.quantized_matmul (see AffineInt8Mirror.scores)


def affine8_layout(dim: int):
    """``(padded_dim, group_size)`` for a bank of width ``dim`` in MLX's 8-bit layout.

    ``quantized_matmul`` takes group sizes 32/64/128; a width none of them divides
    is padded with zero codes to a multiple of 32 (zeros add nothing to a dot).
    """
    padded = -(-dim // 32) * 32
    group = next(g for g in (128, 64, 32) if padded % g == 0)
    return padded, group


def pack_affine8(codes: np.ndarray, padded_dim: int) -> np.ndarray:
    """int8 ``(N, D)`` codes as MLX affine 8-bit words: uint32 ``(N, padded_dim / 4)``.

    MLX stores code ``j`` of a word in bits ``8j..8j+7`` (4 codes a word, left to
    right along the row) and dequantizes ``w = scale * u + bias``.  With scale 1 and
    bias -128, ``u = c + 128`` gives back ``c`` exactly, and ``c + 128`` of a
    two's-complement byte is the byte with its top bit flipped.
    """
    n, d = codes.shape
    u = np.full((n, padded_dim), 0x80, np.uint8)
    np.bitwise_xor(codes.view(np.uint8), np.uint8(0x80), out=u[:, :d])
    # Bytes in little-endian word order; astype byte-swaps on a big-endian host.
    return u.view("<u4").astype(np.uint32, copy=False)


def scores_ops(codes, inv_norm, queries):
    """Plain-MLX reference for the mirror's product: ``(queries @ codes.T) * inv_norm``."""
    import mlx.core as mx

    return (queries @ codes.astype(mx.float32).T) * inv_norm


class AffineInt8Mirror:
    """An MLX copy of an int8 bank, kept in blocks of ``block_rows`` rows.

    Mutations mark blocks dirty (:meth:`mark_rows`); :meth:`sync` repacks only the
    dirty blocks from the NumPy arrays, so an append or a swap-removal costs
    O(block_rows * D) on the next search, not O(N * D).
    """

    def __init__(self, dim: int, block_rows: int = 16384):
        import mlx.core as mx

        self.dim = dim
        self.padded_dim, self.group_size = affine8_layout(dim)
        self.block_rows = block_rows
        self._blocks = []  # per block: (w uint32 (r, P/4), inv_norm f32 (r,)) as MLX arrays
        self._dirty = set()
        self._n = 0
        groups = self.padded_dim // self.group_size
        # Scale 1 and bias -128 for every group: shared by all blocks (sliced to their rows).
        self._scales = mx.ones((block_rows, groups), dtype=mx.float16)
        self._biases = mx.full((block_rows, groups), -128.0, dtype=mx.float16)

    def mark_rows(self, rows) -> None:
        """Rows whose contents changed (rewritten, or filled by a removal's move)."""
        self._dirty.update((np.unique(np.atleast_1d(rows) // self.block_rows)).tolist())

    def mark_range(self, r0: int, r1: int) -> None:
        """Rows ``[r0, r1)`` were appended."""
        if r1 > r0:
            self._dirty.update(range(r0 // self.block_rows, (r1 - 1) // self.block_rows + 1))

    def sync(self, codes: np.ndarray, inv_norm: np.ndarray, n: int) -> None:
        """Bring the blocks in line with ``codes[:n]``, ``inv_norm[:n]``."""
        import mlx.core as mx

        n_blocks = -(-n // self.block_rows)
        del self._blocks[n_blocks:]
        if n != self._n and n_blocks:
            self._dirty.add(n_blocks - 1)  # the last block shrank (removals) or grew
        while len(self._blocks) < n_blocks:
            self._dirty.add(len(self._blocks))
            self._blocks.append(None)
        for b in sorted(x for x in self._dirty if x < n_blocks):
            r0, r1 = b * self.block_rows, min(n, (b + 1) * self.block_rows)
            self._blocks[b] = (mx.array(pack_affine8(codes[r0:r1], self.padded_dim)), mx.array(inv_norm[r0:r1]))
        self._dirty.clear()
        self._n = n
        mx.eval([a for blk in self._blocks for a in blk])

    def scores(self, queries: np.ndarray):
        """``(Q, N)`` float32 MLX scores for float32 unit queries ``(Q, D)``."""
        import mlx.core as mx

        q = np.zeros((queries.shape[0], self.padded_dim), np.float32)
        q[:, : self.dim] = queries
        q = mx.array(q)
        rows = []
        # MLX 0.32's CUDA quantized_matmul fails for 64 or more query rows ("cuGraphAddKernelNode
        # ... invalid argument", seen on an H100); up to 32 rows run its matrix-vector kernel.
        for q0 in range(0, q.shape[0], _QMM_ROWS):
            qc = q[q0 : q0 + _QMM_ROWS]
            parts = []
            for w, inv in self._blocks:
                r = w.shape[0]
                y = mx.quantized_matmul(qc, w, self._scales[:r], self._biases[:r], transpose=True,
                                        group_size=self.group_size, bits=8)
                parts.append(y * inv)
            rows.append(parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=1))
        return rows[0] if len(rows) == 1 else mx.concatenate(rows, axis=0)

    def topk(self, queries: np.ndarray, ids: np.ndarray, k: int):
        """Like :func:`topk`, the product and the partition done by MLX."""
        import mlx.core as mx

        n = self._n
        s = self.scores(queries)
        kk = min(k, n)
        if kk == n:
            return select_topk(np.array(s), ids, k)
        idx = mx.argpartition(-s, kth=kk - 1, axis=-1)[:, :kk]
        top = mx.take_along_axis(s, idx, axis=-1)
        # Rows tied with the k-th score beyond the k picked: rank those on the host.
        count = mx.sum(s >= mx.min(top, axis=-1, keepdims=True), axis=-1)
        mx.eval(idx, top, count)
        idx, top, count = np.array(idx), np.array(top), np.array(count)
        out_i = np.empty((len(idx), kk), np.int64)
        out_s = np.empty((len(idx), kk), np.float32)
        for j in range(len(idx)):
            if count[j] > kk:
                out_i[j], out_s[j] = (a[0] for a in select_topk(np.array(s[j : j + 1]), ids, k))
                continue
            order = np.lexsort((ids[idx[j]], -top[j]))
            out_i[j], out_s[j] = ids[idx[j][order]], top[j][order]
        return out_i, out_s

    @property
    def nbytes(self) -> int:
        return sum(w.nbytes + inv.nbytes for w, inv in self._blocks) + self._scales.nbytes + self._biases.nbytes
