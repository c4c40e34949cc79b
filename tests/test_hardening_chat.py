"""The chat's hardening (issue 18): /forget deletes what the user meant and asks when
several memories match; invalid UTF-8 and a database that cannot be written give one-line
messages; long messages are chunked into memories and the prompt fits the context."""

from __future__ import annotations

import re
import io
import sqlite3
from types import SimpleNamespace

import pytest

import mlx_synapse.assistant as assistant_mod
from mlx_synapse import chat
from mlx_synapse.assistant import Assistant
from mlx_synapse.chat_limits import split_chunks, truncate_tokens
from mlx_synapse.memory.bank import MemoryBank

from .test_memory_bank import BagOfWords

DOG = "My dog is called Pickle."
ALLERGY = "My dog is called Pickle and he is allergic to chicken."


class WordTokenizer:
    """One token per word; no chat template."""

    def encode(self, text, **kw):
        return list(range(len(text.split())))


@pytest.fixture
def bank(tmp_path):
    b = MemoryBank(tmp_path / "m.db", BagOfWords(), backend="numpy")
    yield b
    b.close()


@pytest.fixture
def assistant(bank):
    return Assistant(None, WordTokenizer(), bank, user="me", min_score=0.3)


def texts(bank, user="me"):
    return [e.text for e in bank.list(user=user)]


# ------------------------------------------------------------------ /forget (item 5)


def test_forget_exact_text_deletes_only_that_memory(assistant, bank):
    assistant.remember(DOG)
    assistant.remember(ALLERGY)
    assert [e.text for e, _ in bank.search(DOG, 5, user="me", min_score=0.5)] == [DOG, ALLERGY]  # both close
    assert [(e.text, s) for e, s in assistant.forget_candidates("my dog is called pickle")] == [(DOG, 1.0)]
    assert [e.text for e in assistant.forget(DOG)] == [DOG]
    assert texts(bank) == [ALLERGY]


def test_forget_with_several_matches_deletes_nothing_unless_told(assistant, bank):
    assistant.remember(DOG)
    assistant.remember(ALLERGY)
    assistant.remember("I work at the harbour office.")
    q = "dog is called pickle"
    with pytest.raises(ValueError, match=r"2 memories match 'dog is called pickle': 1\. 'My dog is called Pickle "
                                         r"and he is allergic to chicken\.'; 2\. 'My dog is called Pickle\.'\. Pass which="):
        assistant.forget(q)
    assert len(texts(bank)) == 3
    with pytest.raises(ValueError, match="positions must be 1 to 2"):
        assistant.forget(q, which=[3])
    assert [e.text for e in assistant.forget(q, which=[1])] == [ALLERGY]
    assert texts(bank) == [DOG, "I work at the harbour office."]
    assistant.remember(ALLERGY)
    assert sorted(e.text for e in assistant.forget(q, which="all")) == sorted([DOG, ALLERGY])
    assert texts(bank) == ["I work at the harbour office."]


class FakeModel:
    backend = "numpy"

    def __init__(self, context=None):
        self.config = {"max_position_embeddings": context} if context else {}


def fake_stream(model, tok, ids, **kw):
    for w in ("It", " is", " noted."):
        yield SimpleNamespace(text=w, generation_tokens=1, generation_tps=1.0)


def chat_run(tmp_path, monkeypatch, stdin, *extra, bank_class=MemoryBank, context=None):
    """``chat.run`` on scripted ``stdin`` (str, or bytes read as a binary stream) with a
    fake model and the bag-of-words bank; returns (exit status, stdout, stderr)."""
    import mlx_synapse.loader
    import mlx_synapse.memory.bank

    monkeypatch.setattr(mlx_synapse.loader, "load", lambda *a, **k: (FakeModel(context), WordTokenizer()))
    monkeypatch.setattr(mlx_synapse.memory.bank, "MemoryBank",
                        lambda path, backend=None: bank_class(path, BagOfWords(), backend="numpy"))
    monkeypatch.setattr(assistant_mod, "stream_generate", fake_stream)
    args = chat._parser().parse_args(["--db", str(tmp_path / "chat.db"), "--user", "me", *extra])
    if isinstance(stdin, bytes):
        stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    else:
        stdin = io.StringIO(stdin)
    out, err = io.StringIO(), io.StringIO()
    rc = chat.run(args, stdin=stdin, out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def test_chat_forget_shows_and_asks(tmp_path, monkeypatch):
    script = (f"/remember {DOG}\n/remember {ALLERGY}\n"
              "/forget dog is called pickle\n\n"  # several: an empty answer cancels
              "/forget dog is called pickle\nWhat is my dog called?\n"  # not a choice: nothing deleted
              "/forget dog is called pickle\n7\n"  # out of range: nothing deleted
              f"/forget {DOG}\n"  # the exact text: that one, shown
              "/memories\n")
    rc, out, err = chat_run(tmp_path, monkeypatch, script)
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[:2] == ["remembered [1]", "remembered [2]"]
    assert lines[2:6] == ["2 memories match 'dog is called pickle':", f"  1. [2] {ALLERGY}", f"  2. [1] {DOG}",
                          "forget which? numbers (e.g. 1 3), 'all', or an empty line to cancel: "]
    assert lines[6] == "nothing forgotten"
    assert "'What is my dog called?' is not a choice (numbers 1 to 2, or 'all'): nothing forgotten" in lines
    assert "'7' is not a choice (numbers 1 to 2, or 'all'): nothing forgotten" in lines
    assert f"forgot 1: [1] {DOG}" in lines
    assert lines[-1] == f"  [2] {ALLERGY}"
    rc, out, _ = chat_run(tmp_path, monkeypatch, f"/remember {DOG}\n/forget dog is called pickle\n2 1\n/memories\n")
    assert out.splitlines()[-1] == f"forgot 2: [2] {ALLERGY}; [3] {DOG}"
    rc, out, _ = chat_run(tmp_path, monkeypatch, "/forget #9\n/forget nothing like it\n")
    assert out.splitlines() == ["no memory #9 (see /memories)", "no memory matches 'nothing like it' (see /memories)"]


# ------------------------------------------------------------------ tracebacks (item 9)


def test_invalid_utf8_line_is_skipped_with_a_message(tmp_path, monkeypatch):
    rc, out, err = chat_run(tmp_path, monkeypatch, b"My cat is called Miso.\n\xff\xfeMy \xe9 dog\n/memories\n")
    assert rc == 1
    assert err.splitlines() == ["error: input line 2 is not valid UTF-8 (byte 0xff at offset 0); skipped it. "
                                "Send UTF-8 text."]
    assert out.splitlines() == ["It is noted.", "  [1] My cat is called Miso."]


class ReadOnlyBank(MemoryBank):
    """A bank whose file cannot be written (as SQLite reports a read-only file)."""

    def _no(self, *a, **k):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    write_many = update = forget = _no

    def search(self, *a, touch=True, **k):
        if touch:
            self._no()
        return super().search(*a, touch=touch, **k)


def test_read_only_database_is_read_with_one_message(tmp_path, monkeypatch):
    with MemoryBank(tmp_path / "chat.db", BagOfWords(), backend="numpy") as b:
        b.add("My cat is called Miso.", user="me", force=True)
    rc, out, err = chat_run(tmp_path, monkeypatch, "What is my cat called?\nMy dog is Rex.\n/remember x y\n"
                            "/forget My cat is called Miso.\n/why\n", "--verbose", bank_class=ReadOnlyBank)
    assert rc == 0
    lines = err.splitlines()
    assert len(lines) == 3 and all(ln.startswith("error: the memory database ") for ln in lines), err
    assert "attempt to write a readonly database" in lines[0] and "--db PATH" in lines[0]
    # The score shown is the memory's INT8 cosine (0.746 here; the word-overlap bonus of the old re-rank is
    # no longer added): the memory line itself is the point.
    first, shown = out.splitlines()[:2]
    assert first == "It is noted." and re.fullmatch(r"  0\.74[67] \[1\] My cat is called Miso\.", shown), out
    assert out.count("It is noted.") == 2 and "Traceback" not in err
    with MemoryBank(tmp_path / "chat.db", BagOfWords(), backend="numpy") as b:
        assert texts(b) == ["My cat is called Miso."]


def test_stopped_reply_keeps_the_session(assistant):
    def slow(model, tok, ids, **kw):
        yield SimpleNamespace(text="Half", generation_tokens=1, generation_tps=1.0)
        raise KeyboardInterrupt  # Ctrl-C while the next token is computed

    assistant_mod_stream = assistant_mod.stream_generate
    assistant_mod.stream_generate = slow
    try:
        with pytest.raises(KeyboardInterrupt):
            list(assistant.stream_respond("Tell me a story"))
    finally:
        assistant_mod.stream_generate = assistant_mod_stream
    assert assistant.last.stopped and assistant.last.text == "Half"
    assert assistant.history == [("Tell me a story", "Half")]


# ------------------------------------------------------------------ long messages (item 8)


def _paste(n_chars, seed=0):
    """Varied prose: sentences of 6-14 words drawn from 400 made-up words."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = ["".join(rng.choice(list("aeioubdfgklmnprstvz"), rng.integers(3, 9))) for _ in range(400)]
    out, size = [], 0
    while size < n_chars:
        s = " ".join(rng.choice(vocab, rng.integers(6, 15))).capitalize() + "."
        out.append(s)
        size += len(s) + 1
    return " ".join(out)


def test_split_chunks_keeps_every_word_in_bounded_chunks():
    text = _paste(50_000) + " " + "x" * 1200
    chunks = split_chunks(text, 500)
    assert all(0 < len(c) <= 500 for c in chunks)
    assert "".join(" ".join(chunks).split()) == "".join(text.split())
    assert 100 <= len(chunks) <= 130  # sentences packed: chunks are mostly full
    assert split_chunks("  short.  ", 500) == ["short."]
    with pytest.raises(ValueError, match="max_chars must be >= 1 but got 0"):
        split_chunks("x", 0)
    assert truncate_tokens("a b c d e f", 3, lambda t: len(t.split())) == "d e f"
    assert truncate_tokens("a b c d e f", 3, lambda t: len(t.split()), keep="start") == "a b c"


def test_long_message_is_stored_as_chunks(assistant, bank):
    paste = "I keep notes. " + _paste(50_000)
    assert assistant.learn(paste) == "added"
    stored = texts(bank)
    assert len(stored) > 90 and max(map(len, stored)) <= assistant.chunk_chars
    assert "a 50,0" in assistant.notes[0] and "memories of at most 500 characters" in assistant.notes[0]
    first = assistant.remember(_paste(3_000, seed=1))  # /remember chunks a long text too
    assert first == len(stored) + 1 and len(texts(bank)) >= len(stored) + 6
    assert max(map(len, texts(bank))) <= assistant.chunk_chars


def test_prompt_fits_the_context(bank):
    context, max_tokens = 300, 40
    a = Assistant(FakeModel(context), WordTokenizer(), bank, user="me", min_score=0.0, max_tokens=max_tokens,
                  memory_tokens=60)
    bank.add("I keep notes. " + _paste(5_000), user="me", force=True)  # one huge old memory
    a.history = [(_paste(400), "ok")] * 3
    ids, mems, _ = a.prepare(_paste(50_000) + " what time does the ferry leave?")
    assert len(ids) <= context - max_tokens and len(ids) > context - max_tokens - 30
    assert len(mems) == 1 and len(mems[0][0].text.split()) <= 60  # the old memory cut to its budget
    assert any("only its last" in n for n in a.notes) and any("memory [1] is" in n for n in a.notes)
    ids, mems, _ = a.prepare("where does the ferry leave from?")  # short turns get history back
    assert len(ids) <= context - max_tokens
    # A memory that leaves the turn under 16 tokens of room is dropped; the turn stays whole.
    b = Assistant(FakeModel(context), WordTokenizer(), bank, user="you", min_score=0.0, max_tokens=max_tokens,
                  memory_tokens=250, auto_learn=False)
    bank.add("the ferry " + " ".join(["word"] * 243), user="you", force=True)  # (the prompt has no worked examples)
    msg = "the ferry " + " ".join(["leaves"] * 230)
    assert len(b.retrieve(msg)) == 1
    ids, mems, _ = b.prepare(msg)
    assert mems == [] and len(ids) <= context - max_tokens and len(ids) > 232
    assert b.notes == ["the message leaves no room for memories in the prompt; none shown"]
    with pytest.raises(ValueError, match="max_tokens=290 leaves no room"):
        Assistant(FakeModel(context), WordTokenizer(), bank, user="me", max_tokens=290)
    with pytest.raises(ValueError, match="one turn takes at most 200,000"):
        a.prepare("x" * 200_001)


def test_chat_reports_cut_turns_and_bounds_them(tmp_path, monkeypatch):
    rc, out, err = chat_run(tmp_path, monkeypatch, _paste(20_000) + "\n" + "x" * 300_000 + "\n", context=256)
    assert rc == 0 and out.splitlines() == ["It is noted."]
    notes = err.splitlines()
    assert notes[0].startswith("note: a 20,0") and "memories" in notes[0]
    assert notes[1].startswith("note: the message is ") and "only its last" in notes[1]
    assert notes[2] == "error: [assistant] the message is 300,000 characters; one turn takes at most 200,000. " \
                       "Send it in parts."


def test_database_that_cannot_be_opened_is_one_line(tmp_path, monkeypatch, capsys):
    import mlx_synapse.loader
    import mlx_synapse.memory.bank

    def refuse(path, backend=None):
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(mlx_synapse.loader, "load", lambda *a, **k: (FakeModel(), WordTokenizer()))
    monkeypatch.setattr(mlx_synapse.memory.bank, "MemoryBank", refuse)
    assert chat.main(["--db", str(tmp_path / "x.db"), "--user", "me"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: the memory database cannot be opened or written (unable to open database file); "
                   "check its permissions or pass --db PATH."]
