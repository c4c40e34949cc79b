"""Batched decode on the compiled engine (``DecodeEngine.step_batch``, ``syn_decode_batch``):
B sequences of different lengths, each with its own KV cache, in one call per step.

The batched step runs, for each sequence, exactly the single step's arithmetic (the
same int16 activation codes, the same per-block products and sums in the same order;
only the weight loads are shared), so the claim tested is bit-identity: every row of
the batched logits equals ``step`` on that sequence alone, to the last bit, for every
build (SIMD, plain C, AVX2 where the CPU has it), 1 and 2 threads, float and 4/8-bit
and mixed models, batches of 1 to 16 (past the kernel's 8 vectors per pass), plain
and rotating caches, sequences joining and leaving between steps.  Greedy tokens
then agree by construction; the tests check them too, on the tiny models here and
on the default model (slow).
"""

from __future__ import annotations

import numpy as np
import pytest
from mlx_synapse.kernels import native

from .test_native_engine import QUANTS, _engine, _load, libs, model_dir  # noqa: F401  (fixtures)

if native.library() is None:
    pytest.skip("the compiled CPU engine is unavailable", allow_module_level=True)

LENGTHS = [3, 9, 1, 17, 5, 30, 2, 11, 7, 4, 13, 6, 8, 21, 10, 12]  # 16 prompts, 16 lengths


def _prompts(n, vocab, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, LENGTHS[i]) for i in range(n)]


def _prefilled(model, prompts, max_kv_size=None):
    caches = []
    for p in prompts:
        c = model.make_cache(max_kv_size)
        model.prefill(p, c)
        caches.append(c)
    return caches


def _alone(eng, model, prompts, steps, max_kv_size=None):
    """Teacher-forced logits (B, steps, V), each sequence decoded by itself with ``step``."""
    out = []
    for p, toks in zip(prompts, steps):
        (c,) = _prefilled(model, [p], max_kv_size)
        out.append(np.stack([eng.step(int(t), c).copy() for t in toks]))
    return np.stack(out)


def _batched(eng, model, prompts, steps, max_kv_size=None):
    caches = _prefilled(model, prompts, max_kv_size)
    rows = [eng.step_batch([int(s[k]) for s in steps], caches).copy() for k in range(steps.shape[1])]
    return np.stack(rows, axis=1), caches


@pytest.mark.parametrize("arch,quant", [("llama", "q4"), ("qwen3", "q4"), ("llama_linear_rope", "q8"),
                                        ("phi3", "mix"), ("llama", "f32")])
def test_batched_rows_are_bitwise_the_single_step(model_dir, libs, arch, quant):
    model = _load(model_dir(arch, quant))
    V = model.vocab_size
    B, n = 11, 6  # 11 = one full pass of 8 vectors + 3
    prompts = _prompts(B, V)
    steps = np.random.default_rng(1).integers(0, V, (B, n))
    for name, lib in libs.items():
        for threads in (1, 2):
            eng = _engine(model, lib, threads)
            want = _alone(eng, model, prompts, steps)
            got, caches = _batched(eng, model, prompts, steps)
            label = f"{arch}/{quant}/{name}/t{threads}"
            assert np.isfinite(got).all(), label
            np.testing.assert_array_equal(got, want, err_msg=label)
            for p, c in zip(prompts, caches):
                assert all(layer.offset == len(p) + n for layer in c), label


@pytest.mark.parametrize("B", [1, 2, 8, 9, 16])
def test_every_batch_size(model_dir, B):
    model = _load(model_dir("llama", "q4"))
    V = model.vocab_size
    eng = _engine(model, native.library(), 2)
    prompts = _prompts(B, V, seed=B)
    steps = np.random.default_rng(B).integers(0, V, (B, 3))
    got, _ = _batched(eng, model, prompts, steps)
    np.testing.assert_array_equal(got, _alone(eng, model, prompts, steps))


def test_rotating_caches_in_a_batch(model_dir):
    """Sequences past a rotating cache's window (ring slots reused) still match alone."""
    model = _load(model_dir("qwen2", "q4"))
    V = model.vocab_size
    eng = _engine(model, native.library(), 2)
    prompts = _prompts(4, V, seed=3)
    steps = np.random.default_rng(3).integers(0, V, (4, 24))
    got, _ = _batched(eng, model, prompts, steps, max_kv_size=16)
    np.testing.assert_array_equal(got, _alone(eng, model, prompts, steps, max_kv_size=16))


def _start(model, prompt):
    """A fresh cache holding ``prompt`` and the greedy first token (from its last logits)."""
    c = model.make_cache()
    return c, int(np.argmax(model.forward_last(prompt, c)))


def test_greedy_with_sequences_joining_and_leaving(model_dir):
    """Continuous batching: sequences start at different steps and stop at different
    lengths; each one's greedy tokens equal that sequence decoded alone."""
    model = _load(model_dir("llama_tied", "q4"))
    V = model.vocab_size
    eng = _engine(model, native.library(), 2)
    prompts = _prompts(6, V, seed=7)
    start = [0, 0, 0, 2, 5, 5]
    length = [12, 4, 9, 6, 3, 10]
    want = []
    for p, n in zip(prompts, length):
        c, tok = _start(model, p)
        toks = []
        for _ in range(n):
            toks.append(tok)
            tok = int(np.argmax(eng.step(tok, c)))
        want.append(toks)
    got = [[] for _ in prompts]
    live = {}  # i -> (cache, next token)
    for step in range(40):
        for i, p in enumerate(prompts):
            if start[i] == step:
                live[i] = _start(model, p)
        for i, (c, tok) in list(live.items()):
            got[i].append(tok)
            if len(got[i]) == length[i]:
                del live[i]
        if not live:
            break
        order = sorted(live)
        logits = eng.step_batch([live[i][1] for i in order], [live[i][0] for i in order])
        for row, i in enumerate(order):
            live[i] = (live[i][0], int(np.argmax(logits[row])))
    assert got == want


def test_bad_batches_are_refused_before_any_cache_moves(model_dir):
    model = _load(model_dir("llama", "q4"))
    V = model.vocab_size
    eng = _engine(model, native.library(), 1)
    caches = _prefilled(model, _prompts(3, V))
    offsets = [c[0].offset for c in caches]
    cases = [
        (([1, 2, V], caches), "token ids must be integers in"),
        (([1, -1, 2], caches), "token ids must be integers in"),
        (([1, 2], caches), "as many caches"),
        (([], []), "need 1 to 16"),
        (([1] * 17, [model.make_cache() for _ in range(17)]), "need 1 to 16"),
        (([1, 2, 3], [caches[0], caches[1], caches[0]]), "the same cache appears twice"),
        (([1, 2, 3], [caches[0], caches[1], caches[2][:1]]), "each cache must be"),
        (([1.5, 2, 3], caches), "token ids must be integers"),
    ]
    for (tokens, cs), msg in cases:
        with pytest.raises(ValueError, match=msg):
            eng.step_batch(tokens, cs)
        assert [c[0].offset for c in caches] == offsets, msg


@pytest.mark.slow
def test_default_model_greedy_batched_equals_alone():
    """The default model (4-bit SmolLM2-135M-Instruct): eight chat prompts of different
    lengths, 24 greedy tokens each, batched vs alone: the same tokens and the same
    logits bit for bit."""
    from mlx_synapse import load
    from mlx_synapse.generate import build_prompt

    model, tok = load(None, backend="numpy")
    eng = model.engine
    assert eng is not None
    texts = ["Hi", "Write a short poem about the sea.", "What is the capital of France and why is it famous?",
             "Name some uses of a paperclip.", "Explain in two sentences how plants make food from light.",
             "Tell me a fun fact about octopuses.", "2+2=", "Describe a cat to someone who has never seen one."]
    prompts = [np.asarray(build_prompt(tok, t), np.int64) for t in texts]
    assert len({len(p) for p in prompts}) >= 6  # 31 to 42 tokens: the sequences sit at different positions
    n = 24
    want, want_logits = [], []
    for p in prompts:
        c, t = _start(model, p)
        toks, lg = [], []
        for _ in range(n):
            toks.append(t)
            logits = eng.step(t, c)
            lg.append(logits.copy())
            t = int(np.argmax(logits))
        want.append(toks)
        want_logits.append(np.stack(lg))
    caches, cur = map(list, zip(*[_start(model, p) for p in prompts]))
    got, got_logits = [[] for _ in prompts], [[] for _ in prompts]
    for _ in range(n):
        for i, t in enumerate(cur):
            got[i].append(t)
        logits = eng.step_batch(cur, caches)
        for i in range(len(prompts)):
            got_logits[i].append(logits[i].copy())
        cur = [int(np.argmax(row)) for row in logits]
    assert got == want
    np.testing.assert_array_equal(np.stack([np.stack(g) for g in got_logits]), np.stack(want_logits))
