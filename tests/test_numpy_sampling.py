"""NumPy backend sampling: top-k / top-p / min-p filters, temperature, seeds, penalties."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_synapse.backends.numpy import make_logits_processors, make_sampler
from mlx_synapse.backends.numpy.sample import allowed_tokens

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
