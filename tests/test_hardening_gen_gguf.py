"""GGUF hardening: corrupt tensor tables are refused (and nothing is cached for them)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from mlx_synapse.convert.gguf import convert_gguf, read_gguf

from .gguf_writer_util import Q, hf_tiny_model, write_hf_as_gguf


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    path, _ = write_hf_as_gguf(hf_tiny_model("llama"), d / "tiny.gguf", Q.Q8_0)
    return path


def _offset_field(data: bytes, name: str) -> int:
    """Byte position of tensor ``name``'s data-offset field in the tensor table."""
    key = struct.pack("<Q", len(name)) + name.encode()
    pos = data.index(key) + len(key)
    (n_dims,) = struct.unpack_from("<I", data, pos)
    return pos + 4 + 8 * n_dims + 4


def _patched(src: Path, dst: Path, name: str, new_offset) -> Path:
    data = bytearray(src.read_bytes())
    info = read_gguf(src)
    offsets = {t.name: t.offset for t in info.tensors}
    value = new_offset(offsets)
    struct.pack_into("<Q", data, _offset_field(bytes(data), name), value)
    dst.write_bytes(bytes(data))
    return dst


def test_overlapping_tensors_are_refused(tiny_gguf, tmp_path):
    # blk.0.attn_k.weight made to read attn_q's bytes: same size, same start.
    bad = _patched(tiny_gguf, tmp_path / "overlap.gguf", "blk.0.attn_k.weight",
                   lambda o: o["blk.0.attn_q.weight"])
    with pytest.raises(ValueError, match=r"tensors .* overlap .*corrupt — re-download or re-export it"):
        read_gguf(bad)
    with pytest.raises(ValueError, match="overlap"):
        convert_gguf(bad, tmp_path / "out", progress=False)


def test_misaligned_tensor_is_refused(tiny_gguf, tmp_path):
    bad = _patched(tiny_gguf, tmp_path / "misaligned.gguf", "blk.0.attn_k.weight",
                   lambda o: o["blk.0.attn_k.weight"] + 2)
    with pytest.raises(ValueError, match=r"'blk.0.attn_k.weight' starts at data offset \d+, not a multiple "
                                         r"of the file's alignment 32"):
        read_gguf(bad)


def test_nothing_is_cached_for_a_corrupt_gguf(tiny_gguf, tmp_path, monkeypatch):
    from mlx_synapse.loader import load

    monkeypatch.setenv("MLX_SYNAPSE_CACHE", str(tmp_path / "cache"))
    bad = _patched(tiny_gguf, tmp_path / "overlap.gguf", "blk.0.ffn_up.weight",
                   lambda o: o["blk.0.ffn_gate.weight"])
    for _ in range(2):  # the second try fails the same way: no bad conversion was kept
        with pytest.raises(ValueError, match="overlap"):
            load(str(bad), backend="numpy")
    gguf_cache = tmp_path / "cache" / "gguf"
    assert not gguf_cache.exists() or list(gguf_cache.iterdir()) == []


def test_good_file_still_reads(tiny_gguf):
    info = read_gguf(tiny_gguf)
    ends = sorted((t.offset, t.offset + t.nbytes) for t in info.tensors)
    assert all(a[1] <= b[0] for a, b in zip(ends, ends[1:]))
