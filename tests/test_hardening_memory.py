"""Hardening of the memory bank: foreign files stay untouched, distinct facts are never
merged, imports store only searchable vectors, permission problems are one-line
errors, limits mean what they say, and a search writes nothing."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import sqlite3
import tempfile

import numpy as np
import pytest

from mlx_synapse.memory import __main__ as cli
from mlx_synapse.memory.bank import EXPORT_FORMAT, MemoryBank
from mlx_synapse.memory.store import MemoryStore

from .test_memory_bank import BagOfWords

NOBODY = 65534


@pytest.fixture
def run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_encoder", lambda spec, backend: BagOfWords())

    def go(*argv):
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return go


def _one_line_error(err: str) -> str:
    line = err.strip()
    assert line.startswith("error: ") and "\n" not in line and "Traceback" not in line, err
    return line


# ----------------------------------------------------------------------------- 3: foreign files


@pytest.mark.parametrize("version", [1, 2])
def test_foreign_sqlite_file_with_a_schema_version_is_never_written(tmp_path, version, run):
    p = tmp_path / "other.db"
    db = sqlite3.connect(p)
    db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    db.execute("INSERT INTO notes (body) VALUES ('not yours')")
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()
    before = p.read_bytes()
    with pytest.raises(ValueError, match="not an mlx_synapse memory store"):
        MemoryStore(p)
    with pytest.raises(ValueError, match="not an mlx_synapse memory store"):
        MemoryBank(p, BagOfWords())
    code, out, err = run("list", "--db", str(p), "--user", "u")
    assert code == 2 and out == "" and "not an mlx_synapse memory store" in _one_line_error(err)
    assert p.read_bytes() == before
    assert not os.path.exists(f"{p}-wal")


# ----------------------------------------------------------------------------- 4: distinct facts


def test_near_duplicates_with_different_values_are_both_kept(tmp_path):
    lead = ("please remember for later that the secret code word for the blue garage door at my "
            "parents old summer house near the lake by the forest road is")
    with MemoryBank(tmp_path / "m.db", BagOfWords(), backend="numpy") as b:
        a = b.write(f"{lead} w0x1", user="u")
        r = b.write(f"{lead} w0x2", user="u")
        assert r.similarity >= b.dedup  # close enough that the old code merged them
        assert (a.action, r.action) == ("added", "added") and r.id != a.id
        assert sorted(e.text[-4:] for e in b.list(user="u")) == ["w0x1", "w0x2"]
        # the same words (case, punctuation aside) still refresh
        same = b.write(f"{lead.upper()} W0X2.", user="u")
        assert (same.action, same.id) == ("refreshed", r.id) and b.get(r.id).hits == 1
        # and within one batch
        ids = b.add_many([f"{lead} w0x3", f"{lead} w0x4", f"{lead} w0x4!"], user="w")
        assert ids[0] != ids[1] == ids[2]


# ----------------------------------------------------------------------------- 6: import validation


def _import_file(tmp_path, enc, vector) -> str:
    p = tmp_path / "in.jsonl"
    good = {"user": "u", "text": "blue plums", "encoder": enc.name, "tier": "warm"}
    bad = dict(good, text="red pears", vector=vector)
    p.write_text("\n".join(json.dumps(x) for x in ({"format": EXPORT_FORMAT}, good, bad)) + "\n")
    return str(p)


@pytest.mark.parametrize("vector", [
    {"dtype": "int8", "scale": 1e308, "data": base64.b64encode(np.ones(64, np.int8).tobytes()).decode()},
    {"dtype": "int8", "scale": 0.01, "data": base64.b64encode(np.zeros(64, np.int8).tobytes()).decode()},
    {"dtype": "float16", "data": base64.b64encode(np.zeros(64, "<f2").tobytes()).decode()},
], ids=["huge-scale", "zero-int8", "zero-float16"])
def test_import_refuses_unsearchable_vectors(tmp_path, vector):
    enc = BagOfWords()
    with MemoryBank(tmp_path / "m.db", enc, backend="numpy") as b:
        b.add("green tea", user="u")
        with pytest.raises(ValueError, match="line 3: .*nothing was imported"):
            b.import_(_import_file(tmp_path, enc, vector))
        assert [e.text for e in b.list()] == ["green tea"]
        b.add("black coffee", user="u")  # the user's bank still works
        assert b.search("green tea", k=1, user="u")[0][0].text == "green tea"


def test_store_refuses_a_scale_beyond_float32(tmp_path):
    with MemoryStore(tmp_path / "m.db") as s:
        with pytest.raises(ValueError, match="scale 1e\\+308 is over"):
            s.add(user="u", text="x", vector=np.ones(8, np.int8), scale=1e308)
        assert s.count() == 0


# ----------------------------------------------------------------------------- 7, 11: users and limits


def test_empty_user_is_an_error_not_the_login_user(tmp_path, run):
    db = str(tmp_path / "m.db")
    code, out, err = run("add", "a secret", "--db", db, "--user", "")
    assert code == 2 and out == "" and "user must be non-empty" in _one_line_error(err)
    with MemoryStore(db) as s:
        assert s.count() == 0


def test_list_limit(tmp_path, run):
    db = str(tmp_path / "m.db")
    for t in ("one", "two", "three"):
        assert run("add", t, "--db", db, "--user", "u")[0] == 0
    assert run("list", "--db", db, "--user", "u", "--limit", "0")[1] == ""
    assert len(run("list", "--db", db, "--user", "u", "--limit", "2")[1].splitlines()) == 2
    code, out, err = run("list", "--db", db, "--user", "u", "--limit", "-1")
    assert code == 2 and out == "" and "limit must be an int >= 0" in _one_line_error(err)


def test_user_names_up_to_the_stated_limit_work_with_the_gate(tmp_path):
    with MemoryBank(tmp_path / "m.db", BagOfWords(), backend="numpy") as b:
        for n in (1020, 1024):
            user = "u" * n
            assert b.write("green tea", user=user, surprise=3.0).action == "added"
            assert b.search("green tea", k=1, user=user)[0][0].user == user
        with pytest.raises(ValueError, match="1025 characters, over the 1024-byte limit"):
            b.add("green tea", user="u" * 1025)


def test_new_database_directories_are_all_private(tmp_path):
    old = os.umask(0o022)
    try:
        with MemoryStore(tmp_path / "a" / "b" / "c" / "m.db"):
            pass
    finally:
        os.umask(old)
    for d in ("a", "a/b", "a/b/c"):
        assert os.stat(tmp_path / d).st_mode & 0o777 == 0o700, d


# ----------------------------------------------------------------------------- 9: permissions


@contextlib.contextmanager
def _unprivileged():
    """Run the block without root's power to ignore file modes (effective uid nobody)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def shared_dir(tmp_path, run):
    # Import everything lazily imported first: the interpreter's own files may not be
    # readable by the unprivileged uid.
    db = str(tmp_path / "warm.db")
    for argv in (["add", "x y"], ["search", "x"], ["list"], ["stats"], ["export", str(tmp_path / "w.jsonl")],
                 ["import", str(tmp_path / "w.jsonl")], ["forget", "--all"]):
        assert run(*argv, "--db", db, "--user", "u")[0] == 0
    d = tempfile.mkdtemp(prefix="msyn-perm-", dir="/tmp")
    if os.geteuid() == 0:
        os.chown(d, NOBODY, NOBODY)
    yield d
    os.chmod(d, 0o700)
    shutil.rmtree(d, ignore_errors=True)


def test_read_only_places_give_one_line_errors(shared_dir, run):
    ro = os.path.join(shared_dir, "ro")
    with _unprivileged():
        os.mkdir(ro, 0o700)
        db = os.path.join(ro, "m.db")
        with MemoryBank(db, BagOfWords(), backend="numpy") as b:
            b.add("green tea", user="u")
        os.chmod(ro, 0o500)
        try:
            # a new database in a read-only directory
            with pytest.raises(ValueError, match="cannot create the memory database .*Permission denied"):
                MemoryBank(os.path.join(ro, "new.db"), BagOfWords())
            with pytest.raises(ValueError, match="cannot create the directory"):
                MemoryStore(os.path.join(ro, "sub", "new.db"))
            # an existing database in a read-only directory is not "corrupted"
            with pytest.raises(ValueError, match="directory .* is not writable") as ei:
                MemoryBank(db, BagOfWords())
            assert "corrupt" not in str(ei.value)
            code, out, err = run("add", "x", "--db", os.path.join(ro, "new.db"), "--user", "u")
            assert code == 2 and "Permission denied" in _one_line_error(err)
        finally:
            os.chmod(ro, 0o700)
        # a read-only database file: searchable, and a write is a clean error
        os.chmod(db, 0o400)
        with MemoryBank(db, BagOfWords(), backend="numpy") as b:
            assert b.search("green tea", k=1, user="u")[0][0].text == "green tea"
            with pytest.raises(ValueError, match="is read-only .*chmod u\\+w"):
                b.add("black coffee", user="u")
            # export to a directory
            with pytest.raises(ValueError, match="is a directory"):
                b.export(ro)
        code, out, err = run("add", "black coffee", "--db", db, "--user", "u")
        assert code == 2 and "is read-only" in _one_line_error(err)
        code, out, err = run("export", ro, "--db", db, "--user", "u")
        assert code == 2 and "is a directory" in _one_line_error(err)
        os.chmod(db, 0o600)
        with MemoryStore(db) as s:
            assert [e["text"] for e in s.iter_entries()] == ["green tea"] and s.integrity_check() == "ok"


# ----------------------------------------------------------------------------- 17: search is a read


def test_search_writes_nothing_and_reads_only_what_it_returns(tmp_path, monkeypatch):
    words = "tea coffee cat dog porto lisbon blue red run swim plums pears".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 3)) + f" n{i}" for i in range(40)]
    db = tmp_path / "m.db"
    with MemoryBank(db, BagOfWords(), backend="numpy") as b:
        ids = b.add_many(texts, user="u")
        statements = []
        b.store._db.set_trace_callback(statements.append)
        changes = b.store._db.total_changes
        read = []
        get_many = b.store.get_many
        monkeypatch.setattr(b.store, "get_many", lambda i: read.append(len(i)) or get_many(i))
        q = b.encoder(["blue tea"])[0]
        want_ids, want_scores = b._index("u").search(q, 3)
        for _ in range(3):
            hits = b.search("blue tea", k=3, user="u")
        b.store._db.set_trace_callback(None)
        assert [e.id for e, _ in hits] == want_ids.tolist()
        assert [s for _, s in hits] == want_scores.tolist()  # the index's scores, not recomputed
        assert read == [3, 3, 3]  # only the rows returned
        assert b.store._db.total_changes == changes
        writes = [s for s in statements if s.split()[0].upper() in ("BEGIN", "INSERT", "UPDATE", "DELETE")]
        assert writes == []
        assert b.get(hits[0][0].id).hits == 3  # the uses are counted ...
    with MemoryStore(db) as s:  # ... and written at close
        got = {r["id"]: r["hits"] for r in s.iter_entries()}
        assert sorted(i for i in ids if got[i]) == sorted(e.id for e, _ in hits)
        assert all(got[e.id] == 3 for e, _ in hits)


def test_a_stored_huge_scale_does_not_break_the_user(tmp_path):
    db = tmp_path / "m.db"
    enc = BagOfWords()
    with MemoryBank(db, enc, backend="numpy") as b:
        b.add("green tea", user="u")
    raw = sqlite3.connect(db)  # as an older version's import left it
    codes, _ = np.ones(64, np.int8), None
    raw.execute("INSERT INTO entries (user, text, created, last_access, tier, dim, vector, scale, encoder) "
                "VALUES ('u', 'red pears', 0, 0, 'warm', 64, ?, 1e308, ?)", (codes.tobytes(), enc.name))
    raw.commit()
    raw.close()
    with MemoryBank(db, enc, backend="numpy") as b:
        b.add("black coffee", user="u")
        assert b.search("black coffee", k=1, user="u")[0][0].text == "black coffee"
        assert len(b.search("pears", k=5, user="u")) == 3


def test_every_command_on_a_read_only_file_is_one_line_or_works(shared_dir, run):
    with _unprivileged():
        db = os.path.join(shared_dir, "m.db")
        with MemoryBank(db, BagOfWords(), backend="numpy") as b:
            b.add("green tea", user="u")
        imp = os.path.join(shared_dir, "in.jsonl")
        with open(imp, "w") as f:
            f.write(json.dumps({"format": EXPORT_FORMAT}) + "\n" + json.dumps({"user": "u", "text": "plums"}) + "\n")
        os.chmod(db, 0o400)
        before = open(db, "rb").read()
        for argv in (["add", "black coffee"], ["search", "green tea"], ["list"], ["forget", "--all"],
                     ["forget", "1"], ["export", os.path.join(shared_dir, "out.jsonl")], ["import", imp],
                     ["stats"]):
            code, out, err = run(*argv, "--db", db, "--user", "u")
            if argv[0] in ("search", "list", "export", "stats"):
                assert code == 0 and err == "", (argv, err)
            else:
                assert code == 2 and "is read-only" in _one_line_error(err), (argv, err)
        assert open(db, "rb").read() == before
        os.chmod(db, 0o600)


def test_a_chat_turn_commits_once(tmp_path):
    """search (with touch) + write, as a chat turn does: one write transaction, which also
    carries the search's uses."""
    db = tmp_path / "m.db"
    with MemoryBank(db, BagOfWords(), backend="numpy") as b:
        a = b.add("my sister ana lives in porto", user="u")
        b.add("the cat is called miso", user="u")
        statements = []
        b.store._db.set_trace_callback(statements.append)
        assert b.search("where does my sister live", k=1, user="u")[0][0].id == a
        assert b.write("my sister has a dog called rex", user="u").action == "added"
        b.store._db.set_trace_callback(None)
        assert [s for s in statements if s.startswith("BEGIN")] == ["BEGIN IMMEDIATE"]
        other = sqlite3.connect(db)  # another reader sees the use already
        assert other.execute("SELECT hits FROM entries WHERE id = ?", (a,)).fetchone() == (1,)
        other.close()
