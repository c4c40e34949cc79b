"""The personalization benchmark: its fact generator, its answer matcher, and a fast run
of every phase with a fake model, tokenizer and encoder (the real run is the CLI)."""

from __future__ import annotations

import dataclasses
import re
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from mlx_synapse.benchmarks import personal_facts as pf
from mlx_synapse.benchmarks import personalization as pz

# ---------------------------------------------------------------- generator


def test_build_is_deterministic_and_seeded():
    assert pf.build(0) == pf.build(0)
    a, b = pf.build(0), pf.build(1)
    assert [f.answer for f in a.facts] != [f.answer for f in b.facts]
    assert a.distractors != b.distractors


def test_values_do_not_depend_on_how_many_facts():
    small, big = pf.build(3, 300), pf.build(3, 1000)
    assert big.facts[:300] == small.facts


def test_counts():
    data = pf.build(0)
    assert len(data.facts) >= 300 and len(data.distractors) >= 100
    assert all(len(f.questions) >= 2 and len(set(f.questions)) == len(f.questions) for f in data.facts)
    assert len({f.key for f in data.facts}) == len(data.facts)
    assert len({f.text for f in data.facts}) == len(data.facts)
    assert len(set(data.distractors)) == len(data.distractors)
    assert len(pf.build(0, 1000).facts) == 1000
    assert {"people", "pets", "personal"} <= {f.category for f in data.facts}


def test_no_distractor_or_question_gives_an_answer():
    for seed, n in ((0, 300), (5, 1000)):
        data = pf.build(seed, n)
        answers = {f" {pf.normalize(a)} " for f in data.facts for a in f.accepted + f.correction_accepted}
        for d in data.distractors:
            padded = f" {pf.normalize(d)} "
            assert not any(a in padded for a in answers), d
        for f in data.facts:
            assert f.answer in f.text and f.correction in f.corrected_text
            assert pf.normalize(f.answer) != pf.normalize(f.correction)
            for q in f.questions:
                assert not pf.matches(q, f.accepted + f.correction_accepted), q


def test_values_are_unique_within_a_user():
    data = pf.build(0, 1000)
    vals = [pf.normalize(v) for f in data.facts for v in (f.answer, f.correction)]
    assert len(set(vals)) == len(vals)


def test_bad_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="n_facts"):
        pf.build(0, 0)
    with pytest.raises(ValueError, match="n_questions"):
        pf.build(0, 10, n_questions=4)


# ---------------------------------------------------------------- matcher


@pytest.mark.parametrize("reply,accepted,ok", [
    ("Your dentist is Dr. Okonkwo.", ["Dr. Okonkwo"], True),
    ("Your dentist is dr okonkwo", ["Dr. Okonkwo"], True),
    ("Your sister lives in Zürichmere!", ["Zurichmere"], True),
    ("Her birthday is on March 3rd.", ["3 March", "March 3"], True),
    ("It is 4,817.", ["4817"], False),  # digits split by a comma are two numbers
    ("Your locker is 4817.", ["4817"], True),
    ("Annabel", ["Ann"], False),  # whole words only
    ("I don't know.", ["Ysolde"], False),
    ("anything", [""], False),
])
def test_matches(reply, accepted, ok):
    assert pf.matches(reply, accepted) is ok


def test_first_sentence_keeps_titles():
    assert pf.first_sentence("Your dentist is Dr. Brask. He is nice.") == "Your dentist is Dr. Brask."
    assert pf.first_sentence("No full stop") == "No full stop"
    assert pf.normalize("Ça  va, 21st") == "ca va 21"


def test_variants_cover_date_forms():
    v = pf.variants("3 March 2019", "date")
    assert {"March 3 2019", "03/03/2019", "3 of March 2019"} <= set(v)
    assert pf.matches("She was born on March 3, 2019.", v)


# ---------------------------------------------------------------- fake run


class FakeEncoder:
    """Bag of hashed words, unit rows."""

    name, dim = "fake-bow", 64

    def __call__(self, texts):
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in pf.normalize(t).split():
                out[i, zlib.crc32(w.encode()) % self.dim] += 1
            out[i] /= max(np.linalg.norm(out[i]), 1e-6)
        return out


class FakeTokenizer:
    vocab = 128  # ASCII; anything else reads as 127

    def encode(self, text):
        return [min(ord(c), 127) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


@dataclasses.dataclass
class FakeWeights:
    table: np.ndarray
    layers: list


class FakeModel:
    backend = "numpy"

    def __init__(self):
        r = np.random.default_rng(0)
        self.weights = FakeWeights(r.standard_normal((FakeTokenizer.vocab, FakeTokenizer.vocab)).astype(np.float32),
                                   [r.standard_normal(3).astype(np.float32)])

    def __call__(self, ids):
        return self.weights.table[np.asarray(ids) % FakeTokenizer.vocab]


def fake_reply(prompt: str) -> str:
    """A 'model' that repeats the last user turn, whatever it holds: the memories shown and
    the question, or the bare question. It answers right exactly when the answer is in the
    prompt's last turn (no question contains its answer: test_no_distractor_or_question_...)."""
    last = prompt.rsplit("user: ", 1)[-1]
    return last.rsplit("\n\nassistant:", 1)[0]


def fake_gen(model, tok, ids, max_tokens, processors=None):
    return fake_reply(tok.decode(ids)), 0.001


@pytest.fixture
def fake(tmp_path, monkeypatch):
    import mlx_synapse.assistant as assistant
    from mlx_synapse.memory import MemoryBank

    def stream(model, tok, ids, **kw):
        yield SimpleNamespace(text=fake_reply(tok.decode(ids)), generation_tokens=1, generation_tps=1.0)

    monkeypatch.setattr(assistant, "stream_generate", stream)
    enc = pz.CachedEncoder(FakeEncoder())
    banks = iter(range(100))
    return SimpleNamespace(model=FakeModel(), tok=FakeTokenizer(), enc=enc,
                           bank=lambda: MemoryBank(tmp_path / f"{next(banks)}.db", encoder=enc, backend="numpy",
                                                   policy="lru"))


@pytest.fixture
def eval_dir(tmp_path, monkeypatch):
    """A tiny WikiText-2 and HellaSwag (5 items) for (d)."""
    import bz2

    d = tmp_path / "eval"
    d.mkdir()
    (d / pz.WIKITEXT).write_text(" = Valkyria Chronicles = \n The game began development in 2010 . " * 20)
    items = []
    for i in range(5):
        items += [f"A person opens box {i} and", str(i % 4), "finds a cat.", "finds a hat.", "sings.", "leaves."]
    with bz2.open(d / pz.HELLASWAG, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(items) + "\n")
    monkeypatch.setattr(pz, "EVAL_DIR", d)
    return d


def test_fake_run_of_every_phase(fake, eval_dir):
    fs = pf.build(0, 300, n_distractors=100)
    a = pz.accuracy_with_without(fake.model, fake.tok, fake.bank(), fs, 2, 30, 0, 8, gen=fake_gen)
    # The fake answers from whatever the prompt holds: "without" is 0 only because no memory
    # reaches that prompt (the other user's bank is empty), and "with" is retrieval's rate.
    assert a["n"] == 30 and a["without"] == 0.0
    assert all(t["prompt_tokens"] < 200 for t in a["turns_without"])
    assert a["with_"] == pytest.approx(a["in_context"])  # the fake reads perfectly whatever it is shown
    assert a["with_"] > 0.3
    b = pz.accuracy_vs_scale(fake.model, fake.tok, fake.bank(), [1, 10], 2, 6, 0, 8, gen=fake_gen)
    assert [r["n"] for r in b] == [6, 6] and b[0]["users"] == 3
    c = pz.corrections(fake.model, fake.tok, fake.bank(), fs, 4, 0, 8, gen=fake_gen)
    assert c["n"] == 4
    # The fake repeats what it is shown: the memory is corrected (superseded by a new fact with
    # the new value) exactly when it was the one shown before the correction (3 of these 4; the
    # fake encoder shows another fact for the first). The next question is answered with the new
    # value exactly when retrieval shows the corrected memory (all three: the full-text half of
    # the hybrid search finds "My niece's dog is called ..." for "What's the name of my niece's
    # dog?", which the bag-of-words encoder alone ranked below "My niece's name is ...").
    assert [r["right_memory_first"] for r in c["rows"]] == [False, True, True, True]
    assert [r["stored_has_new"] for r in c["rows"]] == [False, True, True, True]
    assert [r["right_after"] for r in c["rows"]] == [r["stored_has_new"] and r["shown_after"] for r in c["rows"]]
    assert [r["right_after"] for r in c["rows"]] == [False, True, True, True]
    assert not any(r["old_in_reply"] for r in c["rows"] if r["stored_has_new"])
    assert c["learned_corrected"] == 1.0 and c["after"] == 0.75
    f = pz.sessions(fake.model, fake.tok, fake.bank(), fs, 10, 5, 0, 8, gen=fake_gen)
    assert f["n"] == 10 and set(f["by_position"]) == set(range(5))
    assert f["acc"] == pytest.approx(f["in_context"])
    d = pz.zero_forgetting(fake.model, fake.tok, fake.bank(), 150, 3, 0)
    assert d["identical"] and d["writes"] == 150 and d["max_score_diff"] == 0.0
    assert d["before"]["hellaswag"]["n"] == 3 and d["before"]["ppl"] > 1.0
    res = dict(machine=pz.machine(), command="x", model="fake", backend="numpy", max_tokens=8, seed=0, seconds=1.0,
               a=a, b=b, c=c, d=d, e=pz.latency(a), f=f)
    text = pz.report(res)
    for head in ("(a) Instant adaptation", "(b) Accuracy vs facts", "(c) Corrections", "(d) Zero forgetting",
                 "(e) Latency", "(f) Questions within one session", "Instant Adaptation Score"):
        assert head in text


def test_weights_digest_sees_every_array():
    m = FakeModel()
    d0 = pz.weights_digest(m)
    assert d0["arrays"] == 2 and d0["parameters"] == 128 * 128 + 3
    m.weights.layers[0][1] += 1e-7
    assert pz.weights_digest(m)["sha256"] != d0["sha256"]


def test_cached_encoder_encodes_queries_afresh():
    calls = []

    class Counting(FakeEncoder):
        def __call__(self, texts):
            calls.append(list(texts))
            return super().__call__(texts)

    enc = pz.CachedEncoder(Counting())
    enc(["a b", "c d"])
    enc(["a b", "c d", "e"])
    enc(["a b"])
    assert calls == [["a b", "c d"], ["e"], ["a b"]]


def test_zero_forgetting_sees_a_changed_model(fake, eval_dir):
    """(d) is not identical when the writes change the model (a bank that nudges one weight)."""

    class Tampering:
        def __init__(self, bank, model):
            self.bank, self.model = bank, model

        def write_many(self, items, **kw):
            self.model.weights.table[65, 66] += 1e-3
            return self.bank.write_many(items, **kw)

        def stats(self):
            return self.bank.stats()

    d = pz.zero_forgetting(fake.model, fake.tok, Tampering(fake.bank(), fake.model), 20, 5, 0)
    assert d["identical"] is False and d["writes"] == 20
    assert d["before"]["weights"]["sha256"] != d["after"]["weights"]["sha256"]


def test_without_memory_counts_a_leaked_memory(fake):
    """The "without" condition would score when memories reached its prompt."""
    fs = pf.build(0, 300, n_distractors=100)
    bank = fake.bank()
    pz._store(bank, "a-nobody", fs, len(fs.facts))  # the no-memory user now has the facts
    a = pz.accuracy_with_without(fake.model, fake.tok, bank, fs, 2, 30, 0, 8, gen=fake_gen)
    assert a["without"] == pytest.approx(a["with_"]) and a["without"] > 0.3


def test_missing_eval_data_fails_loudly(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pz, "EVAL_DIR", tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match=r"wikitext2_raw_test.txt.*--skip d"):
        pz.zero_forgetting(fake.model, fake.tok, fake.bank(), 10, 3, 0)
    with pytest.raises(SystemExit) as e:  # before the model is loaded
        pz.main(["--skip", "a", "b", "c", "f", "--model", str(tmp_path / "no-model")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hellaswag_val_full.txt.bz2" in err[0] and "--skip d" in err[0]
