"""Tiny random Hugging Face models, built locally, for parity tests.

The one place that builds them: ``hf_model`` returns one in memory,
``build_hf_model`` also saves it with ``save_pretrained``; ``hf_logits`` is the
reference forward pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

# head_dim 32: MLX's quantized KV cache needs head_dim >= its group size (32).
COMMON = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
)

# name -> (transformers config class, model class, config overrides)
ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(rope_theta=10000.0, tie_word_embeddings=False)),
    "llama_tied": ("LlamaConfig", "LlamaForCausalLM", dict(rope_theta=500.0, tie_word_embeddings=True)),
    "llama3_rope": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            rope_theta=500000.0,
            rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                              high_freq_factor=4.0, original_max_position_embeddings=64),
        ),
    ),
    "llama_linear_rope": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(rope_scaling=dict(rope_type="linear", factor=4.0), attention_bias=True, mlp_bias=True),
    ),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=None)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=64, tie_word_embeddings=False)),
    # Phi-3 attention is multi-head: as many k/v heads as query heads.
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(num_key_value_heads=2, pad_token_id=0, tie_word_embeddings=False)),
    "phi3_partial_rotary": (
        "Phi3Config",
        "Phi3ForCausalLM",
        dict(partial_rotary_factor=0.5, pad_token_id=0, tie_word_embeddings=True),
    ),
}


def hf_model(arch: str, seed: int = 0, dtype: str = "float32", *, std: Optional[float] = None,
             bias_std: float = 0.1, **overrides):
    """A random ``arch`` model (eval mode) from ``COMMON``, ``ARCHS[arch]`` and ``overrides``.

    Args:
        arch: a key of ``ARCHS``.
        seed: seeds the initialisation and the noise below.
        dtype: torch dtype name of the returned parameters.
        std: None keeps transformers' initialisation (``initializer_range``)
            and, since it leaves norms at 1 and biases at 0, adds N(0, 0.1)
            noise to norms and N(0, ``bias_std``) noise to biases. A number
            redraws every parameter from N(0, std), norms around 1.
        bias_std: see ``std``.
        **overrides: config entries.
    """
    import torch
    import transformers

    cfg_name, model_name, extra = ARCHS[arch]
    config = getattr(transformers, cfg_name)(**{**COMMON, **extra, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():
        if std is None:
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.add_(torch.randn_like(p) * 0.1)
                elif name.endswith(".bias"):
                    p.add_(torch.randn_like(p) * bias_std)
        else:
            g = torch.Generator().manual_seed(seed)
            for name, p in model.named_parameters():
                noise = torch.randn(p.shape, generator=g) * std
                p.copy_(1.0 + noise if "norm" in name else noise)
    return model.to(getattr(torch, dtype))


def build_hf_model(arch: str, out_dir: Path, seed: int = 0, dtype: str = "float32", **overrides):
    """Save a random ``arch`` model (``hf_model``) with ``save_pretrained`` and return it."""
    model = hf_model(arch, seed, dtype, **overrides)
    model.save_pretrained(out_dir, safe_serialization=True)
    return model


def hf_logits(model, ids, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Float32 logits ``(L, V)`` of ``model`` for one sequence ``ids``.

    ``mask``: an additive ``(L, L)`` float attention mask (0 = attend).
    """
    import torch

    kw = {} if mask is None else {"attention_mask": torch.from_numpy(mask)[None, None]}
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(ids))[None], **kw).logits[0].float().numpy()
