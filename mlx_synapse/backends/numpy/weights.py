"""Checkpoint tensors -> float32 weights in the layout fastest for NumPy.

* every linear becomes an ``[in, out]`` matrix (``x @ W``; a transposed view of
  contiguous ``[out, in]`` rows, which BLAS reads at no cost);
* q|k|v are fused into one matrix, gate|up into another (phi3 ships them fused);
* MLX affine-quantized modules (``.weight`` uint32 + ``.scales`` + ``.biases``)
  are dequantized here, once, with ``mlx_synapse.kernels.affine``;
* the attention scale 1/sqrt(head_dim) is folded into the query projection
  (or into qwen3's q_norm weight, which follows it);
* each layer's RMSNorm weights are folded into the rows of the matmul that
  follows (input_layernorm -> qkv, post_attention_layernorm -> gate|up), so
  the model only normalises: ``rmsnorm(x) * w @ W == rmsnorm_unit(x) @ (w[:, None] * W)``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from mlx_synapse.kernels import affine
from mlx_synapse.kernels.native import BLOCK, QMat

from .config import ModelArgs
from .safetensors import TensorStore


@dataclass
class LayerWeights:
    w_qkv: np.ndarray  # (H, (nh + 2 nkv) d): input_layernorm folded in, q columns pre-scaled
    b_qkv: Optional[np.ndarray]
    w_o: np.ndarray  # (nh d, H)
    b_o: Optional[np.ndarray]
    w_gu: np.ndarray  # (H, 2 I): gate columns then up columns, post_attention_layernorm folded in
    b_gu: Optional[np.ndarray]
    w_down: np.ndarray  # (I, H)
    b_down: Optional[np.ndarray]
    qk_norm: Optional[np.ndarray]  # (nh + nkv, d) qwen3 per-head norm weights, q rows pre-scaled
    # The same matrices packed for the compiled decode engine (``kernels/native.py``):
    # "qkv", "o", "gu", "down" -> QMat (4/8-bit codes, or None where the float rows
    # above serve), "ln1"/"ln2" -> the RMSNorm weights a packed matrix needs applied
    # to its input (the float rows have them folded in).  None when not packed.
    packed: Optional[dict] = None
    # The RMSNorm weights folded into w_qkv / w_gu (a LoRA adapter folds them into its A the same way).
    ln1: Optional[np.ndarray] = None
    ln2: Optional[np.ndarray] = None
    # A LoRA adapter, or None: "qkv"/"o"/"gu"/"down" -> (A (K, r), B (r, N), A rows (r, K), B rows (N, r)),
    # set by ``adapter.apply_adapter``; the forward adds (xn @ A) @ B beside each product.
    lora: Optional[dict] = None


@dataclass
class ModelWeights:
    embed: Optional[np.ndarray]  # (V, H), None when tied (then rows come from lm_head_t)
    lm_head_t: np.ndarray  # (H, V)
    norm: np.ndarray  # (H,)
    layers: List[LayerWeights]
    packed_head: Optional[QMat] = None  # the lm_head's 4/8-bit codes when quantized


class _Loader:
    def __init__(self, store: TensorStore, args: ModelArgs):
        self.store = store
        self.args = args
        self.where = store.where

    def _f32(self, a: np.ndarray) -> np.ndarray:
        if a.dtype == np.float32:
            return a
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"{self.where}: expected a float tensor, got {a.dtype}")
        return a.astype(np.float32)

    def vector(self, name: str, size: int) -> np.ndarray:
        a = self.store.get(name)
        if a.shape != (size,):
            raise ValueError(
                f"{self.where}: tensor {name!r} has shape {a.shape}, expected ({size},) "
                "from config.json; config and weights do not match"
            )
        return np.array(a, dtype=np.float32)  # owned copy

    def _quant_params(self, prefix: str) -> tuple[int, int]:
        q = self.args.quantization
        if q is None:
            raise ValueError(
                f"{self.where}: {prefix}.scales is present (quantized weights) but config.json "
                "has no 'quantization' section; re-convert the model"
            )
        over = q.get(prefix)
        if isinstance(over, dict):
            if over.get("mode", "affine") != "affine":
                raise ValueError(f"{self.where}: {prefix} uses quantization mode {over['mode']!r} (only affine)")
            return int(over.get("group_size", q["group_size"])), int(over.get("bits", q["bits"]))
        if over is False:
            raise ValueError(f"{self.where}: config.json marks {prefix} as not quantized but {prefix}.scales exists")
        return int(q["group_size"]), int(q["bits"])

    def matrix(self, prefix: str, out_dim: int, in_dim: int) -> np.ndarray:
        """``prefix.weight`` as float32 ``[out, in]`` (dequantized if quantized)."""
        name = prefix + ".weight"
        if prefix + ".scales" in self.store:
            gs, bits = self._quant_params(prefix)
            affine.check_params(gs, bits)
            w_q = self.store.get(name)
            scales = self.store.get(prefix + ".scales")
            biases = self.store.get(prefix + ".biases")
            want = (out_dim, in_dim * bits // 32)
            if w_q.dtype != np.uint32 or w_q.shape != want or (in_dim * bits) % 32 or in_dim % gs:
                raise ValueError(
                    f"{self.where}: quantized tensor {name!r} is {w_q.dtype}{w_q.shape}, expected "
                    f"uint32{want} for a [{out_dim}, {in_dim}] matrix at bits={bits}, "
                    f"group_size={gs}; config and weights do not match"
                )
            try:
                return affine.dequantize_numpy(w_q, scales, biases, gs, bits)
            except ValueError as e:
                raise ValueError(f"{self.where}: {prefix}: {e}") from None
        w = self.store.get(name)
        if w.shape != (out_dim, in_dim):
            raise ValueError(
                f"{self.where}: tensor {name!r} has shape {w.shape}, expected {(out_dim, in_dim)} "
                "from config.json; config and weights do not match"
            )
        return self._f32(w)

    def packed(self, prefix: str) -> Optional[QMat]:
        """``prefix`` as engine codes when it is a 4/8-bit affine matrix the kernels take, else None."""
        if prefix + ".scales" not in self.store:
            return None
        gs, bits = self._quant_params(prefix)
        if bits not in (4, 8) or gs < BLOCK or gs & (gs - 1):
            return None
        return QMat.from_mlx(
            self.store.get(prefix + ".weight"), self.store.get(prefix + ".scales"), self.store.get(prefix + ".biases"),
            gs, bits,
        )

    def packed_cat(self, prefixes: List[str]) -> Optional[QMat]:
        mats = [self.packed(p) for p in prefixes]
        if any(m is None for m in mats) or len({(m.kind, m.group) for m in mats}) != 1:
            return None
        return mats[0] if len(mats) == 1 else QMat.concat(mats)

    def bias(self, prefix: str, size: int, required: bool) -> Optional[np.ndarray]:
        name = prefix + ".bias"
        if not required and name not in self.store:
            return None
        return self.vector(name, size)


def _t(m: np.ndarray) -> np.ndarray:
    """[out, in] -> a writable float32 [in, out] (a transposed view of an owned copy).

    BLAS reads the transposed layout at no cost, and copying rows is several
    times faster at load than materialising the transpose.
    """
    m = np.asarray(m)
    owned = m.dtype == np.float32 and m.flags.c_contiguous and m.flags.writeable
    return (m if owned else np.array(m, dtype=np.float32, order="C")).T


def _cat_t(mats: List[np.ndarray]) -> np.ndarray:
    """[out_i, in] blocks -> one contiguous float32 [in, sum(out_i)]."""
    return _t(np.concatenate(mats, axis=0))


def _cat_b(bs: List[Optional[np.ndarray]], sizes: List[int]) -> Optional[np.ndarray]:
    if all(b is None for b in bs):
        return None
    return np.concatenate([np.zeros(n, np.float32) if b is None else b for b, n in zip(bs, sizes)])


def load_weights(store: TensorStore, args: ModelArgs, pack: bool = True) -> ModelWeights:
    """Read every tensor; ``pack`` also keeps quantized matrices as engine codes."""
    ld = _Loader(store, args)
    H, d = args.hidden_size, args.head_dim
    nh, nkv, inter, V = args.num_heads, args.num_kv_heads, args.intermediate_size, args.vocab_size
    nq, nk = nh * d, nkv * d
    scale = np.float32(d**-0.5)

    def build_layer(i: int) -> LayerWeights:
        p = f"model.layers.{i}"
        a, m = p + ".self_attn", p + ".mlp"
        if args.model_type == "phi3":
            w_qkv = ld.matrix(a + ".qkv_proj", nq + 2 * nk, H)
            b_qkv = ld.bias(a + ".qkv_proj", nq + 2 * nk, required=False)
            w_gu = ld.matrix(m + ".gate_up_proj", 2 * inter, H)
            b_gu = ld.bias(m + ".gate_up_proj", 2 * inter, required=False)
            w_qkv_t = _t(w_qkv)
            w_gu_t = _t(w_gu)
        else:
            mats = [ld.matrix(f"{a}.{n}_proj", o, H) for n, o in (("q", nq), ("k", nk), ("v", nk))]
            w_qkv_t = _cat_t(mats)
            b_qkv = _cat_b(
                [ld.bias(f"{a}.{n}_proj", o, args.attention_bias) for n, o in (("q", nq), ("k", nk), ("v", nk))],
                [nq, nk, nk],
            )
            w_gu_t = _cat_t([ld.matrix(m + ".gate_proj", inter, H), ld.matrix(m + ".up_proj", inter, H)])
            b_gu = _cat_b(
                [ld.bias(m + ".gate_proj", inter, args.mlp_bias), ld.bias(m + ".up_proj", inter, args.mlp_bias)],
                [inter, inter],
            )
        qk_norm = None
        if args.model_type == "qwen3":
            qn = ld.vector(a + ".q_norm.weight", d) * scale
            kn = ld.vector(a + ".k_norm.weight", d)
            qk_norm = np.concatenate([np.tile(qn, (nh, 1)), np.tile(kn, (nkv, 1))]).astype(np.float32)
        else:  # fold the softmax scale into the query projection
            w_qkv_t[:, :nq] *= scale
            if b_qkv is not None:
                b_qkv = b_qkv.copy()
                b_qkv[:nq] *= scale
        ln1 = ld.vector(p + ".input_layernorm.weight", H)
        ln2 = ld.vector(p + ".post_attention_layernorm.weight", H)
        w_qkv_t *= ln1[:, None]
        w_gu_t *= ln2[:, None]
        down_bias = args.mlp_bias and args.model_type != "phi3"
        packed = None
        if pack and args.quantization is not None:
            if args.model_type == "phi3":
                qkv_p, gu_p = ld.packed_cat([a + ".qkv_proj"]), ld.packed_cat([m + ".gate_up_proj"])
            else:
                qkv_p = ld.packed_cat([f"{a}.{n}_proj" for n in "qkv"])
                gu_p = ld.packed_cat([m + ".gate_proj", m + ".up_proj"])
            if qkv_p is not None and qk_norm is None:
                qkv_p.scale_rows(slice(0, nq), float(scale))
            packed = {
                "qkv": qkv_p, "o": ld.packed_cat([a + ".o_proj"]), "gu": gu_p, "down": ld.packed_cat([m + ".down_proj"]),
                "ln1": ln1 if qkv_p is not None else None,
                "ln2": ln2 if gu_p is not None else None,
            }
        return LayerWeights(
            w_qkv=w_qkv_t,
            b_qkv=b_qkv,
            w_o=_t(ld.matrix(a + ".o_proj", H, nq)),
            b_o=ld.bias(a + ".o_proj", H, args.o_proj_bias),
            w_gu=w_gu_t,
            b_gu=b_gu,
            w_down=_t(ld.matrix(m + ".down_proj", H, inter)),
            b_down=ld.bias(m + ".down_proj", H, down_bias),
            qk_norm=qk_norm,
            packed=packed,
            ln1=ln1,
            ln2=ln2,
        )

    # Dequantizing and copying release the GIL, so layers load in parallel.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        layers = list(pool.map(build_layer, range(args.num_layers)))

    norm = ld.vector("model.norm.weight", H)
    tie = args.tie_word_embeddings
    if tie is None:
        tie = "lm_head.weight" not in store
    embed = ld.matrix("model.embed_tokens", V, H)
    head_name = "model.embed_tokens" if tie else "lm_head"
    packed_head = ld.packed_cat([head_name]) if pack and args.quantization is not None else None
    if tie:
        lm_head_t = _t(embed)
        embed = None
    else:
        embed = np.array(embed, dtype=np.float32)  # own it (it may be a view of the file)
        lm_head_t = _t(ld.matrix("lm_head", V, H))
    return ModelWeights(embed=embed, lm_head_t=lm_head_t, norm=norm, layers=layers, packed_head=packed_head)
