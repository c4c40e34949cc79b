"""GGUF hardening: corrupt tensor tables are refused (and nothing is cached for them)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
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


# --- Without MLX: a GGUF converts and generates on the NumPy backend -----------------

# Runs before the command: MLX (and mlx_lm) are not found, as on a machine without them.
_NO_MLX = """
import sys
class _Hide:  # wraps each finder: MLX is simply not found, as when it is not installed
    def __init__(self, finder):
        self.finder = finder
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("mlx", "mlx_lm"):
            return None
        return self.finder.find_spec(name, path, target)
    def __getattr__(self, attr):
        return getattr(self.finder, attr)
sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
import runpy
mod = sys.argv[1]
sys.argv = [mod] + sys.argv[2:]
try:
    runpy.run_module(mod, run_name="__main__", alter_sys=True)
finally:
    assert not any(m.split(".")[0] == "mlx" for m in sys.modules), "mlx was imported"
"""


def _no_mlx(tmp_path, module, *args):
    import os
    import subprocess
    import sys

    env = dict(os.environ, MLX_SYNAPSE_CACHE=str(tmp_path / "cache"), PYTHONIOENCODING="utf-8")
    env.pop("MLX_SYNAPSE_BACKEND", None)
    return subprocess.run([sys.executable, "-c", _NO_MLX, module, *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)


@pytest.mark.parametrize("qtype", [Q.Q4_1, Q.Q4_0, Q.Q8_0])
def test_gguf_generates_without_mlx(tmp_path, qtype):
    from mlx_synapse.loader import load
    from mlx_synapse.generate import generate

    path, _ = write_hf_as_gguf(hf_tiny_model("llama"), tmp_path / "tiny.gguf", qtype)
    r = _no_mlx(tmp_path, "mlx_synapse.generate", "--model", str(path), "-p", "hello", "-m", "4",
                "--no-chat-template", "--verbose")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "[backend: numpy;" in r.stderr  # auto picked NumPy
    # The same text as this process (with MLX present) gets on the NumPy backend.
    model, tok = load(str(path), backend="numpy")
    assert r.stdout.startswith(generate(model, tok, "hello", max_tokens=4) + "\n")


def test_mlx_only_features_say_pip_install_mlx(tmp_path):
    from .hf_models import build_hf_model

    path, _ = write_hf_as_gguf(hf_tiny_model("llama"), tmp_path / "tiny.gguf", Q.Q8_0)
    r = _no_mlx(tmp_path, "mlx_synapse.generate", "--model", str(path), "-p", "hi", "--backend", "mlx")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "pip install" in r.stderr and "mlx" in r.stderr
    build_hf_model("llama", tmp_path / "hf")
    r = _no_mlx(tmp_path, "mlx_synapse.convert", str(tmp_path / "hf"), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "pip install mlx" in r.stderr
    r = _no_mlx(tmp_path, "mlx_synapse.convert", str(path), "--out", str(tmp_path / "g"), "--no-progress")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q8_0])
def test_numpy_blocks_equal_mlx_gguf_loader(tmp_path, qtype):
    mx = pytest.importorskip("mlx.core")
    from mlx_synapse.convert.gguf_blocks import quant_triple

    path, _ = write_hf_as_gguf(hf_tiny_model("llama"), tmp_path / "t.gguf", qtype)
    info = read_gguf(path)
    raw = mx.load(str(path))
    n = 0
    for t in info.tensors:
        if t.type_name != qtype.name:
            continue
        base = t.name[: -len(".weight")]
        ours = quant_triple(path, info.data_offset + t.offset, t.type_name, t.shape)
        for a, b in zip(ours, (raw[t.name], raw[base + ".scales"], raw[base + ".biases"])):
            assert a.shape == b.shape and a.tobytes() == np.array(b).astype(a.dtype).tobytes(), t.name
        n += 1
    assert n >= 7


@pytest.mark.parametrize("key,value,message", [
    ("llama.attention.head_count", 0, "'llama.attention.head_count' must be a positive integer but is 0"),
    ("llama.block_count", 0, "'llama.block_count' must be a positive integer but is 0"),
    ("llama.embedding_length", "abc", "'llama.embedding_length' must be a positive integer but is 'abc'"),
    ("llama.attention.head_count_kv", 3, "num_key_value_heads=3 does not divide num_attention_heads=4"),
])
def test_bad_gguf_hyper_parameters_are_one_clear_error(tmp_path, key, value, message):
    from .gguf_writer_util import tiny_gguf_metadata, write_gguf

    model = hf_tiny_model("llama")
    _, tensors = write_hf_as_gguf(model, tmp_path / "good.gguf", Q.F16)
    meta = tiny_gguf_metadata(model.config)
    meta[key] = value
    bad = write_gguf(tmp_path / "bad.gguf", meta, tensors)
    with pytest.raises(ValueError) as e:
        convert_gguf(bad, tmp_path / "out", progress=False)
    assert message in str(e.value) and str(bad) in str(e.value)
    assert not (tmp_path / "out").exists()
