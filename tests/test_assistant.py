"""The assistant: what it learns from a message, how it builds the prompt, and, with the
real default model, a fact told in one process answered in another."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mlx_synapse.assistant import Assistant, Reply, is_question, visible
from mlx_synapse.memory.bank import MemoryBank

from .conftest import _or_skip
from .test_memory_bank import BagOfWords


class WordTokenizer:
    def encode(self, text, **kw):
        return list(range(len(text.split())))


@pytest.fixture
def assistant(tmp_path):
    bank = MemoryBank(tmp_path / "m.db", BagOfWords(), backend="numpy")
    yield Assistant(None, WordTokenizer(), bank, user="me", min_score=0.3)
    bank.close()


def test_is_question():
    assert is_question("What's my favourite colour?") and is_question("where do I live")
    assert is_question("Tell me my sister's name") and not is_question("My sister is Ana.")


def test_learn_stores_statements_not_questions(assistant):
    bank = assistant.memory
    assert assistant.learn("What is my dog called?") is None
    assert assistant.learn("My dog is called Pickle.") == "added"
    assert assistant.learn("my dog is called pickle.") == "refreshed"  # same words: near-duplicate
    assert assistant.learn("The weather was nice today.") == "added"  # no surprise scorer: written
    assert [e.text for e in bank.list(user="me")] == ["My dog is called Pickle.", "The weather was nice today."]


def current(bank, user="me"):
    return [e.text for e, _ in visible([(e, 1.0) for e in bank.list(user=user)])]


def test_new_value_supersedes_the_old_fact(assistant):
    bank = assistant.memory
    assistant.learn("My favorite color is blue.")
    assert assistant.learn("My favorite color is green.") == "corrected"
    old, new = bank.list(user="me")
    assert (old.text, new.text) == ("My favorite color is blue.", "My favorite color is green.")
    assert old.metadata["superseded_by"] == new.id and new.metadata["superseded_by"] is None  # history kept
    assert current(bank) == ["My favorite color is green."]


def test_correction_rewrites_the_memory_just_used(assistant):
    bank = assistant.memory
    i = assistant.remember("My favorite color is blue.")
    assistant.last = Reply("Your favorite color is blue.", [(bank.get(i), 0.9)])
    assert assistant.learn("Actually, it's green.") == "corrected"
    assert current(bank) == ["My favorite color is green."]
    assert bank.get(i).metadata["superseded_by"] is not None and bank.get(i).text == "My favorite color is blue."
    assert assistant.learn("No, my favorite color is teal.") == "corrected"
    assert current(bank) == ["My favorite color is teal."]
    assert len(bank.list(user="me")) == 4  # two older values kept as history, and the message said
    assert bank.list(user="me")[2].metadata["kind"] == "message"


def test_forget_by_query(assistant):
    assistant.remember("My dog is called Pickle.")
    assistant.remember("I work at the harbour office.")
    gone = assistant.forget("dog is called pickle")
    assert [e.text for e in gone] == ["My dog is called Pickle."]
    assert [e.text for e in assistant.memory.list(user="me")] == ["I work at the harbour office."]


def test_prompt_shows_dated_notes_only_with_memories_and_the_best_last(assistant):
    a = assistant
    i = a.remember("My dog is called Pickle.")
    j = a.remember("My cat is called Miso.")
    bank = a.memory
    plain = a.build_messages("hello there", [])
    assert plain == [{"role": "user", "content": "hello there"}]
    msgs = a.build_messages("what is my dog called?", [(bank.get(i), 0.8), (bank.get(j), 0.5)])
    assert len(msgs) == 1  # no worked example: nothing for the model to copy but the notes
    when = a.memory.get(i).created
    import datetime as dt
    d = dt.datetime.fromtimestamp(when, dt.timezone.utc)
    date = f"{d.day} {d.strftime('%B %Y')}"
    assert msgs[-1]["content"] == "Context:\nMy cat is called Miso.\nMy dog is called Pickle.\n\nQuestion: what is my dog called?"
    msgs = a.build_messages("When did I get my dog?", [(bank.get(i), 0.8)])  # about time: each note dated
    assert msgs[-1]["content"] == f"Context:\nMy dog is called Pickle. (said on {date})\n\nQuestion: When did I get my dog?"
    # history is kept newest first within the token budget
    a.history = [("one two three", "four five"), ("six", "seven eight nine ten")]
    a.history_tokens = 5
    msgs = a.build_messages("hi", [])
    assert [m["content"] for m in msgs] == ["six", "seven eight nine ten", "hi"]


def test_retrieve_keeps_close_memories_only(assistant):
    a = assistant
    a.remember("my dog is called pickle")
    a.remember("my dog likes long walks in the park")
    a.remember("the stock market fell today")
    hits = a.retrieve("what is my dog called")
    assert hits[0][0].text == "my dog is called pickle"
    assert all(s >= hits[0][1] - a.margin and s >= a.min_score for _, s in hits)
    assert "the stock market fell today" not in [e.text for e, _ in hits]


@pytest.mark.slow
def test_chat_remembers_across_processes(tmp_path, smollm2_dir):
    """Told in one run of `python -m mlx_synapse.chat`, answered in the next (piped stdin)."""
    from mlx_synapse.memory import find_minilm_dir

    _or_skip(find_minilm_dir)
    env = dict(os.environ, MLX_SYNAPSE_MEMORY_DB=str(tmp_path / "m.db"))

    def chat(text, *extra):
        r = subprocess.run([sys.executable, "-m", "mlx_synapse.chat", "--user", "ana", "--max-tokens", "24",
                            "--model", str(smollm2_dir), "--backend", "numpy", *extra],
                           input=text, capture_output=True, text=True, timeout=600, env=env)
        assert r.returncode == 0, r.stderr
        return r.stdout

    chat("My dog is called Pickle.\nMy sister's name is Orsolya.\n")
    out = chat("What is my dog's name?\n/why\nWhat is my sibling called?\n")
    lines = out.splitlines()
    assert "pickle" in lines[0].lower(), out
    assert "My dog is called Pickle." in out  # /why shows the memory used
    assert "orsolya" in out.lower().split("my dog is called pickle.")[-1], out
    assert os.stat(tmp_path / "m.db").st_mode & 0o777 == 0o600
    # another user sees none of it
    out = chat("What is my dog's name?\n/why\n", "--user", "bob")
    assert "no memory was used" in out
    # generate --memory takes the same path
    r = subprocess.run([sys.executable, "-m", "mlx_synapse.generate", "--memory", str(tmp_path / "m.db"),
                        "--user", "ana", "--model", str(smollm2_dir), "--backend", "numpy", "-m", "24",
                        "-p", "What is my dog called?", "--verbose"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    assert "[memory" in r.stderr and "My dog is called Pickle." in r.stderr
    assert "pickle" in r.stdout.splitlines()[0].lower(), r.stdout


def _pty_session(argv, env, turns, timeout=300):
    """Run ``argv`` on a pseudo-terminal; send each turn after the '> ' prompt; return the transcript."""
    import pty
    import select
    import time

    master, slave = pty.openpty()
    p = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=env, close_fds=True)
    os.close(slave)
    buf = b""

    def read_until(marker: bytes):
        nonlocal buf
        deadline = time.monotonic() + timeout
        while marker not in buf:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {marker!r} in {buf.decode(errors='replace')!r}")
            r, _, _ = select.select([master], [], [], 1.0)
            if r:
                try:
                    buf += os.read(master, 4096)
                except OSError:
                    break
        out, buf = buf[: buf.index(marker) + len(marker)], buf[buf.index(marker) + len(marker):]
        return out.decode(errors="replace")

    transcript = read_until(b"> ")
    try:
        for t in turns:
            os.write(master, (t + "\n").encode())
            transcript += read_until(b"> ")
        os.write(master, b"/exit\n")
        assert p.wait(timeout=60) == 0, p.stderr.read().decode()
    finally:
        if p.poll() is None:
            p.kill()
        os.close(master)
    return transcript


@pytest.mark.slow
def test_interactive_chat_in_a_pseudo_terminal(tmp_path, smollm2_dir):
    from mlx_synapse.memory import find_minilm_dir

    _or_skip(find_minilm_dir)
    env = dict(os.environ, MLX_SYNAPSE_MEMORY_DB=str(tmp_path / "m.db"))
    argv = [sys.executable, "-m", "mlx_synapse.chat", "--user", "kim", "--max-tokens", "24",
            "--model", str(smollm2_dir), "--backend", "numpy"]
    first = _pty_session(argv, env, ["My favourite tree is the rowan.", "/memories"])
    assert "Chatting as 'kim'" in first and "My favourite tree is the rowan." in first
    second = _pty_session(argv, env, ["Which tree do I like most?", "/why"])
    answer = second.split("Which tree do I like most?", 1)[1]
    assert "rowan" in answer.lower(), second


def test_correction_picks_the_memory_the_reply_repeated(assistant):
    bank = assistant.memory
    i = assistant.remember("My sister's name is Ana.")
    j = assistant.remember("My sister's dog is called Rex.")
    assistant.history = [("what is my sister's dog called?", "Your sister's dog is called Rex.")]
    assistant.last = Reply("Your sister's dog is called Rex.", [(bank.get(i), 0.8), (bank.get(j), 0.79)])
    assert assistant.learn("Actually, it's Fido, not Rex.") == "corrected"
    assert current(bank) == ["My sister's name is Ana.", "My sister's dog is called Fido."]
    assert bank.get(j).metadata["superseded_by"] is not None


def test_not_every_no_is_a_correction(assistant):
    bank = assistant.memory
    i = assistant.remember("My sister's name is Ana.")
    assistant.last = Reply("Your sister's name is Ana.", [(bank.get(i), 0.9)])
    assistant.learn("No, it's fine.")
    assert current(bank)[0] == "My sister's name is Ana."
    assert assistant.learn("No, my brother's name is Tom.") == "added"  # another fact: kept apart
    assert "My sister's name is Ana." in current(bank)
    assert assistant.learn("No, my sister's name is Anna.") == "corrected"
    assert "My sister's name is Ana." not in current(bank) and "My sister is called Anna." in current(bank)
