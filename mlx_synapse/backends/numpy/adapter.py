"""LoRA adapters (mlx-lm's format) on the NumPy backend and its C engine.

An adapter stays a rank-r update beside each matrix product -- ``y = x @ W +
(x @ A) @ B`` -- never a modified or dequantized copy of the weight: the
packed 4-bit codes are shared with the unadapted model, and removing the
adapter is dropping the small matrices.

The backend fuses q|k|v and gate|up, folds the RMSNorm weights into the
matrix rows and the attention scale 1/sqrt(d) into the query columns; the
adapter's matrices get the same treatment here, once, so the forward code
just adds ``(xn @ A) @ B`` where it multiplies by the fused weight:

* the per-projection ``A``s of a fused matrix are stacked side by side and
  their ``B``s placed block-diagonally (each B only feeds its own columns);
* ``scale`` is folded into ``B``, and ``1/sqrt(d)`` into B's query columns;
* the RMSNorm weight is folded into ``A``'s rows for the NumPy paths (which see
  the unit-normalised input); the engine's packed matrices see the input with the
  norm weight applied already, so they take ``A`` unfolded.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Optional

import numpy as np

from .model import NumpyModel

MATRICES = ("qkv", "o", "gu", "down")


def _layout(model: NumpyModel) -> Dict[str, tuple]:
    """Adapter key inside a block -> (fused matrix, first column, width)."""
    a = model.args
    nq, nk, inter = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim, a.intermediate_size
    return {
        "self_attn.q_proj": ("qkv", 0, nq), "self_attn.k_proj": ("qkv", nq, nk),
        "self_attn.v_proj": ("qkv", nq + nk, nk), "self_attn.qkv_proj": ("qkv", 0, nq + 2 * nk),
        "self_attn.o_proj": ("o", 0, a.hidden_size),
        "mlp.gate_proj": ("gu", 0, inter), "mlp.up_proj": ("gu", inter, inter),
        "mlp.gate_up_proj": ("gu", 0, 2 * inter), "mlp.down_proj": ("down", 0, a.hidden_size),
    }


def _width(model: NumpyModel, name: str) -> int:
    a = model.args
    return {"qkv": (a.num_heads + 2 * a.num_kv_heads) * a.head_dim, "o": a.hidden_size,
            "gu": 2 * a.intermediate_size, "down": a.hidden_size}[name]


def build_lora(model: NumpyModel, config: dict, weights: Dict[str, np.ndarray]) -> list:
    """Per layer, ``{matrix: (A (K, r) norm-folded, B (r, N), A_engine (r, K), B_engine (N, r))}``.

    Raises:
        ValueError: a DoRA adapter, a key the backend has no matrix for, or tensors that do not fit.
    """
    if config.get("fine_tune_type", "lora") != "lora":
        raise ValueError(
            f"[numpy adapter] {config.get('fine_tune_type')!r} adapters rescale whole weight rows and run on the "
            "MLX backend only; use --backend mlx, or fuse the adapter into the model first."
        )
    args = model.args
    p = config["lora_parameters"]
    scale = np.float32(p["scale"])
    layout = _layout(model)
    n = model.num_layers
    first = n - min(int(config["num_layers"]) if int(config["num_layers"]) >= 0 else n, n)
    q_scale = np.float32(args.head_dim**-0.5)
    per_layer = [dict() for _ in range(n)]
    parts = {}
    for name, w in weights.items():
        stem, leaf = name.rsplit(".", 1)
        bits = stem.split(".")
        if leaf not in ("lora_a", "lora_b") or len(bits) < 4 or bits[:2] != ["model", "layers"]:
            raise ValueError(f"[numpy adapter] tensor {name!r} is not a LoRA matrix of a block.")
        i, key = int(bits[2]), ".".join(bits[3:])
        if key not in layout or not first <= i < n:
            raise ValueError(f"[numpy adapter] tensor {name!r} has no place in this {n}-block model.")
        parts.setdefault((i, key), {})[leaf] = np.asarray(w, np.float32)
    for (i, key), ab in sorted(parts.items()):
        if set(ab) != {"lora_a", "lora_b"}:
            raise ValueError(f"[numpy adapter] layer {i} {key} lacks lora_a or lora_b.")
        mat, col, width = layout[key]
        A, B = ab["lora_a"], ab["lora_b"] * scale
        K = args.hidden_size if mat in ("qkv", "gu") else (args.num_heads * args.head_dim if mat == "o"
                                                            else args.intermediate_size)
        if A.shape[0] != K or B.shape != (A.shape[1], width):
            raise ValueError(
                f"[numpy adapter] layer {i} {key}: lora_a {A.shape} / lora_b {B.shape} do not fit a "
                f"({K} -> {width}) projection; the adapter was trained on another base model."
            )
        per_layer[i].setdefault(mat, []).append((col, A, B))
    out = []
    for i, mats in enumerate(per_layer):
        lw = model.layers[i]
        pk = lw.packed or {}
        entry = {}
        for mat, pieces in mats.items():
            r = sum(A.shape[1] for _, A, _ in pieces)
            A_cat = np.concatenate([A for _, A, _ in pieces], axis=1)  # (K, r)
            B_cat = np.zeros((r, _width(model, mat)), np.float32)
            k = 0
            for col, A, B in pieces:
                B_cat[k : k + A.shape[1], col : col + B.shape[1]] = B
                k += A.shape[1]
            if mat == "qkv" and lw.qk_norm is None:  # the query columns carry the attention scale
                B_cat[:, : args.num_heads * args.head_dim] *= q_scale
            ln = None
            if mat in ("qkv", "gu"):
                ln = lw.ln1 if mat == "qkv" else lw.ln2
            A_np = A_cat * ln[:, None] if ln is not None else A_cat
            # the engine's packed qkv/gu get the norm weight applied to their input; float rows do not
            engine_ln = pk.get("ln1" if mat == "qkv" else "ln2") if mat in ("qkv", "gu") else None
            A_eng = A_cat if engine_ln is not None or ln is None else A_np
            entry[mat] = (np.ascontiguousarray(A_np), np.ascontiguousarray(B_cat),
                          np.ascontiguousarray(A_eng.T), np.ascontiguousarray(B_cat.T))
        out.append(entry or None)
    return out


def read_adapter(path) -> tuple:
    """(config, {name: float32 array}) of an mlx-lm adapter directory, checked."""
    from mlx_synapse.learn.adapters import WEIGHTS_NAME, read_adapter_config

    config = read_adapter_config(path)
    wfile = os.path.join(os.fspath(path), WEIGHTS_NAME)
    if not os.path.isfile(wfile):
        raise FileNotFoundError(f"[adapters] {wfile} not found beside adapter_config.json.")
    from .safetensors import SafetensorsFile

    try:
        f = SafetensorsFile(wfile)  # float32, float16 and bfloat16 tensors alike
        try:
            weights = {k: np.array(f.get(k), dtype=np.float32) for k in f.keys()}
        finally:
            f.close()
    except (ValueError, OSError) as e:
        raise ValueError(f"[adapters] cannot read {wfile} ({e}); the file is truncated or not safetensors.") from None
    return config, weights


def apply_adapter(model: NumpyModel, path=None, *, config: Optional[dict] = None,
                  weights: Optional[dict] = None) -> None:
    """Put an adapter (a directory, or ``config`` + ``weights``) on ``model``, replacing any other."""
    if path is not None:
        config, weights = read_adapter(path)
    model.set_lora(build_lora(model, config, weights))


def remove_adapter(model: NumpyModel) -> None:
    """Drop the adapter: the model computes exactly what it did before it was applied."""
    model.set_lora(None)
