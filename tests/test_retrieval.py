"""Hybrid retrieval (mlx_synapse.memory.retrieval): query cleaning, hostile query strings,
two-hop questions, superseded facts hidden unless history is asked for, the adaptive
count, and MemoryBank.search's BM25 re-rank and include_history."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_synapse.memory.bank import MemoryBank
from mlx_synapse.memory.retrieval import entities, query_terms

from .test_memory_bank import BagOfWords

FILLER = [f"note {i}: the weather on day {i} was mild and grey" for i in range(40)]


@pytest.fixture
def bank(tmp_path):
    b = MemoryBank(tmp_path / "m.db", BagOfWords(), backend="numpy", dedup=None)
    yield b
    b.close()


def _texts(hits):
    return [h.entry.text for h in hits]


def test_query_terms_drop_question_words_keep_content_and_other_languages():
    assert query_terms("Where does my sister live?") == ["sister", "live"]
    assert query_terms("What is my job?") == ["job"]
    assert query_terms("Wo wohnt meine Schwester?") == ["wo", "wohnt", "meine", "schwester"]
    assert query_terms("What is it?") == ["what", "is", "it"]  # nothing left: keep every word
    assert query_terms("?!") == []


def test_entities_are_capitalised_words_inside_sentences():
    assert entities("My sister is called Ilse. She moved to Porto in June.") == ["ilse", "porto", "june"]
    assert entities("Ilse lives in Porto.", exclude=["porto"]) == []  # the first word opens the sentence
    assert entities("Caroline: I painted a Lake at dawn.") == ["lake"]  # a speaker's prefix is no name


def test_two_hop_question_finds_the_bridged_fact(bank):
    bank.add_many(FILLER + ["My sister is called Ilse.", "Ilse lives in Porto.", "Porto has nice bridges.",
                            "My brother Tomas works in a bakery."], user="u")
    q = "Where does my sister live?"
    one = _texts(bank.retrieve(q, 3, user="u", hops=0, adaptive=False, touch=False))
    assert "My sister is called Ilse." in one
    hits = bank.retrieve(q, 3, user="u", adaptive=False, touch=False)
    texts = _texts(hits)
    assert texts[:1] == ["My sister is called Ilse."] or "My sister is called Ilse." in texts
    assert "Ilse lives in Porto." in texts
    bridged = [h for h in hits if h.entry.text == "Ilse lives in Porto."][0]
    sister = [h for h in hits if h.entry.text == "My sister is called Ilse."][0]
    assert bridged.via == sister.entry.id or bridged.text_score > 0


def test_two_hop_without_shared_words(bank):
    # The second fact shares no word with the question: only the hop can bring it.
    bank.add_many(["My manager is called Odalys.", "Odalys drives a red tractor."] + FILLER, user="u")
    q = "Which vehicle does my manager use?"
    flat = _texts(bank.retrieve(q, 3, user="u", hops=0, adaptive=False, touch=False))
    # without the hop only the dense list can rank it, below the name's fact and a filler note
    assert flat[0] == "My manager is called Odalys." and flat[1] != "Odalys drives a red tractor."
    hits = bank.retrieve(q, 5, user="u", adaptive=False, touch=False)
    assert _texts(hits)[:2] == ["My manager is called Odalys.", "Odalys drives a red tractor."]
    assert hits[1].via == hits[0].entry.id


def test_superseded_facts_are_hidden_unless_history_is_asked(bank):
    old = bank.add("I live in Lyon.", user="u", metadata={"kind": "fact", "slot": "user.city"})
    new = bank.add("I live in Porto now.", user="u", metadata={"kind": "fact", "slot": "user.city",
                                                               "superseded_by": None})
    bank.update(old, user="u", metadata={"kind": "fact", "slot": "user.city", "superseded_by": new})
    bank.add_many(FILLER, user="u")
    q = "Where do I live?"
    for hits in (bank.retrieve(q, 10, user="u", adaptive=False, touch=False),
                 [h for h, _ in [(e, s) for e, s in bank.search(q, 10, user="u", touch=False)]],
                 [e for e, _ in bank.search(q, 10, user="u", lexical=0.3, touch=False)]):
        ids = [getattr(h, "entry", h).id for h in hits]
        assert new in ids and old not in ids
    assert old in [h.entry.id for h in bank.retrieve(q, 10, user="u", include_history=True, adaptive=False,
                                                     touch=False)]
    assert old in [e.id for e, _ in bank.search(q, 10, user="u", include_history=True, touch=False)]


def test_superseded_pool_grows_until_k_remain(bank):
    ids = bank.add_many([f"fact number {i} about my city" for i in range(30)], user="u")
    for i in ids[:25]:
        bank.update(i, user="u", metadata={"superseded_by": ids[-1]})
    got = bank.search("fact number about my city", 5, user="u", touch=False)
    assert len(got) == 5 and {e.id for e, _ in got} == set(ids[25:])


def test_adaptive_count_stops_at_a_sharp_drop(bank):
    bank.add_many(FILLER + ["My dog Rex likes long walks.", "Rex the dog sleeps on the sofa."], user="u")
    fixed = bank.retrieve("What does my dog Rex like?", 10, user="u", adaptive=False, touch=False)
    adaptive = bank.retrieve("What does my dog Rex like?", 10, user="u", touch=False)
    assert len(fixed) == 10 and 1 <= len(adaptive) < 10
    assert _texts(adaptive) == _texts(fixed)[:len(adaptive)]
    assert "My dog Rex likes long walks." in _texts(adaptive)
    scores = [h.score for h in fixed]
    assert scores == sorted(scores, reverse=True)
    cut = len(adaptive)
    assert scores[cut] < 0.6 * scores[cut - 1]  # it stopped where the score fell below drop x the previous
    from mlx_synapse.memory.retrieval import adaptive_prefix

    assert _texts(adaptive_prefix(fixed)) == _texts(adaptive)  # the cut, taken from the uncut hits


def test_min_score_gates_on_the_cosine(bank):
    bank.add_many(FILLER + ["My dog Rex likes long walks."], user="u")
    hits = bank.retrieve("dog Rex walks", 5, user="u", min_score=0.3, touch=False)
    assert hits and all(h.cosine >= 0.3 for h in hits)
    assert bank.retrieve("zebra quantum", 5, user="u", min_score=0.5, touch=False) == []


def test_retrieve_counts_uses_only_when_asked(bank):
    i = bank.add("My dog Rex likes long walks.", user="u")
    bank.retrieve("dog Rex", 3, user="u", touch=False)
    assert bank.get(i).hits == 0
    bank.retrieve("dog Rex", 3, user="u")
    assert bank.get(i).hits == 1


def test_users_are_kept_apart(bank):
    bank.add("My sister is called Ilse.", user="a")
    bank.add("Ilse lives in Porto.", user="b")
    assert _texts(bank.retrieve("Where does my sister live?", 5, user="a", adaptive=False,
                                touch=False)) == ["My sister is called Ilse."]


def test_bank_search_lexical_is_bm25_over_the_pool(bank):
    bank.add_many([dict(text=t, force=True) for t in
                   ["my sister's name is ana", "my sister's dog is called rex", "my cat is called miso"]
                   + [f"filler note number {i}" for i in range(20)]], user="u")
    q = "what is my sister's dog called"
    every = dict((e.id, s) for e, s in bank.search(q, 23, user="u", touch=False))
    bm = dict(bank.store.text_search("u", query_terms(q), 50))
    top = max(bm.values())
    mixed = bank.search(q, 3, user="u", touch=False, lexical=0.5)
    assert mixed[0][0].text == "my sister's dog is called rex"
    for e, s in mixed:
        assert s == pytest.approx(every[e.id] + 0.5 * bm.get(e.id, 0.0) / top, abs=1e-6)


HOSTILE = st.one_of(
    st.text(max_size=60),
    st.lists(st.sampled_from(['"', "'", "*", "(", ")", ":", "^", "-", "+", "NEAR", "AND", "OR", "NOT", "{", "}",
                              "\x00", "NEAR/3", "col:", "\\", "é", "字", " ", "?"]), max_size=20).map("".join),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=HOSTILE)
def test_no_query_string_raises_from_the_word_index(bank, query):
    if not bank.list(user="u", limit=1):
        bank.add_many(['A quote " NEAR( AND OR NOT col:x ^start', "My dog Rex likes walks.", "été 字"], user="u")
    for w in query_terms(query), [query], query.split():
        bank.store.text_search("u", w, 5)
    if query.strip():
        bank.retrieve(query, 3, user="u", touch=False)
        bank.search(query, 3, user="u", lexical=0.2, touch=False)
