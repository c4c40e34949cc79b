"""Adapter directories in mlx-lm's format: ``adapter_config.json`` + ``adapters.safetensors``.

The config holds ``fine_tune_type`` ("lora" | "dora"), ``num_layers`` and
``lora_parameters`` (``rank``, ``scale``, ``dropout``, ``keys``); the tensors are
named by their path in the model (``model.layers.29.self_attn.q_proj.lora_a``).
mlx-lm's ``load_adapters`` reads what :func:`save_adapter` writes, and
:func:`load_adapter` reads what mlx-lm's trainer writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .lora import ADAPTER_LEAVES, DoRALinear, apply_lora, lora_layers

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapters.safetensors"


def adapter_weights(model: nn.Module) -> dict:
    """Name -> array of every adapter parameter (``lora_a``, ``lora_b``, DoRA's ``m``)."""
    return {k: v for k, v in tree_flatten(model.parameters())
            if k.rsplit(".", 1)[-1] in ADAPTER_LEAVES and ".linear." not in k}


def adapter_config(model: nn.Module, extra: Optional[dict] = None) -> dict:
    """The mlx-lm config describing the adapters now on ``model``."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("[adapters] the model has no adapters; apply_lora(model, ...) first.")
    n = len(model.layers)
    blocks = sorted({int(p.split(".")[2]) for p in layers})
    if blocks != list(range(n - len(blocks), n)):
        raise ValueError(f"[adapters] adapters sit on blocks {blocks}; mlx-lm's format needs the last N blocks.")
    first = next(iter(layers.values()))
    keys = sorted({p.split(".", 3)[3] for p in layers})
    config = {
        "fine_tune_type": "dora" if isinstance(first, DoRALinear) else "lora",
        "num_layers": len(blocks),
        "lora_parameters": {"rank": first.rank, "scale": first.scale, "dropout": first.dropout_p,
                            "keys": keys},
    }
    config.update(extra or {})
    return config


def save_adapter(model: nn.Module, path: Union[str, Path], weights_name: str = WEIGHTS_NAME,
                 extra: Optional[dict] = None) -> Path:
    """Write the model's adapters to directory ``path`` (created if needed); ``extra``: more config
    keys (the base model, training settings). Returns the weights file."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = adapter_config(model, extra)
    (path / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    out = path / weights_name
    mx.save_safetensors(str(out), adapter_weights(model))
    return out


def read_adapter_config(path: Union[str, Path]) -> dict:
    """Read and check an adapter directory's config: one-line errors naming the problem."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"[adapters] adapter directory {str(path)!r} does not exist.")
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(
            f"[adapters] {cfg_path} not found; an adapter directory holds {CONFIG_NAME} and {WEIGHTS_NAME}."
        )
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"[adapters] {cfg_path} is not valid JSON ({e}).") from None
    kind = config.get("fine_tune_type", "lora")
    if kind not in ("lora", "dora"):
        raise ValueError(
            f"[adapters] {cfg_path} has fine_tune_type {kind!r}; only 'lora' and 'dora' adapters load "
            "(a 'full' fine-tune is a model: load it as one)."
        )
    params = config.get("lora_parameters")
    if not isinstance(params, dict) or "rank" not in params or "scale" not in params:
        raise ValueError(f"[adapters] {cfg_path} needs lora_parameters with 'rank' and 'scale'.")
    if "num_layers" not in config:
        raise ValueError(f"[adapters] {cfg_path} lacks 'num_layers'.")
    return config


def read_adapter(path: Union[str, Path], weights_name: Optional[str] = None) -> tuple:
    """(config, {name: mx.array}) of an adapter directory, checked; nothing applied."""
    path = Path(path)
    config = read_adapter_config(path)
    wfile = path / (weights_name or WEIGHTS_NAME)
    if not wfile.is_file():
        raise FileNotFoundError(f"[adapters] {wfile} not found beside {CONFIG_NAME}.")
    try:
        weights = mx.load(str(wfile))
    except Exception as e:  # MLX raises several types for a bad file
        raise ValueError(f"[adapters] cannot read {wfile} ({e}); the file is truncated or not safetensors.") from None
    return config, weights


def same_structure(a: dict, b: dict) -> bool:
    """Whether two adapter configs put the same-shaped matrices on the same layers (weights can swap in place)."""
    pa, pb = a["lora_parameters"], b["lora_parameters"]
    return (a.get("fine_tune_type", "lora") == b.get("fine_tune_type", "lora") and a["num_layers"] == b["num_layers"]
            and pa["rank"] == pb["rank"] and pa.get("keys") == pb.get("keys"))


def apply_adapter_weights(model: nn.Module, config: dict, weights: dict, where: str = "the adapter") -> dict:
    """Wrap ``model``'s layers as ``config`` says and load ``weights`` into them (checked; on a
    mismatch the model is left without adapters). Returns ``config``."""
    p = config["lora_parameters"]
    apply_lora(model, num_layers=int(config["num_layers"]), rank=int(p["rank"]), scale=float(p["scale"]),
               dropout=float(p.get("dropout", 0.0)), keys=p.get("keys"),
               use_dora=config.get("fine_tune_type") == "dora")
    want = adapter_weights(model)
    bad = [f"{k}: not an adapter parameter of this model" for k in weights if k not in want]
    bad += [f"{k}: shape {tuple(weights[k].shape)} but the model needs {tuple(want[k].shape)}"
            for k in weights if k in want and weights[k].shape != want[k].shape]
    missing = [k for k in want if k not in weights and k.rsplit(".", 1)[-1] != "m"]
    bad += [f"{k}: missing from the file" for k in missing[:3]]
    if bad:
        from .lora import remove_lora

        remove_lora(model)
        raise ValueError(
            f"[adapters] {where} does not fit this model ({'; '.join(bad[:3])}"
            f"{'; ...' if len(bad) > 3 else ''}); it was trained on another base model."
        )
    model.load_weights(list(weights.items()), strict=False)
    mx.eval(model.parameters())
    return config


def load_adapter(model: nn.Module, path: Union[str, Path], weights_name: Optional[str] = None) -> dict:
    """Apply the adapters of directory ``path`` to ``model`` and load their weights (checked).

    Returns:
        The adapter config.

    Raises:
        FileNotFoundError / ValueError: a missing directory or file, an unreadable config,
            or tensors that do not fit the model (named in the message).
    """
    config, weights = read_adapter(path, weights_name)
    return apply_adapter_weights(model, config, weights, str(Path(path) / (weights_name or WEIGHTS_NAME)))
