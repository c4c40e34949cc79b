"""Converting K-quant / IQ4 / Q5 GGUFs and llama3 ``rope_freqs``: logits equal a dense reference model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
mx = pytest.importorskip("mlx.core")
torch = pytest.importorskip("torch")
from gguf import GGMLQuantizationType as Q  # noqa: E402

from mlx_synapse.convert.__main__ import main as convert_main  # noqa: E402
from mlx_synapse.kernels.affine import dequantize_numpy, quantize_numpy  # noqa: E402
from mlx_synapse.convert.gguf import convert_gguf, hf_tensor_name  # noqa: E402

from .gguf_writer_util import (  # noqa: E402
    TINY, hf_state_to_gguf_tensors, llama_metadata, llama_permute, tiny_tokenizer_metadata, write_gguf,
)
from .hf_models import hf_logits, hf_model  # noqa: E402

IDS = [1, 40, 200, 7, 99, 250, 3, 17, 120, 64, 5, 2]

# Largest |code x sub-block scale| of each type, so that a super-block scale of ~0.3 / this
# keeps random weights near transformers' init (and the logits finite and meaningful).
_CODE_RANGE = {"Q2_K": 45, "Q3_K": 128, "Q4_K": 945, "Q5_K": 1953, "Q6_K": 4096, "Q8_K": 127,
               "IQ4_NL": 127, "IQ4_XS": 4064, "Q5_0": 16, "Q5_1": 31, "Q4_0": 8, "Q4_1": 15, "Q8_0": 127}
_HALVES = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
           "IQ4_NL": (0,), "IQ4_XS": (0,), "Q5_0": (0,), "Q5_1": (0, 2), "Q4_0": (0,), "Q4_1": (0, 2),
           "Q8_0": (0,)}


def random_blocks(rng, rows: int, row_len: int, qtype: Q) -> np.ndarray:
    """Valid random ``qtype`` blocks for a ``(rows, row_len)`` matrix: random codes, moderate scales."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n = rows * row_len // block
    raw = rng.integers(0, 256, (n, size), dtype=np.uint8)
    scale = 0.3 / _CODE_RANGE[qtype.name]
    if qtype == Q.Q8_K:
        raw[:, 0:4] = (rng.uniform(0.5, 1, (n, 1)) * scale).astype(np.float32).view(np.uint8)
    for i, at in enumerate(_HALVES.get(qtype.name, ())):
        # The second field (dmin / m) is a shift: keep it small beside the scale.
        mag = scale * (1 if i == 0 else 0.02) * (1 if qtype.name not in ("Q4_1", "Q5_1") or i == 0 else 150)
        raw[:, at:at + 2] = (rng.uniform(0.5, 1, (n, 1)) * mag).astype(np.float16).view(np.uint8)
    return raw.reshape(rows, row_len // block * size)


def reference_dequantize(raw: np.ndarray, qtype: Q) -> np.ndarray:
    """``gguf.quants.dequantize``; it lacks Q8_K, whose ggml definition is ``d * q`` (fp32 d)."""
    if qtype != Q.Q8_K:
        return gguf.quants.dequantize(raw, qtype)
    blocks = raw.reshape(-1, 292)
    q = blocks[:, 4:260].view(np.int8).astype(np.float32)
    return (blocks[:, 0:4].copy().view(np.float32) * q).reshape(raw.shape[0], -1)


def _from_gguf_rows(w: np.ndarray, gguf_name: str, heads: int, kv_heads: int) -> np.ndarray:
    """Rows of a GGUF q/k matrix back in HF order (the inverse of ``llama_permute``, by index)."""
    n_head = {"attn_q": heads, "attn_k": kv_heads}.get(gguf_name.split(".")[-2])
    if n_head is None:
        return w
    idx = llama_permute(np.arange(w.shape[0]), n_head)  # gguf row i holds HF row idx[i]
    out = np.empty_like(w)
    out[idx] = w
    return out


def kquant_llama(tmp_path, types: dict, default: Q, seed: int = 0, arch: str = "llama"):
    """A tiny HF llama (or ``arch``) whose every matrix is random ``types``/``default`` blocks, and its GGUF.

    ``types`` maps a part of a GGUF name (``ffn_down``, ``output``) to a type. The HF model holds the
    reference (``gguf.quants``) dequantization of the same blocks, so logits must match.

    Returns:
        ``(model, gguf path, {type: tensor count}, {HF matrix name: type})``.
    """
    model = hf_model(arch, bias_std=0.5,
                     **dict(TINY, hidden_size=256, intermediate_size=512, tie_word_embeddings=False))
    c = model.config
    rng = np.random.default_rng(seed)
    tensors, used, kinds = [], {}, {}
    state = model.state_dict()
    permute = arch == "llama"  # llama.cpp interleaves q/k rows for llama only
    for gname, raw, qtype in hf_state_to_gguf_tensors(state, c.num_attention_heads, c.num_key_value_heads, Q.F32,
                                                      permute=permute):
        if raw.ndim == 2:
            qtype = next((t for part, t in types.items() if part in gname.split(".")), default)
            raw = random_blocks(rng, raw.shape[0], raw.shape[1], qtype)
            ref = reference_dequantize(raw, qtype)
            with torch.no_grad():
                hf = _from_gguf_rows(ref, gname, c.num_attention_heads, c.num_key_value_heads) if permute else ref
                state[hf_tensor_name(gname)].copy_(torch.from_numpy(hf))
            used[qtype.name] = used.get(qtype.name, 0) + 1
            kinds[hf_tensor_name(gname)] = qtype.name
        tensors.append((gname, raw, qtype))
    meta = {**llama_metadata(hidden=256, heads=c.num_attention_heads, kv_heads=c.num_key_value_heads,
                             layers=c.num_hidden_layers, ff=512, ctx=c.max_position_embeddings, arch=arch),
            **tiny_tokenizer_metadata()}
    return model, write_gguf(tmp_path / "k.gguf", meta, tensors, arch=arch), used, kinds


MIXES = {
    # llama.cpp's Q4_K_M recipe: Q6_K for the embedding, attn_v and ffn_down, Q4_K elsewhere.
    "Q4_K_M": ({"token_embd": Q.Q6_K, "attn_v": Q.Q6_K, "ffn_down": Q.Q6_K}, Q.Q4_K),
    "Q5_K_M+Q3_K+Q2_K": ({"attn_q": Q.Q3_K, "attn_k": Q.Q2_K, "ffn_down": Q.Q6_K}, Q.Q5_K),
    "IQ4_XS+IQ4_NL+Q8_K+Q5_0/1+Q8_0": ({"token_embd": Q.Q8_0, "attn_q": Q.IQ4_NL, "attn_k": Q.Q5_0,
                                        "attn_v": Q.Q5_1, "output": Q.Q8_K}, Q.IQ4_XS),
}


PACKED_BITS = {"Q4_K": 4, "Q3_K": 8, "Q5_K": 8, "Q5_0": 8, "Q5_1": 8, "Q8_K": 8, "IQ4_NL": 8, "IQ4_XS": 8,
               "Q8_0": 8}


@pytest.mark.parametrize("mix,arch", [(m, "llama") for m in MIXES] + [("Q4_K_M", "qwen2")])
def test_kquant_gguf_logits_equal_dense_reference(tmp_path, mix, arch):
    loader = pytest.importorskip("mlx_synapse.loader")
    model, path, used, kinds = kquant_llama(tmp_path, *MIXES[mix], arch=arch)
    lines = []
    out = convert_gguf(path, tmp_path / "out", dtype="float32", progress=False, log=lines.append)
    config = json.loads((out / "config.json").read_text())
    w = mx.load(str(out / "model.safetensors"))
    state = model.state_dict()
    for name, n in used.items():
        if name in PACKED_BITS:  # blocks kept: an MLX affine triple, group 32
            last_bit = " (float32 rounding only)" if name in ("IQ4_XS", "Q8_K") else " exactly"
            outcome = f"{PACKED_BITS[name]}-bit affine (group 32), blocks kept{last_bit}"
        else:
            outcome = "float32, dequantized"
        assert f"{name} -> {outcome} ({n} tensor{'s' if n > 1 else ''})" in lines
    assert f"F32 -> float32 ({5 if arch == 'llama' else 11} tensors)" in lines  # norms (and qwen2's biases)
    assert ("quantization" in config) == any(t in PACKED_BITS for t in used)
    # Every matrix holds exactly the reference values, packed or not (Q8_K/IQ4_XS: to float32 rounding).
    for hf_name, ref in state.items():
        if ref.ndim != 2 or (hf_name == "lm_head.weight" and config["tie_word_embeddings"]):
            continue
        module = hf_name[: -len(".weight")]
        if module + ".scales" in w:
            q = config["quantization"].get(module, config["quantization"])
            got = np.array(mx.dequantize(w[hf_name], w[module + ".scales"], w[module + ".biases"],
                                         group_size=q["group_size"], bits=q["bits"]))
        else:
            got = np.array(w[hf_name])
        # An affine IQ4_XS/Q8_K weight is scale * code + bias: float32 rounding of the product.
        atol = 2**-20 * np.abs(ref.numpy()).max() if kinds[hf_name] in ("IQ4_XS", "Q8_K") else 0
        np.testing.assert_allclose(got, ref.numpy(), rtol=0, atol=atol, err_msg=hf_name)
    ours, _ = loader.load_model(out)
    got = np.array(ours(mx.array(IDS)[None]))[0]
    ref = hf_logits(model, IDS)
    assert np.isfinite(ref).all() and np.abs(ref).max() > 0.5  # non-trivial logits
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-4 * np.abs(ref).max())
    if mix == "Q4_K_M" and arch == "llama":  # the directory (4-bit Q4_K blocks, float Q6_K) loads in mlx-lm
        mlx_lm_utils = pytest.importorskip("mlx_lm.utils")
        theirs, _ = mlx_lm_utils.load_model(out)
        np.testing.assert_allclose(np.array(theirs(mx.array(IDS)[None]))[0], got, rtol=0,
                                   atol=2e-4 * np.abs(ref).max())


def test_kquant_requantize_option(tmp_path):
    loader = pytest.importorskip("mlx_synapse.loader")
    model, path, _, _ = kquant_llama(tmp_path, *MIXES["Q4_K_M"])
    lines = []
    out = convert_gguf(path, tmp_path / "q", quantize=True, q_bits=8, q_group_size=64, dtype="float32",
                       progress=False, log=lines.append)
    quant = json.loads((out / "config.json").read_text())["quantization"]
    # 11 Q4_K matrices keep their blocks (4 bit, group 32, the default); the 5 Q6_K ones are re-quantized.
    assert (quant["bits"], quant["group_size"]) == (4, 32)
    assert quant["model.layers.0.mlp.down_proj"] == {"group_size": 64, "bits": 8, "mode": "affine"}
    assert "Q6_K -> 8-bit affine (group 64), dequantized, re-quantized (5 tensors)" in lines
    assert "Q4_K -> 4-bit affine (group 32), blocks kept exactly (11 tensors)" in lines
    ours, _ = loader.load_model(out)
    got = np.array(ours(mx.array(IDS)[None]))[0]
    before = hf_logits(model, IDS)
    # Exact reference: the HF model with the Q6_K matrices round-tripped through the same 8-bit,
    # group-64 affine grid (rows move whole under the q/k permutation).
    q6k = ("model.embed_tokens.weight", "self_attn.v_proj.weight", "mlp.down_proj.weight")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and name.endswith(q6k):
                p.copy_(torch.from_numpy(dequantize_numpy(*quantize_numpy(p.numpy(), 64, 8), 64, 8)))
    ref = hf_logits(model, IDS)
    assert np.abs(ref - before).max() > 1e-3  # the re-quantization is visible ...
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-4 * np.abs(ref).max())  # ... and accounted for
    with pytest.raises(ValueError, match="not both"):
        convert_gguf(path, tmp_path / "x", quantize=True, dequantize=True, progress=False)


def test_cli_names_each_source_type(tmp_path, capsys):
    _, path, _, _ = kquant_llama(tmp_path, *MIXES["Q4_K_M"])
    assert convert_main([str(path), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    # Q4_K keeps its blocks; their float32 scales d * sc round to float16 (<= 2**-11 relative).
    line = next(x for x in out.splitlines() if x.startswith("[convert] Q4_K -> "))
    assert line.startswith("[convert] Q4_K -> 4-bit affine (group 32), blocks kept, scales rounded to float16 "
                           "(relative error <= ") and line.endswith(") (11 tensors)")
    assert 0 < float(line.split("<= ")[1].split(")")[0]) <= 5e-4  # 2**-11, printed to 2 digits
    assert "[convert] Q6_K -> float16, dequantized (5 tensors)" in out
    lines = []
    convert_gguf(path, tmp_path / "bf", dtype="bfloat16", progress=False, log=lines.append)
    bf = next(x for x in lines if x.startswith("Q4_K -> "))
    assert bf.startswith("Q4_K -> 4-bit affine (group 32), blocks kept, scales rounded to bfloat16")
    assert 2**-11 < float(bf.split("<= ")[1].split(")")[0]) <= 4e-3  # 2**-8 at most
    assert "[convert] F32 -> float16 (5 tensors)" in out
    assert convert_main([str(path), "--out", str(tmp_path / "o2"), "-q", "--dequantize"]) == 2
    assert "contradict" in capsys.readouterr().err
    assert convert_main([str(path), "--out", str(tmp_path / "o3"), "-q", "--q-bits", "7", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_truncated_kquant_tensor_names_tensor_and_type(tmp_path):
    _, path, _, _ = kquant_llama(tmp_path, *MIXES["Q4_K_M"])
    data = path.read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(data[:-300])  # cuts into the last tensor
    with pytest.raises(ValueError, match=r"truncated: tensor '[\w.]+' \((Q4_K|Q6_K|F32), shape \[\d+(, \d+)?\]\)"):
        convert_gguf(bad, tmp_path / "out", progress=False)


# ----------------------------------------------------------------------------- llama3 rope_freqs


def llama_cpp_rope_freqs(head_dim, theta, scaling) -> np.ndarray:
    """The ``rope_freqs`` table llama.cpp's HF->GGUF conversion writes for a llama3 ``rope_scaling``."""
    factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / head_dim)
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


@pytest.mark.parametrize("theta,scaling", [
    (500000.0, dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)),
    (500000.0, dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64)),
    (10000.0, dict(factor=16.0, low_freq_factor=1.0, high_freq_factor=8.0, original_max_position_embeddings=300)),
])
def test_llama3_rope_freqs_match_hf_rope_scaling(tmp_path, theta, scaling):
    loader = pytest.importorskip("mlx_synapse.loader")
    scaling = dict(rope_type="llama3", **scaling)
    model = hf_model("llama", bias_std=0.5, **dict(TINY, hidden_size=64, rope_theta=theta, rope_scaling=dict(scaling),
                                                   max_position_embeddings=16384))
    c = model.config
    head_dim = c.hidden_size // c.num_attention_heads
    tensors = hf_state_to_gguf_tensors(model.state_dict(), c.num_attention_heads, c.num_key_value_heads, Q.F32)
    meta = {**llama_metadata(hidden=64, heads=c.num_attention_heads, kv_heads=c.num_key_value_heads,
                             layers=c.num_hidden_layers, ff=c.intermediate_size, ctx=131072, theta=theta),
            **tiny_tokenizer_metadata()}
    freqs = ("rope_freqs.weight", llama_cpp_rope_freqs(head_dim, theta, scaling), Q.F32)
    path = write_gguf(tmp_path / "l3.gguf", meta, tensors + [freqs])
    lines = []
    out = convert_gguf(path, tmp_path / "out", dtype="float32", progress=False, log=lines.append)
    config = json.loads((out / "config.json").read_text())
    assert config["rope_scaling"] == scaling  # the same four numbers HF's config.json holds
    assert any(line.startswith("rope_freqs.weight -> rope_scaling llama3") for line in lines)
    ours, _ = loader.load_model(out)
    got = np.array(ours(mx.array(IDS)[None]))[0]
    ref = hf_logits(model, IDS)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
    if scaling["original_max_position_embeddings"] < 8192:  # the scaling is visible at 12 tokens
        plain = convert_gguf(write_gguf(tmp_path / "plain.gguf", meta, tensors), tmp_path / "plain",
                             dtype="float32", progress=False)
        no_scaling = np.array(loader.load_model(plain)[0](mx.array(IDS)[None]))[0]
        assert np.abs(no_scaling - ref).max() > 1e-2


def test_numpy_backend_loads_a_kquant_gguf(tmp_path, monkeypatch, capfd):
    # load() converts a .gguf into its cache on first use and says what it did with each type.
    monkeypatch.setenv("MLX_SYNAPSE_CACHE", str(tmp_path / "cache"))
    from mlx_synapse.loader import load

    model, path, _, _ = kquant_llama(tmp_path, *MIXES["Q5_K_M+Q3_K+Q2_K"])
    np_model, _ = load(str(path), backend="numpy", dtype="float32")
    err = capfd.readouterr().err
    assert "[convert] Q5_K -> 8-bit affine (group 32), blocks kept, scales rounded to float16" in err
    assert "[convert] Q2_K -> float16, dequantized (2 tensors)" in err
    ref = hf_logits(model, IDS)
    # The compiled engine runs the kept blocks as 8-bit codes (Q2_K's attn_k stays float).
    packed = np_model.weights.layers[0].packed
    if packed is not None:
        assert packed["gu"] is not None and packed["down"] is None  # Q5_K gate/up; Q6_K down -> float
    for engine in (True, False):
        np_model.use_engine(engine)
        got = np.stack([np_model(np.array(IDS[: i + 1]))[-1] for i in (3, len(IDS) - 1)])
        # The cache stores float16 scales and weights: float16 rounding, not decoding errors.
        np.testing.assert_allclose(got, ref[[3, -1]], rtol=0, atol=1e-2 * np.abs(ref).max())


def test_unknown_type_id_and_float16_overflow_are_named(tmp_path):
    import struct

    _, path, _, _ = kquant_llama(tmp_path, *MIXES["Q4_K_M"])
    data = bytearray(path.read_bytes())
    name = b"blk.1.ffn_up.weight"
    pos = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    (n_dims,) = struct.unpack_from("<I", data, pos)
    struct.pack_into("<I", data, pos + 4 + 8 * n_dims, 99)  # the tensor's ggml type id
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"unsupported GGUF tensor type\(s\): blk.1.ffn_up.weight \(TYPE_99\)"):
        convert_gguf(bad, tmp_path / "o1", progress=False)
    # Blocks whose scale is fp16's largest value decode (Q6_K) or scale (Q4_K) beyond float16:
    # refused by name, never written as inf.
    rng = np.random.default_rng(0)
    meta = {**llama_metadata(hidden=256, heads=4, kv_heads=2, layers=1, ff=2), **tiny_tokenizer_metadata()}
    for qtype, at, msg in [(Q.Q6_K, 208, r"holds values up to .* --dtype bfloat16"),
                           (Q.Q4_K, 0, r"has block scales beyond float16's range; convert with --dtype float32")]:
        big = random_blocks(rng, 2, 256, qtype)
        big[0, at:at + 2] = np.array([60000.0], np.float16).view(np.uint8)
        p = write_gguf(tmp_path / f"big{qtype.name}.gguf", meta, [("blk.0.ffn_up.weight", big, qtype)])
        with pytest.raises(ValueError, match=rf"'blk.0.ffn_up.weight' \({qtype.name}\) {msg}"):
            convert_gguf(p, tmp_path / f"o{qtype.name}", progress=False)
        assert not (tmp_path / f"o{qtype.name}").exists()  # refused before anything is written
        out = convert_gguf(p, tmp_path / f"f{qtype.name}", dtype="float32", progress=False)
        w = mx.load(str(out / "model.safetensors"))
        if qtype == Q.Q4_K:
            got = mx.dequantize(*(w[f"model.layers.0.mlp.up_proj.{k}"] for k in ("weight", "scales", "biases")),
                                group_size=32, bits=4)
        else:
            got = w["model.layers.0.mlp.up_proj.weight"]
        np.testing.assert_array_equal(np.array(got), gguf.quants.dequantize(big, qtype))


def test_shape_mismatch_names_tensor_type_and_metadata(tmp_path):
    rng = np.random.default_rng(0)
    meta = {**llama_metadata(hidden=256, heads=4, kv_heads=2, layers=1, ff=512), **tiny_tokenizer_metadata()}
    q = ("blk.0.attn_q.weight", random_blocks(rng, 128, 256, Q.Q4_K), Q.Q4_K)  # 128 rows, 256 wanted
    p = write_gguf(tmp_path / "s.gguf", meta, [q])
    with pytest.raises(ValueError, match=r"tensor 'blk.0.attn_q.weight' \(Q4_K\) has shape \[256, 128\] but the "
                                         r"metadata \(hidden 256, 4 heads / 2 kv heads of 64.*needs \[256, 256\]"):
        convert_gguf(p, tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()
    late = ("blk.3.ffn_up.weight", random_blocks(rng, 512, 256, Q.Q6_K), Q.Q6_K)
    p = write_gguf(tmp_path / "l.gguf", meta, [late])
    with pytest.raises(ValueError, match=r"'blk.3.ffn_up.weight' \(Q6_K\) belongs to layer 3 but the metadata has 1"):
        convert_gguf(p, tmp_path / "o2", progress=False)
