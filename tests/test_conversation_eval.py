"""The conversation-memory suite: generator, split disjointness, scoring, recall@k, and
a run of the pipeline with fake systems, model and encoder (the real run is the CLI)."""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from mlx_synapse.benchmarks.conversation import families as fm
from mlx_synapse.benchmarks.conversation import generator as gen
from mlx_synapse.benchmarks.conversation import locomo, runner, scoring
from mlx_synapse.benchmarks.conversation.__main__ import main
from mlx_synapse.benchmarks.conversation.generator import Message, Question, User
from mlx_synapse.benchmarks.conversation.vocab import vocab

ROOT = Path(__file__).resolve().parents[1]
_WORD = re.compile(r"[a-z0-9]+")


def tuned_tokens() -> set:
    """Every word of what the system was tuned on: the old benchmark's generator, the
    retrieval set, and the assistant's worked examples."""
    from mlx_synapse.assistant import EXAMPLES

    text = (ROOT / "benchmarks/personal_facts.py").read_text() + (ROOT / "benchmarks/retrieval_set.py").read_text()
    text += " ".join(" ".join(e) for e in EXAMPLES)
    return set(_WORD.findall(text.lower()))


def value_tokens(split: str) -> set:
    return {w for vs in vocab(split).values() for v in vs for w in _WORD.findall(v.lower())}


# ---------------------------------------------------------------- generator


def test_generator_is_deterministic_and_seeded():
    a, b = gen.build_users("dev", 6, seed=3), gen.build_users("dev", 6, seed=3)
    assert [(u.messages, u.questions) for u in a] == [(u.messages, u.questions) for u in b]
    c = gen.build_users("dev", 6, seed=4)
    assert [u.messages for u in a] != [u.messages for u in c]
    assert gen.build_scale_user("heldout", 100, 5, seed=1).messages == gen.build_scale_user("heldout", 100, 5,
                                                                                              seed=1).messages
    assert locomo.build_dialogues("dev", 1, 2)[0].messages == locomo.build_dialogues("dev", 1, 2)[0].messages


def test_users_have_ordered_timestamps_evidence_and_one_question_per_category():
    for split in ("dev", "heldout"):
        users = gen.build_users(split, 20, seed=0)
        for u in users:
            ts = [m.ts for m in u.messages]
            assert ts == sorted(ts) and len({m.id for m in u.messages}) == len(u.messages)
            ids = {m.id: i for i, m in enumerate(u.messages)}
            cats = [q.category for q in u.questions]
            assert len(cats) == len(set(cats)) and "abstention" in cats
            for q in u.questions:
                assert all(e in ids for e in q.evidence)
                assert q.answerable == (q.category != "abstention")
                for item in q.gold:  # a question never gives its own answer away
                    assert not scoring.contains(q.text, item), q
                if q.category == "corrections":  # the correction comes right after the corrected message
                    i = ids[q.evidence[0]]
                    assert scoring.contains(u.messages[i - 1].text, q.forbidden)
                if q.category == "changes":  # the old value was said earlier
                    i = ids[q.evidence[0]]
                    assert any(scoring.contains(m.text, q.forbidden) for m in u.messages[:i])
                if q.category == "temporal":
                    assert q.gold[0] == gen.date_aliases(u.messages[ids[q.evidence[0]]].ts)
        counts = {c: sum(q.category == c for u in users for q in u.questions) for c in fm.CATEGORIES}
        assert min(counts.values()) >= 16, counts


def test_scale_user_has_n_distinct_facts_and_distractors():
    u = gen.build_scale_user("dev", 1000, 40, seed=0)
    assert u.facts == 1000 and u.distractors == 505 and len(u.messages) == 1505 and len(u.questions) == 40
    assert len({q.text for q in u.questions}) == 40  # one fact per subject and topic
    with pytest.raises(ValueError, match="distinct facts"):
        gen.build_scale_user("dev", 10**6, 1)


def test_date_aliases():
    ts = 1741953600.0  # 2025-03-14 12:00 UTC
    assert gen.date_aliases(ts) == ("14 March", "14th March", "14th of March", "March 14", "March 14th", "2025-03-14")
    assert "1st" in gen.date_aliases(1740830400.0)[1]  # 2025-03-01


# ---------------------------------------------------------------- split disjointness


def test_families_are_split_with_at_least_six_per_category():
    for cat in fm.CATEGORIES:
        dev, held = fm.families("dev", cat), fm.families("heldout", cat)
        assert len(dev) >= 3 and len(held) >= 3 and len(dev) + len(held) >= 6, cat
        dev_t = {t for f in dev for t in f.says + (f.ask,)}
        held_t = {t for f in held for t in f.says + (f.ask,)}
        assert not dev_t & held_t, cat
    assert not set(fm.CHATTER["dev"]) & set(fm.CHATTER["heldout"])


def test_values_are_disjoint_between_splits_and_from_what_was_tuned_on():
    dev, held, tuned = value_tokens("dev"), value_tokens("heldout"), tuned_tokens()
    assert not dev & held
    assert not held & tuned, sorted(held & tuned)
    assert not dev & tuned, sorted(dev & tuned)
    for split in ("dev", "heldout"):  # chit-chat never holds a value of either split
        for line in fm.CHATTER[split]:
            assert not set(_WORD.findall(line.lower())) & (dev | held), line


def test_heldout_users_use_only_heldout_families_and_values():
    dev_vals = value_tokens("dev")
    names = {f.name for f in fm.FAMILIES if f.split == "heldout"}
    for u in gen.build_users("heldout", 15, seed=0):
        assert all(q.family in names for q in u.questions)
        words = set(_WORD.findall(" ".join(m.text for m in u.messages).lower()))
        assert not words & dev_vals


def test_heldout_phrasings_are_not_in_the_tuned_files():
    """No held-out template's literal text (placeholders cut out) of four words or more
    appears in the tuned-on files."""
    from mlx_synapse.assistant import EXAMPLES

    tuned = " ".join(_WORD.findall(((ROOT / "benchmarks/personal_facts.py").read_text()
                                    + (ROOT / "benchmarks/retrieval_set.py").read_text()
                                    + " ".join(" ".join(e) for e in EXAMPLES)).lower()))
    for f in fm.FAMILIES:
        if f.split != "heldout":
            continue
        for t in f.says + (f.ask,):
            for piece in re.split(r"\{\w+\}", t):
                words = _WORD.findall(piece.lower())
                if len(words) >= 4:
                    assert f" {' '.join(words)} " not in f" {tuned} ", (f.name, piece)


# ---------------------------------------------------------------- scoring


def _q(category="first_person", gold=(("Tampere",),), forbidden=()):
    return Question("u:q0", "u", category, f"{category}.dev.0", "Where do I live?", gold, forbidden, ("u:m0",))


def test_scorer_on_crafted_replies():
    q = _q()
    assert scoring.score(q, "You live in Tampere.").right
    assert scoring.score(q, "you live in TAMPERE!").right
    assert not scoring.score(q, "You live in Tamperella.").right  # whole words only
    assert not scoring.score(q, "You live in Gdansk.").right
    ch = _q("changes", gold=(("welder", "welders"),), forbidden=("beekeeper", "beekeepers"))
    assert scoring.score(ch, "You work as a welder.").right
    s = scoring.score(ch, "You used to be a beekeeper and now you are a welder.")
    assert not s.right and s.old_value  # the old value present is wrong
    agg = _q("aggregation", gold=(("gerbil", "gerbils"), ("newt", "newts")))
    assert scoring.score(agg, "You have gerbils and a newt.").right
    assert not scoring.score(agg, "You have a gerbil.").right  # every item must be named
    ab = scoring.score(q, "I don't know where you live.")
    assert not ab.right and ab.abstained
    assert not scoring.score(q, "I'm not sure, but you live in Tampere.").abstained  # answered, so not abstained


def test_abstention_scoring():
    q = Question("u:q1", "u", "abstention", "abstention.dev.2", "What's my blood type?", (), (), ())
    values = ("Tampere", "welder")
    assert scoring.score(q, "I don't know your blood type.", values).right
    assert scoring.score(q, "You haven't told me that.", values).right
    assert scoring.score(q, "There is no information about it.", values).right
    assert not scoring.score(q, "Your blood type is O negative.", values).right  # invents a value
    assert not scoring.score(q, "I'm not sure; you live in Tampere.", values).right  # names a memory's value
    assert not scoring.says_unknown("You live in Tampere.")


def test_wilson_interval():
    assert scoring.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert scoring.wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert scoring.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert scoring.wilson(38, 40) == pytest.approx((0.8350, 0.9862), abs=1e-4)
    assert all(np.isnan(scoring.wilson(0, 0)))


# ---------------------------------------------------------------- retrieval and the pipeline


class BowEncoder:
    """Bag of hashed words, unit rows."""

    name, dim = "fake-bow", 256

    def __call__(self, texts):
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in scoring.normalize(t).split():
                out[i, zlib.crc32(w.encode()) % self.dim] += 1
            out[i] /= max(np.linalg.norm(out[i]), 1e-6)
        return out


@pytest.fixture
def bank(tmp_path):
    from mlx_synapse.memory import MemoryBank

    n = iter(range(100))
    return lambda **kw: MemoryBank(tmp_path / f"{next(n)}.db", encoder=BowEncoder(), backend="numpy", policy="lru",
                                   **kw)


def test_recall_at_k_on_a_tiny_dialogue(bank):
    msgs = [Message("d:m0", 0.0, "my aunt is called Vesna"), Message("d:m1", 1.0, "vesna lives in Kobe"),
            Message("d:m2", 2.0, "the weather is grey"), Message("d:m3", 3.0, "I play the bassoon"),
            Message("d:m4", 4.0, "the bus was late")]
    qs = [Question("d:q0", "d", "first_person", "f", "what do I play", (("bassoon",),), (), ("d:m3",)),
          Question("d:q1", "d", "two_hop", "f", "where does my aunt live", (("Kobe",),), (), ("d:m0", "d:m1"))]
    res = locomo.evidence_recall(bank(dedup=None), [User("d", msgs, qs)], ks=(1, 2, 5), lexical=(0.0,))
    # q0 finds its one turn first; q1's second turn ("vesna lives in kobe") shares only "lives" with
    # the question, so both turns are in the top 2 only when "live" != "lives": not in the top 2.
    rows = res["rows"]
    assert rows[0]["r@1@0.0"] and rows[0]["r@2@0.0"]
    assert not rows[1]["r@1@0.0"]  # two evidence turns never fit in the top 1
    assert rows[1]["r@5@0.0"]  # all five turns: everything is in
    assert res["recall@5 lexical=0.0"] == 1.0 and res["recall@1 lexical=0.0"] == 0.5
    assert locomo.recall_at(["a", "b", "c"], ["c", "a"], 3) and not locomo.recall_at(["a", "b", "c"], ["c", "a"], 2)


class Oracle:
    """Answers every question right (it peeks at the gold); 'I don't know' when there is none."""

    name = "oracle"

    def __init__(self, users):
        self.gold = {(q.user, q.text): q for u in users for q in u.questions}
        self.seen = []

    def ingest(self, user, messages):
        self.seen.append((user, len(messages)))

    def answer(self, user, question):
        from mlx_synapse.benchmarks.conversation.systems import Answer

        q = self.gold[(user, question)]
        return Answer(" and ".join(g[0] for g in q.gold) if q.gold else "I don't know.", 0.01)


class Shrug:
    name = "shrug"

    def ingest(self, user, messages):
        pass

    def answer(self, user, question):
        from mlx_synapse.benchmarks.conversation.systems import Answer

        return Answer("Sorry, I don't know.", 0.02)


def test_pipeline_with_pluggable_systems():
    users = runner.pick_users("dev", 4, seed=0)
    assert {c: sum(q.category == c for u in users for q in u.questions) for c in fm.CATEGORIES} == \
        {c: 4 for c in fm.CATEGORIES}
    oracle = Oracle(users)
    rows = runner.run_users({"oracle": oracle, "shrug": Shrug()}, users)
    assert len(rows) == 2 * 9 * 4 and len(oracle.seen) == len(users)
    s = runner.summarize(rows)
    for cat in fm.CATEGORIES:
        assert s["oracle"][cat]["right"]["k"] == 4
        assert s["shrug"][cat]["right"]["k"] == (4 if cat == "abstention" else 0)
    assert s["shrug"]["all answerable"]["wrong_abstention"]["rate"] == 1.0
    assert s["oracle"]["all answerable"]["wrong_abstention"]["rate"] == 0.0
    t = runner.table(s)
    assert "| abstention | 100% [51, 100] (4/4) | 100% [51, 100] (4/4) |" in t
    assert "| changes | 100% [51, 100] (4/4) | 0% [0, 49] (0/4) |" in t


class FakeTokenizer:
    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_plain_rag_puts_the_top_memory_and_its_date_in_the_user_turn(bank, monkeypatch):
    import mlx_synapse.generate as g
    from mlx_synapse.benchmarks.conversation.systems import PlainRAG

    seen = []

    def stream(model, tok, ids, **kw):
        seen.append(tok.decode(ids))
        yield SimpleNamespace(text="ok")

    monkeypatch.setattr(g, "stream_generate", stream)
    rag = PlainRAG(None, FakeTokenizer(), bank(dedup=None))
    rag.ingest("u", [Message("u:m0", 1741953600.0, "I play the bassoon"), Message("u:m1", 1741953700.0, "grey skies"),
                     Message("u:m2", 1741953800.0, "I play the bassoon")])
    assert len(rag.bank.list(user="u")) == 3  # verbatim, no merging
    a = rag.answer("u", "what do I play")
    assert seen[-1] == "user: Context: I play the bassoon (said on 14 March 2025)\n\nQuestion: what do I play\n\nassistant:"
    assert a.text == "ok" and a.shown == ["I play the bassoon"]
    rag.answer("nobody", "what do I play")
    assert seen[-1] == "user: what do I play\n\nassistant:"


def test_cli_bad_input_is_one_line_exit_2(capsys, tmp_path):
    for argv, needle in ((["--systems", "assistant,gpt"], "unknown gpt"), (["--limit", "0"], "--limit must be >= 1"),
                         (["--scales", "1,x"], "whole numbers"), (["--only", "bogus"], "unknown bogus"),
                         (["--out", str(tmp_path / "no" / "r.json")], "does not exist"),
                         (["--locomo-file", str(tmp_path / "none.json")], "not found")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err and "Traceback" not in err


def test_public_locomo_format_is_read_with_its_evidence_ids(tmp_path, bank):
    import json

    sample = {"sample_id": "conv-x", "qa": [
        {"question": "What does Ana bake?", "answer": "rye bread", "evidence": ["D1:2"], "category": 4},
        {"question": "Where did Ana move?", "answer": "Oslo", "evidence": ["D2:1", "D1:1"], "category": 1},
        {"question": "Broken evidence?", "answer": "x", "evidence": ["D9:99"], "category": 2}],
        "conversation": {"speaker_a": "Ana", "speaker_b": "Bo", "session_1_date_time": "1:00 pm on 8 May, 2023",
                         "session_1": [{"speaker": "Ana", "dia_id": "D1:1", "text": "I live in Lima."},
                                       {"speaker": "Ana", "dia_id": "D1:2", "text": "I bake rye bread.",
                                        "blip_caption": "a loaf"}],
                         "session_2": [{"speaker": "Bo", "dia_id": "D2:1", "text": "Ana moved to Oslo."}]}}
    f = tmp_path / "locomo10.json"
    f.write_text(json.dumps([sample]))
    (u,) = locomo.load_locomo(f)
    assert [m.text for m in u.messages] == ["Ana: I live in Lima.", "Ana: I bake rye bread. [shares a photo of a loaf]",
                                            "Bo: Ana moved to Oslo."]
    assert [q.category for q in u.questions] == ["single_hop", "multi_hop"]  # the broken one is left out
    res = locomo.evidence_recall(bank(dedup=None), [u], ks=(2, 3), lexical=(0.0,))
    assert res["recall@3 lexical=0.0"] == 1.0
    with pytest.raises(FileNotFoundError, match="not found"):
        locomo.load_locomo(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not LoCoMo JSON"):
        locomo.load_locomo(tmp_path / "bad.json")
