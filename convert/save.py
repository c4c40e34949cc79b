"""Writing an mlx-lm model directory: sharded safetensors, index and config.

The safetensors writer needs NumPy only (a GGUF imports without MLX); MLX arrays
are accepted too and written the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

# mlx-lm's shard size; keeps any one file comfortably mappable.
MAX_SHARD_BYTES = 5 << 30

_ST_DTYPES = {np.dtype(k): v for k, v in (("float32", "F32"), ("float16", "F16"), ("float64", "F64"),
              ("uint32", "U32"), ("int32", "I32"), ("uint8", "U8"), ("int8", "I8"), ("uint16", "U16"),
              ("int16", "I16"), ("int64", "I64"), ("uint64", "U64"), ("bool", "BOOL"))}


@dataclass
class BF16:
    """A bfloat16 tensor held as its uint16 bit patterns (NumPy has no bfloat16)."""

    bits: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.bits.nbytes


def _as_numpy(a) -> tuple:
    """``(little-endian NumPy array, safetensors dtype)`` of a NumPy, BF16 or MLX array."""
    if isinstance(a, BF16):
        return np.ascontiguousarray(a.bits, dtype="<u2"), "BF16"
    if not isinstance(a, np.ndarray):  # an mx.array
        import mlx.core as mx

        if a.dtype == mx.bfloat16:
            return np.array(a.view(mx.uint16)), "BF16"
        a = np.array(a)
    if a.dtype not in _ST_DTYPES:
        raise ValueError(f"[convert] cannot write a tensor of dtype {a.dtype} to safetensors.")
    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")), _ST_DTYPES[a.dtype]


def save_safetensors(path: Union[str, Path], tensors: dict, metadata: dict) -> None:
    """Write ``tensors`` (name -> NumPy/BF16/MLX array) as one safetensors file."""
    arrays = {k: _as_numpy(v) for k, v in sorted(tensors.items())}
    header, start = {"__metadata__": metadata}, 0
    for name, (a, dt) in arrays.items():
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [start, start + a.nbytes]}
        start += a.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for a, _ in arrays.values():
            a.tofile(f)


def save_model_dir(
    out_dir: Union[str, Path], weights: dict, config: dict, *, progress: bool = True
) -> list:
    """Save ``weights`` (name -> NumPy, ``BF16`` or MLX array) and ``config`` into ``out_dir``.

    One ``model.safetensors`` when it fits in a shard, else
    ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``.

    Returns:
        The written weight file paths.
    """
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
        save_safetensors(out_dir / name, shard, metadata={"format": "mlx"})
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
