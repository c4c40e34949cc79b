"""Seeded users for the conversation-memory suite: timestamped messages and gold questions.

A user of :func:`build_users` tells, over a few weeks of messages, one fact of each
category (third person, first person, in passing, a change, a correction, a two-hop
pair, a list, a dated event) between lines of chit-chat, and is then asked one question
per category plus one about something never said (abstention). :func:`build_scale_user`
makes one user with ``n`` plain facts (first and third person) and distractors.

Everything is drawn from one split's families (:mod:`.families`) and values
(:mod:`.vocab`); the same ``(split, seed)`` gives the same users, byte for byte.
"""

from __future__ import annotations

import calendar
import datetime as dt
import random
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .families import CATEGORIES, CHATTER, Family, families
from .vocab import RELATIONS, ROLES, vocab

__all__ = ["Message", "Question", "User", "build_users", "build_scale_user", "date_aliases", "value_aliases"]

_EPOCH = dt.datetime(2025, 1, 6, 8, 0, tzinfo=dt.timezone.utc).timestamp()
_DAY = 86400.0
_SPAN_DAYS = 60


@dataclass(frozen=True)
class Message:
    id: str  # "<user>:m<i>", in conversation order
    ts: float  # unix seconds (UTC)
    text: str


@dataclass(frozen=True)
class Question:
    """``gold``: every item must be named (one item except for aggregation), each item as
    its accepted spellings; ``forbidden``: values that must not appear (the old value of
    a change or correction); ``evidence``: the ids of the messages that hold the answer."""

    id: str
    user: str
    category: str
    family: str
    text: str
    gold: Tuple[Tuple[str, ...], ...]
    forbidden: Tuple[str, ...] = ()
    evidence: Tuple[str, ...] = ()

    @property
    def answerable(self) -> bool:
        return bool(self.gold)


@dataclass
class User:
    id: str
    messages: List[Message]
    questions: List[Question]
    values: Tuple[str, ...] = ()  # every value this user stated (an abstaining reply names none)
    facts: int = 0
    distractors: int = 0


def value_aliases(v: str) -> Tuple[str, ...]:
    """Accepted spellings of a pool value: itself and its plural (lists name "budgies")."""
    plural = v + ("es" if v.endswith(("s", "x", "ch", "sh")) else "s")
    return (v,) if v[:1].isupper() else (v, plural)


def date_aliases(ts: float) -> Tuple[str, ...]:
    """Ways a reply may name the day of ``ts`` (UTC): "14 March", "March 14th", "2025-03-14"."""
    d = dt.datetime.fromtimestamp(ts, dt.timezone.utc)
    m, n = calendar.month_name[d.month], d.day
    suf = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return (f"{n} {m}", f"{n}{suf} {m}", f"{n}{suf} of {m}", f"{m} {n}", f"{m} {n}{suf}", d.strftime("%Y-%m-%d"))


class _Draw:
    """One user's values, roles and first-person topics, each used at most once."""

    def __init__(self, r: random.Random, split: str):
        self.r = r
        self.pools = {k: list(v) for k, v in vocab(split).items()}
        for v in self.pools.values():
            r.shuffle(v)
        self.roles = list(ROLES)
        r.shuffle(self.roles)
        self.first_kinds: set = set()

    def can(self, fam: Family, n_values: int) -> bool:
        first = "{s}" not in fam.ask and "{S}" not in " ".join(fam.says)
        if first and fam.kind and fam.kind in self.first_kinds:
            return False
        need = {fam.kind: n_values} if fam.kind else {}
        if "{n}" in " ".join(fam.says):
            need["name"] = need.get("name", 0) + 1
        return all(len(self.pools[k]) >= c for k, c in need.items()) and bool(self.roles)

    def take(self, fam: Family) -> None:
        if fam.kind and "{s}" not in fam.ask and "{S}" not in " ".join(fam.says):
            self.first_kinds.add(fam.kind)

    def value(self, kind: str) -> str:
        return self.pools[kind].pop()

    def role(self) -> str:
        return self.roles.pop()


@dataclass
class _Event:
    texts: List[str]
    question: Optional[Tuple[str, Family, tuple, tuple]] = None  # (text, family, gold, forbidden)
    evidence: Tuple[int, ...] = ()  # indexes into texts
    adjacent: bool = False  # corrections: the second message right after the first
    dated: int = -1  # temporal: the index of the message whose date is the answer


def _event(fam: Family, d: _Draw) -> Optional[_Event]:
    r = d.r
    n_items = r.randint(2, 3) if fam.category == "aggregation" else 1
    n_values = 2 if fam.category in ("changes", "corrections") else n_items
    if not d.can(fam, n_values):
        return None
    d.take(fam)
    s = "my " + d.role()
    sub = dict(s=s, S=s[0].upper() + s[1:])
    cat = fam.category
    if cat == "abstention":
        q = fam.ask.format(**sub)
        return _Event([], (q, fam, (), ()))
    if cat in ("changes", "corrections"):
        old, new = d.value(fam.kind), d.value(fam.kind)
        texts = [t.format(old=old, new=new, **sub) for t in fam.says]
        return _Event(texts, (fam.ask.format(**sub), fam, (value_aliases(new),), value_aliases(old)),
                      evidence=(1,), adjacent=cat == "corrections")
    if cat == "two_hop":
        n, v = d.value("name"), d.value(fam.kind)
        texts = [t.format(n=n, v=v, **sub) for t in fam.says]
        return _Event(texts, (fam.ask.format(**sub), fam, (value_aliases(v),), ()), evidence=(0, 1))
    if cat == "aggregation":
        vs = [d.value(fam.kind) for _ in range(n_items)]
        texts = [fam.says[min(i, 1)].format(v=v, **sub) for i, v in enumerate(vs)]
        return _Event(texts, (fam.ask.format(**sub), fam, tuple(value_aliases(v) for v in vs), ()),
                      evidence=tuple(range(n_items)))
    v = d.value(fam.kind) if fam.kind else ""
    texts = [fam.says[0].format(v=v, **sub)]
    if cat == "temporal":
        return _Event(texts, (fam.ask.format(v=v, **sub), fam, (), ()), evidence=(0,), dated=0)
    return _Event(texts, (fam.ask.format(v=v, **sub), fam, (value_aliases(v),), ()), evidence=(0,))


_AN = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")


def _an(text: str) -> str:
    """"a optometrist" -> "an optometrist" (templates say "a {v}")."""
    return _AN.sub(lambda m: m.group(1) + "n ", text)


def _chatter(r: random.Random, split: str, n: int) -> List[str]:
    lines = list(CHATTER[split])
    if n <= len(lines):
        return r.sample(lines, n)
    # Large banks: distinct distractors of two, then three lines.
    combos = [f"{a} {b}" for a in lines for b in lines if a != b]
    out = r.sample(lines, len(lines)) + r.sample(combos, min(n - len(lines), len(combos)))
    left, L = n - len(out), len(lines)
    if left > 0:
        triples = [(i // (L * L), i // L % L, i % L) for i in r.sample(range(L ** 3), L ** 3)]
        out += [" ".join(lines[t] for t in tr) for tr in triples if len(set(tr)) == 3][:left]
    return out


def _assemble(uid: str, r: random.Random, events: List[_Event], chatter: Sequence[str],
              start: float, span_days: float) -> User:
    """Place the events' messages among the chit-chat in a random order that keeps each
    event's own order (and a correction right after what it corrects), then date them."""
    slots: List[Tuple[float, int, int]] = []  # (order key, event index or -1, message index)
    for ei, ev in enumerate(events):
        keys = sorted(r.random() for _ in ev.texts)
        if ev.adjacent and len(keys) == 2:
            keys[1] = keys[0] + 1e-12
        slots += [(k, ei, mi) for mi, k in enumerate(keys)]
    slots += [(r.random(), -1, ci) for ci in range(len(chatter))]
    slots.sort()
    times = sorted(start + r.random() * span_days * _DAY for _ in slots)
    messages, where = [], {}
    for i, ((_, ei, mi), ts) in enumerate(zip(slots, times)):
        text = chatter[mi] if ei < 0 else _an(events[ei].texts[mi])
        messages.append(Message(f"{uid}:m{i}", round(ts, 3), text))
        where[(ei, mi)] = i
    questions, values = [], set()
    for ei, ev in enumerate(events):
        if ev.question is None:
            continue
        text, fam, gold, forbidden = ev.question
        if ev.dated >= 0:
            gold = (date_aliases(messages[where[(ei, ev.dated)]].ts),)
        for item in gold:
            values.add(item[0])
        values.update(forbidden[:1])
        questions.append(Question(f"{uid}:q{len(questions)}", uid, fam.category, fam.name, _an(text), gold, forbidden,
                                  tuple(messages[where[(ei, i)]].id for i in ev.evidence)))
    return User(uid, messages, questions, tuple(sorted(values)), sum(len(e.texts) for e in events), len(chatter))


def build_users(split: str, n_users: int, seed: int = 0, chatter: int = 8,
                categories: Sequence[str] = CATEGORIES) -> List[User]:
    """``n_users`` users of ``split``, each with one question per category where the
    user's values allow it (a category is skipped when its family's pool ran out)."""
    users = []
    for u in range(n_users):
        r = random.Random(f"conversation:{split}:{seed}:{u}")
        d = _Draw(r, split)
        events = []
        for cat in r.sample(list(categories), len(categories)):
            fams = families(split, cat)
            for fam in r.sample(fams, len(fams)):
                ev = _event(fam, d)
                if ev is not None:
                    events.append(ev)
                    break
        uid = f"{split}-{seed}-u{u}"
        users.append(_assemble(uid, r, events, _chatter(r, split, chatter), _EPOCH + u * _DAY, _SPAN_DAYS))
    return users


def _subjects(split: str) -> List[str]:
    names = vocab(split)["name"]
    return [f"my {role}" for role in ROLES] + [f"my {rel} {n}" for rel in RELATIONS for n in names]


def build_scale_user(split: str, n_facts: int, n_questions: int, seed: int = 0,
                     distractors: Optional[int] = None) -> User:
    """One user with ``n_facts`` plain facts (first- and third-person families of
    ``split``, one per subject and topic; values may repeat across subjects) and
    ``distractors`` lines of chit-chat (default ``n_facts // 2 + 5``); ``n_questions``
    of the facts are asked about."""
    r = random.Random(f"conversation-scale:{split}:{seed}:{n_facts}")
    pools = vocab(split)
    firsts = families(split, "first_person")
    thirds = families(split, "third_person")
    keys = [(None, f) for f in firsts] + [(s, f) for s in _subjects(split) for f in thirds]
    if n_facts > len(keys):
        raise ValueError(f"[conversation] at most {len(keys)} distinct facts per user in this split, "
                         f"asked for {n_facts}; lower --scales.")
    chosen = r.sample(keys, n_facts)
    events = []
    for s, fam in chosen:
        v = r.choice(pools[fam.kind])
        sub = dict(s=s, S=s[0].upper() + s[1:]) if s else {}
        events.append(_Event([fam.says[0].format(v=v, **sub)],
                             (fam.ask.format(**sub), fam, (value_aliases(v),), ()), evidence=(0,)))
    asked = set(r.sample(range(n_facts), min(n_questions, n_facts)))
    for i, ev in enumerate(events):
        if i not in asked:
            ev.question = None
    n_d = n_facts // 2 + 5 if distractors is None else distractors
    return _assemble(f"{split}-{seed}-scale{n_facts}", r, events, _chatter(r, split, n_d), _EPOCH, _SPAN_DAYS)
