"""A small, dependency-free safetensors reader (NumPy only).

File layout: 8-byte little-endian header length ``N``, ``N`` bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``,
then the data block; offsets are relative to the start of the data block.

Tensors are memory-mapped; BF16 (which NumPy lacks) is widened to float32 by
shifting the raw 16 bits into the high half of a 32-bit word (exact).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Iterator, List

import numpy as np

# safetensors dtype tag -> NumPy dtype of the raw stored elements.
_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # widened to float32 on read
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}

_MAX_HEADER = 100 * 1024 * 1024  # the format's own limit


def bf16_to_float32(raw: np.ndarray) -> np.ndarray:
    """Exact bfloat16 -> float32 from the raw uint16 bit patterns."""
    return (raw.astype(np.uint32) << np.uint32(16)).view(np.float32)


def _fix_hint(path: Path) -> str:
    return (
        f"re-download or re-convert {path.name} (e.g. delete the directory and run the "
        "converter/`huggingface-cli download` again)"
    )


class SafetensorsFile:
    """One ``.safetensors`` file: parsed header plus a lazily memory-mapped body."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
        except OSError as e:
            raise ValueError(f"cannot read safetensors file {self.path}: {e}") from e
        if size < 8:
            raise ValueError(
                f"{self.path}: truncated safetensors file ({size} bytes, not even the 8-byte "
                f"header length); {_fix_hint(self.path)}"
            )
        with open(self.path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or n > _MAX_HEADER or 8 + n > size:
                raise ValueError(
                    f"{self.path}: garbled or truncated safetensors file (header claims {n} bytes, "
                    f"file has {size}); {_fix_hint(self.path)}"
                )
            raw = f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{self.path}: safetensors header is not valid JSON ({e}); {_fix_hint(self.path)}") from e
        if not isinstance(header, dict):
            raise ValueError(f"{self.path}: safetensors header is not a JSON object; {_fix_hint(self.path)}")
        self.metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + n
        data_size = size - self._data_start
        self._entries: Dict[str, tuple] = {}
        for name, info in header.items():
            try:
                dtype_tag = info["dtype"]
                shape = tuple(int(s) for s in info["shape"])
                begin, end = (int(x) for x in info["data_offsets"])
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(
                    f"{self.path}: malformed header entry for tensor {name!r}; {_fix_hint(self.path)}"
                ) from e
            if dtype_tag not in _DTYPES:
                raise ValueError(
                    f"{self.path}: tensor {name!r} has unsupported dtype {dtype_tag!r} "
                    f"(supported: {', '.join(_DTYPES)})"
                )
            nbytes = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype_tag].itemsize
            if begin < 0 or end < begin or end - begin != nbytes:
                raise ValueError(
                    f"{self.path}: tensor {name!r} header is inconsistent (shape {shape} "
                    f"{dtype_tag} needs {nbytes} bytes, offsets give {end - begin}); {_fix_hint(self.path)}"
                )
            if end > data_size:
                raise ValueError(
                    f"{self.path}: truncated safetensors file: tensor {name!r} ends at byte "
                    f"{self._data_start + end} but the file has only {size} bytes; {_fix_hint(self.path)}"
                )
            self._entries[name] = (dtype_tag, shape, begin, end)
        self._mm = None

    def keys(self) -> List[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def dtype_of(self, name: str) -> str:
        return self._entries[name][0]

    def shape_of(self, name: str) -> tuple:
        return self._entries[name][1]

    def _map(self) -> np.ndarray:
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._mm

    def get(self, name: str) -> np.ndarray:
        """The tensor as a NumPy array (read-only view of the file, BF16 as a float32 copy)."""
        dtype_tag, shape, begin, end = self._entries[name]
        dt = _DTYPES[dtype_tag]
        if end == begin:
            arr = np.zeros(shape, dtype=dt)
        else:
            buf = self._map()[self._data_start + begin : self._data_start + end]
            arr = np.frombuffer(buf, dtype=dt).reshape(shape)
        if dtype_tag == "BF16":
            return bf16_to_float32(arr)
        return arr

    def close(self) -> None:
        self._mm = None


class TensorStore:
    """All tensors of a model directory (one file or shards), looked up by name."""

    def __init__(self, files: List[SafetensorsFile], where: str):
        self.files = files
        self.where = where
        self._index: Dict[str, SafetensorsFile] = {}
        for f in files:
            for k in f.keys():
                self._index[k] = f

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def keys(self) -> Iterator[str]:
        return iter(self._index)

    def shape_of(self, name: str) -> tuple:
        return self._index[name].shape_of(name)

    def dtype_of(self, name: str) -> str:
        return self._index[name].dtype_of(name)

    def get(self, name: str) -> np.ndarray:
        try:
            f = self._index[name]
        except KeyError:
            raise ValueError(
                f"{self.where}: missing tensor {name!r}; the checkpoint is incomplete or was "
                "converted for a different architecture/config (re-convert the model)"
            ) from None
        return f.get(name)

    def close(self) -> None:
        for f in self.files:
            f.close()


def load_safetensors(path: str | os.PathLike) -> Dict[str, np.ndarray]:
    """Read every tensor of one file into a dict of (memory-mapped) arrays."""
    f = SafetensorsFile(path)
    return {k: f.get(k) for k in f.keys()}


def open_model_dir(model_dir: str | os.PathLike) -> TensorStore:
    """Open ``model.safetensors`` or the shards named by ``model.safetensors.index.json``."""
    d = Path(model_dir)
    index = d / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a valid safetensors index ({e}); re-download it") from e
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (d / n).exists()]
        if missing:
            raise ValueError(
                f"{d}: shard(s) {', '.join(missing)} listed in {index.name} are missing; "
                "download/convert the complete model"
            )
        paths = [d / n for n in names]
    else:
        paths = sorted(d.glob("model*.safetensors"))
        if not paths:
            paths = sorted(d.glob("*.safetensors"))
    if not paths:
        raise ValueError(f"{d}: no model*.safetensors weight files found; is this a converted model directory?")
    return TensorStore([SafetensorsFile(p) for p in paths], str(d))
