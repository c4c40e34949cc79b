"""Retention policies and the degradation plan (mlx_synapse.memory.policy), and the eviction benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_synapse.memory.policy import (
    ENTRY_OVERHEAD,
    FEATURE_NAMES,
    TIERS,
    EntryStats,
    FIFOPolicy,
    LearnedPolicy,
    LRUPolicy,
    RandomPolicy,
    entries_bytes,
    entry_bytes,
    features,
    plan_degradation,
    redundancy,
)

RANK = {"hot": 3, "warm": 2, "cold": 1, None: 0}
NEXT = {"hot": "warm", "warm": "cold", "cold": None}


def plan_reference(ids, tiers, text, dims, scores, budget):
    """The documented rule, one move at a time in plain Python."""
    dims = np.broadcast_to(np.asarray(dims), (len(ids),))
    cur = list(tiers)
    total = sum(entry_bytes(t, b, d) for t, b, d in zip(cur, text, dims))
    order = sorted(range(len(ids)), key=lambda i: (scores[i], ids[i]))
    moves = []

    def move(i):
        nonlocal total
        new = NEXT[cur[i]]
        total += entry_bytes(new, text[i], dims[i]) - entry_bytes(cur[i], text[i], dims[i])
        cur[i] = new
        moves.append((int(ids[i]), new))

    for i in order:  # pass 1
        if total <= budget:
            return moves
        if cur[i] == "hot":
            move(i)
    for i in order:  # pass 2
        while cur[i] is not None:
            if total <= budget:
                return moves
            move(i)
    return moves


def stats_of(n, rng, *, surprise_nan=0.0):
    created = rng.uniform(1.7e9, 1.7e9 + 1e7, n)
    s = rng.uniform(1, 8, n).astype(np.float32)
    s[rng.random(n) < surprise_nan] = np.nan
    return EntryStats(ids=np.arange(100, 100 + n), created=created,
                      last_access=created + rng.uniform(0, 1e6, n), hits=rng.poisson(3, n),
                      surprise=s, redundancy=rng.uniform(-0.2, 1.0, n).astype(np.float32))


# ---- bytes -------------------------------------------------------------------------------

def test_entry_bytes_per_tier():
    assert entry_bytes("hot", 100, 64) == 100 + 128 + ENTRY_OVERHEAD
    assert entry_bytes("warm", 100, 64) == 100 + 64 + 4 + ENTRY_OVERHEAD
    assert entry_bytes("cold", 100, 64) == 100 + ENTRY_OVERHEAD
    assert entry_bytes(None, 100, 64) == 0
    tiers = ["hot", "warm", "cold", None, "hot"]
    text, dims = [10, 20, 30, 40, 0], [384, 8, 64, 64, 5]
    np.testing.assert_array_equal(entries_bytes(tiers, text, dims),
                                  [entry_bytes(t, b, d) for t, b, d in zip(tiers, text, dims)])
    with pytest.raises(ValueError, match="'frozen'"):
        entry_bytes("frozen", 1, 1)
    with pytest.raises(ValueError, match=">= 0"):
        entry_bytes("hot", -1, 4)


# ---- plan_degradation -----------------------------------------------------------------------

@st.composite
def banks(draw):
    n = draw(st.integers(0, 25))
    ids = draw(st.permutations(list(range(1000, 1000 + n))))
    tiers = draw(st.lists(st.sampled_from(TIERS), min_size=n, max_size=n))
    text = draw(st.lists(st.integers(0, 400), min_size=n, max_size=n))
    scores = draw(st.lists(st.integers(0, 5).map(float), min_size=n, max_size=n))  # many ties
    dims = draw(st.one_of(st.integers(4, 256), st.lists(st.integers(4, 256), min_size=n, max_size=n)))
    total = int(entries_bytes(tiers, text, dims).sum())
    budget = draw(st.integers(0, total + 100))
    return np.asarray(ids, np.int64), tiers, text, dims, scores, budget


@settings(max_examples=300, deadline=None)
@given(banks())
def test_plan_invariants(bank):
    ids, tiers, text, dims, scores, budget = bank
    moves = plan_degradation(ids, tiers, text, dims, scores, budget)
    assert moves == plan_reference(list(ids), tiers, text, dims, scores, budget)

    pos = {int(i): k for k, i in enumerate(ids)}
    cur, totals = list(tiers), [int(entries_bytes(tiers, text, dims).sum())]
    for eid, new in moves:  # each move lowers one entry by exactly one tier
        k = pos[eid]
        assert cur[k] is not None and NEXT[cur[k]] == new
        cur[k] = new
        totals.append(int(entries_bytes(cur, text, dims).sum()))
    assert totals[-1] <= budget  # within budget (budget >= 0, so "all evicted" is within it too)
    if totals[0] <= budget:
        assert moves == []
    else:  # it stops at the first move that reaches the budget
        assert all(t > budget for t in totals[:-1])

    # All hot -> warm moves come first; pass 2 starts only once no entry is hot.
    kinds = [new == "warm" for _, new in moves]
    assert kinds == sorted(kinds, reverse=True)
    if not all(kinds):
        assert "hot" not in cur

    # In (score, id) order: for equal start tiers the final tier never improves with a lower key;
    # evicted entries are a prefix; at most one entry is made cold by the plan.
    order = sorted(range(len(ids)), key=lambda i: (scores[i], ids[i]))
    for t in TIERS:
        final = [RANK[cur[i]] for i in order if tiers[i] == t]
        assert final == sorted(final)
    gone = [cur[i] is None for i in order]
    assert gone == sorted(gone, reverse=True)
    assert sum(c == "cold" and t != "cold" for c, t in zip(cur, tiers)) <= 1


def test_plan_example():
    ids = np.arange(6)
    tiers = ["hot", "hot", "warm", "cold", "hot", "warm"]
    text, scores = [100] * 6, [5, 1, 3, 0, 2, 4]
    total = int(entries_bytes(tiers, text, 64).sum())  # 3*292 + 2*232 + 164 = 1504
    assert total == 1504
    assert plan_degradation(ids, tiers, text, 64, scores, total) == []
    assert plan_degradation(ids, tiers, text, 64, scores, total - 60) == [(1, "warm")]
    assert plan_degradation(ids, tiers, text, 64, scores, 1004) == [
        (1, "warm"), (4, "warm"), (0, "warm"), (3, None), (1, "cold"), (1, None)]
    everything = plan_degradation(ids, tiers, text, 64, scores, 0)
    assert [m for m in everything if m[1] is None] == [(3, None), (1, None), (4, None), (2, None), (5, None),
                                                        (0, None)]


def test_plan_bad_inputs():
    ok = {"ids": np.arange(2), "tiers": ["hot", "warm"], "text_bytes": [1, 2], "dims": 8, "scores": [0.0, 1.0]}
    with pytest.raises(ValueError, match="budget_bytes must be >= 0 but got -1"):
        plan_degradation(**ok, budget_bytes=-1)
    with pytest.raises(ValueError, match="scores has 1 rows but ids has 2"):
        plan_degradation(**{**ok, "scores": [0.0]}, budget_bytes=0)
    with pytest.raises(ValueError, match="NaN"):
        plan_degradation(**{**ok, "scores": [0.0, np.nan]}, budget_bytes=0)
    with pytest.raises(ValueError, match="'lukewarm'"):
        plan_degradation(**{**ok, "tiers": ["hot", "lukewarm"]}, budget_bytes=0)
    with pytest.raises(ValueError, match="already evicted"):
        plan_degradation(**{**ok, "tiers": ["hot", None]}, budget_bytes=0)
    with pytest.raises(ValueError, match="integer"):
        plan_degradation(**{**ok, "ids": np.array([0.5, 1.5])}, budget_bytes=0)
    with pytest.raises(ValueError, match="dims has 3 rows but ids has 2"):
        plan_degradation(**{**ok, "dims": [8, 8, 8]}, budget_bytes=0)
    assert plan_degradation(np.zeros(0, np.int64), [], [], 8, [], 0) == []


# ---- stats, features, baselines -------------------------------------------------------------

def test_entry_stats_validation():
    good = {"ids": [1, 2], "created": [0.0, 1.0], "last_access": [0.0, 2.0], "hits": [0, 3],
            "surprise": [np.nan, 2.0], "redundancy": [0.0, 1.0000001]}
    s = EntryStats(**good)
    assert s.ids.dtype == np.int64 and s.surprise.dtype == np.float32 and s.redundancy[1] == 1.0
    for change, msg in [({"hits": [0]}, "hits has 1 rows but ids has 2"),
                        ({"ids": [1.0, 2.0]}, "ids must be an integer array"),
                        ({"ids": [1, 1]}, "duplicates"),
                        ({"hits": [0, -1]}, "hits must be >= 0 but got -1"),
                        ({"created": [0.0, np.nan]}, "created has a NaN"),
                        ({"redundancy": [0.0, 1.5]}, r"redundancy must be a cosine in \[-1, 1\].*1.5"),
                        ({"surprise": [np.inf, 1.0]}, "surprise has an infinite"),
                        ({"last_access": [[0.0, 1.0]]}, "last_access must be a 1-D array")]:
        with pytest.raises(ValueError, match=msg):
            EntryStats(**{**good, **change})


def test_features_values():
    now = 1.7e9 + 10 * 3600
    s = EntryStats(ids=[1, 2], created=[1.7e9, now + 5], last_access=[1.7e9 + 7 * 3600, now + 5],
                   hits=[3, 0], surprise=[6.0, np.nan], redundancy=[0.5, 0.0])
    x = features(s, now)
    assert x.shape == (2, len(FEATURE_NAMES)) and x.dtype == np.float32
    want = [[np.log1p(10), np.log1p(3), np.log1p(3), 1.0, 0.5, 1.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]  # future times count as 0; unknown surprise is neutral
    np.testing.assert_allclose(x, want, rtol=1e-6)
    with pytest.raises(ValueError, match="finite"):
        features(s, np.nan)


def test_baseline_orders():
    rng = np.random.default_rng(0)
    s = stats_of(50, rng)
    np.testing.assert_array_equal(np.argsort(FIFOPolicy().scores(s, 0)), np.argsort(s.created))
    np.testing.assert_array_equal(np.argsort(LRUPolicy().scores(s, 0)), np.argsort(s.last_access))
    a, b, c = RandomPolicy(7), RandomPolicy(7), RandomPolicy(8)
    ra = a.scores(s, 0)
    np.testing.assert_array_equal(ra, b.scores(s, 0))
    assert not np.array_equal(ra, c.scores(s, 0))
    assert ra.dtype == np.float64 and ra.shape == (50,)
    # The oldest entry is the first to degrade under FIFO.
    moves = plan_degradation(s.ids, ["warm"] * 50, [10] * 50, 8, FIFOPolicy().scores(s, 0), 0)
    assert moves[0] == (int(s.ids[np.argmin(s.created)]), "cold")


def test_redundancy():
    v = np.array([[1, 0, 0], [0.8, 0.6, 0], [0, 0, 2], [0, 0, 0]], np.float32)
    np.testing.assert_allclose(redundancy(v), [0.8, 0.8, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(redundancy(v, groups=[1, 2, 2, 2]), [0.0, 0.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(redundancy(v[:1]), [0.0])


# ---- LearnedPolicy ----------------------------------------------------------------------------

def auc(scores, y):
    ranks = np.argsort(np.argsort(scores)) + 1
    n1 = y.sum()
    return (ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * (len(y) - n1))


def test_learned_learns_a_rule_and_round_trips():
    rng = np.random.default_rng(1)
    train, test = stats_of(1000, rng, surprise_nan=0.1), stats_of(1000, rng, surprise_nan=0.1)
    now = 1.7e9 + 2e7
    pol = LearnedPolicy(hidden=32, seed=3).fit(train, train.hits > 3, now, epochs=50)
    y = test.hits > 3
    s = pol.scores(test, now)
    assert s.dtype == np.float64 and s.shape == (1000,)
    assert ((s > 0) == y).mean() > 0.97
    assert auc(s, y) > 0.99
    assert pol.n_params == 6 * 32 + 32 + 32 * 32 + 32 + 32 + 1 == sum(p.size for p in pol.params.values())

    back = LearnedPolicy.from_dict(json.loads(json.dumps(pol.to_dict())))
    np.testing.assert_array_equal(back.scores(test, now), s)

    # A conjunction with a rare positive class (8%): often retrieved AND recently used.
    def rule(x):
        return (x.hits > 3) & (now - x.last_access < 1.2e7)

    s2 = LearnedPolicy(seed=3).fit(train, rule(train), now, epochs=50).scores(test, now)
    assert ((s2 > 0) == rule(test)).mean() > 0.97
    assert auc(s2, rule(test)) > 0.99

    again = LearnedPolicy(hidden=32, seed=3).fit(train, train.hits > 3, now, epochs=50)
    np.testing.assert_array_equal(again.scores(test, now), s)
    other = LearnedPolicy(hidden=32, seed=4).fit(train, train.hits > 3, now, epochs=50)
    assert not np.array_equal(other.scores(test, now), s)


def test_learned_bad_inputs():
    rng = np.random.default_rng(0)
    s = stats_of(20, rng)
    pol = LearnedPolicy()
    with pytest.raises(ValueError, match="not fitted"):
        pol.scores(s, 0)
    with pytest.raises(ValueError, match="not fitted"):
        pol.to_dict()
    with pytest.raises(ValueError, match="both accessed and not-accessed.*0 of 20"):
        pol.fit(s, np.zeros(20, bool), 0)
    with pytest.raises(ValueError, match=r"bool array of shape \(20,\)"):
        pol.fit(s, np.ones(20), 0)
    with pytest.raises(ValueError, match="epochs >= 1"):
        pol.fit(s, s.hits > 3, 0, epochs=0)
    with pytest.raises(ValueError, match="hidden must be a positive integer"):
        LearnedPolicy(hidden=0)
    d = LearnedPolicy(hidden=4).fit(s, np.arange(20) % 2 == 0, 0, epochs=2).to_dict()
    with pytest.raises(ValueError, match="differ from"):
        LearnedPolicy.from_dict({**d, "features": ["age"]})
    with pytest.raises(ValueError, match=r"W1 has shape \(6, 4\), expected \(6, 5\)"):
        LearnedPolicy.from_dict({**d, "hidden": 5})
    with pytest.raises(ValueError, match="kind 'mlp'"):
        LearnedPolicy.from_dict({"kind": "tree"})
    with pytest.raises(ValueError, match="missing 'mu'"):
        LearnedPolicy.from_dict({k: v for k, v in d.items() if k != "mu"})


# ---- the benchmark ---------------------------------------------------------------------------

def test_benchmark_learned_against_lru_and_fifo():
    """The README's eviction claim (learned ahead of LRU, LRU ahead of FIFO) on ten seeds that
    were not used to tune anything, at the README's 5,000 entries and 90% eviction. Asserted
    on the paired per-seed gains, with the margin taken from their spread: the mean gain must
    exceed two standard errors. Learned does not beat LRU on every seed (40 seeds measured:
    ahead on 35, mean gain 0.026, std 0.023), so no per-seed claim is made against LRU."""
    from mlx_synapse.benchmarks.memory_bench import Workload, simulate

    runs = [simulate(Workload(entries=5000), seed) for seed in range(300, 310)]
    assert {r["n_params"] for r in runs} == {1313}
    acc = {p: np.array([r["results"][p][0] for r in runs]) for p in ("learned", "lru", "fifo", "random", "none")}

    def significant(gain):
        sem = gain.std(ddof=1) / np.sqrt(len(gain))
        return gain.mean() > 2 * sem, (gain.mean(), sem, gain)

    ok, why = significant(acc["learned"] - acc["lru"])
    assert ok, why
    ok, why = significant(acc["learned"] - acc["fifo"])
    assert ok, why
    ok, why = significant(acc["lru"] - acc["fifo"])
    assert ok, why
    assert (acc["learned"] > acc["fifo"]).all(), acc  # 40 of 40 seeds measured, smallest gain 0.010
    assert (acc["none"] > 0.95).all()  # nearly every fact is findable before eviction
    assert (acc["learned"] > acc["random"] + 0.1).all()
    assert 0.38 < acc["learned"].mean() < 0.47 and 0.35 < acc["lru"].mean() < 0.44, acc
