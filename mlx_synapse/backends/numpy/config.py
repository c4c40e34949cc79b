"""config.json -> a normalised, validated description of the architecture."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from ...models.config_check import check_config
from ...models.rope import rope_settings

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3")


@dataclass
class ModelArgs:
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: Optional[dict]
    rotary_dim: int
    tie_word_embeddings: Optional[bool]  # None: tie iff lm_head.weight is absent
    attention_bias: bool
    o_proj_bias: bool
    mlp_bias: bool
    quantization: Optional[dict]


def read_config(model_dir: str | Path) -> Dict[str, Any]:
    path = Path(model_dir) / "config.json"
    if not path.exists():
        raise ValueError(f"{model_dir}: no config.json; is this a model directory?")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return cfg


def _req(cfg: dict, key: str, where: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise ValueError(f"{where}: config.json lacks required field {key!r}")
    return cfg[key]


def parse_args(cfg: Dict[str, Any], where: str = "model") -> ModelArgs:
    check_config(cfg, Path(where) / "config.json" if where != "model" else "config.json")
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{where}: unsupported model_type {model_type!r} for the NumPy backend "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"{where}: hidden_act {act!r} is not supported (only silu)")
    hidden = int(_req(cfg, "hidden_size", where))
    heads = int(_req(cfg, "num_attention_heads", where))
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    if heads % kv_heads:
        raise ValueError(f"{where}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
    theta, scaling, partial = rope_settings(cfg)
    rotary_dim = int(head_dim * partial)
    if rotary_dim % 2 or not 0 < rotary_dim <= head_dim:
        raise ValueError(f"{where}: partial_rotary_factor={partial} gives an invalid rotary dim {rotary_dim}")
    attn_bias = bool(cfg.get("attention_bias", False))
    if model_type == "qwen2":
        qkv_bias, o_bias = True, False
    elif model_type == "phi3":
        qkv_bias, o_bias = False, False
    else:  # llama / mistral / qwen3: attention_bias covers q, k, v and o
        qkv_bias, o_bias = attn_bias, attn_bias
    quant = cfg.get("quantization") or cfg.get("quantization_config")
    if quant is not None:
        mode = quant.get("mode", "affine")
        if mode != "affine":
            raise ValueError(f"{where}: quantization mode {mode!r} is not supported (only affine)")
        if "group_size" not in quant or "bits" not in quant:
            raise ValueError(f"{where}: config.json quantization section lacks group_size/bits")
    tie = cfg.get("tie_word_embeddings")
    return ModelArgs(
        model_type=model_type,
        hidden_size=hidden,
        num_layers=int(_req(cfg, "num_hidden_layers", where)),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=int(_req(cfg, "intermediate_size", where)),
        vocab_size=int(_req(cfg, "vocab_size", where)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        rotary_dim=rotary_dim,
        tie_word_embeddings=None if tie is None else bool(tie),
        attention_bias=qkv_bias,
        o_proj_bias=o_bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        quantization=quant,
    )
