"""The reader adapter on a loaded model, switched on only for turns that show memories.

:class:`Reader` installs one LoRA adapter (mlx-lm's files) on a model of either backend,
off until :meth:`Reader.active` (or :meth:`Reader.on`) turns it on:

* NumPy backend and its C engine: the adapter's rank-r matrices are built once
  (:func:`mlx_synapse.backends.numpy.adapter.build_lora`: beside the packed 4-bit
  matvec, never a dequantized copy) and handed to the model on ``on()``; ``off()``
  hands it ``None``, after which it computes exactly what it did without the adapter.
* MLX: each adapted layer is wrapped in :class:`SwitchedLoRA`, which returns
  ``base(x)`` itself while off -- the same operations on the same arrays as without it,
  so the logits are bit-identical -- and ``base(x) + (x @ A) @ B`` while on. It wraps
  whatever layer the model has: the trainable form's ``q_proj``, or the inference form's
  fused ``qkv_proj`` / ``gate_up_proj`` (``A`` of the parts side by side, ``B`` block
  diagonal, as the NumPy backend does), float, quantized or row-split.

One reader per model: :func:`reader_for` keeps it on the model, so every assistant
sharing the model shares it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np

ENV = "MLX_SYNAPSE_READER"  # "0"/"off": no reader; a directory: that adapter instead of the installed one
_OFF = ("0", "off", "false", "no", "none")

__all__ = ["Reader", "SwitchedLoRA", "ENV", "default_dir", "resolve", "reader_for"]


def default_dir() -> Path:
    """Where the trained reader is looked for: ``$MLX_SYNAPSE_CACHE/reader`` (the cache the
    default model lives in), else ``shared/data/reader`` beside the working directory or the
    source tree (a few folders up); the cache's path when neither holds one."""
    from ..defaults import cache_dir

    cache = cache_dir() / "reader"
    ups = list(Path.cwd().resolve().parents)[:4] + list(Path(__file__).resolve().parents)[2:6]
    for d in [cache] + [u / "shared" / "data" / "reader" for u in ups]:
        if (d / "adapters.safetensors").is_file():
            return d
    return cache


def resolve(setting: Union[None, bool, str, os.PathLike] = None) -> Tuple[Optional[Path], str]:
    """Which adapter directory a setting means: ``(path or None, why)``.

    ``False``: none. ``None`` / ``True``: ``$MLX_SYNAPSE_READER`` when set (a directory,
    or 0/off), else :func:`default_dir`. A path: that directory."""
    if setting is False:
        return None, "reader off (reader=False)"
    if setting is None or setting is True:
        env = os.environ.get(ENV, "").strip()
        if env.lower() in _OFF:
            return None, f"reader off ({ENV}={env})"
        path = Path(env) if env else default_dir()
    else:
        path = Path(setting)
    if not (path / "adapters.safetensors").is_file() or not (path / "adapter_config.json").is_file():
        return None, (f"reader off: no adapter in {path} (adapter_config.json + adapters.safetensors); memory "
                      "turns use the base model alone. Train one with python -m mlx_synapse.reader.train.")
    return path, f"reader on memory turns: {path}"


def _mlx_layout(args) -> Dict[str, tuple]:
    """Adapter key -> (the fused layer that holds it in the inference form, first column, width)."""
    heads = args.num_attention_heads
    kv = getattr(args, "num_key_value_heads", None) or heads
    hd = getattr(args, "head_dim", None) or args.hidden_size // heads
    nq, nk, inter = heads * hd, kv * hd, args.intermediate_size
    return {"self_attn.q_proj": ("self_attn.qkv_proj", 0, nq), "self_attn.k_proj": ("self_attn.qkv_proj", nq, nk),
            "self_attn.v_proj": ("self_attn.qkv_proj", nq + nk, nk),
            "mlp.gate_proj": ("mlp.gate_up_proj", 0, inter), "mlp.up_proj": ("mlp.gate_up_proj", inter, inter)}


def _switched_class():
    import mlx.core as mx
    import mlx.nn as nn

    class SwitchedLoRA(nn.Module):
        """``base(x)`` while off; ``base(x) + (x @ A) @ B`` while on (the scale folded into ``B``)."""

        def __init__(self, base, a, b):
            super().__init__()
            self.base = base
            self.reader_a, self.reader_b = mx.array(a), mx.array(b)
            self.enabled = False

        def __call__(self, x):
            y = self.base(x)
            if not self.enabled:
                return y
            return y + ((x @ self.reader_a) @ self.reader_b).astype(y.dtype)

    return SwitchedLoRA


SwitchedLoRA = None  # the MLX class, made on first use (the NumPy backend runs without MLX)


class Reader:
    """A reader adapter on ``model`` (either backend), off until switched on.

    Raises:
        ValueError / FileNotFoundError: an adapter that does not fit the model, a DoRA
            adapter on the NumPy backend, a model that already carries an adapter.
    """

    def __init__(self, model, path: Union[str, os.PathLike]):
        self.model, self.path, self.enabled = model, Path(path), False
        if not hasattr(model, "layers"):
            raise ValueError(f"[reader] a {type(model).__name__} has no decoder blocks an adapter can attach to.")
        if getattr(model, "backend", None) == "numpy" or hasattr(model, "set_lora"):
            self._init_numpy()
        else:
            self._init_mlx()

    # ------------------------------------------------------------ NumPy + C engine
    def _init_numpy(self):
        from ..backends.numpy.adapter import build_lora, read_adapter

        if any(getattr(lw, "lora", None) for lw in self.model.layers):
            raise ValueError("[reader] the model carries an adapter already; the reader would replace it.")
        self.config, weights = read_adapter(self.path)
        self._built = build_lora(self.model, self.config, weights)
        self.kind = "numpy"

    # ------------------------------------------------------------ MLX
    def _init_mlx(self):
        import mlx.core as mx
        from mlx.utils import tree_unflatten

        from ..learn.adapters import read_adapter
        from ..learn.lora import lora_layers

        global SwitchedLoRA
        if SwitchedLoRA is None:
            SwitchedLoRA = _switched_class()
        if lora_layers(self.model):
            raise ValueError("[reader] the model carries an adapter already; the reader would replace it.")
        self.config, weights = read_adapter(self.path)
        if self.config.get("fine_tune_type", "lora") != "lora":
            raise ValueError("[reader] only a LoRA reader adapter can be switched per turn (not DoRA).")
        scale = float(self.config["lora_parameters"]["scale"])
        layout = _mlx_layout(self.model.args)
        n = len(self.model.layers)
        # (block, layer path) -> [(first column, A (in, r), B (r, width) scaled)]
        parts: Dict[tuple, list] = {}
        for name, w in weights.items():
            stem, leaf = name.rsplit(".", 1)
            bits = stem.split(".")
            if leaf not in ("lora_a", "lora_b") or len(bits) < 4 or bits[:2] != ["model", "layers"]:
                raise ValueError(f"[reader] tensor {name!r} is not a LoRA matrix of a block.")
            i, key = int(bits[2]), ".".join(bits[3:])
            if not 0 <= i < n:
                raise ValueError(f"[reader] tensor {name!r} has no place in this {n}-block model.")
            parts.setdefault((i, key), {})[leaf] = np.asarray(w.astype(mx.float32))
        wraps: Dict[tuple, list] = {}
        for (i, key), ab in sorted(parts.items()):
            if set(ab) != {"lora_a", "lora_b"}:
                raise ValueError(f"[reader] layer {i} {key} lacks lora_a or lora_b.")
            mods = dict(self.model.layers[i].named_modules())
            if key in mods:
                target, col, width = key, 0, ab["lora_b"].shape[1]
            elif key in layout and layout[key][0] in mods:
                target, col, width = layout[key]
            else:
                raise ValueError(f"[reader] block {i} has no layer for adapter key {key!r}; the adapter was "
                                 "trained on another kind of model.")
            if ab["lora_b"].shape[1] != width:
                raise ValueError(f"[reader] layer {i} {key}: lora_b {ab['lora_b'].shape} does not fit a width of "
                                 f"{width}; the adapter was trained on another base model.")
            wraps.setdefault((i, target), []).append((col, ab["lora_a"], ab["lora_b"] * np.float32(scale)))
        self._layers = []
        for (i, target), pieces in sorted(wraps.items()):
            block = self.model.layers[i]
            base = dict(block.named_modules())[target]
            out = _out_width(base)
            r = sum(a.shape[1] for _, a, _ in pieces)
            A = np.concatenate([a for _, a, _ in pieces], axis=1)
            B = np.zeros((r, out), np.float32)
            k = 0
            for col, a, b in pieces:
                if col + b.shape[1] > out:
                    raise ValueError(f"[reader] layer {i} {target}: the adapter's columns run past its {out} outputs.")
                B[k:k + a.shape[1], col:col + b.shape[1]] = b
                k += a.shape[1]
            if A.shape[0] != _in_width(base):
                raise ValueError(f"[reader] layer {i} {target}: lora_a has {A.shape[0]} rows, the layer takes "
                                 f"{_in_width(base)} inputs; the adapter was trained on another base model.")
            layer = SwitchedLoRA(base, A, B)
            block.update_modules(tree_unflatten([(target, layer)]))
            self._layers.append((block, target, layer))
        mx.eval([(m.reader_a, m.reader_b) for _, _, m in self._layers])
        self.kind = "mlx"

    def remove(self) -> None:
        """Take the reader off the model altogether (MLX: the base layers themselves go back)."""
        self.off()
        if self.kind == "mlx":
            from mlx.utils import tree_unflatten

            for block, target, layer in self._layers:
                block.update_modules(tree_unflatten([(target, layer.base)]))
            self._layers = []
        if getattr(self.model, "_synapse_reader", None) is self:
            self.model._synapse_reader = None

    # ------------------------------------------------------------ switching
    def on(self) -> None:
        if self.kind == "numpy":
            self.model.set_lora(self._built)
        else:
            for _, _, layer in self._layers:
                layer.enabled = True
        self.enabled = True

    def off(self) -> None:
        if self.kind == "numpy":
            self.model.set_lora(None)
        else:
            for _, _, layer in self._layers:
                layer.enabled = False
        self.enabled = False

    @contextlib.contextmanager
    def active(self, on: bool = True):
        """On for the ``with`` block (when ``on``), off after it, also on an exception."""
        if not on:
            yield self
            return
        self.on()
        try:
            yield self
        finally:
            self.off()


def _in_width(layer) -> int:
    import mlx.nn as nn

    if isinstance(layer, nn.QuantizedLinear):
        return layer.weight.shape[1] * 32 // layer.bits
    if "parts" in layer:  # RowSplitLinear
        return layer.parts[0].shape[1]
    return layer.weight.shape[1]


def _out_width(layer) -> int:
    if "parts" in layer:
        return sum(p.shape[0] for p in layer.parts)
    return layer.weight.shape[0]


def reader_for(model, path: Union[str, os.PathLike]) -> Reader:
    """The reader of ``path`` on ``model``, installed once and kept on the model (shared by
    every assistant using it). Raises as :class:`Reader` does."""
    cur = getattr(model, "_synapse_reader", None)
    if cur is not None and cur.path == Path(path):
        return cur
    if cur is not None:
        cur.remove()
    reader = Reader(model, path)
    model._synapse_reader = reader
    return reader
