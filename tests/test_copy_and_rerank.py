"""Lexical re-ranking of memory search, the copy bias toward shown memories, and the
value replacement behind corrections."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_synapse.assistant import replace_value, restates
from mlx_synapse.copy_bias import make_copy_bias, next_copy_tokens
from mlx_synapse.memory.bank import MemoryBank
from mlx_synapse.memory.lexical import overlap, terms
from mlx_synapse.memory.retrieval import query_terms

from .test_memory_bank import BagOfWords

# ---------------------------------------------------------------- lexical


def test_terms_drop_stopwords_possessives_and_plurals():
    assert terms("What is my sister's dog called?") == {"sister", "dog", "called"}
    assert terms("Where does my sister live?") == terms("my sisters lives") == {"sister", "live"}
    assert terms("Is it the?") == frozenset()


def test_overlap_weights_rare_words():
    texts = ["My sister's name is Ana.", "My sister's dog is called Rex.", "My brother's dog is Fido."]
    o = overlap("What is my sister's dog called?", texts)
    assert o.argmax() == 1 and o[1] == pytest.approx(1.0)
    assert 0 < o[0] < 1 and 0 < o[2] < 1
    assert overlap("the of and", texts).tolist() == [0, 0, 0]
    assert overlap("dog", []).shape == (0,)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40), st.lists(st.text(max_size=40), max_size=6))
def test_overlap_is_a_share(query, texts):
    o = overlap(query, texts)
    assert o.shape == (len(texts),) and np.all(o >= 0) and np.all(o <= 1 + 1e-6)
    for t, v in zip(texts, o):
        if terms(query) and terms(query) <= terms(t):
            assert v == pytest.approx(1.0)


def test_bank_search_lexical_reranks_a_pool(tmp_path):
    bank = MemoryBank(tmp_path / "m.db", BagOfWords(), backend="numpy")
    try:
        bank.add_many([dict(text=t, force=True) for t in
                       ["my sister's name is ana", "my sister's dog is called rex", "my cat is called miso"]
                       + [f"filler note number {i}" for i in range(20)]], user="u")  # fewer than the pool of 32: all are candidates
        q = "what is my sister's dog called"
        dense = bank.search(q, 3, user="u", touch=False)
        mixed = bank.search(q, 3, user="u", touch=False, lexical=0.5)
        assert mixed[0][0].text == "my sister's dog is called rex"
        every = bank.search(q, 23, user="u", touch=False)
        cos = {e.id: s for e, s in every}
        bm = dict(bank.store.text_search("u", query_terms(q), 50))
        for e, s in mixed:  # score = cosine + w * BM25 / the pool's best BM25
            assert s == pytest.approx(cos[e.id] + 0.5 * bm.get(e.id, 0.0) / max(bm.values()), abs=1e-6)
        assert [s for _, s in mixed] == sorted((s for _, s in mixed), reverse=True)
        assert [e.text for e, _ in dense] == [e.text for e, _ in every[:3]]
        with pytest.raises(ValueError, match="lexical"):
            bank.search(q, 3, user="u", lexical=-1)
        with pytest.raises(ValueError, match="text"):
            bank.search(np.ones(64, np.float32), 3, user="u", lexical=0.2)
    finally:
        bank.close()


# ---------------------------------------------------------------- copy bias


def test_next_copy_tokens_follow_the_longest_match():
    src = [[5, 6, 7, 8, 9], [1, 6, 7, 2]]
    assert next_copy_tokens(src, [3, 6, 7]) == [2, 8]  # both sources match "6 7"
    assert next_copy_tokens(src, [5, 6, 7]) == [8]  # "5 6 7" is longer
    assert next_copy_tokens(src, [7]) == []  # shorter than min_match
    assert next_copy_tokens(src, [7], min_match=1) == [2, 8]
    assert next_copy_tokens(src, [8, 9]) == []  # the source ends there
    assert next_copy_tokens([], [1, 2]) == []


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=2, max_size=12), st.lists(st.integers(0, 5), max_size=6),
       st.data())
def test_copy_candidates_match_a_brute_force(src, prefix, data):
    p = data.draw(st.integers(1, len(src) - 1))
    gen = prefix + src[:p]  # the reply repeats the source up to position p
    got = next_copy_tokens([src], gen, min_match=1)
    assert src[p] in got or any(  # unless a longer match elsewhere wins
        gen[-L:] == src[q - L:q] for q in range(1, len(src)) for L in range(p + 1, min(len(gen), q) + 1))
    for t in got:  # every candidate continues some maximal-length match
        assert any(src[q] == t and gen[-1] == src[q - 1] for q in range(1, len(src)))


def test_copy_bias_numpy_and_mlx():
    proc = make_copy_bias([[10, 11, 12]], prompt_len=3, bonus=2.5)
    logits = np.zeros(20, np.float32)
    out = proc(np.array([1, 2, 3, 10, 11]), logits)
    assert out[12] == 2.5 and np.count_nonzero(out) == 1 and logits[12] == 0
    assert proc(np.array([10, 11, 12]), logits) is logits  # nothing generated yet: untouched
    mx = pytest.importorskip("mlx.core")
    o2 = proc(mx.array([1, 2, 3, 10, 11]), mx.zeros((1, 20)))
    assert np.asarray(o2)[0, 12] == 2.5 and np.count_nonzero(np.asarray(o2)) == 1
    with pytest.raises(ValueError, match="min_match"):
        make_copy_bias([[1, 2]], 0, min_match=0)


# ---------------------------------------------------------------- corrections


@pytest.mark.parametrize("memory,value,reply,question,want", [
    ("My favourite colour is gamboge.", "falu red", "Your favourite colour is gamboge.",
     "What is my favourite colour?", "My favourite colour is falu red."),
    ("My tailor lives in Quarnmere.", "Zorbeck", "Your tailor lives in Quarnmere.",
     "Which town is my tailor based in?", "My tailor lives in Zorbeck."),
    ("My sister's birthday is on 26 February.", "3 June", "It is on 26 February.",
     "When is my sister's birthday?", "My sister's birthday is on 3 June."),
    ("My alarm is set for 7:05 on weekdays.", "6:40", "7:05.", "What time is my weekday alarm?",
     "My alarm is set for 6:40 on weekdays."),
    ("My local pub is The Gloaming Hares.", "The Copper Kettles", "The Gloaming Hares.",
     "Which pub do I usually go to?", "My local pub is The Copper Kettles."),
    ("My grandfather's favourite band is The Quiet Anchors.", "The Fennel Orchards",
     "Your grandfather's favourite band is The Quiet Anchors.", "What music group is my grandfather a fan of?",
     "My grandfather's favourite band is The Fennel Orchards."),
    ("My accountant's favourite band is The Gloaming Cobbles.", "The Hollow Hares", "The Gloaming Cobbles.",
     "What music group is my accountant a fan of?", "My accountant's favourite band is The Hollow Hares."),
    ("My dentist is Dr. Voxley.", "Dr. Quinn", "Your dentist is Dr. Voxley.", "Who is my dentist?",
     "My dentist is Dr. Quinn."),
    ("We went to Ysolvane for our honeymoon.", "Kelby", "You went to Ysolvane.",
     "Where did we go on our honeymoon?", "We went to Kelby for our honeymoon."),
    ("My office is at 212 Voxmere Road.", "31 Kelby Road", "", "Where is my office?",
     "My office is at 31 Kelby Road."),
    ("I studied at the University of Kvaexwick.", "Brill", "You studied at the University of Kvaexwick.",
     "Which university did I attend?", "I studied at the University of Brill."),
])
def test_replace_value(memory, value, reply, question, want):
    new, sure = replace_value(memory, value, reply, question)
    assert new == want and sure > 0


def test_replace_value_needs_something_value_like():
    assert replace_value("the and of", "X", "", "") == (None, 0.0)
    assert replace_value("", "X") == (None, 0.0)


@pytest.mark.parametrize("old,new,same", [
    ("My favorite color is blue.", "My favorite color is green.", True),
    ("My sister lives in Paris.", "my sister lives in Lyon", True),
    ("My dog is called Rex.", "My dog is called Fido now.", True),
    ("My sister's name is Ana.", "My brother's name is Ana.", False),  # another subject
    ("I have a cat.", "I have a dog.", False),  # both can be true
    ("I went to Rome.", "I went to Paris.", False),
    ("My dog is called Rex.", "My dog is called Rex.", False),  # nothing changed
    ("My favorite color is blue.", "My favorite color is not blue.", False),
])
def test_restates(old, new, same):
    assert restates(old, new) is same


def test_copy_bias_steers_numpy_generation(tmp_path):
    """On a tiny random Llama: once the reply starts a source, a large bonus makes it
    finish the source token by token; a zero bonus changes nothing."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from mlx_synapse.backends.numpy import generate_step, load_model

    from .hf_models import hf_model

    hf_model("llama", std=0.2).save_pretrained(tmp_path, safe_serialization=True)
    model = load_model(tmp_path)
    prompt = np.array([1, 2, 3, 4])
    plain = [t for t, _ in generate_step(prompt, model, max_tokens=4)]
    src = [plain[0], 7, 9, 11]
    forced = [t for t, _ in generate_step(prompt, model, max_tokens=4, logits_processors=[
        make_copy_bias([src], len(prompt), bonus=1e4, min_match=1)])]
    assert forced == src
    same = [t for t, _ in generate_step(prompt, model, max_tokens=4, logits_processors=[
        make_copy_bias([src], len(prompt), bonus=0.0)])]
    assert same == plain
