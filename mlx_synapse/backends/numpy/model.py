"""The decoder-only transformer (llama / mistral / qwen2 / qwen3 / phi3) in NumPy.

All math is float32.  Weights come from :mod:`.weights` already fused and
transposed, so a layer is: RMSNorm -> one qkv matmul -> (qwen3 q/k norm) ->
RoPE -> KV cache -> grouped-query attention as batched matmuls -> o matmul ->
RMSNorm -> one gate|up matmul -> SiLU gate -> down matmul.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Dict, List, Optional

import numpy as np

from .blas import DecodeThreadTuner, blas_threads
from .cache import KVCache, make_cache
from .config import ModelArgs, parse_args, read_config
from .rope import Rope
from .safetensors import open_model_dir
from .weights import LayerWeights, ModelWeights, load_weights

# Attention scores are computed for at most this many (head, query, key)
# entries at once; longer full-sequence forwards are split into query blocks.
_SCORE_BUDGET = 1 << 24
# Causal prefill splits queries into blocks of this many, each attending only to
# the keys up to its last query (about 5/8 of the full square for four blocks).
_CAUSAL_BLOCK = 128

_max = np.maximum.reduce
_sum = np.add.reduce


def _rms_unit(x: np.ndarray, eps: np.float32) -> np.ndarray:
    """x / sqrt(mean(x**2) + eps) over the last axis (the weight is applied elsewhere)."""
    ms = _sum(np.square(x), axis=-1, keepdims=True)
    ms *= np.float32(1.0 / x.shape[-1])
    ms += eps
    np.sqrt(ms, out=ms)
    return x / ms


def _lora(x: np.ndarray, lora: Optional[dict], name: str):
    """The adapter's ``(x @ A) @ B`` for matrix ``name`` (scale folded into B), or None."""
    ab = lora.get(name) if lora is not None else None
    return None if ab is None else (x @ ab[0]) @ ab[1]


def _silu_mul(gu: np.ndarray, inter: int) -> np.ndarray:
    """silu(gate) * up for gu = [gate | up] along the last axis."""
    gate, up = gu[..., :inter], gu[..., inter:]
    t = np.negative(gate)
    np.exp(t, out=t)
    t += np.float32(1.0)
    np.divide(gate, t, out=t)
    t *= up
    return t


class NumpyModel:
    """A loaded model; call it on token ids to get float32 logits."""

    backend = "numpy"

    def __init__(self, args: ModelArgs, weights: ModelWeights, config: Optional[Dict[str, Any]] = None):
        self.args = args
        self.config = dict(config or {})
        self.weights = weights
        self.num_layers = args.num_layers
        self.vocab_size = args.vocab_size
        self.layers: List[LayerWeights] = weights.layers
        self.rope = Rope(args.head_dim, args.rotary_dim, args.rope_theta, args.rope_scaling)
        self._eps = np.float32(args.rms_norm_eps)
        self._eps_f = float(args.rms_norm_eps)
        self._nh, self._nkv, self._d = args.num_heads, args.num_kv_heads, args.head_dim
        self._group = self._nh // self._nkv
        self._inter = args.intermediate_size
        self._inv_h = 1.0 / args.hidden_size
        self._tuner = DecodeThreadTuner()
        self._engine = None  # the compiled decode engine, built on first use
        self._engine_state = "unbuilt"  # "unbuilt" | "on" | "off: <reason>"
        self._pool = None  # (n, executor): Python threads for prefill attention beside the engine's GEMM

    # ------------------------------------------------------------ the engine
    @property
    def engine(self):
        """The compiled decode engine (``engine.DecodeEngine``), or None where it cannot run.

        ``use_engine(False)`` keeps decoding on NumPy/BLAS; ``engine_status`` says which."""
        if self._engine_state == "unbuilt":
            self._build_engine(None)
        return self._engine

    def _build_engine(self, threads: Optional[int]) -> None:
        from mlx_synapse.kernels import native

        from .engine import DecodeEngine

        lib = native.library()
        if lib is None:
            self._engine, self._engine_state = None, "off: " + (native.build_error() or "MLX_SYNAPSE_NATIVE=0")
        else:
            self._engine, self._engine_state = DecodeEngine(self, threads=threads, lib=lib), "on"

    def use_engine(self, on: bool = True, threads: Optional[int] = None) -> None:
        """Turn the compiled decode path on (optionally with ``threads``) or off."""
        if not on:
            self._engine, self._engine_state = None, "off: use_engine(False)"
        elif threads is not None:
            self._build_engine(threads)
        else:
            self._engine, self._engine_state = None, "unbuilt"

    @property
    def engine_status(self) -> str:
        return self._engine_state

    def set_lora(self, per_layer: Optional[list]) -> None:
        """Per layer the adapter matrices (``adapter.build_lora``), or None: no adapter.

        Use ``adapter.apply_adapter`` / ``remove_adapter``; the engine, if built, is updated too."""
        per_layer = per_layer if per_layer is not None else [None] * self.num_layers
        if len(per_layer) != self.num_layers:
            raise ValueError(f"[NumpyModel.set_lora] {len(per_layer)} layers given, model has {self.num_layers}")
        for lw, entry in zip(self.layers, per_layer):
            lw.lora = entry or None
        if self._engine is not None:
            self._engine.set_adapters(self)

    def step_logits(self, token: int, cache) -> np.ndarray:
        """Logits (V,) for one token at the cache's next position.

        On the compiled engine this is its own buffer, overwritten by the next
        step (copy it to keep it); elsewhere a fresh array."""
        eng = self.engine
        if eng is not None and eng.supports(cache):
            return eng.step(token, cache)  # checks the token id before touching the cache
        return self._decode(self._tokens([token]), cache)

    # ------------------------------------------------------------------ API
    def make_cache(self, max_kv_size: Optional[int] = None):
        return make_cache(self.num_layers, max_kv_size)

    def __call__(self, ids, cache=None) -> np.ndarray:
        """Logits (L, V) for every position of ``ids`` ((L,) or (1, L))."""
        ids = self._tokens(ids)
        if len(ids) == 1:
            return self._decode(ids, cache)[None]
        return self._hidden(ids, cache) @ self.weights.lm_head_t

    def forward_last(self, ids, cache=None) -> np.ndarray:
        """Logits (V,) of the last position only (skips the lm_head for the rest)."""
        ids = self._tokens(ids)
        if len(ids) == 1:
            return self._decode(ids, cache)
        h = self._hidden(ids, cache, last_only=True)[0]
        eng, head = self.engine, self.weights.packed_head
        if eng is not None and head is not None:  # the decode step's head: its codes, not the float copy
            return eng.matvec(head, h)
        return h @ self.weights.lm_head_t

    def prefill(self, ids, cache) -> None:
        """Run ``ids`` through the layers to fill ``cache``; no logits at all."""
        self._hidden(self._tokens(ids), cache, final=False)

    def hidden_states(self, ids, layer: int = -1) -> np.ndarray:
        """Hidden state after block ``layer`` for one sequence, as the MLX model's ``hidden_states``.

        Args:
            ids: token ids (L,) or (1, L).
            layer: block index, negative from the end. The last block's output gets
                the final RMSNorm (what the lm_head sees); earlier blocks' outputs are
                the raw residual stream.

        Returns:
            (L, D) float32. Blocks after ``layer`` are not run.
        """
        ids = self._tokens(ids)
        n = self.num_layers
        if not -n <= layer < n:
            raise ValueError(
                f"[NumpyModel.hidden_states] layer must be in [{-n}, {n - 1}] for this "
                f"{n}-block model but got {layer}."
            )
        stop = layer % n
        L = len(ids)
        cos, sin = self.rope.tables(0, L)
        mask = KVCache(step=L).make_mask(L)  # causal; None for one token
        x = self._embed(ids)
        tiles = self._tiles()
        with self._prefill_blas(tiles):
            for i, lw in enumerate(self.layers[: stop + 1]):
                x = self._layer(x, lw, KVCache(step=L), mask, cos, sin, tiles=tiles[i])
        if stop < n - 1:
            return x
        out = _rms_unit(x, self._eps)
        out *= self.weights.norm
        return out

    # ------------------------------------------------------------- internals
    def _tokens(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim == 2:
            if ids.shape[0] != 1:
                raise ValueError(f"NumpyModel handles one sequence at a time, got batch {ids.shape[0]}")
            ids = ids[0]
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(f"expected token ids of shape (L,) or (1, L) with L > 0, got {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"token ids must be integers, got {ids.dtype}")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"token id out of range [0, {self.vocab_size})")
        return ids.astype(np.intp, copy=False)

    def _embed(self, ids: np.ndarray) -> np.ndarray:
        w = self.weights
        if w.embed is not None:
            return w.embed[ids]
        return np.ascontiguousarray(w.lm_head_t[:, ids].T)

    def _decode(self, ids: np.ndarray, cache) -> np.ndarray:
        """Logits (V,) for one token: the compiled engine, else NumPy under the tuned BLAS thread count."""
        eng = self.engine if cache is not None else None
        if eng is not None and eng.supports(cache):
            return eng.step(int(ids[0]), cache).copy()
        threads = self._tuner.choose()
        t0 = time.perf_counter()
        with blas_threads(threads):
            logits = (self._hidden(ids, cache) @ self.weights.lm_head_t)[0]
        self._tuner.record(threads, time.perf_counter() - t0)
        return logits

    def _hidden(self, ids: np.ndarray, cache, last_only: bool = False, final: bool = True) -> np.ndarray:
        if cache is None:
            cache = [KVCache(step=len(ids)) for _ in range(self.num_layers)]
        if len(cache) != self.num_layers:
            raise ValueError(f"cache has {len(cache)} layers, model has {self.num_layers}")
        L = len(ids)
        offset = cache[0].offset
        cos, sin = self.rope.tables(offset, L)
        x = self._embed(ids)
        if L == 1:  # decode: matrix-vector products, fewest NumPy calls
            cos, sin = cos[0], sin[0]
            for lw, c in zip(self.layers, cache):
                x = self._step(x, lw, c, cos, sin)
        else:
            mask = cache[0].make_mask(L)
            n = len(self.layers)
            tiles = self._tiles()
            with self._prefill_blas(tiles):
                for i, (lw, c) in enumerate(zip(self.layers, cache)):
                    # The last layer only needs its keys/values (prefill), or its last row (forward_last).
                    keep = None if i < n - 1 else (0 if not final else 1 if last_only else None)
                    x = self._layer(x, lw, c, mask, cos, sin, keep, tiles[i])
        if not final:
            return x
        if last_only:
            x = x[-1:]
        out = _rms_unit(x, self._eps)
        out *= self.weights.norm
        return out

    def _step(self, x, lw: LayerWeights, c, cos, sin) -> np.ndarray:
        """One layer for one token; x (1, H).  Same math as _layer, fewer NumPy calls."""
        nh, nkv, d = self._nh, self._nkv, self._d
        x0 = x[0]
        xn = x * (1.0 / math.sqrt(float(np.dot(x0, x0)) * self._inv_h + self._eps_f))
        qkv = xn @ lw.w_qkv
        if lw.lora is not None and "qkv" in lw.lora:
            qkv += _lora(xn, lw.lora, "qkv")
        if lw.b_qkv is not None:
            qkv += lw.b_qkv
        qkv = qkv.reshape(nh + 2 * nkv, d)
        qk = qkv[: nh + nkv]
        if lw.qk_norm is not None:
            qk = _rms_unit(qk, self._eps)
            qk *= lw.qk_norm
        self.rope.apply(qk, cos, sin)
        keys, values = c.update_and_fetch(qk[nh:, None], qkv[nh + nkv :, None])
        s = qk[:nh].reshape(nkv, self._group, d) @ keys.transpose(0, 2, 1)  # (nkv, g, T)
        s -= _max(s, axis=-1, keepdims=True)
        np.exp(s, out=s)
        o = s @ values
        o /= _sum(s, axis=-1, keepdims=True)
        out = o.reshape(1, nh * d) @ lw.w_o
        if lw.lora is not None and "o" in lw.lora:
            out += _lora(o.reshape(1, nh * d), lw.lora, "o")
        if lw.b_o is not None:
            out += lw.b_o
        x = x + out
        x0 = x[0]
        return self._mlp_residual(x, x * (1.0 / math.sqrt(float(np.dot(x0, x0)) * self._inv_h + self._eps_f)), lw)

    def _mlp_residual(self, x: np.ndarray, xn: np.ndarray, lw: LayerWeights) -> np.ndarray:
        """``x += down(silu(gate) * up)`` of the normalised ``xn`` (norm weight folded into w_gu);
        one token (the NumPy decode path)."""
        gu = xn @ lw.w_gu
        if lw.lora is not None and "gu" in lw.lora:
            gu += _lora(xn, lw.lora, "gu")
        if lw.b_gu is not None:
            gu += lw.b_gu
        act = _silu_mul(gu, self._inter)
        out = act @ lw.w_down
        if lw.lora is not None and "down" in lw.lora:
            out += _lora(act, lw.lora, "down")
        if lw.b_down is not None:
            out += lw.b_down
        x += out
        return x

    @staticmethod
    def _prefill_blas(tiles: list):
        """With the engine's GEMM on its own threads, BLAS (left with the attention) keeps to
        one thread per caller: OpenBLAS's idle workers spin and would take the engine's cores."""
        return blas_threads(1 if any(tiles) else None)

    def _tiles(self) -> list:
        """Per layer, the engine's prefill GEMM matrices (empty dicts: float32 BLAS)."""
        eng = self.engine
        return eng.tiles if eng is not None else [{}] * self.num_layers

    def _normed_matmul(self, x: np.ndarray, lw: LayerWeights, tiles: dict, name: str) -> np.ndarray:
        """RMSNorm(x) @ W (+ bias) for W = qkv (input norm) or gu (post-attention norm)."""
        bias = lw.b_qkv if name == "qkv" else lw.b_gu
        t = tiles.get(name)
        unit = None
        if t is not None:
            y = self._engine.gemm(t, x, rms=True, norm=lw.packed["ln1" if name == "qkv" else "ln2"], bias=bias)
        else:
            unit = _rms_unit(x, self._eps)
            y = unit @ (lw.w_qkv if name == "qkv" else lw.w_gu)
            if bias is not None:
                y += bias
        if lw.lora is not None and name in lw.lora:  # A has the norm weight folded in: the unit-RMS input
            y += _lora(_rms_unit(x, self._eps) if unit is None else unit, lw.lora, name)
        return y

    def _add_matmul(self, x: np.ndarray, a: np.ndarray, lw: LayerWeights, tiles: dict, name: str) -> np.ndarray:
        """x + a @ W (+ bias) for W = o or down; may write into ``x``."""
        bias = lw.b_o if name == "o" else lw.b_down
        t = tiles.get(name)
        if t is not None:
            x = self._engine.gemm(t, a, out=x, accumulate=True, bias=bias)
        else:
            out = a @ (lw.w_o if name == "o" else lw.w_down)
            if bias is not None:
                out += bias
            x = x + out
        if lw.lora is not None and name in lw.lora:
            x += _lora(a, lw.lora, name)
        return x

    def _layer(self, x, lw: LayerWeights, c, mask, cos, sin, keep: Optional[int] = None,
               tiles: Optional[dict] = None) -> np.ndarray:
        """One layer over L tokens; ``keep``: only the last ``keep`` rows' outputs are wanted
        (0: just store the keys/values), None: all.  ``tiles``: the engine's GEMM forms of
        this layer's quantized matrices (the rest run as float32 BLAS)."""
        L = x.shape[0]
        nh, nkv, d = self._nh, self._nkv, self._d
        tiles = tiles or {}
        qkv = self._normed_matmul(x, lw, tiles, "qkv")
        qkv = qkv.reshape(L, nh + 2 * nkv, d)
        qk = qkv[:, : nh + nkv]
        eng = self.engine
        if lw.qk_norm is not None:
            qk = _rms_unit(qk, self._eps)
            qk *= lw.qk_norm
            self.rope.apply(qk, cos, sin)
        elif eng is not None and qkv.flags.c_contiguous:
            eng.rope(qkv, nh + nkv, cos, sin)
        else:
            self.rope.apply(qk, cos, sin)
        k = qk[:, nh:].transpose(1, 0, 2)
        v = qkv[:, nh + nkv :].transpose(1, 0, 2)
        keys, values = c.update_and_fetch(k, v)
        if keep == 0:
            return x
        # An unbounded cache hands back keys in position order: query i needs only the first offset + i + 1.
        prefix = keys.shape[1] - L if type(c) is KVCache and mask is not None else None
        q = qk[:, :nh]
        if keep is not None and keep < L:
            q, x = q[L - keep :], x[L - keep :]
            mask = None if mask is None else mask[L - keep :]
            prefix = None if prefix is None else prefix + L - keep
        o = self._attend(q, keys, values, mask, prefix, split=bool(tiles))
        x = self._add_matmul(x, o, lw, tiles, "o")
        gu = self._normed_matmul(x, lw, tiles, "gu")
        act = eng.silu_mul(gu, self._inter) if eng is not None and gu.shape[0] > 1 else _silu_mul(gu, self._inter)
        return self._add_matmul(x, act, lw, tiles, "down")

    def _attend(self, q, keys, values, mask, causal_offset: Optional[int] = None, split: bool = False) -> np.ndarray:
        """q (L, nh, d) pre-scaled, keys/values (nkv, T, d) -> (L, nh*d).

        ``causal_offset``: keys are positions 0..T-1 in order and query i sits at
        ``causal_offset + i`` (plain causal attention), so blocks of queries skip
        the keys after their last query.  ``split``: BLAS is held to one thread
        (the engine's GEMM owns the cores), so (kv head, query block) pieces are
        shared out between the engine's threads count of Python threads."""
        L = q.shape[0]
        nh, nkv, d, g = self._nh, self._nkv, self._d, self._group
        T = keys.shape[1]
        kt = keys.transpose(0, 2, 1)
        out = np.empty((L, nh, d), dtype=np.float32)
        qh = q.transpose(1, 0, 2).reshape(nkv, g, L, d)
        block = max(1, min(L, _SCORE_BUDGET // max(1, nh * T)))
        eng = None
        if causal_offset is not None:
            block = min(block, _CAUSAL_BLOCK)
            eng = self.engine
            if split and eng is not None and eng.threads > 1:
                self._attend_causal_split(qh, kt, values, out, causal_offset, block, eng)
                return out.reshape(L, nh * d)
        for i0 in range(0, L, block):
            i1 = min(L, i0 + block)
            n = i1 - i0
            Tb = T if causal_offset is None else causal_offset + i1
            qb = qh[:, :, i0:i1].reshape(nkv, g * n, d)
            s = qb @ kt[:, :, :Tb]  # (nkv, g*n, Tb)
            if causal_offset is not None and eng is not None:  # one threaded pass: mask, softmax, normalise
                eng.softmax_causal(s, n, causal_offset + i0)
                ob = s @ values[:, :Tb]
                out[i0:i1] = ob.reshape(nh, n, d).transpose(1, 0, 2)
                continue
            if mask is not None:
                s4 = s.reshape(nkv, g, n, Tb)
                s4 += mask[i0:i1, :Tb]
            s -= s.max(axis=-1, keepdims=True)
            np.exp(s, out=s)
            den = s.sum(axis=-1, keepdims=True)
            ob = s @ values[:, :Tb]
            ob /= den
            out[i0:i1] = ob.reshape(nh, n, d).transpose(1, 0, 2)
        return out.reshape(L, nh * d)

    def _attend_causal_split(self, qh, kt, values, out, base: int, block: int, eng) -> None:
        """Causal attention as (kv head, query block) pieces on ``eng.threads`` Python threads
        (NumPy and the engine's softmax release the GIL), biggest pieces first to the least loaded."""
        nkv, g, L, d = qh.shape
        while nkv * -(-L // block) < 2 * eng.threads and block > 32:  # enough pieces to balance
            block //= 2
        pieces = [(h, i0, min(L, i0 + block)) for h in range(nkv) for i0 in range(0, L, block)]
        shares: List[list] = [[] for _ in range(eng.threads)]
        loads = [0] * eng.threads
        for p in sorted(pieces, key=lambda p: (p[2] - p[1]) * (base + p[2]), reverse=True):
            j = loads.index(min(loads))
            shares[j].append(p)
            loads[j] += (p[2] - p[1]) * (base + p[2])

        def run(share):
            for h, i0, i1 in share:
                n, Tb = i1 - i0, base + i1
                s = qh[h, :, i0:i1].reshape(g * n, d) @ kt[h, :, :Tb]  # (g*n, Tb)
                eng.softmax_causal(s, n, base + i0)
                out[i0:i1, h * g : (h + 1) * g] = (s @ values[h, :Tb]).reshape(g, n, d).transpose(1, 0, 2)

        pool = self._threads(eng.threads - 1)
        futures = [pool.submit(run, sh) for sh in shares[1:] if sh]
        run(shares[0])
        for f in futures:
            f.result()

    def _threads(self, n: int):
        """A pool of ``n`` Python threads kept for the model's lifetime (prefill attention)."""
        if self._pool is None or self._pool[0] != n:
            from concurrent.futures import ThreadPoolExecutor

            if self._pool is not None:
                self._pool[1].shutdown(wait=False)
            self._pool = (n, ThreadPoolExecutor(max_workers=n, thread_name_prefix="mlx_synapse-attn"))
        return self._pool[1]


def load_model(path: str | os.PathLike) -> NumpyModel:
    """Load an mlx-lm / Hugging Face format model directory into a :class:`NumpyModel`."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"{path}: not a directory (expected a converted model directory)")
    config = read_config(path)
    args = parse_args(config, where=path)
    store = open_model_dir(path)
    try:
        weights = load_weights(store, args)
    finally:
        store.close()
    return NumpyModel(args, weights, config)
