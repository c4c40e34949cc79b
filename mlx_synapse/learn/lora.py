"""LoRA and DoRA layers over the frozen Linear / QuantizedLinear layers of an MLX model.

A LoRA layer computes ``y = base(x) + scale * (x @ A) @ B`` with ``A`` (in, r) and
``B`` (r, out), the parameter names and shapes of mlx-lm's tuner (``lora_a``,
``lora_b``), so adapter files move between the two packages. The base layer is
kept as it is -- a quantized one stays quantized (QLoRA) -- and is never copied
to float: removing the adapter puts the very same module back.

DoRA (``m``, the learned per-row magnitude) rescales each output row by
``m / ||W + scale * B.T @ A.T||``; the row norms of a quantized ``W`` and its
products with the adapter are computed from the codes (``quantized_matmul``),
so no dequantized weight is kept there either.
"""

from __future__ import annotations

import contextlib
import math
from typing import Dict, List, Optional, Sequence

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

ADAPTER_LEAVES = ("lora_a", "lora_b", "m")


def _dims(linear: nn.Module) -> tuple:
    """(in, out) of a Linear or QuantizedLinear."""
    out_dims, in_dims = linear.weight.shape
    if isinstance(linear, nn.QuantizedLinear):
        in_dims = in_dims * 32 // linear.bits
    return in_dims, out_dims


def _base_matmul_t(linear: nn.Module, a: mx.array) -> mx.array:
    """``W @ a`` for a (in, r) matrix, on the codes when ``linear`` is quantized: (out, r)."""
    if isinstance(linear, nn.QuantizedLinear):
        # quantized_matmul(x, W, transpose=True) = x @ W.T, so (a.T @ W.T).T = W @ a
        return mx.quantized_matmul(
            a.T, linear.weight, linear.scales, linear.biases, transpose=True,
            group_size=linear.group_size, bits=linear.bits,
        ).T
    return linear.weight @ a


def _base_row_norms_sq(linear: nn.Module) -> mx.array:
    """||W_i||^2 per output row, dequantizing one block of rows at a time for quantized W."""
    if not isinstance(linear, nn.QuantizedLinear):
        return mx.sum(linear.weight.astype(mx.float32) ** 2, axis=1)
    rows, out = [], linear.weight.shape[0]
    step = 1024
    for i in range(0, out, step):
        w = mx.dequantize(linear.weight[i:i + step], linear.scales[i:i + step], linear.biases[i:i + step],
                          group_size=linear.group_size, bits=linear.bits)
        rows.append(mx.sum(w.astype(mx.float32) ** 2, axis=1))
    return mx.concatenate(rows)


class LoRALinear(nn.Module):
    """``base(x) + scale * (dropout(x) @ lora_a) @ lora_b``; only ``lora_a``/``lora_b`` train.

    Args:
        base: the frozen ``nn.Linear`` or ``nn.QuantizedLinear``.
        rank: r, the inner size of the update.
        scale: multiplier of the update (mlx-lm's ``scale``, not alpha/r).
        dropout: dropout on the adapter's input while training.
    """

    def __init__(self, base: nn.Module, rank: int = 8, scale: float = 20.0, dropout: float = 0.0):
        super().__init__()
        in_dims, out_dims = _dims(base)
        self.linear = base
        self.dropout = nn.Dropout(p=dropout)
        self._dropout_p = float(dropout)
        self.scale = float(scale)
        bound = 1.0 / math.sqrt(in_dims)
        self.lora_a = mx.random.uniform(low=-bound, high=bound, shape=(in_dims, rank))
        self.lora_b = mx.zeros((rank, out_dims))

    @property
    def dropout_p(self) -> float:
        return self._dropout_p

    @property
    def rank(self) -> int:
        return self.lora_a.shape[1]

    def delta(self) -> mx.array:
        """The dense update ``scale * B.T @ A.T``, (out, in)."""
        return self.scale * (self.lora_b.T @ self.lora_a.T)

    def __call__(self, x: mx.array) -> mx.array:
        if getattr(self, "_off", False):
            return self.linear(x)
        y = self.linear(x)
        z = (self.dropout(x) @ self.lora_a) @ self.lora_b
        return y + (self.scale * z).astype(y.dtype)

    def fuse(self, dequantize: bool = False) -> nn.Module:
        """One Linear holding ``W + delta`` (re-quantized like the base unless ``dequantize``)."""
        return _fused_linear(self.linear, lambda w: w + self.delta().astype(w.dtype), dequantize)


class DoRALinear(LoRALinear):
    """LoRA plus a learned magnitude ``m`` per output row (Liu et al., 2024; mlx-lm's ``dora``).

    ``y = m / ||W + delta||_row * (x @ (W + delta).T) + bias``, the norm held out of
    the gradient as in the paper and mlx-lm.
    """

    def __init__(self, base: nn.Module, rank: int = 8, scale: float = 20.0, dropout: float = 0.0):
        super().__init__(base, rank, scale, dropout)
        self._w_norm_sq = _base_row_norms_sq(base)  # a constant, not a parameter (leading underscore)
        self.m = mx.sqrt(self._w_norm_sq)

    def _adapted_norm(self) -> mx.array:
        # ||W + s B^T A^T||^2 = ||W||^2 + 2 s <W_i, (B^T A^T)_i> + s^2 ||(B^T A^T)_i||^2, row-wise,
        # with <W_i, B^T A^T_i> = sum_k B_ki (W A)_ik: W only meets the (in, r) matrix A.
        wa = _base_matmul_t(self.linear, self.lora_a.astype(mx.float32))  # (out, r)
        b = self.lora_b.astype(mx.float32)  # (r, out)
        cross = mx.sum(wa * b.T, axis=1)
        ata = self.lora_a.T.astype(mx.float32) @ self.lora_a.astype(mx.float32)  # (r, r)
        dd = mx.sum((b.T @ ata) * b.T, axis=1)
        sq = self._w_norm_sq + 2 * self.scale * cross + self.scale**2 * dd
        return mx.sqrt(mx.maximum(sq, 0.0))

    def __call__(self, x: mx.array) -> mx.array:
        if getattr(self, "_off", False):
            return self.linear(x)
        base = self.linear
        bias = base["bias"] if "bias" in base else None
        y = base(x) if bias is None else base(x) - bias
        z = (self.dropout(x) @ self.lora_a) @ self.lora_b
        y = y + (self.scale * z).astype(y.dtype)
        y = (self.m / mx.stop_gradient(self._adapted_norm())).astype(y.dtype) * y
        return y if bias is None else y + bias

    def fuse(self, dequantize: bool = False) -> nn.Module:
        def adapted(w):
            w = w + self.delta().astype(w.dtype)
            return (self.m / mx.linalg.norm(w.astype(mx.float32), axis=1))[:, None].astype(w.dtype) * w

        return _fused_linear(self.linear, adapted, dequantize)


def _fused_linear(base: nn.Module, new_weight, dequantize: bool) -> nn.Module:
    quantized = isinstance(base, nn.QuantizedLinear)
    w = base.weight
    if quantized:
        w = mx.dequantize(w, base.scales, base.biases, group_size=base.group_size, bits=base.bits)
    out_dims, in_dims = w.shape
    fused = nn.Linear(in_dims, out_dims, bias="bias" in base)
    fused.weight = new_weight(w)
    if "bias" in base:
        fused.bias = base.bias
    if quantized and not dequantize:
        fused = nn.QuantizedLinear.from_linear(fused, base.group_size, base.bits)
    return fused


_INFERENCE_FORM = (
    "[lora] this model was rearranged for inference (mlx_synapse.load on a CPU fuses q|k|v and splits "
    "rows over streams); adapters need the trainable form: load it with "
    "mlx_synapse.learn.load_trainable(path), or pass adapter_path= to mlx_synapse.load."
)


def _check_model(model: nn.Module) -> None:
    from ..models.parallel import RowSplitLinear

    for layer in model.layers:
        if "qkv_proj" in layer.self_attn and "q_proj" not in layer.self_attn and model.model_type != "phi3":
            raise ValueError(_INFERENCE_FORM)
        if any(isinstance(m, RowSplitLinear) for _, m in layer.named_modules()):
            raise ValueError(_INFERENCE_FORM)


def default_keys(model: nn.Module) -> List[str]:
    """Every Linear/QuantizedLinear inside a block, by its path relative to the block (mlx-lm's default)."""
    keys = []
    for path, mod in model.layers[0].named_modules():
        if type(mod) in (nn.Linear, nn.QuantizedLinear):
            keys.append(path)
    return sorted(keys)


def apply_lora(
    model: nn.Module,
    num_layers: int = 16,
    rank: int = 8,
    scale: float = 20.0,
    dropout: float = 0.0,
    keys: Optional[Sequence[str]] = None,
    use_dora: bool = False,
) -> List[str]:
    """Wrap the ``keys`` linears of the last ``num_layers`` blocks in LoRA (or DoRA) layers.

    Freezes the whole model, then unfreezes only the adapter parameters.

    Args:
        num_layers: how many blocks from the end get adapters (-1 or more than the model has: all).
        keys: paths inside a block (``"self_attn.q_proj"``); None: every linear.

    Returns:
        The full paths of the wrapped layers (``"model.layers.29.self_attn.q_proj"``).
    """
    _check_model(model)
    if rank < 1:
        raise ValueError(f"[lora] rank must be at least 1 but got {rank}.")
    if not 0 <= dropout < 1:
        raise ValueError(f"[lora] dropout must be in [0, 1) but got {dropout}.")
    n = len(model.layers)
    if num_layers < 0 or num_layers > n:
        num_layers = n
    keys = list(keys) if keys is not None else default_keys(model)
    cls = DoRALinear if use_dora else LoRALinear
    model.freeze()
    wrapped = []
    for i in range(n - num_layers, n):
        block = model.layers[i]
        mods = dict(block.named_modules())
        updates = []
        for k in keys:
            if k not in mods:
                raise ValueError(
                    f"[lora] block {i} has no layer {k!r}; keys are paths inside a block such as "
                    f"{', '.join(default_keys(model)[:3])}."
                )
            base = mods[k]
            if isinstance(base, LoRALinear):
                raise ValueError(f"[lora] {k} of block {i} already has an adapter; remove_lora(model) first.")
            if type(base) not in (nn.Linear, nn.QuantizedLinear):
                raise ValueError(f"[lora] {k} of block {i} is a {type(base).__name__}, not a Linear layer.")
            layer = cls(base, rank=rank, scale=scale, dropout=dropout)
            layer.freeze()
            layer.unfreeze(keys=[k2 for k2 in ADAPTER_LEAVES if k2 in layer], recurse=False)
            updates.append((k, layer))
            wrapped.append(f"model.layers.{i}.{k}")
        block.update_modules(tree_unflatten(updates))
    return wrapped


def lora_layers(model: nn.Module) -> Dict[str, LoRALinear]:
    """Path -> adapter layer for every LoRA/DoRA layer in ``model``."""
    return {p: m for p, m in model.named_modules() if isinstance(m, LoRALinear)}


def _replace(model: nn.Module, make) -> int:
    n = 0
    for block in model.layers:
        updates = [(p, make(m)) for p, m in block.named_modules() if isinstance(m, LoRALinear)]
        if updates:
            block.update_modules(tree_unflatten(updates))
            n += len(updates)
    return n


def remove_lora(model: nn.Module) -> int:
    """Put the original base layers back (the same objects: logits are bit-identical). Returns how many."""
    return _replace(model, lambda m: m.linear)


def fuse_lora(model: nn.Module, dequantize: bool = False) -> int:
    """Fold every adapter into its base weight (re-quantized unless ``dequantize``). Returns how many."""
    return _replace(model, lambda m: m.fuse(dequantize=dequantize))


@contextlib.contextmanager
def adapters_off(model: nn.Module):
    """Inside the block every LoRA/DoRA layer computes its base layer alone (the base model's
    logits exactly, DoRA included); the adapters stay in place and trainable."""
    layers = list(lora_layers(model).values())
    for m in layers:
        m._off = True
    try:
        yield model
    finally:
        for m in layers:
            m._off = False


def set_scale(model: nn.Module, scale: float) -> None:
    """Change every adapter's scale (0 turns the adapters off without removing them)."""
    for m in lora_layers(model).values():
        m.scale = float(scale)
