"""Test helpers: write small GGUF files with the ``gguf`` package (test-only dependency)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from hypothesis import strategies as st

import gguf
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

from .hf_models import hf_model

FLOAT_TYPES = {Q.F32: np.float32, Q.F16: np.float16}


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's HF->GGUF q/k row permutation (the forward direction)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def encode_tensor(x: np.ndarray, qtype: Q) -> np.ndarray:
    """The raw array GGUFWriter stores for float32 data ``x`` in type ``qtype``."""
    if qtype in FLOAT_TYPES:
        return x.astype(FLOAT_TYPES[qtype])
    return gguf.quants.quantize(x.astype(np.float32), qtype)


def write_gguf(
    path: Path,
    metadata: dict,
    tensors: Iterable,
    arch: str = "llama",
    alignment: Optional[int] = None,
) -> Path:
    """Write a GGUF file.

    Args:
        path: output file.
        metadata: key -> value, or key -> (value, GGUFValueType[, sub type]).
        tensors: (name, raw array from ``encode_tensor`` or raw uint8 bytes, qtype).
        arch: ``general.architecture``.
        alignment: custom ``general.alignment``.

    Returns:
        ``path``.
    """
    w = gguf.GGUFWriter(str(path), arch=arch)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, val in metadata.items():
        if isinstance(val, tuple):
            w.add_key_value(key, val[0], val[1], sub_type=val[2] if len(val) > 2 else None)
        elif isinstance(val, bool):
            w.add_bool(key, val)
        elif isinstance(val, int):
            w.add_uint32(key, val)
        elif isinstance(val, float):
            w.add_float32(key, val)
        elif isinstance(val, str):
            w.add_string(key, val)
        else:
            w.add_array(key, val)
    for name, raw, qtype in tensors:
        w.add_tensor(name, raw, raw_dtype=None if qtype in FLOAT_TYPES else qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def _bytes_to_unicode() -> dict:
    """GPT-2's reversible byte -> printable character table (byte-level BPE alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def tiny_tokenizer_metadata(add_bos: bool = False) -> dict:
    """A byte-level BPE vocab: 3 control tokens, the 256 byte symbols and a few merges."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = list(_bytes_to_unicode().values())
    merges = ["h e", "l l", "he ll", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d", "1 2"]
    merged = [m.replace(" ", "") for m in merges]
    tokens = specials + alphabet + merged
    types = [3] * len(specials) + [1] * (len(tokens) - len(specials))
    template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,  # add_array stores Python ints as INT32
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.padding_token_id": 2,
        "tokenizer.ggml.add_bos_token": add_bos,
        "tokenizer.chat_template": template,
    }


def llama_metadata(hidden: int, heads: int, kv_heads: int, layers: int, ff: int, ctx: int = 128,
                   eps: float = 1e-5, theta: float = 10000.0, arch: str = "llama") -> dict:
    """The ``<arch>.*`` hyper-parameter keys llama.cpp writes."""
    p = arch + "."
    return {
        p + "embedding_length": hidden, p + "feed_forward_length": ff, p + "block_count": layers,
        p + "attention.head_count": heads, p + "attention.head_count_kv": kv_heads,
        p + "attention.layer_norm_rms_epsilon": eps, p + "rope.freq_base": theta,
        p + "context_length": ctx, p + "rope.dimension_count": hidden // heads,
    }


_HF_TO_GGUF = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def hf_state_to_gguf_tensors(state: dict, heads: int, kv_heads: int, qtype: Q, permute: bool = True) -> list:
    """llama.cpp-style tensors from a HF llama/qwen2 state dict (2-D ones in ``qtype``).

    llama.cpp permutes q/k rows (weights and biases) for llama only (``permute``).
    """
    out = []
    for name, t in state.items():
        x = t.detach().float().numpy()
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            gname = "output.weight"
        else:
            _, _, layer, rest = name.split(".", 3)
            module, suffix = rest.rsplit(".", 1)
            gname = f"blk.{layer}.{_HF_TO_GGUF[module]}.{suffix}"
            if module == "self_attn.q_proj" and permute:
                x = llama_permute(x, heads)
            elif module == "self_attn.k_proj" and permute:
                x = llama_permute(x, kv_heads)
        # llama.cpp keeps 1-D tensors (norms, biases) in F32.
        t_type = qtype if x.ndim == 2 else Q.F32
        out.append((gname, encode_tensor(x, t_type), t_type))
    return out


# The tiny tokenizer's 268 tokens, 4 query / 2 k-v heads (rows stay multiples of 32) and
# transformers' init widened so that GGUF rounding and every bias show in the logits.
TINY = dict(vocab_size=268, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            initializer_range=0.1, attn_implementation="eager")


def hf_tiny_model(arch: str = "llama", tie: bool = False, bias: bool = False):
    """A random fp32 ``LlamaForCausalLM``/``Qwen2ForCausalLM`` (``hf_models``) with non-zero biases.

    ``bias`` adds q/k/v/o biases to llama; qwen2 always has q/k/v ones.
    """
    kw = dict(TINY, tie_word_embeddings=tie, **(dict(attention_bias=bias) if arch == "llama" else {}))
    return hf_model(arch, bias_std=0.5, **kw)


def write_hf_as_gguf(model, path: Path, qtype: Q, arch: str = "llama"):
    """Write ``model`` as llama.cpp would (tied lm_head omitted); returns (path, tensors)."""
    c = model.config
    state = {k: v for k, v in model.state_dict().items()
             if not (k == "lm_head.weight" and c.tie_word_embeddings)}
    heads, kv_heads = c.num_attention_heads, c.num_key_value_heads
    tensors = hf_state_to_gguf_tensors(state, heads, kv_heads, qtype, permute=arch == "llama")
    return write_gguf(path, tiny_gguf_metadata(c, arch), tensors, arch=arch), tensors


def tiny_gguf_metadata(config, arch: str = "llama") -> dict:
    """llama.cpp hyper-parameters of a HF ``config`` plus the tiny tokenizer."""
    hp = llama_metadata(hidden=config.hidden_size, heads=config.num_attention_heads,
                        kv_heads=config.num_key_value_heads, layers=config.num_hidden_layers,
                        ff=config.intermediate_size, ctx=config.max_position_embeddings, arch=arch)
    return {**hp, **tiny_tokenizer_metadata()}


def spm_tokenizer_metadata(add_bos: bool = True):
    """Train a tiny SentencePiece BPE (byte fallback, llama-style) and export it as GGUF metadata.

    Returns:
        ``(metadata, SentencePieceProcessor)``.
    """
    import io

    import sentencepiece as spm

    corpus = ["The quick brown fox jumps over the lazy dog.", "Hello world, hello there!",
              "Numbers 12345 and 678.", "def f(x):\n    return x * 2", "Ünïcödé text: café, naïve."] * 40
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=buf, vocab_size=400, model_type="bpe", byte_fallback=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, split_digits=True, minloglevel=2,
        user_defined_symbols=["<tool>"],
    )
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    n = sp.get_piece_size()
    types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i)
             else 4 if sp.id_to_piece(i) == "<tool>" else 1 for i in range(n)]
    meta = {
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
        "tokenizer.ggml.scores": [float(sp.get_score(i)) for i in range(n)],
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": add_bos, "tokenizer.ggml.add_space_prefix": True,
    }
    return meta, sp


# Hypothesis strategies for the reader round trip: every GGUF value type, nested arrays.
_INT_RANGES = {
    V.UINT8: (0, 2**8 - 1), V.INT8: (-(2**7), 2**7 - 1), V.UINT16: (0, 2**16 - 1),
    V.INT16: (-(2**15), 2**15 - 1), V.UINT32: (0, 2**32 - 1), V.INT32: (-(2**31), 2**31 - 1),
    V.UINT64: (0, 2**64 - 1), V.INT64: (-(2**63), 2**63 - 1),
}
_SCALAR_TYPES = list(_INT_RANGES) + [V.FLOAT32, V.FLOAT64, V.BOOL, V.STRING]


def _scalar(vtype):
    if vtype in _INT_RANGES:
        return st.integers(*_INT_RANGES[vtype])
    if vtype == V.FLOAT32:
        return st.floats(width=32, allow_nan=False)  # exactly representable: round-trips
    if vtype == V.FLOAT64:
        return st.floats(allow_nan=False)
    if vtype == V.BOOL:
        return st.booleans()
    return st.text(max_size=12)


_value_types = st.sampled_from(_SCALAR_TYPES)
metadata_entries = st.one_of(
    _value_types.flatmap(lambda t: _scalar(t).map(lambda v: (v, t))),
    _value_types.flatmap(lambda t: st.lists(_scalar(t), min_size=1, max_size=6).map(lambda v: (v, V.ARRAY, t))),
    st.lists(st.lists(st.text(max_size=5), min_size=1, max_size=3), min_size=1, max_size=3).map(
        lambda v: (v, V.ARRAY, V.ARRAY)),
    st.lists(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=3), min_size=1, max_size=3).map(
        lambda v: (v, V.ARRAY, V.ARRAY)),
)
metadata_keys = st.text(min_size=1, max_size=12).filter(lambda k: not k.startswith("general."))
tensor_specs = st.lists(
    st.tuples(st.sampled_from([Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1]),
              st.integers(1, 3), st.integers(1, 2)),
    max_size=3,
)


def make_tensors(specs, seed):
    """Random ``(name, raw, qtype)`` tensors for ``tensor_specs`` draws (quantized rows: 32k wide)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, (qtype, rows, k) in enumerate(specs):
        cols = 32 * k if qtype not in (Q.F32, Q.F16) else 5 * k
        x = rng.standard_normal((rows, cols)).astype(np.float32)
        out.append((f"t{i}.weight", encode_tensor(x, qtype), qtype))
    return out
