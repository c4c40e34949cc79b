"""The memory bank's durable store: round trips, isolation, crash safety under SIGKILL,
two writer processes, forgetting without trace, file mode, refusing foreign files."""

from __future__ import annotations

import json
import os
import random
import secrets
import select
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import mlx_synapse.memory.store as store_mod
from mlx_synapse.memory.int8 import dequantize, quantize
from mlx_synapse.memory.store import MemoryStore

from .memory_writer_proc import parse_text, row_for, write_loop

HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "memory_writer_proc.py")
ROOT = os.path.dirname(os.path.dirname(HELPER))


def _bytes(path):
    with open(path, "rb") as f:
        return f.read()


def _snapshot(d):
    """Every file in directory ``d`` with its bytes."""
    return {n: _bytes(os.path.join(d, n)) for n in sorted(os.listdir(d))}


def _raw_integrity(path):
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA integrity_check").fetchall()
    finally:
        db.close()


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "memory.db")


# ----------------------------------------------------------------------------- round trips


def _full_row(user="alice", text="Alice prefers tea in the morning.", **kw):
    row = dict(
        user=user,
        text=text,
        source="chat:2024-05-01",
        metadata={"lang": "en", "tags": ["pref", "drink"], "n": 3, "w": 0.25, "ok": True, "none": None},
        created=1714550400.5,
        last_access=1714550500.25,
        hits=7,
        surprise=2.75,
        tier="warm",
        vector=np.linspace(-1, 1, 384, dtype=np.float32),
        encoder="minilm-l6",
    )
    row.update(kw)
    return row


def test_round_trip_all_fields(db_path):
    rows = [
        _full_row(),
        _full_row(tier="hot", text="Hot: the dentist is on Tuesday."),
        _full_row(tier="cold", text="Cold one", source=None, metadata=None, surprise=None, encoder=None),
        dict(user="bob", text="no vector, defaults"),
        _full_row(user="bob", text="int8 given", vector=np.arange(-5, 5, dtype=np.int8), scale=0.5, dim=10),
    ]
    with MemoryStore(db_path) as s:
        t0 = time.time()
        ids = s.add_many(rows)
        assert ids == sorted(ids) and len(set(ids)) == 5
    with MemoryStore(db_path) as s:  # reopened
        got = [s.get(i) for i in ids]
    for i, row, g in zip(ids, rows, got):
        assert g["id"] == i
        assert set(g) == set(store_mod._COLUMNS)
        for k in ("user", "text", "source", "metadata", "surprise", "encoder"):
            assert g[k] == row.get(k), k
    a, hot, cold, plain, given8 = got
    assert (a["created"], a["last_access"], a["hits"], a["tier"], a["dim"]) == (
        1714550400.5,
        1714550500.25,
        7,
        "warm",
        384,
    )
    q, sc = quantize(rows[0]["vector"][None])
    assert a["vector"].dtype == np.int8 and np.array_equal(a["vector"], q[0]) and a["scale"] == float(sc[0])
    assert hot["tier"] == "hot" and hot["vector"].dtype == np.float16 and hot["scale"] is None
    assert np.array_equal(hot["vector"], rows[1]["vector"].astype(np.float16))
    assert cold["tier"] == "cold" and cold["vector"].dtype == np.int8
    # defaults
    assert (
        plain["tier"] == "warm" and plain["hits"] == 0 and plain["vector"] is None and plain["scale"] is None
    )
    assert plain["dim"] is None and plain["source"] is None and plain["metadata"] is None
    assert t0 - 1 <= plain["created"] <= time.time() + 1 and plain["last_access"] == plain["created"]
    # int8 codes with their scale are stored exactly
    assert np.array_equal(given8["vector"], np.arange(-5, 5, dtype=np.int8)) and given8["scale"] == 0.5
    assert given8["dim"] == 10


def test_ids_stable_and_never_reused(db_path):
    with MemoryStore(db_path) as s:
        ids = s.add_many([dict(user="u", text=f"entry {i}") for i in range(50)])
        s.delete(ids[10:20] + [ids[-1]])
        s.vacuum()
    with MemoryStore(db_path) as s:
        kept = [i for i in ids[:10] + ids[20:-1]]
        assert [e["id"] for e in s.iter_entries()] == kept
        assert all(s.get(i)["text"] == f"entry {ids.index(i)}" for i in kept)
        new = s.add(user="u", text="after")
        assert new > ids[-1]  # the deleted last id is not handed out again
        assert s.get(ids[-1]) is None


def test_users_isolated(db_path):
    with MemoryStore(db_path) as s:
        a = s.add_many([dict(user="alice", text=f"a{i}", vector=np.ones(8, np.float32)) for i in range(5)])
        b = s.add_many([dict(user="bob", text=f"b{i}", vector=-np.ones(8, np.float32)) for i in range(3)])
        c = s.add(user="alice2", text="prefix user")
        assert (s.count("alice"), s.count("bob"), s.count()) == (5, 3, 9)
        assert [e["id"] for e in s.iter_entries("bob")] == b
        assert all(e["user"] == "alice" for e in s.iter_entries("alice"))
        ids, _, _ = s.load_vectors("alice")
        assert ids.tolist() == a
        assert s.delete_user("alice") == 5
        assert s.count("alice") == 0 and s.count("bob") == 3 and s.get(c)["user"] == "alice2"
        assert [e["id"] for e in s.iter_entries()] == b + [c]
        assert s.delete_user("nobody") == 0


def test_iter_entries_pages(db_path):
    with MemoryStore(db_path) as s:
        ids = s.add_many(
            [dict(user="u" if i % 3 else "v", text=f"t{i}") for i in range(store_mod._PAGE * 2 + 7)]
        )
        assert [e["id"] for e in s.iter_entries()] == ids
        assert [e["text"] for e in s.iter_entries("v")] == [f"t{i}" for i in range(len(ids)) if i % 3 == 0]


def test_update_touch_delete(db_path):
    with MemoryStore(db_path) as s:
        v = np.random.default_rng(0).standard_normal(32).astype(np.float32)
        i, j = s.add_many([dict(user="u", text="one", vector=v, tier="hot"), dict(user="u", text="two")])
        s.update(i, text="uno", metadata={"k": [1]}, surprise=-1.5, hits=3, source=None)
        g = s.get(i)
        assert (g["text"], g["metadata"], g["surprise"], g["hits"], g["vector"].dtype) == (
            "uno",
            {"k": [1]},
            -1.5,
            3,
            np.float16,
        )
        s.update(i, tier="cold")  # float16 -> int8
        g = s.get(i)
        assert g["tier"] == "cold" and g["vector"].dtype == np.int8 and g["scale"] > 0
        assert np.allclose(dequantize(g["vector"][None], g["scale"])[0], v, atol=g["scale"] / 2 + 2e-3)
        s.update(i, tier="hot")  # int8 -> float16
        g = s.get(i)
        assert g["vector"].dtype == np.float16 and g["scale"] is None
        s.update(i, vector=None)
        assert s.get(i)["vector"] is None and s.get(i)["dim"] is None and s.get(i)["scale"] is None
        s.update(j, vector=np.ones(4, np.float32), encoder="e2")
        assert s.get(j)["dim"] == 4 and s.get(j)["encoder"] == "e2"
        with pytest.raises(KeyError):
            s.update(12345, text="x")
        with pytest.raises(ValueError, match="cannot be updated"):
            s.update(i, user="mallory")
        with pytest.raises(ValueError, match="lone surrogate"):
            s.update(i, text="bad \udfff")
        assert s.get(i)["text"] == "uno"
        assert s.touch([i, j, 999], now=100.0) == 2
        s.touch(np.array([i]), now=200.0)
        assert (s.get(i)["hits"], s.get(i)["last_access"]) == (5, 200.0)
        assert (s.get(j)["hits"], s.get(j)["last_access"]) == (1, 100.0)
        assert s.delete([j, 999]) == 1 and s.delete(i) == 1 and s.count() == 0
        assert s.delete([]) == 0


def test_load_vectors(db_path):
    rng = np.random.default_rng(1)
    vs = rng.standard_normal((6, 24)).astype(np.float32)
    with MemoryStore(db_path) as s:
        ids = s.add_many(
            [
                dict(user="u", text=f"t{k}", vector=vs[k], tier=("hot", "warm", "cold")[k % 3], encoder="e")
                for k in range(6)
            ]
        )
        s.add(user="u", text="no vector")
        got_ids, codes, scales = s.load_vectors()
        assert got_ids.dtype == np.int64 and got_ids.tolist() == ids
        assert codes.dtype == np.int8 and codes.shape == (6, 24) and scales.dtype == np.float32
        deq = dequantize(codes, scales)
        cos = (deq * vs).sum(1) / np.linalg.norm(deq, axis=1) / np.linalg.norm(vs, axis=1)
        assert (cos > 0.999).all()
        assert s.load_vectors("nobody")[1].shape == (0, 0)
        s.add(user="w", text="other dim", vector=np.ones(7, np.float32), encoder="f")
        with pytest.raises(ValueError, match="different dimensions"):
            s.load_vectors()
        assert s.load_vectors(encoder="e")[1].shape == (6, 24)
        assert s.load_vectors("w")[1].shape == (1, 7)


def test_meta(db_path):
    with MemoryStore(db_path) as s:
        assert s.get_meta("encoder") is None and s.get_meta("encoder", "x") == "x"
        s.set_meta("encoder", "minilm")
        s.set_meta("surprise_stats", {"n": 10, "mean": 1.5, "m2": 0.25})
    with MemoryStore(db_path) as s:
        assert s.get_meta("encoder") == "minilm"
        assert s.get_meta("surprise_stats") == {"n": 10, "mean": 1.5, "m2": 0.25}
        with pytest.raises(ValueError, match="non-finite"):
            s.set_meta("x", float("nan"))
        assert s.delete_meta("encoder") and not s.delete_meta("encoder")


@pytest.mark.parametrize(
    "row, msg",
    [
        (dict(user="u", text=""), "non-empty"),
        (dict(user="u", text=" \n\t"), "non-empty"),
        (dict(user="u", text="ok \ud800 no"), r"lone surrogate '\\ud800' at character 3"),
        (dict(user="u", text="é" * 40000), "80000 bytes of UTF-8, over the 65536-byte limit"),
        (dict(user="u", text=b"bytes"), "must be a str"),
        (dict(user="", text="t"), "user must be non-empty"),
        (dict(text="t"), "needs 'user' and 'text'"),
        (dict(user="u", text="t", colour="red"), "unknown field"),
        (dict(user="u", text="t", tier="lukewarm"), "tier must be one of"),
        (dict(user="u", text="t", hits=-1), "hits must be >= 0"),
        (dict(user="u", text="t", created=float("inf")), "created must be finite"),
        (dict(user="u", text="t", metadata={1: "a"}), "non-str key"),
        (dict(user="u", text="t", metadata={"a": {1, 2}}), "not JSON"),
        (dict(user="u", text="t", vector=np.array([1.0, np.nan])), "non-finite"),
        (dict(user="u", text="t", vector=np.ones((2, 2))), "1-D"),
        (dict(user="u", text="t", vector=np.ones(4, np.int8)), "needs its scale"),
        (dict(user="u", text="t", vector=np.ones(4), scale=1.0), "only for int8"),
        (dict(user="u", text="t", vector=np.ones(4), dim=5), "dim is 5"),
        (dict(user="u", text="t", tier="hot", vector=np.array([1e6])), "float16"),
    ],
)
def test_invalid_rows_reject_the_batch(db_path, row, msg):
    with MemoryStore(db_path) as s:
        s.add(user="u", text="existing")
        good = [dict(user="u", text=f"good {i}") for i in range(3)]
        with pytest.raises(ValueError, match=msg) as e:
            s.add_many(good + [row] + good)
        assert "row 3" in str(e.value)
        assert s.count() == 1


def test_text_cap_is_configurable(db_path):
    with MemoryStore(db_path, max_text_bytes=10) as s:
        s.add(user="u", text="x" * 10)
        with pytest.raises(ValueError, match="11 bytes of UTF-8, over the 10-byte limit"):
            s.add(user="u", text="x" * 9 + "é")
    with pytest.raises(ValueError, match="max_text_bytes"):
        MemoryStore(db_path, max_text_bytes=0)


def test_closed_store_raises(db_path):
    s = MemoryStore(db_path)
    s.close()
    s.close()
    with pytest.raises(ValueError, match="closed"):
        s.count()


def test_in_memory_store():
    with MemoryStore(":memory:") as s:
        s.add(user="u", text="t")
        assert s.count() == 1


# ----------------------------------------------------------------------------- files


def test_file_mode_0600(tmp_path):
    old = os.umask(0o022)
    try:
        p = tmp_path / "sub" / "m.db"
        with MemoryStore(p) as s:
            s.add(user="u", text="private")
            assert os.stat(p).st_mode & 0o777 == 0o600
            for side in ("-wal", "-shm"):
                if os.path.exists(f"{p}{side}"):
                    assert os.stat(f"{p}{side}").st_mode & 0o777 == 0o600, side
        assert os.stat(p).st_mode & 0o777 == 0o600
        assert os.stat(p.parent).st_mode & 0o777 == 0o700
    finally:
        os.umask(old)


def test_pragmas(db_path):
    with MemoryStore(db_path) as s:
        db = s._db
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert db.execute("PRAGMA secure_delete").fetchone()[0] == 1
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] > 0
        assert db.execute("PRAGMA user_version").fetchone()[0] == store_mod.SCHEMA_VERSION == 3
        assert db.execute("PRAGMA application_id").fetchone()[0] == store_mod.APPLICATION_ID


def test_newer_schema_refused_untouched(tmp_path, db_path):
    with MemoryStore(db_path) as s:
        s.add(user="u", text="from the future")
    raw = sqlite3.connect(db_path)
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError) as e:
        MemoryStore(db_path)
    msg = str(e.value)
    assert "version 99" in msg and "version 3 " in msg and "Upgrade mlx_synapse" in msg and db_path in msg
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "content",
    [b"hello", b"x" * 5000, os.urandom(8192), b"SQLite format 3\x00" + os.urandom(8192 - 16)],
    ids=["short-text", "long-text", "random", "sqlite-magic-then-garbage"],
)
def test_garbage_file_refused_untouched(tmp_path, content):
    p = tmp_path / "notes.db"
    p.write_bytes(content)
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match=str(p).replace("\\", "\\\\")):
        MemoryStore(p)
    assert _snapshot(tmp_path) == before


def test_corrupted_pages_give_value_error(tmp_path, db_path):
    with MemoryStore(db_path) as s:
        s.add_many([dict(user="u", text=f"entry {i} " * 50) for i in range(200)])
    data = bytearray(_bytes(db_path))
    page = 4096
    assert len(data) > 4 * page
    rng = random.Random(0)
    for off in range(page, len(data)):  # keep page 1 (schema), scramble the rest
        data[off] = rng.randrange(256)
    with open(db_path, "wb") as f:
        f.write(data)
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match="corrupted"):
        with MemoryStore(db_path) as s:
            list(s.iter_entries())
    with open(db_path, "rb") as f:
        assert f.read() == bytes(data)
    assert _bytes(db_path) == before["memory.db"]


def test_foreign_sqlite_database_refused(tmp_path):
    p = str(tmp_path / "other.db")
    raw = sqlite3.connect(p)
    raw.execute("CREATE TABLE songs (title TEXT)")
    raw.commit()
    raw.close()
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match="not an mlx_synapse memory store"):
        MemoryStore(p)
    assert _snapshot(tmp_path) == before
    raw = sqlite3.connect(p)
    raw.execute("PRAGMA application_id = 42")
    raw.close()
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match="another application"):
        MemoryStore(p)
    assert _snapshot(tmp_path) == before


def test_migration_hook(db_path, monkeypatch):
    real = list(store_mod._MIGRATIONS)
    with MemoryStore(db_path) as s:
        s.add(user="u", text="v1 entry")

    def broken(db):
        db.execute("ALTER TABLE entries ADD COLUMN mood TEXT")
        raise RuntimeError("migration failed halfway")

    monkeypatch.setattr(store_mod, "_MIGRATIONS", store_mod._MIGRATIONS + [broken])
    with pytest.raises(RuntimeError, match="halfway"):
        MemoryStore(db_path)
    raw = sqlite3.connect(db_path)  # rolled back: still the current version, no new column
    assert raw.execute("PRAGMA user_version").fetchone()[0] == store_mod.SCHEMA_VERSION
    assert "mood" not in [r[1] for r in raw.execute("PRAGMA table_info(entries)")]
    raw.close()

    def next_version(db):
        db.execute("ALTER TABLE entries ADD COLUMN mood TEXT")
        db.execute("UPDATE entries SET mood = 'calm'")

    monkeypatch.setattr(store_mod, "_MIGRATIONS", real + [next_version])
    with MemoryStore(db_path) as s:
        assert s._db.execute("PRAGMA user_version").fetchone()[0] == len(real) + 1
        assert s._db.execute("SELECT text, mood FROM entries").fetchall() == [("v1 entry", "calm")]
        assert s.get(1)["text"] == "v1 entry"


def test_version_1_file_upgrades_keeping_its_entries(db_path):
    """A file written by schema version 1 (before redundancy and retention snapshots)
    opens, is migrated in place, and keeps every entry and vector."""
    raw = sqlite3.connect(db_path)
    store_mod._migrate_0_to_1(raw)
    raw.execute(
        "INSERT INTO entries (user, text, created, last_access, hits, tier, dim, vector, scale, encoder) "
        "VALUES ('u', 'old entry', 1.0, 2.0, 3, 'warm', 4, ?, 0.5, 'enc')",
        (np.array([1, -2, 3, 127], np.int8).tobytes(),),
    )
    raw.execute("PRAGMA user_version = 1")
    raw.execute(f"PRAGMA application_id = {store_mod.APPLICATION_ID}")
    raw.commit()
    raw.close()
    with MemoryStore(db_path) as s:
        assert s._db.execute("PRAGMA user_version").fetchone()[0] == store_mod.SCHEMA_VERSION
        e = s.get(1)
        assert (e["text"], e["hits"], e["scale"], e["redundancy"]) == ("old entry", 3, 0.5, None)
        np.testing.assert_array_equal(e["vector"], [1, -2, 3, 127])
        st = s.stats()
        assert st["snap_hits"].tolist() == [-1] and np.isnan(st["snap_access"]).all()
        s.take_snapshot(now=10.0)
        s.touch(1, now=11.0)
        st = s.stats()
        assert (st["snap_hits"][0], st["hits"][0], st["snap_access"][0]) == (3, 4, 2.0)
        assert s.get_meta("snapshot_time") == 10.0
    assert MemoryStore(db_path).integrity_check() == "ok"


def test_stats_and_moves(db_path):
    with MemoryStore(db_path) as s:
        v = np.linspace(-1, 1, 8).astype(np.float32)
        a, b, c, d = s.add_many(
            [
                dict(user="u", text="héllo", tier="hot", vector=v, surprise=2.5, redundancy=0.3),
                dict(user="u", text="b", tier="warm", vector=v),
                dict(user="w", text="c", tier="hot", vector=v),
                dict(user="u", text="d"),
            ],
            meta={"k": [1, 2]},
        )
        assert s.get_meta("k") == [1, 2]
        st = s.stats("u")
        assert st["ids"].tolist() == [a, b, d]
        assert st["text_bytes"].tolist() == [6, 1, 1] and st["dim"].tolist() == [8, 8, 0]
        assert st["surprise"][0] == 2.5 and np.isnan(st["surprise"][1])
        assert st["redundancy"].tolist() == [np.float32(0.3), 0.0, 0.0]
        assert s.apply_moves([(a, "warm"), (b, "cold"), (c, None), (12345, None)]) == 3
        ea, eb = s.get(a), s.get(b)
        assert ea["tier"] == "warm" and ea["vector"].dtype == np.int8
        np.testing.assert_allclose(ea["vector"] * ea["scale"], v, atol=ea["scale"] / 2 + 1e-6)
        assert eb["tier"] == "cold" and eb["vector"] is None and eb["dim"] == 8
        assert s.get(c) is None
        assert [e["id"] for e in s.get_many([d, 999, a])] == [d, a]
        with pytest.raises(ValueError, match="tier must be one of"):
            s.apply_moves([(a, "lukewarm")])
        assert s.meta_keys("k") == ["k"]


# ----------------------------------------------------------------------------- forgetting


@pytest.mark.parametrize("how", ["delete", "delete_user"])
@pytest.mark.parametrize("size", ["short", "overflow"])
def test_forget_leaves_no_trace(tmp_path, db_path, how, size):
    marker = f"FORGET-{secrets.token_hex(12)}"
    text = marker if size == "short" else (marker + " ") * 800  # ~ 25 KB: overflow pages
    needle = marker.encode()
    with MemoryStore(db_path) as s:
        s.add_many([dict(user="keep", text=f"filler {i} " * 20) for i in range(100)])
        ids = s.add_many(
            [
                dict(user="gone", text=text, source=f"src {marker}", metadata={"m": marker}),
                dict(user="gone", text=f"I said {marker} once", tier="hot", vector=np.ones(8, np.float32)),
            ]
        )
        s.add_many([dict(user="keep", text=f"later filler {i} " * 20) for i in range(100)])
        assert any(needle in b for b in _snapshot(tmp_path).values())  # the test can see it
        s.delete(ids) if how == "delete" else s.delete_user("gone")
        assert s.checkpoint()
        snap = _snapshot(tmp_path)
        assert os.path.getsize(db_path + "-wal") == 0
        for name, data in snap.items():
            assert needle not in data, name
        assert s.count() == 200 and s.integrity_check() == "ok"
    for name, data in _snapshot(tmp_path).items():
        assert needle not in data, name


# ----------------------------------------------------------------------------- processes


def _read_available(fd, buf, timeout):
    """Append what arrives on ``fd`` within ``timeout`` s to ``buf``; False at EOF."""
    r, _, _ = select.select([fd], [], [], timeout)
    if not r:
        return True
    chunk = os.read(fd, 65536)
    buf.extend(chunk)
    return bool(chunk)


def _fork_writer(path, tag, seed):
    """A child process (forked: it starts in about a millisecond) writing forever."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            with os.fdopen(w, "w", encoding="utf-8") as out:
                write_loop(path, tag, out, max_batch=6, seed=seed, checkpoint_every=13)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 3
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkill_crash_safety(db_path):
    kills, t_start = 120, time.monotonic()
    rng = random.Random(1234)
    reported = {}  # id -> (tag, batch, i, n)
    n_batches_reported = 0
    for k in range(kills):
        tag = f"k{k}"
        pid, fd = _fork_writer(db_path, tag, seed=k)
        buf = bytearray()
        try:
            if k % 10 == 0:  # now and then, strike while it is still opening the file
                time.sleep(rng.uniform(0, 0.005))
            else:
                deadline = time.monotonic() + 20
                while b"ready\n" not in buf and time.monotonic() < deadline:
                    if not _read_available(fd, buf, 0.1):
                        break
                assert b"ready\n" in buf, f"writer {tag} never got ready"
                time.sleep(rng.uniform(0.005, 0.05))
        finally:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        while _read_available(fd, buf, 5):
            pass
        os.close(fd)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
            f"writer {tag} exited: {status}"
        )
        for line in buf.decode("utf-8", "replace").split("\n")[:-1]:  # complete lines only
            if line == "ready":
                continue
            rep = json.loads(line)
            n_batches_reported += 1
            n = len(rep["ids"])
            for i, id_ in enumerate(rep["ids"]):
                assert id_ not in reported
                reported[id_] = (tag, rep["b"], i, n)
    elapsed = time.monotonic() - t_start

    assert _raw_integrity(db_path) == [("ok",)]
    with MemoryStore(db_path) as s:
        assert s.integrity_check() == "ok"
        rows = {e["id"]: e for e in s.iter_entries()}
    assert len(reported) > kills  # the writers did get work done between kills
    for id_, (tag, b, i, n) in reported.items():
        want = row_for(tag, b, i, n)
        got = rows.get(id_)
        assert got is not None, f"id {id_} was returned by add_many but is missing after the kill"
        assert got["text"] == want["text"] and got["user"] == want["user"]
        assert np.array_equal(got["vector"], want["vector"]) and got["scale"] == want["scale"]
    # Batches are atomic: every batch found in the file is there whole.
    batches = {}
    for e in rows.values():
        tag, b, i, n = parse_text(e["text"])
        batches.setdefault((tag, b, n), set()).add(i)
    for (tag, b, n), rows_i in batches.items():
        assert rows_i == set(range(n)), f"batch {b} of {tag} is partial: {sorted(rows_i)} of {n}"
    print(
        f"{kills} kills, {n_batches_reported} batches / {len(reported)} rows reported, "
        f"{len(rows)} rows stored, {elapsed:.1f}s"
    )


def test_two_processes_write_concurrently(db_path):
    procs = [
        subprocess.Popen(
            [sys.executable, HELPER, db_path, tag, "200", "--wait-go"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for tag in ("p", "q")
    ]  # both race to create the file
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    reported = {}
    for tag, (out, _) in zip(("p", "q"), outs):
        lines = [json.loads(x) for x in out.splitlines()]
        assert len(lines) == 200
        for rep in lines:
            (id_,) = rep["ids"]
            reported[id_] = row_for(tag, rep["b"], 0, 1)
    assert len(reported) == 400
    assert _raw_integrity(db_path) == [("ok",)]
    with MemoryStore(db_path) as s:
        assert s.count() == 400 and s.count("user-p") == 200 and s.count("user-q") == 200
        for id_, want in reported.items():
            got = s.get(id_)
            assert got["text"] == want["text"] and np.array_equal(got["vector"], want["vector"])
        # Whether the ids interleave depends on scheduling: SQLite's busy handler backs off
        # in sleeps of up to 100 ms, so a writer that never pauses long can keep the lock.
        # Both were released at once and both waited on the same lock; that is the case tested.


# ----------------------------------------------------------------------------- hypothesis

CAP = 200  # bytes: small, so that over-long texts are cheap to generate

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_value = st.recursive(
    json_leaf,
    lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=6), ch, max_size=4),
    max_leaves=12,
)
_BAD = [{"x": float("nan")}, {"x": [float("inf")]}, {1: "int key"}, {"s": "lone \udc80"}, {"o": b"bytes"}]
bad_metadata = st.sampled_from(_BAD)
surrogate = st.integers(0xD800, 0xDFFF).map(chr)


@st.composite
def texts(draw, valid_only=False):
    kinds = (
        ["text", "at_cap"] if valid_only else ["text", "empty", "blank", "surrogate", "long", "over_by_one"]
    )
    kind = draw(st.sampled_from(kinds))
    if kind == "text":
        return draw(st.text(min_size=1, max_size=80).filter(str.strip))
    if kind == "at_cap":  # exactly CAP bytes: accepted
        return draw(st.sampled_from(["a" * CAP, "é" * (CAP // 2), "東" * (CAP // 3) + "ab"]))
    if kind == "empty":
        return ""
    if kind == "blank":
        return draw(st.text(alphabet=" \t\n\r\u3000\u2003\x0b", min_size=1, max_size=5))
    if kind == "surrogate":
        return draw(st.text(max_size=10)) + draw(surrogate) + draw(st.text(max_size=10))
    if kind == "over_by_one":  # CAP characters but CAP + 1 bytes
        return "a" * (CAP - 1) + "é"
    return draw(st.text(max_size=30)) + "é" * (CAP // 2 + 1)


@st.composite
def rows(draw, valid_only=False):
    row = {"text": draw(texts(valid_only))}
    if draw(st.booleans()):
        row["metadata"] = (
            draw(bad_metadata)
            if not valid_only and draw(st.integers(0, 3)) == 0
            else draw(st.dictionaries(st.text(max_size=6), json_value, max_size=4))
        )
    if draw(st.booleans()):
        row["source"] = draw(st.text(max_size=30))
    if draw(st.booleans()):
        row["tier"] = draw(st.sampled_from(["hot", "warm", "cold"]))
    if draw(st.booleans()):
        row["vector"] = (
            np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(8).astype(np.float32)
        )
    if draw(st.booleans()):
        row["surprise"] = draw(st.floats(allow_nan=False, allow_infinity=False))
    if draw(st.booleans()):
        row["hits"] = draw(st.integers(0, 2**40))
    if draw(st.booleans()):
        row["created"] = draw(st.floats(0, 4e9))
    return row


@pytest.fixture(scope="module")
def hstore():
    with tempfile.TemporaryDirectory() as d:
        with MemoryStore(os.path.join(d, "h.db"), max_text_bytes=CAP) as s:
            yield s


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(
    batch=st.booleans().flatmap(
        lambda ok: (
            st.lists(rows(valid_only=True), min_size=1, max_size=6)
            if ok
            else st.lists(rows(), min_size=1, max_size=6)
        )
    )
)
def test_hypothesis_batches_round_trip_or_reject_whole(hstore, batch):
    user = f"h-{uuid.uuid4().hex}"
    batch = [dict(r, user=user) for r in batch]
    valid = all(_row_ok(r) for r in batch)
    event("valid batch" if valid else "invalid batch")
    total = hstore.count()
    if not valid:
        with pytest.raises(ValueError):
            hstore.add_many(batch)
        assert hstore.count() == total and hstore.count(user) == 0
        return
    ids = hstore.add_many(batch)
    assert len(ids) == len(batch) and hstore.count(user) == len(batch) == hstore.count() - total
    stored = list(hstore.iter_entries(user))
    assert [e["id"] for e in stored] == ids
    for row, got in zip(batch, stored):
        assert got["text"] == row["text"]
        assert got["metadata"] == row.get("metadata")
        assert got["source"] == row.get("source")
        assert got["tier"] == row.get("tier", "warm")
        assert got["hits"] == row.get("hits", 0)
        assert got["surprise"] == row.get("surprise")
        if "created" in row:
            assert got["created"] == row["created"] == got["last_access"]
        v = row.get("vector")
        if v is None:
            assert got["vector"] is None
        elif got["tier"] == "hot":
            assert np.array_equal(got["vector"], v.astype(np.float16))
        else:
            q, s = quantize(v[None])
            assert np.array_equal(got["vector"], q[0]) and got["scale"] == float(s[0])


def _row_ok(row):
    t = row["text"]
    try:
        n = len(t.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    if not t.strip() or n > CAP:
        return False
    m = row.get("metadata")
    return not any(m is bad for bad in _BAD)
