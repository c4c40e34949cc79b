"""K-quant GGUF import: conversion time, size on disk and NumPy-backend decode speed.

Builds a llama-shaped GGUF in llama.cpp's Q4_K_M recipe (Q6_K for the embedding,
attn_v and ffn_down, Q4_K elsewhere) from random valid blocks, then converts it
twice: blocks kept (Q4_K as MLX 4-bit affine, Q6_K as float16) and
``--dequantize`` (every weight float16, what a K-quant import gave before blocks
were kept). Decode speed is greedy decoding on the NumPy backend with its compiled
engine; the weights are random, so only speed and size mean anything here.

    python -m mlx_synapse.benchmarks.gguf_kquant_import --threads 1 --tokens 32

Needs the ``gguf`` package (the test extra) to write the file.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def build_gguf(path: Path, hidden: int, inter: int, layers: int, heads: int, kv_heads: int, vocab: int,
               seed: int = 0) -> Path:
    import gguf
    from gguf import GGMLQuantizationType as Q

    from mlx_synapse.convert.gguf_kquants import BLOCKS

    rng = np.random.default_rng(seed)
    head_dim = hidden // heads

    def blocks(rows: int, cols: int, qtype: Q) -> np.ndarray:
        block, size = BLOCKS[qtype.name]
        raw = rng.integers(0, 256, (rows * cols // block, size), dtype=np.uint8)
        scale = (0.02 / 945, 0.02 / 64) if qtype == Q.Q4_K else (0.02 / 4096,)
        at = (0, 2) if qtype == Q.Q4_K else (208,)
        for s, a in zip(scale, at):
            raw[:, a:a + 2] = np.full((raw.shape[0], 1), s, np.float16).view(np.uint8)
        return raw.reshape(rows, -1)

    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_uint32("llama.embedding_length", hidden)
    w.add_uint32("llama.feed_forward_length", inter)
    w.add_uint32("llama.block_count", layers)
    w.add_uint32("llama.attention.head_count", heads)
    w.add_uint32("llama.attention.head_count_kv", kv_heads)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_uint32("llama.context_length", 2048)
    w.add_uint32("llama.rope.dimension_count", head_dim)
    w.add_tensor("token_embd.weight", blocks(vocab, hidden, Q.Q6_K), raw_dtype=Q.Q6_K)
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    shapes = {"attn_q": (hidden, hidden), "attn_k": (kv_heads * head_dim, hidden),
              "attn_v": (kv_heads * head_dim, hidden), "attn_output": (hidden, hidden),
              "ffn_gate": (inter, hidden), "ffn_up": (inter, hidden), "ffn_down": (hidden, inter)}
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        for name, (rows, cols) in shapes.items():
            qtype = Q.Q6_K if name in ("attn_v", "ffn_down") else Q.Q4_K
            w.add_tensor(f"blk.{i}.{name}.weight", blocks(rows, cols, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def decode_tok_s(model_dir: Path, tokens: int, threads: int) -> float:
    from mlx_synapse.backends.numpy import load_model
    from mlx_synapse.backends.numpy.generate import generate_step

    model = load_model(model_dir)
    model.use_engine(True, threads=threads)
    prompt = [1, 2, 3, 4]
    steps = generate_step(prompt, model, max_tokens=tokens + 1)
    next(steps)  # prefill and the first token: not decode
    t0 = time.perf_counter()
    n = sum(1 for _ in steps)
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--inter", type=int, default=2816)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import warnings

    from mlx_synapse.convert.gguf import convert_gguf

    warnings.filterwarnings("ignore", message=".*no tokenizer metadata")  # random weights: no tokenizer needed
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = build_gguf(tmp / "m.gguf", args.hidden, args.inter, args.layers, args.heads, args.kv_heads,
                         args.vocab)
        print(f"GGUF (Q4_K_M recipe): {src.stat().st_size / 2**20:.1f} MiB")
        for label, kw in (("blocks kept", {}), ("--dequantize", {"dequantize": True})):
            t0 = time.perf_counter()
            out = convert_gguf(src, tmp / label.strip("-"), progress=False, **kw)
            secs = time.perf_counter() - t0
            size = sum(f.stat().st_size for f in out.glob("*.safetensors")) / 2**20
            tok_s = decode_tok_s(out, args.tokens, args.threads)
            print(f"{label:13s} convert {secs:5.1f} s  weights {size:7.1f} MiB  "
                  f"decode {tok_s:6.1f} tok/s ({args.threads} thread{'s' if args.threads > 1 else ''})")


if __name__ == "__main__":
    main()
