"""The compiled decode path of the NumPy backend: one C call per token.

:class:`DecodeEngine` hands the C engine (``kernels/csrc/synapse_cpu.c``)
pointers to the model's weights -- 4/8-bit codes where the checkpoint is
quantized, the NumPy backend's own float32 rows elsewhere -- and to each
layer's KV cache buffers.  A decode step is then: Python reserves the cache
slot (the same ``KVCache`` / ``RotatingKVCache`` objects the NumPy path and
prefill use), one ``syn_decode`` call runs every layer and the lm_head on the
engine's threads, and the logits land in a preallocated buffer.

Prefill of a quantized model goes through the engine too: each 4/8-bit
matrix is also kept in the GEMM's tiles (:class:`~mlx_synapse.kernels.native.TileMat`)
and :meth:`DecodeEngine.gemm` multiplies a whole prompt's rows at once on the
codes, with 16-bit activations as two int8 planes (``vpdpbusd``), where the CPU
has AVX-512 VNNI; elsewhere prefill stays on float32 BLAS.
``MLX_SYNAPSE_PREFILL=codes|float|auto`` overrides (``DecodeEngine(prefill=...)``).

Threads: ``MLX_SYNAPSE_THREADS`` (default: the CPUs this process may run on);
1 is the single-thread mode.  ``MLX_SYNAPSE_NATIVE=0`` turns the engine off.
"""

from __future__ import annotations

import ctypes
import os
import weakref
from typing import Optional

import numpy as np

from mlx_synapse.kernels import native
from mlx_synapse.kernels.native import KIND_F32, QMat, TileMat

from .cache import KVCache, RotatingKVCache


def default_threads() -> int:
    v = os.environ.get("MLX_SYNAPSE_THREADS", "").strip()
    if v:
        try:
            return max(1, int(v))
        except ValueError:
            raise ValueError(f"MLX_SYNAPSE_THREADS must be a positive integer, got {v!r}") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def prefill_on_codes(lib, mode: Optional[str] = None) -> bool:
    """Whether quantized prefill runs the engine's GEMM on the codes.  ``mode``: "codes", "float"
    or "auto" (where the build has the fast kernel); None reads ``MLX_SYNAPSE_PREFILL`` (default auto)."""
    where = "prefill" if mode is not None else "MLX_SYNAPSE_PREFILL"
    v = (mode if mode is not None else os.environ.get("MLX_SYNAPSE_PREFILL", "auto")).strip().lower() or "auto"
    if v not in ("auto", "codes", "float"):
        raise ValueError(f"{where} must be auto, codes or float, got {v!r}")
    return v == "codes" or (v == "auto" and bool(lib.syn_gemm_fast()))


def _f32_rows(w_t: np.ndarray) -> QMat:
    """A NumPy-backend ``[in, out]`` weight (a transposed view of contiguous rows) as engine rows."""
    rows = w_t.T
    if not rows.flags.c_contiguous:
        rows = np.ascontiguousarray(rows)
    return QMat(KIND_F32, rows)


def _ptr(a: Optional[np.ndarray]):
    return None if a is None else a.ctypes.data


class DecodeEngine:
    """Decode steps of one :class:`~.model.NumpyModel` through the C engine."""

    def __init__(self, model, threads: Optional[int] = None, lib=None, prefill: Optional[str] = None):
        lib = lib if lib is not None else native.library()
        if lib is None:
            raise RuntimeError(native.build_error() or "the CPU engine is disabled (MLX_SYNAPSE_NATIVE=0)")
        a = model.args
        if a.head_dim > 512:
            raise ValueError(f"[DecodeEngine] head_dim {a.head_dim} > 512 is not supported")
        self.lib = lib
        self.threads = threads or default_threads()
        self._keep = []  # every array whose pointer the engine holds
        ctx = lib.syn_new(a.num_layers, a.hidden_size, a.num_heads, a.num_kv_heads, a.head_dim,
                          a.intermediate_size, a.vocab_size, float(a.rms_norm_eps), self.threads, 20000)
        if not ctx:
            raise MemoryError("[DecodeEngine] could not allocate the engine")
        self._ctx = ctx
        self._finalizer = weakref.finalize(self, lib.syn_free, ctx)
        self.threads = lib.syn_threads(ctx)
        w = model.weights
        self.kinds = set()
        # per layer: name -> TileMat for the prefill GEMM (empty when prefill stays on BLAS)
        self.tiles = []
        on_codes = prefill_on_codes(lib, prefill)
        for i, lw in enumerate(w.layers):
            pk = lw.packed or {}
            self.tiles.append({n: TileMat(pk[n], lib) for n in ("qkv", "o", "gu", "down")
                               if on_codes and pk.get(n) is not None})
            mats = [
                pk.get("qkv") or _f32_rows(lw.w_qkv),
                pk.get("o") or _f32_rows(lw.w_o),
                pk.get("gu") or _f32_rows(lw.w_gu),
                pk.get("down") or _f32_rows(lw.w_down),
            ]
            vecs = [lw.b_qkv, lw.b_o, lw.b_gu, lw.b_down, pk.get("ln1"), pk.get("ln2"), lw.qk_norm]
            vecs = [None if v is None else np.ascontiguousarray(v, np.float32) for v in vecs]
            self._keep += mats + vecs
            self.kinds.update(m.kind for m in mats)
            ptrs = [m.pointers() for m in mats]
            kinds = (ctypes.c_int * 4)(*[p[0] for p in ptrs])
            groups = (ctypes.c_int * 4)(*[p[1] for p in ptrs])
            ws = (ctypes.c_void_p * 4)(*[p[2] for p in ptrs])
            ss = (ctypes.c_void_p * 4)(*[p[3] for p in ptrs])
            bs = (ctypes.c_void_p * 4)(*[p[4] for p in ptrs])
            vs = (ctypes.c_void_p * 7)(*[_ptr(v) for v in vecs])
            lib.syn_set_layer(ctx, i, kinds, groups, ws, ss, bs, vs)
        head = w.packed_head or _f32_rows(w.lm_head_t)
        embed = w.embed if w.embed is not None else w.lm_head_t.T
        embed = np.ascontiguousarray(embed, np.float32)
        perm = np.ascontiguousarray(model.rope.perm, np.int32)
        self._keep += [head, embed, perm, w.norm]
        self.kinds.add(head.kind)
        k, g, pw, ps, pb = head.pointers()
        lib.syn_set_head(ctx, k, g, pw, ps, pb, _ptr(w.norm), _ptr(embed), _ptr(perm))
        self.weight_bytes = sum(m.nbytes for m in self._keep if isinstance(m, QMat))
        self.tile_bytes = sum(t.nbytes for d in self.tiles for t in d.values())
        self._rope = model.rope
        self._shape = (a.num_kv_heads, a.head_dim)
        self._bound = None  # the layer-0 key buffer the engine's cache pointers were set from
        self.logits = np.empty(a.vocab_size, np.float32)
        self._batch_logits = np.empty((0, a.vocab_size), np.float32)
        self._nl = a.num_layers
        self._lora_keep = []
        self.set_adapters(model)

    def set_adapters(self, model) -> None:
        """Hand the engine each layer's LoRA matrices (``LayerWeights.lora``), or clear them."""
        keep = []
        for i, lw in enumerate(model.weights.layers):
            lora = lw.lora or {}
            for which, name in enumerate(("qkv", "o", "gu", "down")):
                e = lora.get(name)
                if e is None:
                    rc = self.lib.syn_set_lora(self._ctx, i, which, 0, None, None)
                else:
                    a_rows, b_rows = e[2], e[3]  # (r, K), (N, r) contiguous float32
                    keep += [a_rows, b_rows]
                    rc = self.lib.syn_set_lora(self._ctx, i, which, a_rows.shape[0], a_rows.ctypes.data,
                                               b_rows.ctypes.data)
                if rc != 0:
                    raise MemoryError(f"[DecodeEngine] could not set the adapter of layer {i} (code {rc})")
        self._lora_keep = keep

    @property
    def simd(self) -> str:
        return self.lib.syn_simd().decode()

    @staticmethod
    def supports(cache) -> bool:
        return bool(cache) and all(type(c) in (KVCache, RotatingKVCache) for c in cache)

    def _bind(self, cache) -> None:
        for i, c in enumerate(cache):
            cap = c.keys.shape[1]
            if self.lib.syn_set_cache(self._ctx, i, c.keys.ctypes.data, c.values.ctypes.data, cap) != 0:
                raise MemoryError("[DecodeEngine] could not grow the attention scratch")
        self._bound = cache[0].keys

    def step(self, token: int, cache, logits: bool = True) -> Optional[np.ndarray]:
        """Run ``token`` at the caches' next position; the logits buffer (overwritten next step)."""
        if not 0 <= token < self.logits.shape[0]:
            raise ValueError(f"[DecodeEngine] token id {token} out of range [0, {self.logits.shape[0]})")
        pos = cache[0].offset
        slots = [c.reserve_decode_slot(self._shape) for c in cache]
        slot, T = slots[0]
        if cache[0].keys is not self._bound:
            self._bind(cache)
        cos, sin = self._rope.tables(pos, 1)
        out = self.logits if logits else None
        rc = self.lib.syn_decode(self._ctx, int(token), slot, T, cos.ctypes.data, sin.ctypes.data, _ptr(out))
        if rc != 0:
            raise RuntimeError(f"[DecodeEngine] decode failed (code {rc}) at position {pos}")
        return out

    MAX_BATCH = 16

    def step_batch(self, tokens, caches) -> np.ndarray:
        """One decode step of several sequences at once: ``tokens[i]`` at the next position of
        ``caches[i]`` (each a list of per-layer caches, as :meth:`step` takes), every weight
        read once for all of them.  Returns logits ``(B, V)`` in a buffer the next call
        overwrites; row i is bit-identical to what :meth:`step` gives for that sequence alone.

        Every token and cache is checked before any cache is touched."""
        B = len(tokens)
        if B != len(caches) or not 1 <= B <= self.MAX_BATCH:
            raise ValueError(f"[DecodeEngine.step_batch] need 1 to {self.MAX_BATCH} tokens and as many caches, "
                             f"got {B} tokens and {len(caches)} caches")
        V, nl = self.logits.shape[0], self._nl
        ids = np.asarray(tokens)
        if not np.issubdtype(ids.dtype, np.integer) or ids.ndim != 1 or ids.min() < 0 or ids.max() >= V:
            raise ValueError(f"[DecodeEngine.step_batch] token ids must be integers in [0, {V}), got {list(tokens)}")
        if len({id(c) for c in caches}) != B:
            raise ValueError("[DecodeEngine.step_batch] the same cache appears twice; each sequence needs its own")
        for c in caches:
            if not self.supports(c) or len(c) != nl:
                raise ValueError(f"[DecodeEngine.step_batch] each cache must be {nl} KVCache/RotatingKVCache layers")
        d = self._shape[1]
        tok = ids.astype(np.int32)
        offsets = [[c.offset for c in cache] for cache in caches]
        slots, Ts = np.empty(B, np.int32), np.empty(B, np.int32)
        cos, sin = np.empty((B, d), np.float32), np.empty((B, d), np.float32)
        kv, caps = np.empty((B, nl, 2), np.uintp), np.empty((B, nl), np.int32)
        for i, cache in enumerate(caches):
            pos = cache[0].offset
            slots[i], Ts[i] = [c.reserve_decode_slot(self._shape) for c in cache][0]
            ct, st = self._rope.tables(pos, 1)
            cos[i], sin[i] = ct.reshape(d), st.reshape(d)
            for l, c in enumerate(cache):
                kv[i, l, 0], kv[i, l, 1], caps[i, l] = c.keys.ctypes.data, c.values.ctypes.data, c.keys.shape[1]
        if self._batch_logits.shape[0] < B:
            self._batch_logits = np.empty((B, V), np.float32)
        out = self._batch_logits[:B]
        rc = self.lib.syn_decode_batch(self._ctx, B, tok.ctypes.data, slots.ctypes.data, Ts.ctypes.data,
                                       cos.ctypes.data, sin.ctypes.data, kv.ctypes.data, caps.ctypes.data,
                                       out.ctypes.data)
        if rc != 0:  # nothing was computed: give the reserved slots back
            for cache, offs in zip(caches, offsets):
                for c, o in zip(cache, offs):
                    c.offset = o
            raise RuntimeError(f"[DecodeEngine.step_batch] batched decode failed (code {rc})")
        return out

    # -- prefill helpers: one threaded pass where NumPy makes several
    def softmax_causal(self, s: np.ndarray, n: int, base: int) -> None:
        """In place on scores ``s`` (..., rows, T) C-contiguous: row r is query ``r % n`` at
        position ``base + r % n`` over keys 0..T-1; masked keys get probability 0."""
        if s.dtype != np.float32 or not s.flags.c_contiguous:
            raise ValueError("[DecodeEngine.softmax_causal] scores must be C-contiguous float32")
        T = s.shape[-1]
        self.lib.syn_softmax_causal(self._ctx, s.ctypes.data, s.size // T, T, n, base)

    def silu_mul(self, gu: np.ndarray, inter: int) -> np.ndarray:
        """silu(gate) * up of ``gu = [gate | up]`` (rows, 2 inter), C-contiguous float32."""
        if gu.dtype != np.float32 or not gu.flags.c_contiguous or gu.shape[-1] != 2 * inter:
            raise ValueError("[DecodeEngine.silu_mul] expected C-contiguous float32 (rows, 2 * inter)")
        out = np.empty(gu.shape[:-1] + (inter,), np.float32)
        self.lib.syn_silu_mul(self._ctx, gu.ctypes.data, gu.size // (2 * inter), inter, out.ctypes.data)
        return out

    def rope(self, qkv: np.ndarray, heads: int, cos: np.ndarray, sin: np.ndarray) -> None:
        """Rotate the first ``heads`` heads of each token of ``qkv`` (L, H_all, d), C-contiguous, in place;
        cos/sin (L, 1, d) contiguous rows (``Rope.tables``)."""
        if not (qkv.flags.c_contiguous and qkv.dtype == np.float32 and cos.flags.c_contiguous
                and sin.flags.c_contiguous and cos.shape[0] == qkv.shape[0]):
            raise ValueError("[DecodeEngine.rope] expected C-contiguous float32 qkv and tables")
        L, hall, d = qkv.shape
        self.lib.syn_rope(self._ctx, qkv.ctypes.data, L, heads, hall * d, cos.ctypes.data, sin.ctypes.data)

    def gemm(self, t: TileMat, x: np.ndarray, out: Optional[np.ndarray] = None, accumulate: bool = False,
             rms: bool = False, norm: Optional[np.ndarray] = None, bias: Optional[np.ndarray] = None) -> np.ndarray:
        """``x @ W.T (+ bias)`` for the rows of ``x`` (T, K) on the codes, on the engine's threads.

        ``rms``: each row is RMS-normalised first (times ``norm`` when given);
        ``out`` (T, N): written, or added to with ``accumulate``."""
        if x.ndim != 2 or x.shape[1] != t.K or x.dtype != np.float32 or x.strides[1] != 4:
            raise ValueError(f"[DecodeEngine.gemm] x must be float32 (T, {t.K}) with contiguous rows, got "
                             f"{x.dtype}{x.shape}")
        T = x.shape[0]
        if out is None:
            if accumulate:
                raise ValueError("[DecodeEngine.gemm] accumulate needs out")
            out = np.empty((T, t.N), np.float32)
        elif out.shape != (T, t.N) or out.dtype != np.float32 or out.strides[1] != 4 or not out.flags.writeable:
            raise ValueError(f"[DecodeEngine.gemm] out must be writable float32 ({T}, {t.N}) with contiguous rows")
        for v, n in ((norm, t.K), (bias, t.N)):
            if v is not None and (v.shape != (n,) or v.dtype != np.float32 or not v.flags.c_contiguous):
                raise ValueError(f"[DecodeEngine.gemm] norm/bias must be contiguous float32 ({n},)")
        rc = self.lib.syn_gemm(self._ctx, t.kind, t.N, t.K, t.data.ctypes.data, x.ctypes.data, x.strides[0] // 4, T,
                               out.ctypes.data, out.strides[0] // 4, int(accumulate) | (2 if rms else 0),
                               _ptr(norm), _ptr(bias))
        if rc != 0:
            raise MemoryError(f"[DecodeEngine.gemm] failed (code {rc})")
        return out

    def matvec(self, m: QMat, x: np.ndarray) -> np.ndarray:
        """``W @ x`` for one matrix on the engine's threads (what the tests check kernels with)."""
        x = np.ascontiguousarray(x, np.float32)
        if x.shape != (m.K,):
            raise ValueError(f"[DecodeEngine.matvec] x has shape {x.shape}, expected ({m.K},)")
        y = np.empty(m.N, np.float32)
        k, g, pw, ps, pb = m.pointers()
        rc = self.lib.syn_matvec(self._ctx, k, m.N, m.K, g, pw, ps, pb, x.ctypes.data, y.ctypes.data)
        if rc != 0:
            raise ValueError(f"[DecodeEngine.matvec] kernel refused the shapes (code {rc})")
        return y
