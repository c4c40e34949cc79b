"""NumPy backend numbers against Hugging Face transformers (and mx.dequantize).

Every model is a tiny random one from ``hf_models`` (fp32 unless stated), with
every parameter redrawn at std 0.2 so the logits are large, saved with
``save_pretrained`` and loaded by ``mlx_synapse.backends.numpy.load_model``.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from mlx_synapse.backends.numpy import KVCache, RotatingKVCache, generate_step, load_model  # noqa: E402

from .hf_models import ARCHS, COMMON, hf_logits, hf_model  # noqa: E402

ATOL = 1e-4
VOCAB = COMMON["vocab_size"]
SEQ = 17
# No special tokens: HF's generate must not stop early where ours does not.
NO_SPECIALS = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)


def _build(arch: str, seed: int = 0, **overrides):
    return hf_model(arch, seed, std=0.2, **{**NO_SPECIALS, **overrides})


def _load(hf, path):
    hf.save_pretrained(path, safe_serialization=True)
    return load_model(path)


@pytest.fixture(scope="module", params=list(ARCHS))
def pair(request, tmp_path_factory):
    hf = _build(request.param)
    return request.param, hf, _load(hf, tmp_path_factory.mktemp(request.param))


def _ids(seed=1, n=SEQ):
    return np.random.default_rng(seed).integers(0, VOCAB, n)


# ----------------------------------------------------------------- forward
def test_full_forward_matches_hf(pair):
    _, hf, model = pair
    ids = _ids()
    ours = model(ids)
    assert ours.dtype == np.float32 and ours.shape == (SEQ, VOCAB)
    np.testing.assert_allclose(ours, hf_logits(hf, ids), atol=ATOL, rtol=0)
    np.testing.assert_allclose(model(ids[None]), ours, atol=1e-6, rtol=0)  # (1, L) input too


def test_cached_decode_matches_full_forward(pair):
    _, _, model = pair
    ids = _ids()
    full = model(ids)
    cache = model.make_cache()
    steps = np.stack([model(ids[i : i + 1], cache)[0] for i in range(SEQ)])
    np.testing.assert_allclose(steps, full, atol=ATOL, rtol=0)
    # chunked prefill with forward_last / prefill gives the same numbers
    cache = model.make_cache()
    model.prefill(ids[:5], cache)
    np.testing.assert_allclose(model(ids[5:12], cache), full[5:12], atol=ATOL, rtol=0)
    np.testing.assert_allclose(model.forward_last(ids[12:], cache), full[-1], atol=ATOL, rtol=0)
    assert cache[0].offset == SEQ


def test_greedy_generation_matches_hf(pair):
    _, hf, model = pair
    prompt = _ids(seed=2, n=9)
    with torch.no_grad():
        out = hf.generate(
            torch.from_numpy(prompt)[None],
            max_new_tokens=32,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    ref = out[0, len(prompt) :].tolist()
    ours = [t for t, _ in generate_step(prompt.tolist(), model, max_tokens=32)]
    assert ours == ref
    # small prefill steps do not change anything
    ours2 = [t for t, _ in generate_step(prompt.tolist(), model, max_tokens=32, prefill_step_size=4)]
    assert ours2 == ref


def test_generate_step_yields_logprobs(tmp_path):
    model = _load(_build("llama"), tmp_path)
    prompt = _ids(seed=3, n=6)
    full = model(prompt)
    steps = list(generate_step(prompt, model, max_tokens=3))
    assert len(steps) == 3
    tok, lp = steps[0]
    assert lp.dtype == np.float32 and lp.shape == (VOCAB,)
    np.testing.assert_allclose(np.exp(lp.astype(np.float64)).sum(), 1.0, atol=1e-5)
    ref = full[-1] - np.log(np.exp(full[-1].astype(np.float64)).sum())
    np.testing.assert_allclose(lp, ref, atol=ATOL)
    assert tok == int(np.argmax(full[-1]))


# ------------------------------------------------------- checkpoint formats
def _header(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n])


def _saved_in(hf, dtype, path):
    """Save ``hf`` with weights cast to ``dtype``; return an fp32 HF model holding
    exactly those rounded weights (fp32 buffers such as rope inv_freq untouched)."""
    buffers = {k: b.clone() for k, b in hf.named_buffers()}  # rope inv_freq stays fp32
    rounded = {k: v.to(dtype).to(torch.float32) for k, v in hf.state_dict().items()}
    hf.to(dtype).save_pretrained(path, safe_serialization=True)
    hf.to(torch.float32)
    hf.load_state_dict(rounded)
    with torch.no_grad():
        for k, b in hf.named_buffers():
            b.copy_(buffers[k])
    return hf


@pytest.mark.parametrize("arch,dtype,st_dtype", [("qwen3", torch.bfloat16, "BF16"), ("llama", torch.float16, "F16")],
                         ids=["bf16", "fp16"])
def test_half_precision_checkpoint(tmp_path, arch, dtype, st_dtype):
    """bf16/fp16 on disk is widened to float32 exactly, so against an fp32 HF
    model holding the same rounded weights (fp32 math on both sides) the
    tolerance stays 1e-4 (vs the original fp32 weights it would be ~1e-1 for bf16)."""
    ref = _saved_in(_build(arch), dtype, tmp_path)
    header = _header(tmp_path / "model.safetensors")
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {st_dtype}
    model = load_model(tmp_path)
    ids = _ids()
    np.testing.assert_allclose(model(ids), hf_logits(ref, ids), atol=ATOL, rtol=0)


def test_sharded_checkpoint(tmp_path):
    hf = _build("llama")
    hf.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    model = load_model(tmp_path)
    ids = _ids()
    np.testing.assert_allclose(model(ids), hf_logits(hf, ids), atol=ATOL, rtol=0)


# --------------------------------------------------------------- quantized
QUANT_CFG = {
    "group_size": 32,
    "bits": 4,
    "mode": "affine",
    "model.embed_tokens": {"group_size": 32, "bits": 8},
    "model.layers.0.mlp.down_proj": {"group_size": 64, "bits": 2},
    "model.layers.1.mlp.down_proj": {"group_size": 128, "bits": 8},
}


@pytest.mark.parametrize("tied", [True, False])
def test_quantized_model_matches_dequantized_reference(tmp_path, tied):
    mx = pytest.importorskip("mlx.core")
    from safetensors.numpy import save_file

    # down_proj's input width must split into QUANT_CFG's groups of 64 and 128.
    hf = _build("llama_tied" if tied else "llama", intermediate_size=128)
    sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    if tied:
        sd.pop("lm_head.weight", None)
    out, ref_sd = {}, {}
    for name, w in sd.items():
        prefix = name[: -len(".weight")]
        quantize = w.ndim == 2
        if quantize:
            over = QUANT_CFG.get(prefix, {})
            gs, bits = over.get("group_size", 32), over.get("bits", 4)
            wq, s, b = mx.quantize(mx.array(w), group_size=gs, bits=bits)
            s16, b16 = s.astype(mx.float16), b.astype(mx.float16)  # as mlx-lm stores them
            out[name] = np.array(wq)
            out[prefix + ".scales"] = np.array(s16)
            out[prefix + ".biases"] = np.array(b16)
            deq = mx.dequantize(wq, s16.astype(mx.float32), b16.astype(mx.float32), group_size=gs, bits=bits)
            ref_sd[name] = torch.from_numpy(np.array(deq))
        else:
            out[name] = w
            ref_sd[name] = torch.from_numpy(w)
    save_file(out, str(tmp_path / "model.safetensors"))
    cfg = json.loads(hf.config.to_json_string())
    cfg["quantization"] = QUANT_CFG
    (tmp_path / "config.json").write_text(json.dumps(cfg))

    model = load_model(tmp_path)
    if tied:
        ref_sd["lm_head.weight"] = ref_sd["model.embed_tokens.weight"]
    hf.load_state_dict(ref_sd, strict=False)
    ids = _ids()
    ref = hf_logits(hf, ids)
    model.use_engine(False)  # the float32 path: the dequantized weights exactly
    np.testing.assert_allclose(model(ids), ref, atol=ATOL, rtol=0)
    # the compiled engine's prefill on the codes (16-bit activations; test_prefill_gemm's bound)
    model.use_engine(True)
    if model.engine is not None:
        assert np.abs(model(ids) - ref).max() <= 2.5e-3 * np.abs(ref).max()


# ----------------------------------------------------------- rotating cache
def _window_mask(n: int, window: int, keep: int = 4) -> np.ndarray:
    """Query p attends t <= p with t < keep or t > p - (window - keep)."""
    p = np.arange(n)[:, None]
    t = np.arange(n)[None, :]
    ok = (t <= p) & ((t < keep) | (t > p - (window - keep)))
    return np.where(ok, 0.0, np.finfo(np.float32).min).astype(np.float32)


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    hf = _build("llama", seed=5)
    return hf, _load(hf, tmp_path_factory.mktemp("llama_rot"))


def test_rotating_cache_large_window_equals_plain(llama_pair):
    _, model = llama_pair
    ids = _ids(n=25)
    c_plain, c_rot = model.make_cache(), model.make_cache(max_kv_size=25)
    assert isinstance(c_plain[0], KVCache) and isinstance(c_rot[0], RotatingKVCache)
    a = np.concatenate([model(ids[:7], c_plain), *[model(ids[i : i + 1], c_plain) for i in range(7, 25)]])
    b = np.concatenate([model(ids[:7], c_rot), *[model(ids[i : i + 1], c_rot) for i in range(7, 25)]])
    # The plain cache's prefill takes the causal-block path (the engine's fused softmax, exp to
    # < 3e-7 relative), the rotating one NumPy's masked softmax: equal to float32 rounding.
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunks", [[1] * 30, [12, 1, 1, 1, 5, 1, 9], [3, 9, 7, 11], [30]])
def test_rotating_cache_small_window_matches_masked_forward(llama_pair, chunks):
    hf, model = llama_pair
    n, window = sum(chunks), 10
    ids = _ids(seed=7, n=n)
    ref = hf_logits(hf, ids, mask=_window_mask(n, window))
    cache = model.make_cache(max_kv_size=window)
    got, pos = [], 0
    for c in chunks:
        got.append(model(ids[pos : pos + c], cache))
        pos += c
    np.testing.assert_allclose(np.concatenate(got), ref, atol=ATOL, rtol=0)
    assert cache[0].offset == n and cache[0].size() == window
    # bounded memory: never more than the window is stored
    assert cache[0].keys.shape[1] <= window


def test_generate_with_max_kv_size(llama_pair):
    hf, model = llama_pair
    prompt = _ids(seed=8, n=14)
    window = 12
    toks = [t for t, _ in generate_step(prompt, model, max_tokens=6, max_kv_size=window, prefill_step_size=5)]
    # reference: greedy with the windowed mask over the growing sequence
    seq = list(prompt)
    for _ in range(6):
        logits = hf_logits(hf, seq, mask=_window_mask(len(seq), window))
        seq.append(int(np.argmax(logits[-1])))
    assert toks == seq[len(prompt) :]
