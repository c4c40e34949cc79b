"""A user's facts from the memory bank, and the training pairs sleep builds from them.

:func:`pick_facts` takes the facts ``Assistant.learn`` stored (metadata ``kind="fact"``)
that are still current (``superseded_by`` unset). :func:`training_examples` writes, per
fact, chat examples (the user asks one of the ``TRAIN`` questions of the fact's slot,
the assistant answers with the fact in the second person) and the statement as text.
:func:`gate_pairs` asks with the ``GATE`` phrasings, which training never uses: the
gate measures recall on questions the adapter was not trained on.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = ["FactItem", "pick_facts", "answer_of", "questions", "training_examples", "gate_pairs", "TRAIN", "GATE"]


@dataclass(frozen=True)
class FactItem:
    id: int
    text: str
    slot: Optional[str]
    subject: Optional[str]
    value: Optional[str]

    @property
    def attr(self) -> str:
        """What the fact is about, without its subject: 'city', 'job', 'favorite.dish', ..."""
        if self.slot and "." in self.slot:
            return self.slot.split(".", 1)[1]
        return ""

    def as_dict(self) -> dict:
        return asdict(self)


def pick_facts(bank, user: str, *, exclude: Iterable[int] = (), only_new: Iterable[int] = ()) -> List[FactItem]:
    """The user's current facts (kind="fact", not superseded), oldest first.

    Args:
        exclude: ids never to take (forgotten ones).
        only_new: ids already consolidated: left out too (an incremental sleep).

    Raises:
        ValueError: the user has no entries at all (unknown user).
    """
    entries = bank.list(user=user)
    if not entries:
        raise ValueError(f"[sleep] user {user!r} has no memories in {bank.path}; check --user.")
    skip = set(exclude) | set(only_new)
    out = []
    for e in entries:
        m = e.metadata if isinstance(e.metadata, dict) else {}
        if m.get("kind") != "fact" or m.get("superseded_by") is not None or e.id in skip:
            continue
        slot = m.get("slot") or (m.get("topic") if m.get("value") else None)
        out.append(FactItem(e.id, e.text, slot, m.get("subject"), m.get("value")))
    return out


# Questions per attribute: (third person with {s} = "my sister", first person). TRAIN builds the
# training pairs; GATE (never trained on) is what the gate asks. A benchmark's questions must use
# neither (tests check that TRAIN and GATE share no phrasing).
TRAIN: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    "city": (("Where does {s} live?", "What city does {s} live in?"), ("Where do I live?", "What city do I live in?")),
    "job": (("What does {s} do for a living?", "What is {s}'s job?"), ("What do I do for a living?", "What is my job?")),
    "origin": (("Where is {s} from?", "Where does {s} come from?"), ("Where am I from?", "Where do I come from?")),
    "name": (("What is {s}'s name?", "What is {s} called?"), ("What is my name?", "What am I called?")),
    "favorite": (("What is {s}'s favorite {w}?", "Which {w} does {s} like most?"),
                 ("What is my favorite {w}?", "Which {w} do I like most?")),
    "instrument": (("What instrument does {s} play?", "Which instrument does {s} play?"),
                   ("What instrument do I play?", "Which instrument do I play?")),
    "language": (("What language does {s} speak?", "Which language does {s} speak?"),
                 ("What language do I speak?", "Which language do I speak?")),
    "": (("What do you know about {s}?", "Tell me about {s}."), ("What do you know about me?", "Tell me about me.")),
}
GATE: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    "city": (("Remind me where {s} is living these days.",), ("Remind me where I'm living these days.",)),
    "job": (("Remind me what {s} works as.",), ("Remind me what I work as.",)),
    "origin": (("Remind me where {s} originally comes from.",), ("Remind me where I originally come from.",)),
    "name": (("Remind me what {s} goes by.",), ("Remind me what I go by.",)),
    "favorite": (("Remind me of {s}'s favourite {w}.",), ("Remind me of my favourite {w}.",)),
    "instrument": (("Remind me which instrument {s} plays.",), ("Remind me which instrument I play.",)),
    "language": (("Remind me which language {s} speaks.",), ("Remind me which language I speak.",)),
    "": (("Remind me what you know about {s}.",), ("Remind me what you know about me.",)),
}
_VERB = re.compile(r"\s+(?:lives|works|is|was|plays|speaks|drives|studies|grew|has|comes)\b|'s\s", re.I)


def _who(f: FactItem) -> Optional[str]:
    """How a question names the fact's subject ("my sister"); None for the user."""
    if f.subject == "user" or re.match(r"^(?:I|We)\b", f.text):
        return None
    m = _VERB.search(f.text)
    if m and m.start() > 0:
        who = f.text[:m.start()]
        return "my " + who[3:] if who.lower().startswith("my ") else who
    return "my " + (f.subject or "friend").replace("_", " ")


def questions(f: FactItem, table: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = TRAIN) -> List[str]:
    """The fact's questions from ``table`` (TRAIN or GATE)."""
    attr, word = f.attr, ""
    if attr.startswith("favorite."):
        attr, word = "favorite", attr.split(".", 1)[1].replace("_", " ")
    key = attr if attr in table and f.value else ""
    third, first = table[key]
    who = _who(f)
    return [q.format(s=who, w=word) for q in third] if who else [q.format(w=word) for q in first]


def answer_of(f: FactItem) -> str:
    """The fact said back to the user: "My sister lives in Oslo." -> "Your sister lives in Oslo."."""
    t = f.text.strip()
    for a, b in (("I'm ", "You're "), ("I am ", "You are "), ("I was ", "You were "), ("I ", "You "),
                 ("My ", "Your "), ("We're ", "You're "), ("We ", "You ")):
        if t.startswith(a):
            return b + t[len(a):]
    return t


def training_examples(facts: Sequence[FactItem]) -> List[dict]:
    """mlx-lm JSONL examples: per fact, each TRAIN question answered, and the statement as text."""
    out = []
    for f in facts:
        ans = answer_of(f)
        out += [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ans}]}
                for q in questions(f, TRAIN)]
        out.append({"text": f.text})
    return out


def gate_pairs(facts: Sequence[FactItem]) -> List[Tuple[str, str]]:
    """(question, answer) per fact with the GATE phrasings (never trained on)."""
    return [(q, answer_of(f)) for f in facts for q in questions(f, GATE)]
