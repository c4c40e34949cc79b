"""GGUF container reader: round trips against the ``gguf`` package, truncated and corrupted files."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf import GGUFValueType as V  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mlx_synapse.convert.gguf_reader import GGML_TYPES, read_gguf  # noqa: E402

from .gguf_writer_util import make_tensors, metadata_entries, metadata_keys, tensor_specs, write_gguf  # noqa: E402


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(metadata=st.dictionaries(metadata_keys, metadata_entries, max_size=6), specs=tensor_specs,
       alignment=st.sampled_from([None, 8, 64]), seed=st.integers(0, 2**16))
def test_reader_roundtrip(metadata, specs, alignment, seed):
    tensors = make_tensors(specs, seed)
    with tempfile.TemporaryDirectory() as d:
        path = write_gguf(Path(d) / "m.gguf", metadata, tensors, arch="testarch", alignment=alignment)
        info = read_gguf(path)
        blob = path.read_bytes()
    expected = {k: v[0] for k, v in metadata.items()}
    expected["general.architecture"] = "testarch"
    if alignment is not None:
        expected["general.alignment"] = alignment
    assert info.version == 3
    assert info.metadata == expected
    assert info.alignment == (alignment or 32)
    assert info.data_offset % info.alignment == 0
    assert [t.name for t in info.tensors] == [t[0] for t in tensors]
    for ti, (name, raw, qtype) in zip(info.tensors, tensors):
        assert ti.type_name == qtype.name
        shape = raw.shape
        if raw.dtype == np.uint8:  # quantized / BF16 data is stored as bytes
            shape = gguf.quants.quant_shape_from_byte_shape(raw.shape, qtype)
        assert ti.shape == tuple(reversed(shape))  # GGUF order: ne0 first
        start = info.data_offset + ti.offset
        assert ti.nbytes == raw.nbytes
        assert blob[start:start + ti.nbytes] == raw.tobytes()


def test_ggml_type_table_matches_gguf_package():
    for type_id, (name, block, size) in GGML_TYPES.items():
        qtype = Q(type_id)
        assert qtype.name == name
        assert gguf.GGML_QUANT_SIZES[qtype] == (block, size)


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory):
    meta = {"a.str": "héllo", "a.arr": ["x", "yy", "zzz"], "a.num": (7, V.UINT64), "a.f": 0.5,
            "a.ints": ([1, 2, 3], V.ARRAY, V.INT32)}
    tensors = make_tensors([(Q.Q8_0, 2, 1), (Q.F32, 3, 1), (Q.Q4_1, 1, 2)], seed=1)
    return write_gguf(tmp_path_factory.mktemp("small") / "s.gguf", meta, tensors)


def _needed_bytes(path):
    info = read_gguf(path)
    return info, max(info.data_offset + t.offset + t.nbytes for t in info.tensors)


def test_truncation_everywhere_in_header_is_value_error(small_gguf, tmp_path):
    info, needed = _needed_bytes(small_gguf)
    blob = small_gguf.read_bytes()
    cut_file = tmp_path / "cut.gguf"
    for cut in list(range(0, info.data_offset + 1)) + [needed - 1]:
        cut_file.write_bytes(blob[:cut])
        with pytest.raises(ValueError, match="truncated|not a GGUF"):
            read_gguf(cut_file)
    cut_file.write_bytes(blob[:needed])  # trailing padding may go: still complete
    assert read_gguf(cut_file).metadata == info.metadata


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frac=st.floats(0, 1, exclude_max=True))
def test_random_truncation_is_value_error(small_gguf, frac):
    _, needed = _needed_bytes(small_gguf)
    cut = int(frac * needed)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "cut.gguf"
        p.write_bytes(small_gguf.read_bytes()[:cut])
        with pytest.raises(ValueError, match="truncated|not a GGUF"):
            read_gguf(p)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_bytes_parse_or_value_error(small_gguf, data):
    blob = bytearray(small_gguf.read_bytes())
    info = read_gguf(small_gguf)
    for _ in range(data.draw(st.integers(1, 4))):
        blob[data.draw(st.integers(4, info.data_offset - 1))] = data.draw(st.integers(0, 255))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "bad.gguf"
        p.write_bytes(bytes(blob))
        try:
            read_gguf(p)
        except ValueError:
            pass  # any other exception type fails the test


def test_bad_magic_and_version(tmp_path, small_gguf):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(ValueError, match=r"not a GGUF file.*b'PK\\x03\\x04'") as e:
        read_gguf(p)
    assert str(p) in str(e.value)
    p.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_gguf(p)
    blob = small_gguf.read_bytes()
    p.write_bytes(blob[:4] + struct.pack("<I", 1) + blob[8:])
    with pytest.raises(ValueError, match="unsupported GGUF version 1"):
        read_gguf(p)
    p.write_bytes(blob[:4] + struct.pack(">I", 3) + blob[8:])
    with pytest.raises(ValueError, match="big-endian"):
        read_gguf(p)
