"""GGUF conversion of small synthetic files: tensors, config, q/k un-permutation, tokenizer, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
mx = pytest.importorskip("mlx.core")
from gguf import GGMLQuantizationType as Q  # noqa: E402

from mlx_synapse.convert.gguf import convert_gguf, hf_tensor_name, unpermute_rows  # noqa: E402
from mlx_synapse.convert.gguf_tokenizer import build_tokenizer  # noqa: E402

from .gguf_writer_util import (  # noqa: E402
    encode_tensor, hf_state_to_gguf_tensors, hf_tiny_model, llama_metadata, llama_permute, spm_tokenizer_metadata,
    tiny_gguf_metadata, tiny_tokenizer_metadata, write_gguf, write_hf_as_gguf,
)
from .hf_models import hf_logits  # noqa: E402


def _tiny_llama_gguf(path, tensors, **kw):
    meta = {**llama_metadata(hidden=64, heads=2, kv_heads=1, layers=1, ff=96), **tiny_tokenizer_metadata()}
    meta.update(kw.pop("extra_meta", {}))
    return write_gguf(path, meta, tensors, **kw)


ODD_FF = {"llama.feed_forward_length": 33}  # shapes must match the metadata: 33 gate/up rows


def _quant_specs(rng):
    # An odd row count (33) with rows of 32-multiples; v/ffn are never permuted.
    specs = [("blk.0.attn_v.weight", Q.Q4_0, (32, 64)), ("blk.0.ffn_gate.weight", Q.Q4_1, (33, 64)),
             ("blk.0.ffn_up.weight", Q.Q8_0, (33, 64)), ("blk.0.ffn_down.weight", Q.F16, (64, 33)),
             ("blk.0.attn_output.weight", Q.BF16, (64, 64)), ("blk.0.attn_norm.weight", Q.F32, (64,)),
             ("blk.0.ffn_norm.weight", Q.Q4_1, (64,))]
    return [(n, encode_tensor(rng.standard_normal(s).astype(np.float32) * 3, q), q) for n, q, s in specs]


def test_quantized_tensors_match_gguf_dequantize(tmp_path):
    tensors = _quant_specs(np.random.default_rng(0))
    path = _tiny_llama_gguf(tmp_path / "q.gguf", tensors, extra_meta=ODD_FF)
    out = convert_gguf(path, tmp_path / "out", progress=False)
    w = mx.load(str(out / "model.safetensors"))
    config = json.loads((out / "config.json").read_text())
    bits = {Q.Q4_0: 4, Q.Q4_1: 4, Q.Q8_0: 8}
    for name, raw, qtype in tensors:
        ref = gguf.quants.dequantize(raw, qtype)
        hf = hf_tensor_name(name)
        if qtype in bits and raw.ndim == 2 and "norm" not in name:
            m = hf[: -len(".weight")]
            assert w[m + ".scales"].dtype == mx.float16
            s, b = w[m + ".scales"].astype(mx.float32), w[m + ".biases"].astype(mx.float32)
            got = np.array(mx.dequantize(w[hf], s, b, group_size=32, bits=bits[qtype]))
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6 * np.abs(np.array(s)).max())
        else:  # floats and the quantized norm: plain tensors in the default float16
            assert w[hf].dtype == mx.float16 and w[hf].shape == ref.shape
            tol = 1e-3 if qtype in bits else 0  # f32 rounding may differ (FMA) before the f16 cast
            got = np.array(w[hf].astype(mx.float32))
            np.testing.assert_allclose(got, ref.astype(np.float16), rtol=tol, atol=0)
    # Two 4-bit modules vs one 8-bit one: 4 is the default, ffn_up the override.
    quant = {"group_size": 32, "bits": 4, "mode": "affine",
             "model.layers.0.mlp.up_proj": {"group_size": 32, "bits": 8, "mode": "affine"}}
    assert config["quantization"] == quant and config["quantization_config"] == quant


def test_dequantize_option_float32_is_exact(tmp_path):
    tensors = _quant_specs(np.random.default_rng(1))
    path = _tiny_llama_gguf(tmp_path / "q.gguf", tensors, extra_meta=ODD_FF)
    out = convert_gguf(path, tmp_path / "out", dequantize=True, dtype="float32", progress=False)
    w = mx.load(str(out / "model.safetensors"))
    assert "quantization" not in json.loads((out / "config.json").read_text())
    assert not any(k.endswith((".scales", ".biases")) for k in w)
    for name, raw, qtype in tensors:
        got = w[hf_tensor_name(name)]
        assert got.dtype == mx.float32
        np.testing.assert_allclose(np.array(got), gguf.quants.dequantize(raw, qtype), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("qtype", [Q.IQ2_XXS, Q.IQ3_S, Q.TQ1_0])
def test_unsupported_tensor_type(tmp_path, qtype):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = np.random.default_rng(0).integers(0, 255, (2, 256 // block * size), dtype=np.uint8)
    path = _tiny_llama_gguf(tmp_path / "k.gguf", [("blk.0.ffn_up.weight", raw, qtype)])
    with pytest.raises(ValueError) as e:
        convert_gguf(path, tmp_path / "out", progress=False)
    msg = str(e.value)
    assert f"blk.0.ffn_up.weight ({qtype.name})" in msg
    assert "Q4_0, Q4_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL, IQ4_XS" in msg and "re-export" in msg
    assert not (tmp_path / "out").exists()  # nothing written before validation


def test_unsupported_architecture_unknown_tensor_and_bad_rope_freqs(tmp_path):
    f32 = encode_tensor(np.ones(64, np.float32), Q.F32)
    p = write_gguf(tmp_path / "a.gguf", {}, [("output_norm.weight", f32, Q.F32)], arch="gemma2")
    with pytest.raises(ValueError, match=r"'gemma2' is not supported; supported: llama, qwen2"):
        convert_gguf(p, tmp_path / "o1", progress=False)
    p = _tiny_llama_gguf(tmp_path / "b.gguf", [("blk.0.attn_sinks.weight", f32, Q.F32), ("foo", f32, Q.F32)])
    with pytest.raises(ValueError, match=r"unknown tensor\(s\).*blk.0.attn_sinks.weight, foo"):
        convert_gguf(p, tmp_path / "o2", progress=False)
    # head_dim 32 needs 16 divisors; 64 of them, or a table no llama3 scaling produces, is refused.
    p = _tiny_llama_gguf(tmp_path / "c.gguf", [("rope_freqs.weight", f32, Q.F32)])
    with pytest.raises(ValueError, match=r"rope_freqs.weight must hold 16 positive finite divisors"):
        convert_gguf(p, tmp_path / "o3", progress=False)
    odd = encode_tensor(np.linspace(1, 3, 16).astype(np.float32)[::-1].copy(), Q.F32)
    p = _tiny_llama_gguf(tmp_path / "d.gguf", [("rope_freqs.weight", odd, Q.F32)])
    with pytest.raises(ValueError, match=r"rope_freqs.weight \(divisors 1..3\) matches no llama3 rope scaling"):
        convert_gguf(p, tmp_path / "o4", progress=False)


def test_config_values_and_linear_rope_scaling(tmp_path):
    embd = encode_tensor(np.zeros((300, 64), np.float32), Q.F16)
    extra = {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 2.0,
             "llama.attention.key_length": 48}
    p = _tiny_llama_gguf(tmp_path / "c.gguf", [("token_embd.weight", embd, Q.F16)], extra_meta=extra)
    with pytest.raises(ValueError, match="partial rotary"):  # rope.dimension_count 32 != key_length 48
        convert_gguf(p, tmp_path / "bad", progress=False)
    extra["llama.rope.dimension_count"] = 48
    p = _tiny_llama_gguf(tmp_path / "d.gguf", [("token_embd.weight", embd, Q.F16)], extra_meta=extra)
    cfg = json.loads((convert_gguf(p, tmp_path / "o", progress=False) / "config.json").read_text())
    assert cfg["rope_scaling"] == {"type": "linear", "rope_type": "linear", "factor": 2.0}
    assert (cfg["head_dim"], cfg["vocab_size"]) == (48, 300)
    assert (cfg["rms_norm_eps"], cfg["rope_theta"]) == (1e-5, 10000.0)
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]) == (64, 96, 1)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (2, 1)
    assert cfg["max_position_embeddings"] == 128
    assert cfg["tie_word_embeddings"] is True and (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)


# ----------------------------------------------------------------------------- q/k permutation


@pytest.mark.parametrize("n_head,rows_per_head", [(9, 64), (3, 64), (4, 8)])
def test_unpermute_inverts_llama_cpp_permute(n_head, rows_per_head):
    rng = np.random.default_rng(n_head)
    w = rng.standard_normal((n_head * rows_per_head, 64)).astype(np.float32)
    np.testing.assert_array_equal(unpermute_rows(llama_permute(w, n_head), n_head), w)
    np.testing.assert_array_equal(llama_permute(unpermute_rows(w, n_head), n_head), w)
    assert not np.array_equal(llama_permute(llama_permute(w, n_head), n_head), w)  # direction matters
    bias = w[:, 0].copy()
    np.testing.assert_array_equal(unpermute_rows(llama_permute(bias, n_head), n_head), bias)
    got = unpermute_rows(mx.array(llama_permute(w, n_head)), n_head)
    np.testing.assert_array_equal(np.array(got), w)


@pytest.mark.parametrize("bits", [4, 8])
def test_unpermute_quantized_triples(bits):
    n_head, w = 3, np.random.default_rng(bits).standard_normal((3 * 16, 96)).astype(np.float32)
    triple = mx.quantize(mx.array(llama_permute(w, n_head)), group_size=32, bits=bits)
    got = mx.dequantize(*[unpermute_rows(a, n_head) for a in triple], group_size=32, bits=bits)
    want = mx.dequantize(*mx.quantize(mx.array(w), group_size=32, bits=bits), group_size=32, bits=bits)
    np.testing.assert_array_equal(np.array(got), np.array(want))
    with pytest.raises(ValueError, match="un-permute"):
        unpermute_rows(w[:45], n_head)


# ----------------------------------------------------------------------------- tokenizer


def test_tiny_tokenizer_digits_specials_and_bos(tmp_path):
    meta = tiny_tokenizer_metadata()
    tok = build_tokenizer(meta)
    ids = tok.encode("<|im_start|>hello world 12<|im_end|>").ids
    vocab = {t: i for i, t in enumerate(meta["tokenizer.ggml.tokens"])}
    # "12" stays two tokens: smollm isolates digits before the "1 2" merge could apply.
    want = [1, vocab["hell"], vocab["o"], vocab["Ġworld"], vocab["Ġ"], vocab["1"], vocab["2"], 2]
    assert ids == want
    assert tok.decode(ids, skip_special_tokens=False) == "<|im_start|>hello world 12<|im_end|>"
    assert build_tokenizer(tiny_tokenizer_metadata(add_bos=True)).encode("hello").ids[0] == 1
    with pytest.raises(ValueError, match="'bert' is not supported"):
        build_tokenizer({**meta, "tokenizer.ggml.model": "bert"})


def test_sentencepiece_llama_tokenizer_matches_sentencepiece(tmp_path):
    pytest.importorskip("sentencepiece")
    from mlx_lm.tokenizer_utils import SPMStreamingDetokenizer
    from mlx_lm.tokenizer_utils import load as mlx_lm_load_tokenizer
    from transformers import AutoTokenizer

    from mlx_synapse.convert.gguf_tokenizer import write_tokenizer_from_gguf

    meta, sp = spm_tokenizer_metadata()
    write_tokenizer_from_gguf(meta, tmp_path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    texts = ["Hello world", "  two  spaces ", "The quick brown fox 12345", "日本語 🤗 café", "x\ty\n",
             "def f(x):\n    return x * 2\n", "", " ", "Ünïcödé naïve", "Hellohellohello lazy dogs"]
    for text in texts:
        want = sp.encode(text)  # merges by score + byte fallback for unseen characters
        assert hf(text, add_special_tokens=False).input_ids == want, text
        assert hf(text).input_ids == [1] + want, text  # tokenizer.ggml.add_bos_token
        assert hf.decode(want) == sp.decode(want), text
    # After an added token llama.cpp (and HF's legacy Llama tokenizers) prefix "▁" again;
    # SentencePiece itself does not, so this case is pinned to llama.cpp's behaviour.
    ids = hf("hello<tool>there", add_special_tokens=False).input_ids
    assert hf.convert_ids_to_tokens(ids) == ["▁hello", "<tool>", "▁there"]
    detok = mlx_lm_load_tokenizer(tmp_path).detokenizer  # streaming decode, as generation does
    assert isinstance(detok, SPMStreamingDetokenizer)
    ids = sp.encode("Hello  world 日本 café")
    for i in ids:
        detok.add_token(i)
    detok.finalize()
    assert detok.text == sp.decode(ids) == "Hello  world 日本 café"


# ----------------------------------------------------------------------------- end to end


IDS = [1, 40, 200, 7, 99, 250, 3, 17, 120, 64, 5, 2]


@pytest.mark.parametrize("arch,tie,bias", [("llama", False, False), ("llama", True, True),
                                            ("qwen2", True, True)])
def test_end_to_end_f32_matches_hf(tmp_path, arch, tie, bias):
    loader = pytest.importorskip("mlx_synapse.loader")
    model = hf_tiny_model(arch, tie=tie, bias=bias)
    path, _ = write_hf_as_gguf(model, tmp_path / "f32.gguf", Q.F32, arch=arch)
    out = convert_gguf(path, tmp_path / "out", dtype="float32", progress=False)
    ours, config = loader.load_model(out)
    assert (config["model_type"], config["tie_word_embeddings"]) == (arch, tie)
    got = np.array(ours(mx.array(IDS)[None]))[0]
    ref = hf_logits(model, IDS)
    assert np.abs(ref).max() > 0.1  # non-trivial logits
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)


def test_end_to_end_q8_0_tied_matches_hf_and_mlx_lm(tmp_path):
    loader = pytest.importorskip("mlx_synapse.loader")
    mlx_lm_utils = pytest.importorskip("mlx_lm.utils")
    torch = pytest.importorskip("torch")
    model = hf_tiny_model("llama", tie=True)
    path, _ = write_hf_as_gguf(model, tmp_path / "q8.gguf", Q.Q8_0)
    out = convert_gguf(path, tmp_path / "out", dtype="float32", progress=False)
    assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == 8
    ours, _ = loader.load_model(out)
    got = np.array(ours(mx.array(IDS)[None]))[0]
    theirs, _ = mlx_lm_utils.load_model(out)
    np.testing.assert_allclose(np.array(theirs(mx.array(IDS)[None]))[0], got, rtol=0, atol=1e-5)
    # vs float HF: Q8_0 rounding (<= 0.4% of each block's max) compounds to ~2% of the
    # largest logit in this random 2-layer model, hence the loose 5% bound.
    fp = hf_logits(model, IDS)
    np.testing.assert_allclose(got, fp, rtol=0, atol=5e-2 * np.abs(fp).max())
    # Exact reference: HF on Q8_0 round-tripped weights. Blocks run along rows and the
    # q/k permutation moves whole rows, so this needs no (un)permutation at all.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                x = gguf.quants.dequantize(gguf.quants.quantize(p.numpy(), Q.Q8_0), Q.Q8_0)
                p.copy_(torch.from_numpy(x))
    exact = hf_logits(model, IDS)
    assert np.abs(exact - fp).max() > 1e-4  # the quantization error is visible ...
    np.testing.assert_allclose(got, exact, rtol=0, atol=1e-4)  # ... and fully accounted for


def test_mixed_bits_directory_loads_in_mlx_lm(tmp_path):
    mlx_lm_utils = pytest.importorskip("mlx_lm.utils")
    model = hf_tiny_model("llama", tie=True)
    # Make the embedding Q8_0: 4 bits is then the default and the embedding an override.
    tensors = [(n, encode_tensor(gguf.quants.dequantize(r, q), Q.Q8_0), Q.Q8_0) if n == "token_embd.weight"
               else (n, r, q) for n, r, q in hf_state_to_gguf_tensors(model.state_dict(), 4, 2, Q.Q4_0)
               if n != "output.weight"]
    meta = tiny_gguf_metadata(model.config)
    out = convert_gguf(write_gguf(tmp_path / "mix.gguf", meta, tensors), tmp_path / "out", dtype="float32",
                       progress=False)
    quant = json.loads((out / "config.json").read_text())["quantization"]
    assert quant["bits"] == 4
    assert quant["model.embed_tokens"] == {"group_size": 32, "bits": 8, "mode": "affine"}
    deq = convert_gguf(tmp_path / "mix.gguf", tmp_path / "deq", dequantize=True, dtype="float32",
                       progress=False)
    q_model, _ = mlx_lm_utils.load_model(out)
    f_model, _ = mlx_lm_utils.load_model(deq)
    assert q_model.model.embed_tokens.bits == 8 and q_model.model.layers[0].mlp.up_proj.bits == 4
    a = np.array(q_model(mx.array(IDS)[None]))
    b = np.array(f_model(mx.array(IDS)[None]))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)  # same numbers, packed or expanded
    loader = pytest.importorskip("mlx_synapse.loader")
    ours, _ = loader.load_model(out)
    np.testing.assert_allclose(np.array(ours(mx.array(IDS)[None])), a, rtol=0, atol=1e-4)
