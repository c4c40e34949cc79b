"""NumPy backend: numbers against Hugging Face transformers (and mx.dequantize).

Every model here is tiny and random (fp32 unless stated), saved with
``save_pretrained`` into a temporary directory and loaded by
``mlx_synapse.backends.numpy.load_model``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mlx_synapse.backends.numpy import (  # noqa: E402
    KVCache,
    RotatingKVCache,
    generate_step,
    load_model,
    make_logits_processors,
    make_sampler,
)
from mlx_synapse.backends.numpy.sample import allowed_tokens  # noqa: E402

ATOL = 1e-4
VOCAB = 128
SEQ = 17

COMMON = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=VOCAB,
    rms_norm_eps=1e-5,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)

ARCHS = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", dict(tie_word_embeddings=False)),
    "llama_tied": ("LlamaForCausalLM", "LlamaConfig", dict(tie_word_embeddings=True, rope_theta=500.0)),
    "llama3_rope": (
        "LlamaForCausalLM",
        "LlamaConfig",
        dict(
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
    ),
    "llama_linear_rope": (
        "LlamaForCausalLM",
        "LlamaConfig",
        dict(rope_scaling={"rope_type": "linear", "factor": 4.0}, attention_bias=True, mlp_bias=True),
    ),
    "mistral": ("MistralForCausalLM", "MistralConfig", dict(sliding_window=None)),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", dict(tie_word_embeddings=False)),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", dict(head_dim=32, tie_word_embeddings=True)),
    "phi3": ("Phi3ForCausalLM", "Phi3Config", dict(num_key_value_heads=4)),
    "phi3_partial_rotary": ("Phi3ForCausalLM", "Phi3Config", dict(partial_rotary_factor=0.5, tie_word_embeddings=True)),
}


def _randomize(model, seed: int = 0, std: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            if "norm" in name:
                p.copy_(1.0 + noise)
            else:
                p.copy_(noise)
    return model


def _build_hf(arch: str, seed: int = 0):
    model_cls, cfg_cls, extra = ARCHS[arch]
    kw = {**COMMON, **extra}
    cfg = getattr(transformers, cfg_cls)(**kw)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(cfg)
    return _randomize(model, seed).eval()


@pytest.fixture(scope="module", params=list(ARCHS))
def pair(request, tmp_path_factory):
    hf = _build_hf(request.param)
    d = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(d, safe_serialization=True)
    return request.param, hf, load_model(d)


def _ids(seed=1, n=SEQ):
    return np.random.default_rng(seed).integers(0, VOCAB, n)


def _hf_logits(hf, ids, mask=None):
    with torch.no_grad():
        kw = {}
        if mask is not None:
            kw["attention_mask"] = torch.from_numpy(mask)[None, None]
        return hf(torch.from_numpy(np.asarray(ids))[None], **kw).logits[0].float().numpy()


# ----------------------------------------------------------------- forward
def test_full_forward_matches_hf(pair):
    _, hf, model = pair
    ids = _ids()
    ours = model(ids)
    assert ours.dtype == np.float32 and ours.shape == (SEQ, VOCAB)
    np.testing.assert_allclose(ours, _hf_logits(hf, ids), atol=ATOL, rtol=0)
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


def test_generate_step_yields_logprobs():
    hf = _build_hf("llama")
    model = _load_from_hf(hf)
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


def _load_from_hf(hf, tmp=None):
    import tempfile

    d = tempfile.mkdtemp(prefix="npb_")
    hf.save_pretrained(d, safe_serialization=True)
    return load_model(d)


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


def test_bf16_checkpoint(tmp_path):
    """bf16 on disk is widened to float32 exactly, so against an fp32 HF model
    holding the same bf16-rounded weights (fp32 math on both sides) the
    tolerance stays 1e-4 (vs the original fp32 weights it would be ~1e-1)."""
    ref = _saved_in(_build_hf("qwen3"), torch.bfloat16, tmp_path)
    header = _header(tmp_path / "model.safetensors")
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
    model = load_model(tmp_path)
    ids = _ids()
    np.testing.assert_allclose(model(ids), _hf_logits(ref, ids), atol=ATOL, rtol=0)


def test_fp16_checkpoint(tmp_path):
    ref = _saved_in(_build_hf("llama"), torch.float16, tmp_path)
    header = _header(tmp_path / "model.safetensors")
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F16"}
    model = load_model(tmp_path)
    ids = _ids()
    np.testing.assert_allclose(model(ids), _hf_logits(ref, ids), atol=ATOL, rtol=0)


def test_sharded_checkpoint(tmp_path):
    hf = _build_hf("llama")
    hf.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    model = load_model(tmp_path)
    ids = _ids()
    np.testing.assert_allclose(model(ids), _hf_logits(hf, ids), atol=ATOL, rtol=0)


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

    hf = _build_hf("llama_tied" if tied else "llama")
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
    np.testing.assert_allclose(model(ids), _hf_logits(hf, ids), atol=ATOL, rtol=0)


# ----------------------------------------------------------- rotating cache
def _window_mask(n: int, window: int, keep: int = 4) -> np.ndarray:
    """Query p attends t <= p with t < keep or t > p - (window - keep)."""
    p = np.arange(n)[:, None]
    t = np.arange(n)[None, :]
    ok = (t <= p) & ((t < keep) | (t > p - (window - keep)))
    return np.where(ok, 0.0, np.finfo(np.float32).min).astype(np.float32)


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    hf = _build_hf("llama", seed=5)
    d = tmp_path_factory.mktemp("llama_rot")
    hf.save_pretrained(d, safe_serialization=True)
    return hf, load_model(d)


def test_rotating_cache_large_window_equals_plain(llama_pair):
    _, model = llama_pair
    ids = _ids(n=25)
    c_plain, c_rot = model.make_cache(), model.make_cache(max_kv_size=25)
    assert isinstance(c_plain[0], KVCache) and isinstance(c_rot[0], RotatingKVCache)
    a = np.concatenate([model(ids[:7], c_plain), *[model(ids[i : i + 1], c_plain) for i in range(7, 25)]])
    b = np.concatenate([model(ids[:7], c_rot), *[model(ids[i : i + 1], c_rot) for i in range(7, 25)]])
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("chunks", [[1] * 30, [12, 1, 1, 1, 5, 1, 9], [3, 9, 7, 11], [30]])
def test_rotating_cache_small_window_matches_masked_forward(llama_pair, chunks):
    hf, model = llama_pair
    n, window = sum(chunks), 10
    ids = _ids(seed=7, n=n)
    ref = _hf_logits(hf, ids, mask=_window_mask(n, window))
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
        logits = _hf_logits(hf, seq, mask=_window_mask(len(seq), window))
        seq.append(int(np.argmax(logits[-1])))
    assert toks == seq[len(prompt) :]


# -------------------------------------------------------------------- sampling
logits_st = st.integers(min_value=2, max_value=60).flatmap(
    lambda v: st.lists(st.floats(-20, 20, allow_nan=False, width=32), min_size=v, max_size=v, unique=True)
)


def _logprobs(x):
    x = np.asarray(x, dtype=np.float64)
    return (x - np.log(np.exp(x - x.max()).sum()) - x.max()).astype(np.float32)


def _reference_allowed(lp, top_k, top_p, min_p):
    p = np.exp(lp.astype(np.float64))
    ok = np.ones(len(p), bool)
    order = np.argsort(-p, kind="stable")
    if top_k:
        ok[order[top_k:]] = False
    if top_p < 1.0:
        cum = np.cumsum(p[order]) / p.sum()
        n = int(np.argmax(cum >= top_p)) + 1 if (cum >= top_p).any() else len(p)
        ok[order[n:]] = False
    if min_p > 0:
        ok &= p >= min_p * p.max()
    return set(np.nonzero(ok)[0].tolist())


@settings(max_examples=60, deadline=None)
@given(
    logits=logits_st,
    top_k=st.integers(0, 8),
    top_p=st.sampled_from([1.0, 0.95, 0.5, 0.1]),
    min_p=st.sampled_from([0.0, 0.05, 0.3]),
    seed=st.integers(0, 2**16),
)
def test_sampler_respects_filters(logits, top_k, top_p, min_p, seed):
    lp = _logprobs(logits)
    if _has_ties(lp):  # float32 log-softmax can merge nearly equal values; order is then arbitrary
        return
    allowed = set(allowed_tokens(lp, top_p=top_p, min_p=min_p, top_k=top_k).tolist())
    assert allowed == _reference_allowed(lp, top_k, top_p, min_p)
    assert int(np.argmax(lp)) in allowed
    sampler = make_sampler(temp=0.8, top_p=top_p, min_p=min_p, top_k=top_k, seed=seed)
    assert all(sampler(lp) in allowed for _ in range(20))


def _has_ties(lp):
    return len(np.unique(lp)) < len(lp)


@settings(max_examples=40, deadline=None)
@given(logits=logits_st)
def test_greedy_sampler_is_argmax(logits):
    lp = _logprobs(logits)
    assert make_sampler(0.0)(lp) == int(np.argmax(lp))
    assert make_sampler(0.0, top_k=3, top_p=0.5)(lp) == int(np.argmax(lp))


def test_top_filters_exact_sets():
    lp = np.log(np.array([0.4, 0.3, 0.15, 0.1, 0.05]))
    assert allowed_tokens(lp, top_k=2).tolist() == [0, 1]
    assert allowed_tokens(lp, top_p=0.69).tolist() == [0, 1]  # 0.4 + 0.3 reaches 0.69
    assert allowed_tokens(lp, top_p=0.71).tolist() == [0, 1, 2]
    assert allowed_tokens(lp, min_p=0.3).tolist() == [0, 1, 2]  # >= 0.12
    assert allowed_tokens(lp, top_k=4, top_p=0.9, min_p=0.3).tolist() == [0, 1, 2]


def test_sampler_seed_and_distribution():
    lp = np.log(np.array([0.5, 0.3, 0.2, 0.0 + 1e-12], dtype=np.float64)).astype(np.float32)
    a = [make_sampler(1.0, seed=3)(lp) for _ in range(1)]
    s1, s2 = make_sampler(1.0, seed=3), make_sampler(1.0, seed=3)
    seq1 = [s1(lp) for _ in range(50)]
    seq2 = [s2(lp) for _ in range(50)]
    assert seq1 == seq2 and a[0] == seq1[0]
    s = make_sampler(1.0, seed=0)
    counts = np.bincount([s(lp) for _ in range(4000)], minlength=4) / 4000
    np.testing.assert_allclose(counts[:3], [0.5, 0.3, 0.2], atol=0.03)
    # low temperature sharpens towards the argmax
    cold = make_sampler(0.05, seed=0)
    assert all(cold(lp) == 0 for _ in range(50))


def test_sampler_large_vocab_distribution():
    """Two-level inverse CDF over a vocabulary larger than its block size."""
    V = 5003  # not a multiple of the block: the last block is partial
    lp = np.full(V, -np.inf, dtype=np.float32)
    support = {7: 0.25, 1500: 0.25, 2600: 0.1, 5002: 0.4}
    for i, p in support.items():
        lp[i] = np.log(p)
    s = make_sampler(1.0, seed=1)
    draws = np.array([s(lp) for _ in range(4000)])
    assert set(draws.tolist()) <= set(support)
    freq = {i: float(np.mean(draws == i)) for i in support}
    for i, p in support.items():
        assert abs(freq[i] - p) < 0.03, (i, freq[i], p)
    # filters on the same vocabulary keep only the allowed ones
    top2 = allowed_tokens(lp, top_k=2).tolist()
    assert top2[0] == 5002 and top2[1] in (7, 1500)  # 7 and 1500 tie
    assert allowed_tokens(lp, top_p=0.39).tolist() == [5002]
    assert allowed_tokens(lp, top_p=0.85).tolist()[:1] == [5002] and len(allowed_tokens(lp, top_p=0.85)) == 3


def test_repetition_penalty():
    (proc,) = make_logits_processors(repetition_penalty=2.0, repetition_context_size=3)
    logits = np.array([1.0, -1.0, 2.0, -2.0, 4.0], dtype=np.float32)
    out = proc(np.array([4, 0, 1, 3]), logits)  # last 3: 0, 1, 3
    np.testing.assert_allclose(out, [0.5, -2.0, 2.0, -4.0, 4.0])
    np.testing.assert_allclose(logits, [1.0, -1.0, 2.0, -2.0, 4.0])  # input untouched
    assert make_logits_processors() == []
    assert make_logits_processors(repetition_penalty=1.0) == []


# ------------------------------------------------------------------ bad input
def _header(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n])


@pytest.fixture()
def good_dir(tmp_path):
    hf = _build_hf("llama")
    hf.save_pretrained(tmp_path, safe_serialization=True)
    return tmp_path


def test_truncated_safetensors(good_dir):
    f = good_dir / "model.safetensors"
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(ValueError, match=r"model\.safetensors.*truncated.*re-download or re-convert"):
        load_model(good_dir)
    f.write_bytes(raw[:5])
    with pytest.raises(ValueError, match="truncated"):
        load_model(good_dir)
    f.write_bytes(struct.pack("<Q", 20) + b"{not json at all....")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model(good_dir)


def _rewrite(path, fn):
    """Apply fn to the tensor dict and save it back (numpy safetensors writer)."""
    from safetensors.numpy import load_file, save_file

    t = load_file(str(path))
    fn(t)
    save_file(t, str(path))


def test_missing_tensor(good_dir):
    _rewrite(good_dir / "model.safetensors", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        load_model(good_dir)


def test_shape_mismatch(good_dir):
    def shrink(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:16]

    _rewrite(good_dir / "model.safetensors", shrink)
    with pytest.raises(ValueError, match=r"k_proj\.weight' has shape \(16, 64\), expected \(32, 64\)"):
        load_model(good_dir)


def test_unknown_model_type(good_dir):
    cfg = json.loads((good_dir / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (good_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported model_type 'gpt_neox'"):
        load_model(good_dir)


def test_bad_quantization_bits(good_dir):
    cfg = json.loads((good_dir / "config.json").read_text())
    cfg["quantization"] = {"group_size": 32, "bits": 3}

    def fake_quant(t):
        w = t.pop("model.layers.0.mlp.up_proj.weight")
        t["model.layers.0.mlp.up_proj.weight"] = np.zeros((w.shape[0], w.shape[1] * 3 // 32), np.uint32)
        t["model.layers.0.mlp.up_proj.scales"] = np.ones((w.shape[0], w.shape[1] // 32), np.float16)
        t["model.layers.0.mlp.up_proj.biases"] = np.zeros((w.shape[0], w.shape[1] // 32), np.float16)

    _rewrite(good_dir / "model.safetensors", fake_quant)
    (good_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="bits=3 is not supported"):
        load_model(good_dir)


def test_no_weights_and_bad_ids(good_dir, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    (empty / "config.json").write_text((good_dir / "config.json").read_text())
    with pytest.raises(ValueError, match="no model.*safetensors"):
        load_model(empty)
    model = load_model(good_dir)
    with pytest.raises(ValueError, match="out of range"):
        model(np.array([VOCAB]))
    with pytest.raises(ValueError, match="non-empty prompt"):
        next(generate_step([], model))


def test_backend_runs_without_mlx(tmp_path):
    """Import, load (a quantized dir too) and generate with every `import mlx` failing."""
    import subprocess
    import sys

    from mlx_synapse.backends.numpy.weights import affine
    from safetensors.numpy import save_file

    hf = _build_hf("qwen3")
    hf.save_pretrained(tmp_path / "fp", safe_serialization=True)
    # a quantized copy made with the NumPy packer (no MLX needed for it either)
    q = tmp_path / "q"
    q.mkdir()
    out = {}
    for name, w in hf.state_dict().items():
        w = w.numpy()
        if w.ndim == 2:
            wq, sc, bi = affine.quantize_numpy(w, 32, 4)
            prefix = name[: -len(".weight")]
            out[name], out[prefix + ".scales"], out[prefix + ".biases"] = (
                wq,
                sc.astype(np.float16),
                bi.astype(np.float16),
            )
        else:
            out[name] = w
    save_file(out, str(q / "model.safetensors"))
    cfg = json.loads(hf.config.to_json_string())
    cfg["quantization"] = {"group_size": 32, "bits": 4}
    (q / "config.json").write_text(json.dumps(cfg))

    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name == 'mlx' or name.startswith('mlx.') or name.startswith('mlx_lm'):\n"
        "        raise ImportError('mlx blocked')\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "from mlx_synapse.backends.numpy import load_model, generate_step\n"
        "for d in sys.argv[1:]:\n"
        "    m = load_model(d)\n"
        "    toks = [t for t, _ in generate_step([1, 2, 3], m, max_tokens=4)]\n"
        "    assert len(toks) == 4\n"
        "assert not any(n == 'mlx' or n.startswith('mlx.') for n in sys.modules)\n"
        "print('ok')\n"
    )
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "fp"), str(q)], capture_output=True, text=True, cwd=root
    )
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


# ------------------------------------------------------------- BLAS threads
def test_decode_thread_tuner_follows_the_faster_option(monkeypatch):
    from mlx_synapse.backends.numpy.blas import DecodeThreadTuner

    monkeypatch.delenv("MLX_SYNAPSE_DECODE_THREADS", raising=False)
    tuner = DecodeThreadTuner(probe=3, reprobe=2, every=8, options=[1, 2])
    cost = {1: 0.030, 2: 0.020}  # idle machine: 2 threads faster

    def run(n):
        seen = []
        for _ in range(n):
            th = tuner.choose()
            seen.append(th)
            tuner.record(th, cost[th])
        return seen

    seen = run(6)
    assert sorted(seen) == [1, 1, 1, 2, 2, 2]  # both probed first
    assert run(8) == [2] * 8 and tuner.best() == 2
    cost[2] = 0.200  # another process takes a core: 2 threads collapse
    seen = run(20)
    assert tuner.best() == 1 and seen[-10:].count(2) <= tuner.reprobe  # only re-probes
    cost[2] = 0.010  # load gone: a later re-probe finds 2 threads again
    seen = run(200)
    assert tuner.best() == 2 and seen[-10:].count(1) <= tuner.reprobe

    monkeypatch.setenv("MLX_SYNAPSE_DECODE_THREADS", "1")
    assert tuner.choose() == 1


def test_blas_thread_control_round_trip():
    from mlx_synapse.backends.numpy import blas

    before = blas.get_threads()
    if before is None:
        pytest.skip("NumPy is not linked against a controllable OpenBLAS")
    with blas.blas_threads(1):
        assert blas.get_threads() == 1
    assert blas.get_threads() == before
