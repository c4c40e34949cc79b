"""Synthetic memory-grounded QA for the reader adapter, in the assistant's memory-turn format.

Each example is a chat (``{"messages": [user, assistant], "category": ...}``) whose user
turn is exactly what :class:`mlx_synapse.assistant.Assistant` shows on a turn with
memories (:func:`mlx_synapse.assistant.context_turn`: ``Context:`` lines, the question;
dates on the lines only when the question asks about time) and whose assistant turn is
the answer read from those lines. The trainer's loss covers the answer only
(:func:`mlx_synapse.learn.data.tokenize` masks the prompt).

Categories (:data:`MIX` gives their shares): ``slot`` (the right line among distractors,
some about the same kind of thing for someone else), ``in_passing`` (the fact inside a
chatty message), ``two_hop`` ("My sister is called Hedda." + "Hedda lives in Ghent."),
``name``, ``aggregation`` (every item of a list spread over lines), ``change`` (old and
new value, the newer one said with a word of change), ``correction``, ``temporal`` (the
date a dated line was said), ``abstain`` (no line answers: "I don't know.").

No user data: every value, name and phrasing comes from :mod:`.vocab`, and paraphrase is
programmatic (question wrappers, chatty openers and closers, connectors, clause order,
line order). Same ``(n, seed)``, same examples.
"""

from __future__ import annotations

import calendar
import datetime as dt
import random
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..assistant import ABSTAIN, asks_when, context_turn, note
from . import vocab as V

__all__ = ["MIX", "Subject", "generate", "render", "example_lines"]

MIX: Dict[str, float] = {"slot": 0.24, "in_passing": 0.1, "two_hop": 0.1, "name": 0.05, "aggregation": 0.1,
                         "change": 0.1, "correction": 0.06, "temporal": 0.12, "abstain": 0.13}

_CHOICE = re.compile(r"\{([^{}|]*)\|([^{}|]*)\}")
_FIELD = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Subject:
    """Whom a fact is about, in each place a sentence names them (see :mod:`.vocab`)."""

    S: str  # statement subject: "I", "My sister", "Hedda"
    P: str  # statement possessive: "My", "My sister's"
    Q: str  # in a question: "I", "my sister"
    q: str  # question possessive: "my", "my sister's"
    A: str  # in the answer: "You", "Your sister"
    a: str  # answer possessive: "Your", "Your sister's"
    o: str  # object: "me", "my sister"
    first: bool
    key: str  # who, for telling facts apart: "me", "sister", "Hedda"

    @staticmethod
    def me() -> "Subject":
        return Subject("I", "My", "I", "my", "You", "Your", "me", True, "me")

    @staticmethod
    def role(r: str, name: Optional[str] = None) -> "Subject":
        who = f"{r} {name}" if name else r
        return Subject(f"My {who}", f"My {who}'s", f"my {who}", f"my {who}'s", f"Your {who}", f"Your {who}'s",
                       f"my {who}", False, name or r)

    @staticmethod
    def named(n: str) -> "Subject":
        return Subject(n, f"{n}'s", n, f"{n}'s", n, f"{n}'s", n, False, n)


def _article(v: str) -> str:
    return ("an " if v[0].lower() in "aeiou" else "a ") + v


def render(template: str, subj: Subject, place: str, **vals) -> str:
    """Fill ``template`` for ``subj``; ``place``: 'S' statement, 'Q' question, 'A' answer."""
    text = _CHOICE.sub(lambda m: m.group(1) if subj.first else m.group(2), template)
    p = ("your" if place == "A" else "my") if subj.first else "their"
    fields = dict(S=subj.S, s=subj.S if subj.S == "I" or subj.key == subj.S else subj.S[0].lower() + subj.S[1:],
                  P=subj.P, Q=subj.Q, q=subj.q, A=subj.A, a=subj.a, o=subj.o, p=p, **vals)
    if "v" in vals and "av" not in vals:
        fields["av"] = _article(vals["v"])
    out = _FIELD.sub(lambda m: str(fields[m.group(1)]), text)
    return out[0].upper() + out[1:]


def _lower_first(s: str) -> str:
    first = s.split(" ", 1)[0].strip(",.'s")
    if s.startswith(("I ", "I'")) or first in V.NAMES:
        return s
    return s[0].lower() + s[1:]


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class _Gen:
    def __init__(self, rng: random.Random):
        self.r = rng

    # ------------------------------------------------------------ pieces
    def subject(self, first_share: float = 0.5, named_share: float = 0.2) -> Subject:
        x = self.r.random()
        if x < first_share:
            return Subject.me()
        role = self.r.choice(V.ROLES)
        if x < first_share + named_share * (1 - first_share) and " " not in role:
            return Subject.role(role, self.r.choice(V.NAMES))
        return Subject.role(role)

    def value(self, kind: str, avoid: Sequence[str] = ()) -> str:
        return self.r.choice([v for v in V.POOLS[kind] if v not in avoid])

    def fact(self, kind: str, subj: Subject, v: str) -> str:
        return render(self.r.choice(V.SLOTS[kind][0]), subj, "S", v=v)

    def question(self, text: str, wrap: bool = True) -> str:
        if not wrap:
            return text
        w = self.r.choice(V.QUESTION_WRAPPERS)
        return w.format(x=text, y=_lower_first(text))

    def distractors(self, taken: set, n: int, dated: bool = False) -> List[str]:
        """``n`` facts about (subject, kind) pairs not in ``taken`` (each a set of (key, kind))."""
        out = []
        while len(out) < n:
            kind = self.r.choice(list(V.SLOTS))
            subj = self.subject()
            if (subj.key, kind) in taken:
                continue
            taken.add((subj.key, kind))
            out.append(self.fact(kind, subj, self.value(kind)))
        return out

    def arrange(self, key_lines: List[str], others: List[str], key_last: float = 0.5) -> List[str]:
        """Lines in a shown order: the key lines last (as the best-ranked) with probability
        ``key_last``, else everything shuffled."""
        if self.r.random() < key_last:
            others = others[:]
            self.r.shuffle(others)
            return others + key_lines
        lines = key_lines + others
        self.r.shuffle(lines)
        return lines

    def date(self) -> float:
        d = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(days=self.r.randrange(5 * 365),
                                                                            hours=self.r.randrange(8, 21))
        return d.timestamp()

    # ------------------------------------------------------------ categories
    def slot(self):
        kind = self.r.choice(list(V.SLOTS))
        subj = self.subject()
        v = self.value(kind)
        st, qs, ans = V.SLOTS[kind]
        # a same-kind fact about someone else is the hardest distractor
        taken = {(subj.key, kind)}
        others = []
        if self.r.random() < 0.5:
            other = self.subject()
            if other.key != subj.key:
                taken.add((other.key, kind))
                others.append(self.fact(kind, other, self.value(kind, [v])))
        others += self.distractors(taken, self.r.randrange(0, 3))
        lines = self.arrange([self.fact(kind, subj, v)], others)
        q = self.question(render(self.r.choice(qs), subj, "Q"))
        return lines, q, render(self.r.choice(ans), subj, "A", v=v)

    def in_passing(self):
        kind = self.r.choice(list(V.PASSING))
        me = Subject.me()
        v = self.value(kind)
        clause = render(self.r.choice(V.PASSING[kind]), me, "S", v=v)
        conn = self.r.choice(V.CONNECTORS)
        body = conn.format(x=_lower_first(clause), X=clause)
        msg = (self.r.choice(V.OPENERS) + " " + body + self.r.choice(V.CLOSERS)).strip()
        others = self.distractors({(me.key, kind)}, self.r.randrange(0, 3))
        lines = self.arrange([msg], others)
        _, qs, ans = V.SLOTS[kind]
        return lines, self.question(render(self.r.choice(qs), me, "Q")), render(self.r.choice(ans), me, "A", v=v)

    def two_hop(self):
        r = self.r.choice([x for x in V.ROLES if " " not in x])
        n = self.r.choice(V.NAMES)
        kind = self.r.choice(list(V.SLOTS))
        v = self.value(kind)
        st, qs, ans = V.SLOTS[kind]
        link = self.r.choice(V.NAME_STATEMENTS).format(r=r, n=n)
        if self.r.random() < 0.7:  # the fact names the person, the question the relation
            fact = self.fact(kind, Subject.named(n), v)
            q = render(self.r.choice(qs), Subject.role(r), "Q")
            a = render(self.r.choice(ans), Subject.role(r, n), "A", v=v)
        else:  # the fact names the relation, the question the person
            fact = self.fact(kind, Subject.role(r), v)
            q = render(self.r.choice(qs), Subject.named(n), "Q")
            a = render(self.r.choice(ans), Subject.named(n), "A", v=v)
        key = [link, fact] if self.r.random() < 0.6 else [fact, link]
        others = self.distractors({(r, kind), (n, kind)}, self.r.randrange(0, 3))
        return self.arrange(key, others), self.question(q), a

    def name(self):
        r = self.r.choice([x for x in V.ROLES if " " not in x])
        n = self.r.choice(V.NAMES)
        others = []
        if self.r.random() < 0.5:  # someone else's name is the near miss
            r2 = self.r.choice([x for x in V.ROLES if " " not in x and x != r])
            others.append(self.r.choice(V.NAME_STATEMENTS).format(r=r2, n=self.r.choice([x for x in V.NAMES if x != n])))
        others += self.distractors({(r, "name")}, self.r.randrange(0, 3))
        lines = self.arrange([self.r.choice(V.NAME_STATEMENTS).format(r=r, n=n)], others)
        q = self.question(self.r.choice(V.NAME_QUESTIONS).format(r=r))
        return lines, q, self.r.choice(V.NAME_ANSWERS).format(r=r, n=n)

    def aggregation(self):
        kind = self.r.choice(list(V.LISTS))
        _, st, qs, ans = V.LISTS[kind]
        subj = self.subject(first_share=0.7, named_share=0.0)
        items = self.r.sample(V.POOLS[kind], self.r.randrange(2, 5))

        def form(v):
            return _article(v) if kind == "pet" else (f"the {v}" if kind == "instrument" else v)

        groups, rest = [], items[:]
        while rest:
            k = self.r.randrange(1, min(2, len(rest)) + 1)
            groups.append(rest[:k])
            rest = rest[k:]
        key = [render(st[0] if i == 0 else self.r.choice(st), subj, "S", items=_join([form(v) for v in g]))
               for i, g in enumerate(groups)]
        others = []
        if self.r.random() < 0.5:  # someone else's item of the same kind: not on the list
            other = self.subject(first_share=0.0)
            others.append(render(st[0], other, "S", items=form(self.value(kind, items))))
        others += self.distractors({(subj.key, kind)}, self.r.randrange(0, 2))
        lines = key + others
        self.r.shuffle(lines)
        q = self.question(render(self.r.choice(qs), subj, "Q"))
        return lines, q, render(ans, subj, "A", items=_join([form(v) for v in items]))

    def change(self):
        kind = self.r.choice(list(V.CHANGES))
        subj = self.subject(first_share=0.6)
        old, new = self.r.sample(V.POOLS[kind], 2)
        stmt = self.fact(kind, subj, old).rstrip(".")
        old_line = self.r.choice(V.OLD).format(X=stmt, x=_lower_first(stmt))
        new_line = render(self.r.choice(V.CHANGES[kind]), subj, "S", v=new)
        others = self.distractors({(subj.key, kind)}, self.r.randrange(0, 2))
        lines = [old_line, new_line] + others
        self.r.shuffle(lines)
        _, qs, ans = V.SLOTS[kind]
        return lines, self.question(render(self.r.choice(qs), subj, "Q")), render(self.r.choice(ans), subj, "A", v=new)

    def correction(self):
        kind = self.r.choice(list(V.SLOTS))
        subj = self.subject(first_share=0.6)
        old, new = self.r.sample(V.POOLS[kind], 2)
        fixed = self.fact(kind, subj, new).rstrip(".")
        line = self.r.choice(V.CORRECTIONS).format(x=_lower_first(fixed), old=old)
        others = self.distractors({(subj.key, kind)}, self.r.randrange(0, 2))
        lines = [self.fact(kind, subj, old), line] + others
        self.r.shuffle(lines)
        _, qs, ans = V.SLOTS[kind]
        return lines, self.question(render(self.r.choice(qs), subj, "Q")), render(self.r.choice(ans), subj, "A", v=new)

    def temporal(self):
        kind = self.r.choice(list(V.EVENTS))
        subj = self.subject(first_share=0.75, named_share=0.0)
        v = self.value(kind)
        st, q, a = self.r.choice(V.EVENTS[kind])
        when = self.date()
        key = note(render(st, subj, "S", v=v), when)
        others = [note(x, self.date()) for x in self.distractors({(subj.key, kind)}, self.r.randrange(1, 4))]
        q = render(q, subj, "Q", v=v)
        assert asks_when(q), q  # the assistant dates the lines only for such questions
        d = dt.datetime.fromtimestamp(when, dt.timezone.utc)
        return self.arrange([key], others), q, render(a, subj, "A", v=v, d=f"{d.day} {calendar.month_name[d.month]} {d.year}")

    def abstain(self):
        kind = self.r.choice(list(V.SLOTS))
        subj = self.subject()
        q = self.question(render(self.r.choice(V.SLOTS[kind][1]), subj, "Q"))
        if self.r.random() < 0.35:  # the assistant found nothing that fits: the empty context
            return [], q, ABSTAIN
        taken = {(subj.key, kind)}
        lines = []
        if self.r.random() < 0.6:  # the same kind of fact about someone else, or another fact about them
            other = self.subject()
            if other.key != subj.key:
                taken.add((other.key, kind))
                lines.append(self.fact(kind, other, self.value(kind)))
        if self.r.random() < 0.5:
            k2 = self.r.choice([k for k in V.SLOTS if k != kind])
            taken.add((subj.key, k2))
            lines.append(self.fact(k2, subj, self.value(k2)))
        lines += self.distractors(taken, self.r.randrange(0 if lines else 1, 3))
        self.r.shuffle(lines)
        return lines, q, ABSTAIN


def generate(n: int, seed: int = 0, mix: Optional[Dict[str, float]] = None) -> List[dict]:
    """``n`` chat examples (``{"messages": [...], "category": ...}``), the categories drawn by ``mix``."""
    if n < 0:
        raise ValueError(f"[reader] the number of examples must be >= 0 but got {n}.")
    mix = dict(MIX if mix is None else mix)
    bad = [k for k in mix if k not in MIX]
    if bad or not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"[reader] mix {mix}: use categories among {', '.join(MIX)} with weights >= 0, not all 0.")
    r = random.Random(seed)
    g = _Gen(r)
    cats, weights = list(mix), list(mix.values())
    out = []
    for _ in range(n):
        cat = r.choices(cats, weights)[0]
        lines, q, answer = getattr(g, cat)()
        user = context_turn(q, lines, abstain=not lines)
        out.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
                    "category": cat})
    return out


def example_lines(example: dict) -> List[str]:
    """The context lines and the question of an example (for checks on what the data says)."""
    user = example["messages"][0]["content"]
    ctx, _, rest = user.partition("\n\nQuestion: ")
    lines = [x for x in ctx.split("\n")[1:] if x != "(nothing about this)"]
    return lines + [rest.split("\n")[0]]
