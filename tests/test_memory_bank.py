"""The memory bank: writes (near-duplicates, surprise gate), per-user search, forget,
export/import, budgets and eviction, several connections, bad input.

Most tests use a bag-of-words encoder (each word a fixed random unit vector) so that
they run in milliseconds and their similarities are predictable; the real encoders
have tests of their own (test_bert_encoder.py, test_memory_retrieval.py).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sqlite3
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_synapse.memory.bank import EXPORT_FORMAT, MemoryBank
from mlx_synapse.memory.surprise import SurpriseGate


class BagOfWords:
    """Sum of per-word random unit vectors (seeded by the word), L2-normalised."""

    def __init__(self, dim: int = 64, tag: str = "a"):
        self.dim, self.tag = dim, tag
        self.name = f"test-bow-{dim}-{tag}"
        self.calls = 0

    def _word(self, w: str) -> np.ndarray:
        rng = np.random.default_rng(zlib.crc32(f"{self.tag}:{w}".encode()))
        v = rng.standard_normal(self.dim)
        return v / np.linalg.norm(v)

    def __call__(self, texts):
        self.calls += len(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            words = t.lower().split() or ["<empty>"]
            v = sum(self._word(w) for w in words)
            out[i] = v / max(np.linalg.norm(v), 1e-12)
        return out


@pytest.fixture
def bank(tmp_path):
    b = MemoryBank(tmp_path / "m.db", BagOfWords(), backend="numpy")
    yield b
    b.close()


def _file_bytes(path) -> bytes:
    out = b""
    for side in ("", "-wal", "-shm"):
        p = f"{path}{side}"
        if os.path.exists(p):
            with open(p, "rb") as f:
                out += f.read()
    return out


# ----------------------------------------------------------------------------- writes and search


def test_add_search_get_list(bank):
    a = bank.add("my sister ana lives in porto", user="me", source="chat", metadata={"turn": 3})
    b = bank.add("the cat is called miso", user="me")
    c = bank.add("the office is in lisbon", user="you")
    hits = bank.search("where does my sister live", k=2, user="me")
    assert [e.id for e, _ in hits] == [a, b]
    assert hits[0][1] > hits[1][1]
    e = bank.get(a)
    assert (e.user, e.source, e.metadata, e.tier, e.hits) == ("me", "chat", {"turn": 3}, "hot", 1)
    assert e.encoder == "test-bow-64-a" and e.surprise is None
    assert bank.get(a, user="you") is None
    assert [x.id for x in bank.list(user="me")] == [a, b]
    assert [x.id for x in bank.list()] == [a, b, c]
    assert bank.search("cat", k=5, user="me", touch=False)[0][0].id == b
    assert bank.get(b).hits == 1  # from the first search; touch=False adds none
    assert bank.search("cat", k=5, user="nobody") == []


def test_scores_are_cosines(bank):
    enc = bank.encoder
    texts = ["alpha beta gamma", "beta gamma delta", "epsilon zeta", "alpha"]
    ids = bank.add_many(texts, user="u")
    q = "alpha gamma"
    hits = bank.search(q, k=4, user="u", touch=False)
    exact = enc(texts) @ enc([q])[0]
    got = {e.id: s for e, s in hits}
    for i, t in zip(ids, exact):
        # hot entries are re-scored with their float16 vectors
        assert got[i] == pytest.approx(float(t), abs=2e-3)
    assert [e.id for e, _ in hits] == [ids[i] for i in np.argsort(-exact, kind="stable")]
    assert all(s >= 0.3 for _, s in bank.search(q, k=4, user="u", min_score=0.3))


def test_near_duplicate_refreshes(bank):
    a = bank.add("I like green tea in the morning", user="u", now=100.0)
    r = bank.write("i like green tea in the morning", user="u", now=200.0)  # same words: cosine 1
    assert (r.action, r.id) == ("refreshed", a) and r.similarity == pytest.approx(1.0, abs=1e-3)
    e = bank.get(a)
    assert (e.hits, e.last_access, e.created) == (1, 200.0, 100.0)
    assert bank.store.count() == 1
    # other user: not a duplicate of mine
    assert bank.write("I like green tea in the morning", user="v").action == "added"
    # a different text is added, with its redundancy (best cosine to older entries) kept
    r = bank.write("I like green tea in the evening", user="u")
    assert r.action == "added" and 0.5 < r.similarity < 0.95
    assert bank.get(r.id).redundancy == pytest.approx(r.similarity, abs=1e-6)
    # within one batch
    ids = bank.add_many(["one two three", "one two three", "four five six"], user="w")
    assert ids[0] == ids[1] != ids[2]
    assert bank.get(ids[0]).hits == 1


def test_user_isolation_property(tmp_path):
    words = ["tea", "coffee", "cat", "dog", "porto", "lisbon", "blue", "red", "run", "swim"]
    text = st.lists(st.sampled_from(words), min_size=1, max_size=4).map(" ".join)
    ops = st.lists(st.tuples(st.sampled_from(["ann", "bob", "cy"]), text), min_size=1, max_size=25)
    counter = iter(range(10**6))

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(ops=ops, query=text, k=st.integers(1, 8))
    def check(ops, query, k):
        with MemoryBank(tmp_path / f"p{next(counter)}.db", BagOfWords(), backend="numpy", dedup=None) as b:
            owner = {}
            for user, t in ops:
                owner[b.add(t, user=user)] = user
            for user in ("ann", "bob", "cy"):
                hits = b.search(query, k=k, user=user)
                assert all(owner[e.id] == user == e.user for e, _ in hits)
                assert len(hits) == min(k, sum(1 for u in owner.values() if u == user))
                scores = [s for _, s in hits]
                assert scores == sorted(scores, reverse=True)

    check()


def test_other_connection_writes_are_seen(tmp_path):
    p = tmp_path / "m.db"
    with MemoryBank(p, BagOfWords(), backend="numpy") as a, MemoryBank(p, BagOfWords(), backend="numpy") as b:
        a.add("red kite over the hill", user="u")
        assert b.search("red kite", k=1, user="u")[0][0].text == "red kite over the hill"
        i = b.add("blue whale in the bay", user="u")
        assert a.search("blue whale", k=1, user="u")[0][0].id == i  # a reloads its index
        b.forget(i)
        assert [e.text for e, _ in a.search("blue whale", k=5, user="u")] == ["red kite over the hill"]


def test_encoder_change_reembeds(tmp_path):
    p = tmp_path / "m.db"
    with MemoryBank(p, BagOfWords(64, "a"), backend="numpy") as b:
        ids = b.add_many(["apples and pears", "trains and planes"], user="u")
    enc = BagOfWords(32, "b")
    with MemoryBank(p, enc, backend="numpy") as b:
        hits = b.search("planes", k=1, user="u")
        assert hits[0][0].id == ids[1] and hits[0][0].encoder == enc.name
        assert {e.encoder for e in b.list(user="u")} == {enc.name}
        assert b.store.load_vectors("u")[1].shape == (2, 32)


# ----------------------------------------------------------------------------- surprise gate


def test_surprise_gate_writes_only_surprising(bank):
    bank.warmup = 3
    vals = [2.0, 2.2, 2.1, 2.0, 2.1, 2.0]
    got = [bank.write(f"common fact number {i}", user="u", surprise=v).action for i, v in enumerate(vals)]
    assert got[:3] == ["added"] * 3  # warm-up
    assert got[3:] == ["skipped"] * 3  # at or below mean + 1 std
    r = bank.write("a very surprising fact", user="u", surprise=9.0)
    assert r.action == "added" and r.threshold is not None and 2.1 < r.threshold < 2.2
    assert bank.get(r.id).surprise == 9.0
    r = bank.write("boring but forced", user="u", surprise=0.1, force=True)
    assert r.action == "added"
    # the gate's running statistics survive a reopen, and are per user
    state = bank.store.get_meta("gate:u")
    vals += [9.0, 0.1]
    assert state["count"] == len(vals) and state["mean"] == pytest.approx(np.mean(vals))
    assert bank.write("other user first text", user="v", surprise=0.0).action == "added"


def test_surprise_scorer_used_when_no_value_given(tmp_path):
    seen = []

    def scorer(texts):
        seen.extend(texts)
        return np.array([float(len(t)) for t in texts])

    with MemoryBank(tmp_path / "m.db", BagOfWords(), backend="numpy", surprise=scorer, warmup=2) as b:
        b.add("aa", user="u")
        b.add("bb bb", user="u")
        assert b.write("cc", user="u").action == "skipped"  # 2 <= mean 3.5 + std
        assert b.write("a much longer and more surprising text", user="u").action == "added"
        assert b.write("given", user="u", surprise=100.0).surprise == 100.0
    assert "given" not in seen


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-50, 50, allow_nan=False), min_size=2, max_size=60), st.floats(0, 3))
def test_gate_running_stats_match_numpy(xs, gamma):
    g = SurpriseGate(gamma=gamma, warmup=2)
    for i, x in enumerate(xs):
        d = g.decide(x)
        if i >= 2:
            seen = np.array(xs[:i])
            thr = seen.mean() + gamma * seen.std(ddof=1)
            assert d.threshold == pytest.approx(thr, rel=1e-9, abs=1e-9)
            if abs(x - thr) > 1e-9:
                assert d.write == (x > thr)
    g2 = SurpriseGate.from_state(json.loads(json.dumps(g.state())), gamma, 2)
    assert g2.threshold() == pytest.approx(g.threshold(), abs=1e-12)


def test_gate_bad_values():
    with pytest.raises(ValueError, match="gamma"):
        SurpriseGate(gamma=float("nan"))
    with pytest.raises(ValueError, match="warmup"):
        SurpriseGate(warmup=1)
    with pytest.raises(ValueError, match="finite"):
        SurpriseGate().decide(float("inf"))
    with pytest.raises(ValueError, match="malformed"):
        SurpriseGate.from_state({"count": "x"})


# ----------------------------------------------------------------------------- forget


@pytest.mark.parametrize("how", ["id", "user", "where-dict", "where-callable"])
def test_forget_leaves_no_trace(tmp_path, how):
    p = tmp_path / "m.db"
    marker = f"secret{secrets.token_hex(8)}"
    with MemoryBank(p, BagOfWords(), backend="numpy") as b:
        b.add_many([f"filler text {i}" for i in range(50)], user="keep")
        gone = b.add(f"my pin is {marker}", user="gone", source="chat", surprise=3.0)
        b.add("unrelated note", user="gone", source="import")
        assert marker.encode() in _file_bytes(p)
        if how == "id":
            n = b.forget(gone)
        elif how == "user":
            n = b.forget(user="gone")
            assert b.store.get_meta("gate:gone") is None
        elif how == "where-dict":
            n = b.forget(user="gone", where={"contains": marker.upper()[:12].lower(), "source": "chat"})
        else:
            n = b.forget(user="gone", where=lambda e: marker in e.text)
        assert n == (2 if how == "user" else 1)
        assert b.get(gone) is None
        assert all(marker not in e.text for e, _ in b.search(marker, k=60, user="gone"))
        assert marker.encode() not in _file_bytes(p)
        assert b.store.count("keep") == 50
    assert marker.encode() not in _file_bytes(p)


def test_forget_scoping_and_errors(bank):
    a = bank.add("mine", user="me")
    assert bank.forget(a, user="you") == 0 and bank.get(a) is not None
    with pytest.raises(ValueError, match="forget needs"):
        bank.forget()
    with pytest.raises(ValueError, match="unknown where"):
        bank.forget(user="me", where={"colour": "red"})
    with pytest.raises(ValueError, match="not both"):
        bank.forget(a, user="me", where={"source": "x"})
    assert bank.forget([a, 999]) == 1


# ----------------------------------------------------------------------------- export / import


def test_export_import_round_trip(tmp_path, bank):
    bank.add("other user's", user="v")
    ids = bank.add_many(["red apples", "green pears", {"text": "blue plums", "metadata": {"k": 1}}], user="u")
    bank.store.apply_moves([(ids[1], "warm")])
    out = tmp_path / "export.jsonl"
    assert bank.export(out, user="u") == 3
    assert os.stat(out).st_mode & 0o777 == 0o600
    lines = out.read_text().splitlines()
    assert json.loads(lines[0])["format"] == EXPORT_FORMAT and len(lines) == 4
    enc = BagOfWords()
    with MemoryBank(tmp_path / "same.db", enc, backend="numpy") as b2:
        assert b2.import_(out, user="w") == 3
        assert enc.calls == 0  # same encoder: vectors kept, nothing re-embedded
        got = {e.text: e for e in b2.list(user="w")}
        assert got["blue plums"].metadata == {"k": 1} and got["green pears"].tier == "warm"
        s1 = [round(s, 5) for _, s in bank.search("red pears", k=3, user="u", touch=False)]
        s2 = [round(s, 5) for _, s in b2.search("red pears", k=3, user="w", touch=False)]
        assert s1 == s2
        assert b2.import_(out, user="w") == 0  # texts already there
    other = BagOfWords(16, "z")
    with MemoryBank(tmp_path / "other.db", other, backend="numpy") as b3:
        assert b3.import_(out, user="w") == 3
        assert other.calls == 3  # another encoder: re-embedded from the texts
        assert b3.search("plums", k=1, user="w")[0][0].text == "blue plums"


def _export_lines(tmp_path, bank, n=3):
    bank.add_many([f"entry number {i}" for i in range(n)], user="u")
    out = tmp_path / "e.jsonl"
    bank.export(out)
    return out, out.read_text().splitlines()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda ls: ls[:1] + [ls[1][:-5]] + ls[2:], "line 2: not JSON"),
        (lambda ls: ["{}"] + ls[1:], "not an mlx_synapse memory export header"),
        (lambda ls: ls[:2] + [json.dumps({**json.loads(ls[2]), "text": ""})] + ls[3:], "line 3: text must be non-empty"),
        (lambda ls: ls[:3] + [json.dumps({**json.loads(ls[3]), "tier": "tepid"})], "line 4: tier must be"),
    ],
    ids=["truncated-line", "no-header", "empty-text", "bad-tier"],
)
def test_bad_import_changes_nothing(tmp_path, bank, damage, message):
    out, lines = _export_lines(tmp_path, bank)
    out.write_text("\n".join(damage(lines)) + "\n")
    before = bank.store.count()
    with pytest.raises(ValueError, match=message):
        bank.import_(out, user="new")
    assert bank.store.count() == before and bank.list(user="new") == []


def test_wrong_dimension_import(tmp_path, bank):
    out, lines = _export_lines(tmp_path, bank)
    d = json.loads(lines[2])
    import base64

    d["vector"]["data"] = base64.b64encode(b"\x00" * 2 * 48).decode()  # 48 dims, encoder has 64
    out.write_text("\n".join(lines[:2] + [json.dumps(d)] + lines[3:]) + "\n")
    with pytest.raises(ValueError, match=r"line 3: vector has 48 dimensions but the encoder has 64"):
        bank.import_(out, user="new")
    assert bank.list(user="new") == []
    out.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ValueError, match="not UTF-8"):
        bank.import_(out, user="new")


# ----------------------------------------------------------------------------- budget and eviction


def test_budget_degrades_and_evicts(tmp_path):
    enc = BagOfWords(64)
    # each hot entry: ~20 bytes of text + 128 bytes of float16 + overhead
    with MemoryBank(tmp_path / "m.db", enc, backend="numpy", budget_mb=4000 / 2**20, policy="fifo") as b:
        ids = [b.add(f"fact {i} about topic {i * 7}", user="u", now=1000.0 + i) for i in range(60)]
        st = b.stats()
        assert st["bytes"] <= b.budget_bytes
        tiers = {e.id: e.tier for e in b.list(user="u")}
        assert len(tiers) < 60  # some evicted
        survivors = [i for i in ids if i in tiers]
        # FIFO: the oldest degrade first, so the tiers never improve with age
        order = {"cold": 0, "warm": 1, "hot": 2}
        ranks = [order[tiers[i]] for i in survivors]
        assert ranks == sorted(ranks)
        assert tiers[ids[-1]] == "hot"
        # cold entries keep their text but are not searchable
        cold = [i for i in survivors if tiers[i] == "cold"]
        if cold:
            t = b.get(cold[0]).text
            assert cold[0] not in [e.id for e, _ in b.search(t, k=60, user="u")]


def test_enforce_budget_with_each_policy(tmp_path):
    enc = BagOfWords(64)
    for policy in ("fifo", "lru", "random", "learned"):
        with MemoryBank(tmp_path / f"{policy}.db", enc, backend="numpy", policy=policy) as b:
            for i in range(40):
                b.add(f"entry {i} of {policy}", user="u", now=float(i))
            ids = [e.id for e in b.list(user="u")]
            used = set(ids[0::4])  # the oldest of every four is used later
            b.store.touch(sorted(used), now=100.0)
            total = b.stats()["bytes"]
            moves = b.enforce_budget(total // 10, now=200.0)
            assert b.stats()["bytes"] <= total // 10 and moves
            left = {e.id: e.tier for e in b.list(user="u")}
            assert set(left) < set(ids)
            if policy == "lru":  # the recently used are the last to go
                assert set(left) <= used
            if policy == "fifo":  # the newest are the last to go
                assert set(left) == set(ids[-len(left):])


def test_train_retention_learns_from_accesses(tmp_path):
    enc = BagOfWords(32)
    rng = np.random.default_rng(0)
    with MemoryBank(tmp_path / "m.db", enc, backend="numpy", policy="learned", retrain_every=None) as b:
        ids = [b.add(f"note {i} zz{i}", user="u", surprise=float(rng.uniform(1, 6)), force=True, now=float(i))
               for i in range(120)]
        assert "untrained" in b.stats()["policy"]
        r = b.train_retention(now=200.0)
        assert not r["trained"] and "snapshot" in r["reason"]
        # entries with high surprise get used after the snapshot
        surprise = {e.id: e.surprise for e in b.list(user="u")}
        used = [i for i in ids if surprise[i] > 4.0]
        b.store.touch(used, now=300.0)
        r = b.train_retention(now=400.0)
        assert r["trained"] and r["examples"] == 120 and r["positives"] == len(used)
        assert "untrained" not in b.stats()["policy"]
        moves = b.enforce_budget(b.stats()["bytes"] // 3, now=500.0)
        evicted = {i for i, t in moves if t is None}
        assert evicted
        # what the model learned: the high-surprise entries are kept longer
        kept_surprise = np.mean([surprise[i] for i in ids if i not in evicted])
        gone_surprise = np.mean([surprise[i] for i in evicted])
        assert kept_surprise > gone_surprise + 1.0


def test_learned_policy_retrains_itself_as_the_bank_is_used(tmp_path):
    day = 86400.0
    with MemoryBank(tmp_path / "m.db", BagOfWords(32), backend="numpy", retrain_every=day) as b:
        ids = [b.add(f"note {i} qq{i}", user="u", surprise=float(i % 7), force=True, now=float(i))
               for i in range(60)]
        assert b.store.get_meta("snapshot_time") == 0.0  # the first write took a snapshot
        b.store.touch([i for i in ids if b.get(i).surprise >= 4], now=1000.0)
        b.add("later note", user="u", now=day / 2)  # too soon: nothing happens
        assert b.store.get_meta("snapshot_time") == 0.0 and "untrained" in b.stats()["policy"]
        b.add("a day later", user="u", now=day + 1)
        assert b.store.get_meta("snapshot_time") == day + 1 and "untrained" not in b.stats()["policy"]
    with pytest.raises(ValueError, match="retrain_every"):
        MemoryBank(tmp_path / "x.db", BagOfWords(), retrain_every=0)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_and_changes_nothing(tmp_path, bank):
    bank.add("keep me", user="u")
    for bad, msg in [
        ("", "text must be non-empty"),
        ("   ", "text must be non-empty"),
        ("x" * (64 * 1024 + 1), "over the 65536-byte limit"),
        ("bad \udcff byte", "not valid UTF-8"),
        (b"bytes", "text must be a str"),
    ]:
        with pytest.raises(ValueError, match=msg):
            bank.add(bad, user="u")
    with pytest.raises(ValueError, match="user"):
        bank.add("fine", user="")
    with pytest.raises(ValueError, match="user"):
        bank.add("fine", user=3)
    with pytest.raises(ValueError, match="k must be"):
        bank.search("x", k=0, user="u")
    with pytest.raises(ValueError, match="query vector must have shape"):
        bank.search(np.ones(3), user="u")
    with pytest.raises(ValueError, match="zero or not finite"):
        bank.search(np.zeros(64), user="u")
    with pytest.raises(ValueError, match="budget_mb"):
        MemoryBank(tmp_path / "x.db", BagOfWords(), budget_mb=-1)
    assert [e.text for e in bank.list()] == ["keep me"]


def test_bad_files_are_refused_untouched(tmp_path):
    p = tmp_path / "m.db"
    with MemoryBank(p, BagOfWords(), backend="numpy") as b:
        b.add("a memory", user="u")
    raw = sqlite3.connect(p)
    raw.execute("PRAGMA user_version = 77")
    raw.close()
    before = p.read_bytes()
    with pytest.raises(ValueError, match="newer"):
        MemoryBank(p, BagOfWords())
    assert p.read_bytes() == before
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match="not an SQLite database"):
        MemoryBank(junk, BagOfWords())


def test_new_file_is_private(tmp_path):
    with MemoryBank(tmp_path / "deep" / "m.db", BagOfWords(), backend="numpy") as b:
        b.add("private", user="u")
        assert os.stat(b.path).st_mode & 0o777 == 0o600


def test_default_path(monkeypatch, tmp_path):
    from mlx_synapse.memory.bank import default_db_path

    monkeypatch.delenv("MLX_SYNAPSE_MEMORY_DB", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_db_path() == tmp_path / "mlx_synapse" / "memory.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert str(default_db_path()).endswith(os.path.join(".local", "share", "mlx_synapse", "memory.db"))
    monkeypatch.setenv("MLX_SYNAPSE_MEMORY_DB", str(tmp_path / "x.db"))
    assert default_db_path() == tmp_path / "x.db"
    assert math.isfinite(1.0)


def test_bank_replay_matches_the_eviction_simulation(tmp_path):
    """benchmarks/memory_bench.py's history replayed through the bank (SQLite, index,
    snapshot training, enforce_budget, search) gives the array simulation's numbers for
    the policies that do not learn, and the learned policy beats FIFO there too."""
    from mlx_synapse.benchmarks.memory_bench import Workload, simulate, through_bank

    wl = Workload(entries=1500)
    sim = simulate(wl, 0, policies=("fifo", "lru"))
    real = through_bank(wl, 0, str(tmp_path), policies=("fifo", "lru", "learned"))
    assert real["trained"]
    for name in ("none", "fifo", "lru"):
        assert real["results"][name] == pytest.approx(sim["results"][name], abs=1e-9), name
    assert real["results"]["learned"][0] > real["results"]["fifo"][0]


def test_a_text_searched_then_written_is_embedded_once(tmp_path):
    enc = BagOfWords()
    with MemoryBank(tmp_path / "m.db", enc, backend="numpy") as b:
        b.add("my dog is called rex", user="u", force=True)
        n = enc.calls
        b.search("my cat is called miso", 3, user="u")
        b.add("my cat is called miso", user="u", force=True)  # same text: the vector is reused
        assert enc.calls == n + 1
        hits = b.search("my cat is called miso", 1, user="u")
        assert hits[0][0].text == "my cat is called miso" and hits[0][1] == pytest.approx(1.0, abs=1e-2)
        b.forget(hits[0][0].id)  # forget drops the cached vectors too
        assert not b._recent
