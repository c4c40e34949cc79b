"""INT8 cosine top-k over the memory bank matrix, in one kernel plus a small merge.

The bank is int8 codes ``[N, D]`` with ``inv_norm[i] = 1 / ||codes[i]||`` (0 for a
zero row), as in ``kernels/int8_search.py``; for unit queries ``q [Q, D]``::

    score[j, i] = (codes[i] . q[j]) * inv_norm[i]

Ranking is total: descending score, ties by ascending row id.

The kernel: a threadgroup stages its query in threadgroup memory (barrier),
each SIMD group scores ``rows_per_warp`` consecutive rows (the codes travel as
uint32 words of four, lowest byte first; lane ``l`` reads words ``l, l+32, ...``
of a row; one ``gpu_simd_sum`` per row) and
keeps its best ``k`` as a sorted list spread over the lanes (lane ``j`` holds
the ``j``-th best; an insertion is a count and a shuffle).  The SIMD groups'
lists meet in threadgroup memory (barrier) and SIMD group 0 merges them, so
each threadgroup writes ``k`` candidates; :func:`merge` takes the best ``k``
of all groups' candidates on the host.
"""

from __future__ import annotations

import numpy as np

from . import dialect
from .launch import GpuKernel

MAX_K = 32
MAX_DIM = 1024
WARPS = 8
NO_ID = 0xFFFFFFFF

HEADER = r"""
// (s1, i1) ranks before (s2, i2): higher score, then lower id.
GPU_FN bool topk_before(float s1, uint i1, float s2, uint i2) { return s1 > s2 || (s1 == s2 && i1 < i2); }
"""

# Insert (s, id) -- the same on every lane -- into the lane-spread sorted list (best, best_i).
_INSERT = r"""
    {
      const float kth = gpu_simd_shuffle(best, K - 1);
      const uint kth_i = gpu_simd_shuffle(best_i, K - 1);
      if (topk_before(s, id, kth, kth_i)) {
        const uint ahead = (gpu_lane < K && topk_before(best, best_i, s, id)) ? 1u : 0u;
        const uint p = gpu_simd_sum(ahead);
        const float up = gpu_simd_shuffle(best, gpu_lane == 0 ? 0u : gpu_lane - 1);
        const uint up_i = gpu_simd_shuffle(best_i, gpu_lane == 0 ? 0u : gpu_lane - 1);
        if (gpu_lane > p) { best = up; best_i = up_i; }
        else if (gpu_lane == p) { best = s; best_i = id; }
      }
    }
"""

BODY = r"""
  const uint N = params[0], D = params[1], K = params[2], RPW = params[3];
  const uint qi = gpu_group_y;
  GPU_SHARED_ARRAY(float, qs, MAX_DIM);
  GPU_SHARED_ARRAY(float, ls, MAX_WARPS * 32);
  GPU_SHARED_ARRAY(uint, li, MAX_WARPS * 32);
  for (uint d = gpu_tid; d < D; d += gpu_nwarps * 32) qs[d] = queries[qi * D + d];
  GPU_BARRIER();
  float best = -3.402823466e38f;  // lane j: the j-th best of this SIMD group
  uint best_i = 0xFFFFFFFFu;
  const uint r0 = (gpu_group_x * gpu_nwarps + gpu_warp) * RPW;
  const uint r1 = min(r0 + RPW, N);
  const uint D4 = D / 4;
  for (uint r = r0; r < r1; ++r) {
    float d = 0.0f;
    for (uint c = gpu_lane; c < D4; c += 32) {
      const uint v = words[r * D4 + c];  // four int8 codes, lowest byte first
      d += float(int(v << 24) >> 24) * qs[4 * c] + float(int(v << 16) >> 24) * qs[4 * c + 1] +
           float(int(v << 8) >> 24) * qs[4 * c + 2] + float(int(v) >> 24) * qs[4 * c + 3];
    }
    // lane 0's sum on every lane: a butterfly sum may differ in its last bit across lanes
    const float s = gpu_simd_shuffle(gpu_simd_sum(d), 0u) * inv_norm[r];
    const uint id = r;
""" + _INSERT + r"""
  }
  ls[gpu_warp * 32 + gpu_lane] = best;
  li[gpu_warp * 32 + gpu_lane] = best_i;
  GPU_BARRIER();
  if (gpu_warp == 0) {
    for (uint w = 1; w < gpu_nwarps; ++w)
      for (uint j = 0; j < K; ++j) {
        const float s = ls[w * 32 + j];
        const uint id = li[w * 32 + j];
""" + _INSERT + r"""
      }
    if (gpu_lane < K) {
      const uint o = (qi * gpu_ngroups_x + gpu_group_x) * K + gpu_lane;
      cand_s[o] = best;
      cand_i[o] = best_i;
    }
  }
"""

KERNEL = GpuKernel(
    "synapse_int8_topk", ["words", "inv_norm", "queries", "params"], ["cand_s", "cand_i"], BODY,
    HEADER + f"\n#define MAX_DIM {MAX_DIM}\n#define MAX_WARPS 32\n",
)


def check(codes_shape, inv_shape, q_shape, k: int) -> tuple[int, int, int]:
    """(N, D, Q), or ValueError naming what does not fit."""
    if len(codes_shape) != 2:
        raise ValueError(f"int8_topk: codes must be 2-D [N, D], got shape {tuple(codes_shape)}")
    n, d = map(int, codes_shape)
    if d % 4 or d > MAX_DIM or d == 0:
        raise ValueError(f"int8_topk: dimension D={d}; the kernel needs a multiple of 4 up to {MAX_DIM} "
                         "(pad the codes with zero columns)")
    if tuple(inv_shape) != (n,):
        raise ValueError(f"int8_topk: inv_norm has shape {tuple(inv_shape)}, expected ({n},)")
    if len(q_shape) != 2 or int(q_shape[1]) != d:
        raise ValueError(f"int8_topk: queries have shape {tuple(q_shape)}, expected [Q, {d}]")
    if not 1 <= k <= MAX_K:
        raise ValueError(f"int8_topk: k={k}; the kernel keeps 1..{MAX_K} (use the CPU search for more)")
    if n < 1:
        raise ValueError("int8_topk: the bank is empty")
    return n, d, int(q_shape[0])


def rows_per_warp(n: int) -> int:
    """Rows each SIMD group scans: 32 unless the bank is small (then fewer, more groups)."""
    return max(1, min(32, -(-n // (WARPS * 64))))


def _launch(n: int, q: int, rpw: int):
    groups = -(-n // (WARPS * rpw))
    return groups, dialect.launch_dims(groups, q, WARPS * dialect.SIMD_WIDTH)


def reference(codes, inv_norm, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores [Q, k'], ids [Q, k']) in float64, k' = min(k, N), total order (the reference)."""
    s = np.asarray(queries, np.float64) @ np.asarray(codes, np.float64).T * np.asarray(inv_norm, np.float64)
    kk = min(k, s.shape[1])
    ids = np.arange(s.shape[1])
    out_i = np.stack([np.lexsort((ids, -row))[:kk] for row in s])
    return np.take_along_axis(s, out_i, 1), out_i


def merge(cand_s: np.ndarray, cand_i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` of the groups' candidates per query (empty slots dropped)."""
    out_s, out_i = [], []
    for s, i in zip(cand_s, cand_i):
        keep = i != NO_ID
        s, i = s[keep], i[keep].astype(np.int64)
        if len(s) > k:  # only the candidates tied with or above the k-th score need sorting
            kth = np.partition(s, len(s) - k)[len(s) - k]
            s, i = s[s >= kth], i[s >= kth]
        order = np.lexsort((i, -s))[:k]
        out_s.append(s[order])
        out_i.append(i[order])
    return np.stack(out_s), np.stack(out_i)


def int8_topk(codes, inv_norm, queries, k: int, backend: str | None = None, rpw: int | None = None):
    """(scores, ids) NumPy ``[Q, min(k, N)]`` by the kernel on the GPU.

    ``codes``: MLX int8 ``[N, D]`` (or its uint32 view ``[N, D/4]``, kept on the GPU across
    searches); ``inv_norm`` MLX float32 ``[N]``; ``queries`` MLX ``[Q, D]``.
    """
    import mlx.core as mx

    backend = backend or dialect.gpu_backend()
    if backend is None:
        raise ValueError("int8_topk: no MLX GPU (Metal or CUDA) is the default device; use the CPU search")
    shape = (codes.shape[0], codes.shape[1] * 4) if codes.dtype == mx.uint32 else codes.shape
    n, d, q = check(shape, inv_norm.shape, queries.shape, k)
    rpw = rpw or rows_per_warp(n)
    groups, (grid, tg) = _launch(n, q, rpw)
    from .affine_qmm import _params

    words = codes if codes.dtype == mx.uint32 else codes.view(mx.uint32)
    if queries.dtype != mx.float32:
        queries = queries.astype(mx.float32)
    cs, ci = KERNEL.mlx(backend)(
        inputs=[words, inv_norm, queries, _params(n, d, k, rpw)],
        grid=grid, threadgroup=tg, output_shapes=[(q, groups * k), (q, groups * k)],
        output_dtypes=[mx.float32, mx.uint32],
    )
    return merge(np.array(cs), np.array(ci), min(k, n))


def int8_topk_emulated(codes, inv_norm, queries, k: int, policy="random", seed=0, rpw: int | None = None):
    """The Metal instantiation under the CPU emulator (NumPy in and out)."""
    codes = np.ascontiguousarray(codes, np.int8)
    queries = np.asarray(queries, np.float32)
    n, d, q = check(codes.shape, np.shape(inv_norm), queries.shape, k)
    rpw = rpw or rows_per_warp(n)
    groups, (grid, tg) = _launch(n, q, rpw)
    params = np.asarray([n, d, k, rpw], np.uint32)
    cs, ci = KERNEL.emulator()(
        [codes.view(np.uint32), np.asarray(inv_norm, np.float32), queries, params],
        [(q, groups * k), (q, groups * k)], [np.float32, np.uint32], grid, tg, policy=policy, seed=seed,
    )
    return merge(cs, ci, min(k, n))
