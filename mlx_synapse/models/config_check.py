"""One check of a causal LM's ``config.json`` for both backends (and the converter).

A field of the wrong type, a size that is zero or negative, or heads that do not
divide evenly would otherwise surface deep inside model construction as a
``TypeError`` or ``ZeroDivisionError``; here each is one line naming the field,
the value and the file. Imports nothing heavy, so the NumPy backend uses it too.
"""

from __future__ import annotations

import math
from typing import Any, Union

# Sizes every causal LM here needs, and sizes that may be absent (derived or defaulted).
REQUIRED_POSITIVE_INTS = ("hidden_size", "num_hidden_layers", "num_attention_heads",
                          "intermediate_size", "vocab_size")
OPTIONAL_POSITIVE_INTS = ("num_key_value_heads", "head_dim", "max_position_embeddings")
OPTIONAL_POSITIVE_FLOATS = ("rms_norm_eps", "rope_theta")
OPTIONAL_BOOLS = ("tie_word_embeddings", "attention_bias", "mlp_bias")


def _fail(source: Any, field: str, value: Any, need: str) -> ValueError:
    return ValueError(
        f"[config] {source}: field {field!r} must be {need} but is {value!r}; "
        "fix config.json or re-download/re-convert the model."
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def check_config(config: dict, source: Union[str, Any] = "config.json") -> dict:
    """Validate ``config`` (a parsed config.json) and return it unchanged.

    Args:
        config: the parsed JSON object.
        source: what to name in errors (the file's path).

    Raises:
        ValueError: one line naming the field, its value and the file. A missing or
            unknown ``model_type`` is left to the caller, which lists the supported ones.
    """
    from . import MODEL_TYPE_ALIASES, SUPPORTED_MODEL_TYPES

    model_type = config.get("model_type")
    if MODEL_TYPE_ALIASES.get(model_type, model_type) not in SUPPORTED_MODEL_TYPES:
        return config  # the caller's model_type check names what is supported
    for field in REQUIRED_POSITIVE_INTS:
        if field not in config or config[field] is None:
            raise ValueError(
                f"[config] {source} lacks required field {field!r}; "
                "fix config.json or re-download/re-convert the model."
            )
    for field in REQUIRED_POSITIVE_INTS + OPTIONAL_POSITIVE_INTS:
        v = config.get(field)
        if v is not None and not (_is_int(v) and v > 0):
            raise _fail(source, field, v, "a positive integer")
    for field in OPTIONAL_POSITIVE_FLOATS:
        v = config.get(field)
        if v is not None and not (_is_number(v) and v > 0):
            raise _fail(source, field, v, "a positive number")
    for field in OPTIONAL_BOOLS:
        v = config.get(field)
        if v is not None and not isinstance(v, bool):
            raise _fail(source, field, v, "true or false")
    factor = config.get("partial_rotary_factor")
    if factor is not None and not (_is_number(factor) and 0 < factor <= 1):
        raise _fail(source, "partial_rotary_factor", factor, "a number in (0, 1]")
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    if config.get("head_dim") is None and hidden % heads:
        raise ValueError(
            f"[config] {source}: num_attention_heads={heads} does not divide hidden_size={hidden} "
            "(and no head_dim is given); fix config.json or re-download/re-convert the model."
        )
    if heads % kv_heads:
        raise ValueError(
            f"[config] {source}: num_key_value_heads={kv_heads} does not divide "
            f"num_attention_heads={heads}; fix config.json or re-download/re-convert the model."
        )
    return config
