"""GGUF container reader: header, metadata and tensor table, NumPy only.

``read_gguf`` parses a GGUF file (v2/v3, little-endian) into a ``GGUFInfo``
without reading tensor data. Every malformed or truncated input is a
``ValueError`` that names the file.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
_MAX_ARRAY_NESTING = 8

# ggml type id -> (name, elements per block, bytes per block), from ggml.h.
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}

# GGUF metadata value types: struct format of scalars, NumPy dtype for arrays.
_SCALAR_FMT = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?",
               10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    """One tensor entry of a GGUF file.

    ``shape`` is in GGUF order (ne0, the contiguous row length, first), i.e.
    the reverse of the NumPy shape. ``offset`` is relative to ``data_offset``.
    ``nbytes`` is None for a ggml type this reader does not know.
    """

    name: str
    type_name: str
    shape: tuple
    offset: int
    nbytes: Optional[int] = None


@dataclass
class GGUFInfo:
    """Parsed GGUF header: version, metadata, tensor table and data start."""

    path: Path
    version: int
    metadata: dict = field(default_factory=dict)
    tensors: list = field(default_factory=list)
    data_offset: int = 0
    alignment: int = DEFAULT_ALIGNMENT


class _Cursor:
    """Bounds-checked little-endian reads, so a short file is a ValueError."""

    def __init__(self, buf: Any, size: int, path: Path):
        self.buf, self.size, self.path, self.pos = buf, size, path, 0

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if n < 0 or end > self.size:
            raise ValueError(
                f"{self.path}: GGUF file is truncated: reading {what} needs {n} bytes at "
                f"offset {self.pos} but the file has {self.size} bytes; re-download it."
            )
        data = self.buf[self.pos:end]  # a copy, so no view outlives the mmap
        self.pos = end
        return data

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        # Lenient decoding: a stray invalid byte in one token must not block a load.
        return self.take(self.scalar("Q", what), what).decode("utf-8", errors="replace")


def _read_value(cur: _Cursor, vtype: int, key: str, depth: int = 0) -> Any:
    """Read one metadata value of GGUF type ``vtype`` (arrays become lists)."""
    if vtype in _SCALAR_FMT:
        return cur.scalar(_SCALAR_FMT[vtype], f"value of {key!r}")
    if vtype == _STRING:
        return cur.string(f"value of {key!r}")
    if vtype != _ARRAY:
        raise ValueError(f"{cur.path}: metadata key {key!r} has unknown value type {vtype}.")
    if depth >= _MAX_ARRAY_NESTING:
        raise ValueError(f"{cur.path}: metadata key {key!r} nests arrays too deeply.")
    sub = cur.scalar("I", f"array type of {key!r}")
    count = cur.scalar("Q", f"array length of {key!r}")
    if sub in _SCALAR_FMT:
        # Bulk-decode numeric arrays (token types, scores: ~100k entries).
        fmt = _SCALAR_FMT[sub]
        dtype = np.dtype("u1" if fmt == "?" else "<" + fmt)
        raw = cur.take(count * dtype.itemsize, f"array {key!r}")
        arr = np.frombuffer(raw, dtype=dtype)
        return (arr != 0).tolist() if fmt == "?" else arr.tolist()
    if sub in (_STRING, _ARRAY):
        # Each element consumes >= 8 bytes, so a bogus count hits "truncated" quickly.
        return [_read_value(cur, sub, key, depth + 1) for _ in range(count)]
    raise ValueError(f"{cur.path}: metadata array {key!r} has unknown element type {sub}.")


def read_gguf(path: Union[str, Path]) -> GGUFInfo:
    """Parse a GGUF file's header, metadata and tensor table (no tensor data).

    Args:
        path: the ``.gguf`` file.

    Returns:
        A ``GGUFInfo``; metadata values are Python ints/floats/bools/strs or
        (nested) lists of them.

    Raises:
        ValueError: not a GGUF file (bad magic), an unsupported version, a
            malformed header, or a file truncated before its tensor data ends.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path} is not a GGUF file: it is empty.")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return _parse(_Cursor(mm, size, path))


def _parse(cur: _Cursor) -> GGUFInfo:
    path = cur.path
    magic = cur.buf[:4]
    if magic != GGUF_MAGIC:
        raise ValueError(
            f"{path} is not a GGUF file: expected magic {GGUF_MAGIC!r} at offset 0 but found "
            f"{bytes(magic)!r}."
        )
    cur.pos = 4
    version = cur.scalar("I", "the version")
    if version not in SUPPORTED_VERSIONS:
        swapped = struct.unpack(">I", struct.pack("<I", version))[0]
        hint = ""
        if swapped in SUPPORTED_VERSIONS:
            hint = " (a big-endian file; only little-endian is supported)"
        raise ValueError(
            f"{path}: unsupported GGUF version {version}{hint}; supported versions are "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))}. Re-export it with a current llama.cpp."
        )
    n_tensors = cur.scalar("Q", "the tensor count")
    n_kv = cur.scalar("Q", "the metadata count")
    info = GGUFInfo(path=path, version=version)
    for _ in range(n_kv):
        key = cur.string("a metadata key")
        vtype = cur.scalar("I", f"the type of {key!r}")
        if key in info.metadata:
            raise ValueError(f"{path}: metadata key {key!r} appears twice.")
        info.metadata[key] = _read_value(cur, vtype, key)

    raw_tensors = []
    for _ in range(n_tensors):
        name = cur.string("a tensor name")
        n_dims = cur.scalar("I", f"the rank of {name!r}")
        if not 1 <= n_dims <= 4:  # GGML_MAX_DIMS
            raise ValueError(f"{path}: tensor {name!r} has invalid rank {n_dims}.")
        shape = tuple(cur.scalar("Q", f"the shape of {name!r}") for _ in range(n_dims))
        type_id = cur.scalar("I", f"the type of {name!r}")
        offset = cur.scalar("Q", f"the offset of {name!r}")
        raw_tensors.append((name, shape, type_id, offset))

    alignment = info.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if type(alignment) is not int or alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"{path}: general.alignment must be a power of two, got {alignment!r}.")
    info.alignment = alignment
    info.data_offset = -(-cur.pos // alignment) * alignment
    for name, shape, type_id, offset in raw_tensors:
        tname, block, bsize = GGML_TYPES.get(type_id, (f"TYPE_{type_id}", 0, 0))
        nbytes = None
        if block:
            if shape[0] % block:
                raise ValueError(
                    f"{path}: tensor {name!r} of type {tname} has row length {shape[0]}, "
                    f"not a multiple of its block size {block}."
                )
            nbytes = math.prod(shape) // block * bsize
            end = info.data_offset + offset + nbytes
            if end > cur.size:
                raise ValueError(
                    f"{path}: GGUF file is truncated: tensor {name!r} ({tname}, shape {list(shape)}) "
                    f"ends at byte {end} but the file has {cur.size} bytes; re-download it."
                )
        if offset % alignment:
            raise ValueError(
                f"{path}: tensor {name!r} starts at data offset {offset}, not a multiple of the "
                f"file's alignment {alignment}; the file is corrupt — re-download or re-export it."
            )
        info.tensors.append(TensorInfo(name, tname, shape, offset, nbytes))
    _check_no_overlap(info)
    return info


def _check_no_overlap(info: GGUFInfo) -> None:
    """Refuse tensors whose data ranges overlap (two tensors reading the same bytes)."""
    spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in info.tensors if t.nbytes)
    for (_, end, name), (start, _, nxt) in zip(spans, spans[1:]):
        if start < end:
            raise ValueError(
                f"{info.path}: tensors {name!r} and {nxt!r} overlap (data bytes {start}..{end} "
                "belong to both); the file is corrupt — re-download or re-export it."
            )
