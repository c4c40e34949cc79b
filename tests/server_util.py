"""The tiny model the server tests run on (random weights, the default model's tokenizer)
and the in-process live server."""

from __future__ import annotations

import shutil

from mlx_synapse.server.live import free_port, live  # noqa: F401

from .test_hardening_chat_cli import _tiny_llama


def tiny_model_dir(out, smollm2_dir):
    """A 2-layer random Llama (context 512) with SmolLM2's tokenizer and chat template."""
    _tiny_llama(out)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(smollm2_dir / f, out / f)
    return out
