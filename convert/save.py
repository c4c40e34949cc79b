"""Writing an mlx-lm model directory: sharded safetensors, index and config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

# mlx-lm's shard size; keeps any one file comfortably mappable.
MAX_SHARD_BYTES = 5 << 30


def save_model_dir(
    out_dir: Union[str, Path], weights: dict, config: dict, *, progress: bool = True
) -> list:
    """Save ``weights`` (name -> mx.array) and ``config`` into ``out_dir``.

    One ``model.safetensors`` when it fits in a shard, else
    ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``.

    Returns:
        The written weight file paths.
    """
    import mlx.core as mx
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards, current, size = [], {}, 0
    for name in sorted(weights):
        a = weights[name]
        if current and size + a.nbytes > MAX_SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[name] = a
        size += a.nbytes
    shards.append(current)
    paths, index = [], {}
    bar = tqdm(total=sum(a.nbytes for a in weights.values()), unit="B", unit_scale=True,
               desc="saving", disable=not progress)
    for i, shard in enumerate(shards, start=1):
        name = "model.safetensors" if len(shards) == 1 else f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        mx.save_safetensors(str(out_dir / name), shard, metadata={"format": "mlx"})
        bar.update(sum(a.nbytes for a in shard.values()))
        index.update({k: name for k in shard})
        paths.append(out_dir / name)
    bar.close()
    if len(shards) > 1:
        total = sum(a.nbytes for a in weights.values())
        (out_dir / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": index}, indent=2)
        )
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return paths
