"""The store's full-text index (FTS5, BM25): kept in step with the entries on add,
update, delete and eviction; per user; superseded entries left out on request; a
schema-2 file written by the previous release upgrades in place; forgotten words
leave the file's bytes; a clear error where SQLite has no FTS5."""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3

import numpy as np
import pytest

import mlx_synapse.memory.store as store_mod
from mlx_synapse.memory.store import MemoryStore, fts_match

FIXTURE_V2 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "memory_v2.db")
V = np.linspace(-1, 1, 8).astype(np.float32)


def _bytes_of_dir(d):
    out = {}
    for n in sorted(os.listdir(d)):
        with open(os.path.join(d, n), "rb") as f:
            out[n] = f.read()
    return out


def _ids(hits):
    return [i for i, _ in hits]


@pytest.fixture
def store(tmp_path):
    with MemoryStore(str(tmp_path / "memory.db")) as s:
        yield s


def test_add_update_delete_keep_the_index_in_step(store):
    a, b, c = store.add_many([
        dict(user="u", text="My sister Ilse lives in Porto.", vector=V),
        dict(user="u", text="I work as a carpenter.", vector=V),
        dict(user="w", text="Ilse is someone else's sister here.", vector=V),
    ])
    assert _ids(store.text_search("u", ["ilse"], 10)) == [a]  # user w's Ilse is not seen
    assert _ids(store.text_search("w", ["Ilse"], 10)) == [c]
    assert _ids(store.text_search("u", ["living"], 10)) == [a]  # porter stemming: living ~ lives
    store.update(a, text="My sister Ilse moved to Braga.")
    assert store.text_search("u", ["porto"], 10) == []
    assert _ids(store.text_search("u", ["braga"], 10)) == [a]
    store.update(a, source="edited")  # not a text change: the index keeps the entry
    assert _ids(store.text_search("u", ["braga"], 10)) == [a]
    store.delete(a)
    assert store.text_search("u", ["braga", "ilse"], 10) == []
    assert store.delete_user("w") == 1
    assert store.text_search("w", ["ilse"], 10) == []
    store.apply_moves([(b, "cold")])  # cold entries are text only: not searchable
    assert store.text_search("u", ["carpenter"], 10) == []
    store.apply_moves([(b, None)])
    raw = store._db.execute("SELECT count(*) FROM entries_fts WHERE entries_fts MATCH 'carpenter'").fetchone()[0]
    assert raw == 0
    assert store._db.execute("INSERT INTO entries_fts(entries_fts) VALUES ('integrity-check')") is not None


def test_bm25_ranks_rarer_and_more_matching_words_first(store):
    ids = store.add_many([dict(user="u", text=t, vector=V) for t in (
        "The weather was nice today.", "Ilse lives in Porto with her cat.", "Porto is a city.",
        "I had coffee today.", "The cat sleeps today.")])
    hits = store.text_search("u", ["ilse", "porto", "today"], 10)
    assert hits[0][0] == ids[1] and all(s > 0 for _, s in hits)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert set(_ids(hits)) == {ids[0], ids[1], ids[2], ids[3], ids[4]}
    assert _ids(store.text_search("u", ["ilse", "porto", "today"], 2)) == _ids(hits)[:2]
    assert _ids(store.text_search("u", ["today"], 10, ids=[ids[3], ids[1]])) == [ids[3]]


def test_history_filter_uses_superseded_by(store):
    old, new, plain, listed = store.add_many([
        dict(user="u", text="I live in Lyon.", vector=V, metadata={"kind": "fact", "superseded_by": 2}),
        dict(user="u", text="I live in Porto now.", vector=V, metadata={"kind": "fact", "superseded_by": None}),
        dict(user="u", text="Where I live is sunny.", vector=V),
        dict(user="u", text="live list", vector=V, metadata=["not", "a", "dict"]),
    ])
    assert set(_ids(store.text_search("u", ["live"], 10))) == {old, new, plain, listed}
    assert set(_ids(store.text_search("u", ["live"], 10, include_history=False))) == {new, plain, listed}


@pytest.mark.parametrize("terms", [['"'], ["a\"b"], ["NEAR(", "*", "-"], ["AND", "OR", "NOT"], ["col:x"],
                                   ["^start"], ["", "  "], ["\x00"], ["\u00e9t\u00e9"]])
def test_any_terms_are_safe(store, terms):
    store.add_many([dict(user="u", text='A quote " and NEAR( and AND OR NOT col:x ^start été', vector=V)])
    store.text_search("u", terms, 5)  # no FTS5 syntax error, whatever the terms


def test_fts_match_quotes_every_term():
    assert fts_match(['say "hi"', "x"]) == '"say ""hi""" OR "x"'
    assert fts_match(["", " "]) is None and fts_match([]) is None


def test_schema_2_file_from_the_previous_release_upgrades_in_place(tmp_path):
    path = str(tmp_path / "memory.db")
    shutil.copy(FIXTURE_V2, path)
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 2
    raw.close()
    with MemoryStore(path) as s:
        assert s._db.execute("PRAGMA user_version").fetchone()[0] == store_mod.SCHEMA_VERSION == 3
        assert s.count() == 6 and s.get_meta("note") == "written by schema version 2"
        assert [r["text"] for r in s.get_many([1])] == ["My sister Ilse lives in Porto."]
        assert _ids(s.text_search("alice", ["ilse"], 10)) == [1, 3]  # the old entries are indexed
        assert _ids(s.text_search("alice", ["geneve"], 10)) == [5]  # diacritics folded
        assert s.text_search("alice", ["quinces"], 10) == []  # cold entry: text only
        assert _ids(s.text_search("bob", ["sushi"], 10)) == [4]
        new = s.add(user="alice", text="Ilse plays the cello.", vector=V)
        assert _ids(s.text_search("alice", ["cello"], 10)) == [new]
        assert s.integrity_check() == "ok"


def test_migration_that_fails_leaves_the_schema_2_file_as_it_was(tmp_path, monkeypatch):
    path = str(tmp_path / "memory.db")
    shutil.copy(FIXTURE_V2, path)
    real = store_mod._migrate_2_to_3

    def crash(db):
        real(db)  # the table and triggers exist inside the transaction ...
        raise KeyboardInterrupt  # ... and the process is interrupted before the commit

    monkeypatch.setattr(store_mod, "_MIGRATIONS", store_mod._MIGRATIONS[:2] + [crash])
    with pytest.raises(KeyboardInterrupt):
        MemoryStore(path)
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 2
    assert raw.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE 'entries_fts%'").fetchone()[0] == 0
    raw.close()
    monkeypatch.setattr(store_mod, "_MIGRATIONS", store_mod._MIGRATIONS[:2] + [real])
    with MemoryStore(path) as s:
        assert _ids(s.text_search("alice", ["porto"], 10)) == [1]


@pytest.mark.parametrize("how", ["delete", "delete_user", "update", "evict"])
def test_forgotten_words_leave_the_file(tmp_path, how):
    # A token that shares no prefix with the others, ending in a digit (porter leaves it whole):
    # FTS5 stores words, lowercased and prefix-compressed, so the needle is the word itself.
    word = f"qjx{secrets.token_hex(10)}7"
    path = str(tmp_path / "memory.db")
    with MemoryStore(path) as s:
        s.add_many([dict(user="keep", text=f"filler {i} words about {i % 7} things", vector=V) for i in range(300)])
        gone = s.add(user="gone", text=f"My secret is {word} indeed", vector=V)
        s.add_many([dict(user="keep", text=f"later filler {i}", vector=V) for i in range(300)])
        assert _ids(s.text_search("gone", [word], 5)) == [gone]
        s.checkpoint()
        assert any(word.encode() in b for b in _bytes_of_dir(tmp_path).values())  # the test can see it
        if how == "delete":
            s.delete(gone)
        elif how == "delete_user":
            s.delete_user("gone")
        elif how == "update":
            s.update(gone, text="My secret is nothing")
        else:
            s.apply_moves([(gone, None)])
        assert s.scrub() == []
        for name, data in _bytes_of_dir(tmp_path).items():
            assert word.encode() not in data, name
        assert s.text_search("gone", [word], 5) == []
        assert s.integrity_check() == "ok"


def test_without_fts5_one_clear_line_and_the_file_untouched(tmp_path, monkeypatch):
    path = str(tmp_path / "memory.db")
    shutil.copy(FIXTURE_V2, path)
    before = _bytes_of_dir(tmp_path)
    monkeypatch.setattr(store_mod, "_has_fts5", lambda: False)
    with pytest.raises(ValueError) as e:
        MemoryStore(path)
    msg = str(e.value)
    assert "\n" not in msg and "without FTS5" in msg and path in msg and "left untouched" in msg
    assert _bytes_of_dir(tmp_path) == before


def test_a_user_is_found_below_many_better_matches_of_another(store):
    store.add_many([dict(user="a", text=f"apple apple pie number {i}", vector=V) for i in range(300)])
    b = store.add(user="b", text="an apple and many other words in a long sentence about nothing", vector=V)
    assert _ids(store.text_search("b", ["apple"], 5)) == [b]
    assert len(store.text_search("a", ["apple"], 100)) == 100
