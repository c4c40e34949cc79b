"""The personal-memory retrieval set, the benchmark's ranking, and hidden-state encoders
on the NumPy backend (against the MLX model on tiny random Hugging Face models).

Slow: the real all-MiniLM-L6-v2 on 100 queries of the set.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from mlx_synapse.benchmarks.memory_retrieval import evaluate, metrics, ranks
from mlx_synapse.benchmarks.retrieval_set import build, jaccard, mean_jaccard, words
from tests.conftest import _or_skip
from tests.hf_models import build_hf_model

TOL = 1e-4  # fp32 parity bound (STYLE)
SEEDS = (0, 1, 7)


@pytest.fixture(scope="module", params=SEEDS)
def data(request):
    return build(request.param)


# --------------------------------------------------------------------------- the set


def test_generator_is_deterministic():
    a, b = build(3), build(3)
    assert a == b
    c = build(4)
    assert a.facts != c.facts and a.queries != c.queries


def test_sizes_and_targets(data):
    asked = [f for f, d in zip(data.facts, data.distractor) if not d]
    assert len(data.queries) >= 500
    assert len(asked) >= 600
    assert len(set(data.family)) >= 30 and len(data.categories) >= 15
    assert len(data.target) == len(data.category) == len(data.family) == len(data.answer) == len(data.queries)
    assert all(0 <= t < len(data.facts) for t in data.target)
    assert all(not data.distractor[t] for t in data.target)  # queries ask for stated facts only
    assert {data.facts[t] for t in data.target} == set(asked)  # and every stated fact is asked for
    assert sum(data.distractor) >= 150


def test_families_have_several_phrasings():
    import random

    from mlx_synapse.benchmarks import retrieval_set as rs

    rng = random.Random(0)
    people, pools = rs._people(rng), rs._seeded_pools(rng)
    assert len(rs.FAMILIES) >= 30 and len({f.name for f in rs.FAMILIES}) == len(rs.FAMILIES)
    for fam in rs.FAMILIES:
        items = fam.items(people, pools)
        assert len(items) >= 4, fam.name
        for item in items:
            assert len(item.facts) >= 2 and len(item.queries) >= 2 and len(item.values) >= 2, (fam.name, item)
            assert all("{v}" in f for f in item.facts + item.distract), (fam.name, item)
            assert not any("{" in q for q in item.queries), (fam.name, item)


def test_no_duplicates_and_no_giveaways(data):
    assert len(set(data.facts)) == len(data.facts)
    assert len(set(data.queries)) == len(data.queries)
    for q, t, a in zip(data.queries, data.target, data.answer):
        fact = data.facts[t]
        assert q != fact
        assert a.lower() in fact.lower(), (a, fact)
        assert not re.search(rf"\b{re.escape(a.lower())}\b", q.lower()), (a, q)


def test_low_lexical_overlap(data):
    """Queries are paraphrases, not copies: word-set Jaccard with their fact is low on
    average (0.080-0.085 measured on seeds 0, 1, 7; at most 0.40) and never above 0.45."""
    overlaps = [jaccard(q, data.facts[t]) for q, t in zip(data.queries, data.target)]
    assert mean_jaccard(data) == pytest.approx(np.mean(overlaps))
    assert np.mean(overlaps) < 0.10
    assert max(overlaps) <= 0.45
    assert np.mean([o == 0 for o in overlaps]) > 0.15  # many share no word at all


def test_jaccard():
    assert words("My sister's cat, Biscuit!") == {"my", "sister's", "cat", "biscuit"}
    assert jaccard("a b c", "b c d") == pytest.approx(2 / 4)
    assert jaccard("", "") == 0.0


def test_subset_keeps_facts_and_pairs(data):
    sub = data.subset(100, seed=1)
    assert sub.facts == data.facts and len(sub.queries) == 100
    pairs = dict(zip(data.queries, data.target))
    assert all(pairs[q] == t for q, t in zip(sub.queries, sub.target))
    assert sub == data.subset(100, seed=1)
    assert len(data.subset(10**6).queries) == len(data.queries)
    with pytest.raises(ValueError, match="n must be >= 1"):
        data.subset(0)


# --------------------------------------------------------------------------- ranking


def test_ranks_and_metrics():
    facts = np.eye(4, dtype=np.float32)
    # query 0 hits fact 0 first; query 1 prefers fact 2 over its target 1; query 2 ranks its target last
    queries = np.array([[1, 0, 0, 0], [0, 0.6, 0.8, 0], [0.5, 0.5, 0.5, 0.1]], dtype=np.float32)
    r = ranks(queries, facts, [0, 1, 3])
    assert r.tolist() == [0, 1, 3]
    m = metrics(r)
    assert m["recall@1"] == pytest.approx(1 / 3) and m["recall@5"] == 1.0
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 4) / 3)


def test_evaluate_per_category():
    data = build(0).subset(50)
    facts = np.random.default_rng(0).normal(size=(len(data.facts), 8))
    facts /= np.linalg.norm(facts, axis=1, keepdims=True)
    perfect = evaluate(data, facts, facts[data.target])
    assert perfect["recall@1"] == 1.0 and perfect["mrr"] == 1.0 and perfect["n"] == 50
    assert sum(c["n"] for c in perfect["per_category"].values()) == 50
    assert all(c["recall@1"] == 1.0 for c in perfect["per_category"].values())


# --------------------------------------------------------------------------- hidden states


class _CharTokenizer:
    """Stand-in tokenizer for the tiny models (vocab 97): one id per character."""

    def encode(self, text):
        return [1 + ord(c) % 96 for c in text]


@pytest.fixture(scope="module", params=["llama", "qwen3", "phi3"])
def tiny_pair(request, tmp_path_factory):
    """(MLX model, NumpyModel, directory) of one random 4-block fp32 checkpoint."""
    from mlx_synapse.backends.numpy import load_model as load_numpy
    from mlx_synapse.loader import load_model

    out = tmp_path_factory.mktemp(request.param)
    build_hf_model(request.param, out, num_hidden_layers=4)
    return load_model(out)[0], load_numpy(out), out


@pytest.mark.parametrize("layer", [0, 1, 2, -1, 3])
def test_numpy_hidden_states_match_mlx(tiny_pair, layer):
    import mlx.core as mx

    mlx_model, np_model, _ = tiny_pair
    ids = np.random.default_rng(layer % 4).integers(0, 97, 13)
    ref = np.array(mlx_model.hidden_states(mx.array(ids[None]), layer).astype(mx.float32))[0]
    got = np_model.hidden_states(ids, layer)
    assert got.dtype == np.float32 and got.shape == (13, 64)
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)
    np.testing.assert_allclose(np_model.hidden_states(ids[None], layer), got, atol=0, rtol=0)  # (1, L) too
    # one token (no mask)
    ref1 = np.array(mlx_model.hidden_states(mx.array(ids[None, :1]), layer).astype(mx.float32))[0]
    np.testing.assert_allclose(np_model.hidden_states(ids[:1], layer), ref1, atol=TOL, rtol=0)


def test_numpy_hidden_states_last_block_is_normed_logits_input(tiny_pair):
    """Layer -1 is what the lm_head sees: its product with the head gives the model's logits."""
    _, np_model, _ = tiny_pair
    ids = np.arange(1, 12)
    np.testing.assert_allclose(np_model.hidden_states(ids) @ np_model.weights.lm_head_t, np_model(ids),
                               atol=TOL, rtol=0)
    assert not np.allclose(np_model.hidden_states(ids, 2), np_model.hidden_states(ids, 3), atol=1e-3)


def test_numpy_hidden_states_rejects_bad_layer(tiny_pair):
    _, np_model, _ = tiny_pair
    with pytest.raises(ValueError, match=r"layer must be in \[-4, 3\]"):
        np_model.hidden_states(np.arange(3), 4)
    with pytest.raises(ValueError, match=r"layer must be in \[-4, 3\]"):
        np_model.hidden_states(np.arange(3), -5)


@pytest.mark.parametrize("layer", [-1, 1])
def test_hidden_state_encoder_same_on_both_backends(tiny_pair, layer, monkeypatch):
    from mlx_synapse.memory import HiddenStateEncoder

    mlx_model, np_model, path = tiny_pair
    texts = ["hello world", "a", "memory banks remember things", "", "xyz " * 20]
    enc_mlx = HiddenStateEncoder(mlx_model, _CharTokenizer(), layer=layer, batch_size=2)
    enc_np = HiddenStateEncoder(np_model, _CharTokenizer(), layer=layer)
    got_np, got_mlx = enc_np(texts), enc_mlx(texts)
    assert got_np.dtype == np.float32 and got_np.shape == (5, 64)
    np.testing.assert_allclose(got_np, got_mlx, atol=TOL, rtol=0)
    # "" is encoded as id 0, phi3's padding id, whose embedding is all zeros: a zero row.
    np.testing.assert_allclose(np.linalg.norm(got_np[[0, 1, 2, 4]], axis=1), 1.0, atol=1e-5)
    assert enc_np.dim == enc_mlx.dim == 64
    assert enc_np([]).shape == (0, 64)
    # Names: without model_path both fall back to the model type; with it (as
    # mlx_synapse.load sets on either backend) both name the directory.
    assert enc_np.name == enc_mlx.name == f"hidden-mean:{mlx_model.args.model_type}:layer{layer % 4}of4:max512"
    for m in (mlx_model, np_model):
        monkeypatch.setattr(m, "model_path", path, raising=False)
    a, b = (HiddenStateEncoder(m, _CharTokenizer(), layer=layer).name for m in (mlx_model, np_model))
    assert a == b == f"hidden-mean:{path}:layer{layer % 4}of4:max512"


def test_hidden_state_encoder_numpy_rejects_bad_input(tiny_pair):
    from mlx_synapse.memory import HiddenStateEncoder

    _, np_model, _ = tiny_pair
    with pytest.raises(ValueError, match="layer must be in"):
        HiddenStateEncoder(np_model, _CharTokenizer(), layer=4)
    with pytest.raises(ValueError, match="list of strings"):
        HiddenStateEncoder(np_model, _CharTokenizer())("one string")
    # the default block is 30% of the way up (block 9 of SmolLM2's 30, the best measured)
    n = len(np_model.layers)
    assert HiddenStateEncoder(np_model, _CharTokenizer()).layer == round(0.3 * (n - 1))


# --------------------------------------------------------------------------- the real MiniLM


@pytest.fixture(scope="session")
def minilm_dir():
    """all-MiniLM-L6-v2 (installed, cached, or downloaded once); skipped offline outside CI."""
    from mlx_synapse.memory import find_minilm_dir

    return _or_skip(find_minilm_dir)


@pytest.mark.slow
def test_minilm_retrieval_quality(minilm_dir):
    """MiniLM on 100 queries (all 824 facts) of seed 0: measured R@1 0.48, R@5 0.75, MRR 0.61."""
    from mlx_synapse.memory import MiniLMEncoder

    data = build(0).subset(100)
    enc = MiniLMEncoder(minilm_dir, backend="numpy")
    result = evaluate(data, enc(data.facts), enc(data.queries))
    assert result["recall@5"] > 0.68
    assert result["recall@1"] > 0.43
    assert result["recall@1"] <= result["recall@5"]


def test_lexical_ranks_match_a_brute_force_rerank():
    """``lexical_ranks`` equals re-scoring the dense pool by hand; weight 0 is the dense rank."""
    from mlx_synapse.benchmarks.memory_retrieval import lexical_ranks, personal_set
    from mlx_synapse.memory.lexical import overlap

    data = personal_set(40)
    assert len(data.facts) == 40 + 120 and len(data.queries) == 120
    rng = np.random.default_rng(0)
    f = rng.standard_normal((len(data.facts), 16))
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    q = f[data.target] + 0.9 * rng.standard_normal((len(data.queries), 16))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    dense = ranks(q, f, data.target)
    assert np.array_equal(lexical_ranks(data, f, q, 0.0, pool=len(data.facts)), dense)
    got = lexical_ranks(data, f, q, 0.3, pool=8)
    for i in range(0, len(data.queries), 7):
        s = f @ q[i]
        top = np.argsort(-s, kind="stable")[:8]
        t = data.target[i]
        if t in top:
            mixed = s[top] + 0.3 * overlap(data.queries[i], [data.facts[j] for j in top])
            assert got[i] == (mixed > mixed[list(top).index(t)]).sum() < 8
        else:
            assert got[i] == dense[i] >= 8
