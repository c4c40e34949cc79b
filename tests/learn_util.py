"""Tiny MLX Llama model directories (mlx-lm format) for the adapter and trainer tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mlx_synapse.models.llama import Model, ModelArgs

CONFIG = dict(
    model_type="llama", hidden_size=64, num_hidden_layers=3, intermediate_size=128, num_attention_heads=2,
    num_key_value_heads=1, vocab_size=256, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
    max_position_embeddings=512,
)


def tiny_model_dir(path: Path, *, bits: Optional[int] = 4, seed: int = 0, tokenizer_from: Optional[Path] = None,
                   **overrides) -> Path:
    """Write a random tiny Llama to ``path``; ``bits``: quantize the linears (group 32), None: float32.

    ``tokenizer_from``: copy that model directory's tokenizer and take its vocabulary size."""
    config = dict(CONFIG, **overrides)
    if tokenizer_from is not None:
        vocab = json.loads((Path(tokenizer_from) / "config.json").read_text())["vocab_size"]
        config["vocab_size"] = vocab
        for f in Path(tokenizer_from).glob("*"):
            if f.name.startswith(("tokenizer", "special_tokens")):
                path.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, path / f.name)
    mx.random.seed(seed)
    model = Model(ModelArgs.from_dict(config))
    # larger than nn.Linear's init so a random model's logits are not all alike
    model.update(nn.utils.tree_map(lambda a: a * 2.0, model.parameters()))
    if bits is not None:
        nn.quantize(model, group_size=32, bits=bits,
                    class_predicate=lambda p, m: isinstance(m, nn.Linear))
        config["quantization"] = {"group_size": 32, "bits": bits}
    path.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (path / "config.json").write_text(json.dumps(config))
    return path
