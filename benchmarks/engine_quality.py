"""Does the compiled CPU engine compute the same model as MLX?

    python -m mlx_synapse.benchmarks.engine_quality [--prompts 10] [--tokens 64] [--ppl-tokens 512]

On the default model (or ``--model``), with the same quantized weights:

* greedy agreement: ``--prompts`` fixed chat prompts, ``--tokens`` greedy
  tokens each from the NumPy backend decoding through the engine and from the
  MLX backend; a prompt agrees when all tokens are equal (the first
  differing position is reported otherwise);
* WikiText-2 perplexity over the first ``--ppl-tokens`` tokens of the raw
  test set, against MLX's full forward: the engine token by token (every
  position a decode step, so every logit comes from its kernels), the whole
  text as one prefill (the engine's GEMM on the codes where it is on), and the
  NumPy backend's float32 forward beside them.

MLX runs the 4-bit weights with ``mx.quantized_matmul`` on a GPU; on MLX's
CPU backend (where that kernel is very slow) the same codes dequantized to
float32 -- the identical weights, in float32 arithmetic.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

from .common import EVAL_DIR, commit, machine

PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a black hole is in two sentences.",
    "Give me three tips for learning a new language.",
    "Tell me a short story about a lighthouse keeper.",
    "What are the main differences between cats and dogs as pets?",
    "How do I make a cup of tea?",
    "List five fruits that are red.",
    "Why is the sky blue?",
    "Summarize the plot of Romeo and Juliet.",
    "What is photosynthesis?",
    "Describe a sunrise over the mountains.",
)


def nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-position negative log-likelihood (float64) of ``targets`` under ``logits`` (n, V)."""
    lg = np.asarray(logits, np.float64)
    m = lg.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(lg - m).sum(-1, keepdims=True)))[:, 0]
    return lse - lg[np.arange(len(targets)), targets]


def wikitext_ids(tok, n: int) -> np.ndarray:
    text = (EVAL_DIR / "wikitext2_raw_test.txt").read_text(encoding="utf-8")
    ids = np.array(tok.encode(text[: 60 * n])[:n])
    if len(ids) < n:
        raise ValueError(f"WikiText-2 gave only {len(ids)} tokens, asked for {n}")
    return ids


def engine_ppl(model, ids: np.ndarray) -> float:
    """Perplexity with every position a decode step of the NumPy backend (its engine when on)."""
    cache = model.make_cache()
    out = np.empty((len(ids) - 1, model.vocab_size), np.float32)
    for i in range(len(ids) - 1):
        out[i] = model.step_logits(int(ids[i]), cache)
    return float(np.exp(nll(out, ids[1:]).mean()))


def forward_ppl(logits: np.ndarray, ids: np.ndarray) -> float:
    return float(np.exp(nll(logits, ids[1:]).mean()))


def greedy(step_fn, ids: List[int], n: int) -> List[int]:
    return [int(t) for t, _ in step_fn(ids, n)]


def load_pair(model_path=None, mlx_dtype: str = "float32"):
    """(numpy model, mlx model, tokenizer) on the same checkpoint."""
    import mlx.core as mx

    from mlx_synapse import load

    np_model, tok = load(model_path, backend="numpy")
    on_gpu = mx.default_device() == mx.gpu
    mx_model, _ = load(model_path, backend="mlx", dequantize=not on_gpu, dtype=None if on_gpu else mlx_dtype)
    return np_model, mx_model, tok


def agreement(np_model, mx_model, tok, prompts, tokens: int) -> list:
    import mlx.core as mx

    from mlx_synapse.backends.numpy import generate_step as np_step
    from mlx_synapse.generate import build_prompt, generate_step

    rows = []
    for p in prompts:
        ids = build_prompt(tok, p)
        a = [int(t) for t, _ in generate_step(mx.array(ids), mx_model, max_tokens=tokens)]
        b = [int(t) for t, _ in np_step(ids, np_model, max_tokens=tokens)]
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        rows.append({"prompt": p, "agree": a == b, "first_diff": first, "mlx": tok.decode(a), "ours": tok.decode(b)})
    return rows


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mlx_synapse.benchmarks.engine_quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model directory / .gguf / hub id (default: the embedded model)")
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--ppl-tokens", type=int, default=512)
    ap.add_argument("--out", default=None, help="write the JSON report here")
    args = ap.parse_args(argv)
    if not 1 <= args.prompts <= len(PROMPTS):
        ap.error(f"--prompts must be in [1, {len(PROMPTS)}]")

    np_model, mx_model, tok = load_pair(args.model)
    eng = np_model.engine
    if eng is None:
        print(f"engine unavailable ({np_model.engine_status}); this compares the NumPy path", file=sys.stderr)
    t0 = time.perf_counter()
    rows = agreement(np_model, mx_model, tok, PROMPTS[: args.prompts], args.tokens)
    t_agree = time.perf_counter() - t0

    import mlx.core as mx

    ids = wikitext_ids(tok, args.ppl_tokens)
    ppl_mlx = forward_ppl(np.array(mx_model(mx.array(ids[None, :-1]))[0].astype(mx.float32)), ids)
    ppl_prefill = forward_ppl(np_model(ids[:-1]), ids)
    prefill_on_codes = eng is not None and any(eng.tiles)
    np_model.use_engine(False)
    ppl_np = forward_ppl(np_model(ids[:-1]), ids)
    np_model.use_engine(True)
    ppl_eng = engine_ppl(np_model, ids)
    n_ok = sum(r["agree"] for r in rows)
    report = {
        "machine": machine(), "commit": commit(), "engine": None if eng is None else f"{eng.simd}, {eng.threads} threads",
        "mlx_device": str(mx.default_device()), "prompts": rows, "agree": n_ok, "n_prompts": len(rows),
        "tokens": args.tokens, "agreement_seconds": t_agree,
        "ppl": {"tokens": args.ppl_tokens, "mlx": ppl_mlx, "numpy_forward": ppl_np, "engine_decode": ppl_eng,
                "engine_vs_mlx_rel": ppl_eng / ppl_mlx - 1, "prefill_forward": ppl_prefill,
                "prefill_on_codes": prefill_on_codes, "prefill_vs_mlx_rel": ppl_prefill / ppl_mlx - 1},
    }
    print(f"# {report['machine']}; commit {report['commit']}; engine {report['engine']}; MLX on {report['mlx_device']}")
    print(f"Greedy agreement with MLX, {args.tokens} tokens: {n_ok}/{len(rows)} prompts")
    for r in rows:
        tag = "same" if r["agree"] else f"differs from token {r['first_diff']}"
        print(f"  - {r['prompt']!r}: {tag}")
    p = report["ppl"]
    print(f"WikiText-2 perplexity, first {args.ppl_tokens} tokens: MLX {p['mlx']:.4f}, NumPy float32 forward "
          f"{p['numpy_forward']:.4f}, engine (decode steps) {p['engine_decode']:.4f} "
          f"({100 * p['engine_vs_mlx_rel']:+.3f}% vs MLX), one prefill "
          f"({'GEMM on the codes' if prefill_on_codes else 'float32 BLAS'}) {p['prefill_forward']:.4f} "
          f"({100 * p['prefill_vs_mlx_rel']:+.3f}%)")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
