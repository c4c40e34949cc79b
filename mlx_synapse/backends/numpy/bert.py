"""NumPy twin of ``models/bert.py``: the BERT sentence encoder on OpenBLAS.

MLX's CPU backend runs a float32 matmul on one thread, far below OpenBLAS
(benchmarks/README.md), so CPU runs of the memory bank's encoder use this.
Nothing here imports MLX.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np

from .safetensors import open_model_dir


def read_bert_config(model_dir: Union[str, Path]) -> dict:
    """config.json of a BERT directory; ValueError for any other model_type."""
    from .config import read_config

    config = read_config(model_dir)
    if config.get("model_type") != "bert":
        raise ValueError(
            f"[encoders] {model_dir} holds model_type {config.get('model_type')!r}, not 'bert'; "
            "pass a BERT sentence-encoder directory such as find_minilm_dir()."
        )
    return config



def _erf(x: np.ndarray) -> np.ndarray:
    """erf to 1.5e-7 (Abramowitz & Stegun 7.1.26): NumPy has none, SciPy is no dependency."""
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.copysign(1.0 - poly * np.exp(-a * a), x).astype(np.float32)


_NP_ACTIVATIONS = {
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x * np.float32(0.5**0.5))),
    "gelu_new": lambda x: 0.5 * x * (1.0 + np.tanh(np.float32((2 / np.pi) ** 0.5) * (x + 0.044715 * x**3))),
    "relu": lambda x: np.maximum(x, 0),
}
_NP_ACTIVATIONS["gelu_pytorch_tanh"] = _NP_ACTIVATIONS["gelu_new"]


class NumpyBert:
    """The NumPy twin of ``models/bert.py`` (float32, BLAS matmuls), for CPU runs.

    MLX's CPU backend runs a float32 matmul on one thread at ~2-3 GFLOP/s, against
    OpenBLAS's ~170 (benchmarks/README.md): on the 2-core dev box this encodes
    100 short sentences in 0.6 s where the MLX model takes 20 s.
    ``NumpyBert(config, weights)(ids (B, L), mask (B, L)) -> (B, L, H)``.
    """

    def __init__(self, config: dict, weights: dict):
        act, pos = config.get("hidden_act", "gelu"), config.get("position_embedding_type", "absolute")
        if act not in _NP_ACTIVATIONS or pos != "absolute":
            raise ValueError(
                f"[NumpyBert] hidden_act {act!r} with position_embedding_type {pos!r} is not supported; "
                f"supported: hidden_act in {', '.join(_NP_ACTIVATIONS)}, 'absolute' positions "
                "(or use backend='mlx' where models/bert.py supports it)."
            )
        w = {k.removeprefix("bert."): v for k, v in weights.items()}

        def f32(name):
            return np.asarray(w[name], np.float32)

        def lin(n):  # weight transposed to (in, out) once, bias (out,)
            return np.ascontiguousarray(f32(n + ".weight").T), f32(n + ".bias")

        def ln(n):
            return f32(n + ".LayerNorm.weight"), f32(n + ".LayerNorm.bias")

        self.n_heads, self.act = int(config["num_attention_heads"]), _NP_ACTIVATIONS[act]
        self.eps = np.float32(config.get("layer_norm_eps", 1e-12))
        self.word, self.pos, self.type = (
            f32(f"embeddings.{n}_embeddings.weight") for n in ("word", "position", "token_type")
        )
        self.emb_ln = ln("embeddings")
        self.layers = []
        for p in (f"encoder.layer.{i}." for i in range(int(config["num_hidden_layers"]))):
            q, k, v = (lin(p + "attention.self." + n) for n in ("query", "key", "value"))
            qkv = (np.concatenate([q[0], k[0], v[0]], axis=1), np.concatenate([q[1], k[1], v[1]]))
            self.layers.append((qkv, lin(p + "attention.output.dense"), ln(p + "attention.output"),
                                lin(p + "intermediate.dense"), lin(p + "output.dense"), ln(p + "output")))

    def _ln(self, x: np.ndarray, wb) -> np.ndarray:
        x = x - x.mean(-1, keepdims=True)
        return x / np.sqrt(np.square(x).mean(-1, keepdims=True) + self.eps) * wb[0] + wb[1]

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        B, L = ids.shape
        if L > self.pos.shape[0]:
            raise ValueError(f"[NumpyBert] sequence length {L} exceeds {self.pos.shape[0]} positions.")
        h = self._ln(self.word[ids] + self.type[0] + self.pos[:L], self.emb_ln)  # token type 0
        bias = np.where(mask[:, None, None, :] > 0, 0.0, np.finfo(np.float32).min).astype(np.float32)
        H = self.n_heads
        scale = np.float32((h.shape[-1] // H) ** -0.5)
        for qkv, o, ln1, inter, out, ln2 in self.layers:
            x = h.reshape(B * L, -1)
            q, k, v = np.split((x @ qkv[0] + qkv[1]).reshape(B, L, 3 * H, -1).transpose(0, 2, 1, 3), 3, axis=1)
            s = (q * scale) @ k.transpose(0, 1, 3, 2) + bias  # (B, H, L, L)
            s = np.exp(s - s.max(-1, keepdims=True))
            a = ((s / s.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(B * L, -1)
            x = self._ln(a @ o[0] + o[1] + x, ln1)
            h = self._ln(self.act(x @ inter[0] + inter[1]) @ out[0] + out[1] + x, ln2).reshape(B, L, -1)
        return h


def load_numpy_bert(model_dir: Union[str, Path]) -> NumpyBert:
    """``NumpyBert`` of a HF ``BertModel`` directory (no MLX needed)."""
    config = read_bert_config(model_dir)
    store = open_model_dir(model_dir)
    try:
        return NumpyBert(config, {k: store.get(k) for k in store.keys() if not k.endswith("position_ids")})
    except KeyError as e:
        raise ValueError(f"[encoders] {model_dir} lacks BERT weight {e}; re-download the model.") from e
