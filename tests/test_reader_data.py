"""The reader's training data: disjoint from the conversation suite, in the assistant's prompt
format, with the loss on the answer only."""

from __future__ import annotations

import re

import pytest

from mlx_synapse.assistant import ABSTAIN, Assistant, READER_INSTRUCTION
from mlx_synapse.reader import vocab as V
from mlx_synapse.reader.data import MIX, example_lines, generate

N = 4000


@pytest.fixture(scope="module")
def examples():
    return generate(N, seed=0) + generate(N // 4, seed=1)


def _texts(examples):
    for ex in examples:
        yield from example_lines(ex)
        yield ex["messages"][1]["content"]


def _pattern(template: str) -> re.Pattern:
    """A family template as a regex: its literal words, any text where a placeholder was."""
    parts = re.split(r"\{[^{}]*\}", template)
    return re.compile(r".+?".join(re.escape(p) for p in parts), re.I)


def test_no_conversation_suite_value_in_the_data(examples):
    from mlx_synapse.benchmarks.conversation.vocab import vocab

    values = {v.lower() for split in ("dev", "heldout") for vs in vocab(split).values() for v in vs}
    text = "\n".join(_texts(examples)).lower()
    found = sorted(v for v in values if re.search(rf"(?<![\w-]){re.escape(v)}(?![\w-])", text))
    assert not found
    # and the pools themselves share nothing
    mine = {v.lower() for vs in V.POOLS.values() for v in vs} | {n.lower() for n in V.NAMES}
    assert not mine & values


def test_no_heldout_template_in_the_data(examples):
    from mlx_synapse.benchmarks.conversation.families import CATEGORIES, families

    pats = [_pattern(t) for c in CATEGORIES for f in families("heldout", c) for t in f.says + (f.ask,)]
    assert len(pats) > 20
    texts = set(_texts(examples))
    # a line or question made from a held-out template (its words, anything in its slots)
    clash = [(t, p.pattern) for t in texts for p in pats if p.fullmatch(t)]
    assert not clash[:5]


def test_every_category_and_its_answer(examples):
    cats = {ex["category"] for ex in examples}
    assert cats == set(MIX)
    for ex in examples:
        user, answer = (m["content"] for m in ex["messages"])
        assert ex["messages"][0]["role"] == "user" and ex["messages"][1]["role"] == "assistant"
        if ex["category"] == "abstain":
            assert answer == ABSTAIN
        else:
            assert answer != ABSTAIN and user.startswith("Context:\n") and "\n\nQuestion: " in user
        if ex["category"] == "temporal":
            assert all(line.endswith(")") and "(said on " in line for line in example_lines(ex)[:-1])
            assert re.search(r" on \d{1,2} [A-Z][a-z]+ 20\d\d\.$", answer)


def test_change_and_correction_answers_name_the_new_value_only(examples):
    for ex in examples:
        if ex["category"] not in ("change", "correction"):
            continue
        answer = ex["messages"][1]["content"]
        lines = example_lines(ex)[:-1]
        named = [v for vs in V.POOLS.values() for v in vs if re.search(rf"\b{re.escape(v)}\b", answer)]
        assert named, answer
        v = max(named, key=len)
        assert any(v in line for line in lines)
        # the other value of the pair is in the lines but not in the answer
        olds = [o for vs in V.POOLS.values() for o in vs if o != v and o not in v
                and sum(o in line for line in lines) and not re.search(rf"\b{re.escape(o)}\b", answer)]
        assert olds


def test_same_seed_same_data_and_bad_input():
    assert generate(50, seed=3) == generate(50, seed=3)
    assert generate(50, seed=3) != generate(50, seed=4)
    with pytest.raises(ValueError, match="mix"):
        generate(5, mix={"nonsense": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        generate(-1)


class _Tok:
    """Enough of a tokenizer for build_messages (counts words)."""

    def encode(self, text, **kw):
        return text.split()


def test_user_turn_is_what_the_assistant_builds(tmp_path):
    """An example's user turn equals Assistant.build_messages for the same notes and question."""
    from mlx_synapse.memory.bank import Entry

    a = Assistant(None, _Tok(), None, user="u")
    for ex in generate(200, seed=5):
        user = ex["messages"][0]["content"]
        lines, q = example_lines(ex)[:-1], example_lines(ex)[-1]
        if ex["category"] == "abstain" and not lines:
            assert user.endswith(READER_INSTRUCTION)
            q = user.split("\n\nQuestion: ")[1].split("\n")[0]
            a._abstain = True
        # dated lines: the assistant writes the date from the entry's valid_from
        entries = []
        for i, line in enumerate(lines):
            m = re.match(r"(.*) \(said on (\d+) (\w+) (\d{4})\)$", line)
            meta = {}
            if m:
                import datetime as dt

                d = dt.datetime.strptime(f"{m.group(2)} {m.group(3)} {m.group(4)}", "%d %B %Y")
                meta = {"valid_from": d.replace(tzinfo=dt.timezone.utc).timestamp() + 3600}
                line = m.group(1)
            entries.append(Entry(id=i, user="u", text=line, source="t", metadata=meta, created=0.0,
                                 last_access=0.0, hits=0, surprise=None, tier="hot", encoder=None,
                                 redundancy=None))
        memories = [(e, 1.0) for e in reversed(entries)]  # best first, shown best last
        got = a.build_messages(q, memories, 0)
        a._abstain = False
        assert got == [ex["messages"][0]], (got, ex["messages"][0])
